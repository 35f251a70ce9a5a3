"""The stages of a run, one module each, peers that never import one another: each reads what
earlier stages committed through ``orchestrator.artifacts`` and commits its own units the same
way (docs/internals.md, "Stages")."""

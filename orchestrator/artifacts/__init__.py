"""The committed artifacts of a run, one module each: its schema, its paths under the run (or
pool) directory, its commit and its verified read.

Stages write through these modules; report, status, export, the applications and the
benchmarks only read through them. Every unit is committed the one way ``commits`` defines:
its files under temporary names then moved, then a manifest naming them with their sha256.

- ``shards``: a shard's synthetic images, its checkpoints and kept snapshots
- ``selections``: a coreset baseline's selection of one shard's classes
- ``pool_networks``: a pool network's kept states and forgetting counts
- ``training_sets``: what a network trains on, by method, resolved from the above
- ``scores``: the evaluation's scores and results table
- ``continual_results``, ``nas_results``: the applications' results
"""

"""Shared components that stages call: the worker set-up every task and actor does first,
the component settings built from the config, and the evaluation actor pool."""

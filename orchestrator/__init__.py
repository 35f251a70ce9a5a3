"""dmcondense's orchestration layer: the only package that knows about Ray."""

import os

# Ray reads this once, when it is imported: without it Ray binds the machine's
# network address even when told 127.0.0.1. Set before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

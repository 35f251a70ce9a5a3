"""Where Ray runs: the given cluster, RAY_ADDRESS, or a private local instance on loopback."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import ray

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    quiet: bool = True,
) -> Iterator[str]:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray bound to loopback.

    Yields a short description of where work runs. A Ray instance this function
    started is shut down on exit; an existing connection is left alone.
    """
    if ray.is_initialized():
        yield "existing Ray connection"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": not quiet}
    if address:
        ray.init(address=address, **kwargs)
        where = f"Ray cluster at {address}"
    else:
        # address="local" always starts a fresh instance; a bare init() would join
        # whatever cluster Ray's temp dir last recorded, even a dead one. Token auth is
        # Ray's default and stays on; its notice is not news on every run.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(
            address="local",
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            **kwargs,
        )
        where = f"local Ray on {LOOPBACK} ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
    try:
        yield where
    finally:
        ray.shutdown()

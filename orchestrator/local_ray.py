"""Where Ray runs: the given cluster, RAY_ADDRESS, or a private local instance on loopback."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Iterator
from urllib.parse import urlsplit

import ray

from orchestrator.run_dir import RunError

LOOPBACK = "127.0.0.1"
ADDRESS_TIMEOUT_S = 10.0  # how long a cluster address may take to answer before the command stops
DEFAULT_GCS_PORT = 6379


def check_reachable(address: str | None) -> None:
    """Fail within ADDRESS_TIMEOUT_S, in one line, when nothing answers at ``address`` (or
    RAY_ADDRESS); Ray itself would retry for minutes. "auto" and "local" are Ray's to resolve."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port or DEFAULT_GCS_PORT
    except ValueError:
        host = port = None
    if not host:
        raise RunError(f"--address {address}: expected HOST:PORT (or ray://HOST:PORT)")
    try:
        socket.create_connection((host, port), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise RunError(f"no Ray cluster answers at {address} ({reason} within {ADDRESS_TIMEOUT_S:g} s); start it "
                       "or check the address, or leave out --address (and RAY_ADDRESS) to run on a local Ray") from None


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

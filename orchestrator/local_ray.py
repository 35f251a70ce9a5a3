"""Where Ray runs: the given cluster, RAY_ADDRESS, or a private local instance on loopback."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Iterator
from urllib.parse import urlsplit

import grpc  # Ray's own RPC library (ray[default])
import ray

from orchestrator.errors import RunError

LOOPBACK = "127.0.0.1"
ADDRESS_TIMEOUT_S = 10.0  # how long a cluster address may take to answer before the command stops
DEFAULT_GCS_PORT = 6379
# The first call every Ray client makes to a cluster's GCS; an empty message is its empty request.
GCS_FIRST_CALL = "/ray.rpc.NodeInfoGcsService/GetClusterId"
_ADVICE = "or leave out --address (and RAY_ADDRESS) to run on a local Ray"


def check_reachable(address: str | None) -> None:
    """Fail within ADDRESS_TIMEOUT_S, in one line, unless a Ray cluster's GCS answers at
    ``address`` (or RAY_ADDRESS): Ray itself would wait for minutes on an address where nothing,
    or something else, answers. "auto" and "local" are Ray's to resolve."""
    given = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address in ("auto", "local"):
        return
    host, port = _gcs_endpoint(address, given)
    deadline = time.monotonic() + ADDRESS_TIMEOUT_S
    try:
        socket.create_connection((host, port), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as exc:
        reason = (f"no answer within {ADDRESS_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError)
                  else exc.strerror or str(exc))
        raise RunError(f"no Ray cluster answers at {address} ({reason}); start it or check the address, "
                       f"{_ADVICE}") from None
    problem = _not_a_gcs(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", deadline - time.monotonic())
    if problem:
        raise RunError(f"{given} {address}: what answers there is not a Ray cluster ({problem}); give the head "
                       f"node's GCS address, HOST:PORT (port {DEFAULT_GCS_PORT} unless the cluster chose another), "
                       f"{_ADVICE}")


def _gcs_endpoint(address: str, given: str) -> tuple[str, int]:
    """HOST and PORT of a GCS address; the other forms Ray knows are refused, saying why."""
    if "://" in address:
        scheme = address.split("://", 1)[0]
        raise RunError(f"{given} {address}: the {scheme}:// form is not an address a driver runs against (the ray:// "
                       "client and the dashboard's http:// are for programs off the cluster); run dmcondense on "
                       f"a node of the cluster with the head's GCS address, HOST:PORT (port {DEFAULT_GCS_PORT} by "
                       "default), or submit it as a Ray job (deploy/README.md)")
    try:
        parts = urlsplit(f"//{address}")
        host, port = parts.hostname, parts.port or DEFAULT_GCS_PORT
    except ValueError:
        host = None
    if not host:
        raise RunError(f"{given} {address}: expected HOST:PORT, the head node's GCS address")
    return host, port


def _not_a_gcs(target: str, timeout_s: float) -> str | None:
    """Why what answers at ``target`` is not a Ray GCS, or None when it is one (a GCS with token
    authentication refuses the call: Ray's start sends the token)."""
    # a subchannel of its own: one shared with an earlier check of the same address would fail
    # at once while its reconnection backs off
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        try:
            channel.unary_unary(GCS_FIRST_CALL)(b"", timeout=max(timeout_s, 0.1))
        except grpc.RpcError as exc:  # also a grpc.Call: its status code and details
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                return None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"it accepts connections but gives no gRPC answer within {ADDRESS_TIMEOUT_S:g} s"
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return "a gRPC service without the calls of Ray's GCS"
            if code == grpc.StatusCode.UNAVAILABLE:
                return "it does not answer as a gRPC server"
            details = (exc.details() or "").strip()
            return f"{code.name}: {details.splitlines()[0]}" if details else code.name
    return None


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
    started is shut down on exit (also one whose start was interrupted); an existing
    connection is left alone.
    """
    if ray.is_initialized():
        yield "existing Ray connection"
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": not quiet}
    try:
        with _caller_sigterm_handler():
            if address:
                _join(address, kwargs)
                where = f"Ray cluster at {address}"
            else:
                # address="local" always starts a fresh instance; a bare init() would join
                # whatever cluster Ray's temp dir last recorded, even a dead one. Token auth is
                # Ray's default and stays on; its notice is not news on every run.
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
                ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False, num_cpus=num_cpus,
                         num_gpus=num_gpus, **kwargs)
                where = f"local Ray on {LOOPBACK} ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
        yield where
    finally:
        ray.shutdown()


def _join(address: str, kwargs: dict[str, Any]) -> None:
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"could not join the Ray cluster at {address}: {first}") from None


@contextlib.contextmanager
def _caller_sigterm_handler() -> Iterator[None]:
    """Ray's start replaces the SIGTERM handler with one that exits with status 15: the caller's
    is put back once it has started (orchestrator.stopping's, in a command)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

"""``--address`` (and RAY_ADDRESS) where no Ray cluster answers: whatever answers there (nothing, a
service that is not Ray, the ray:// client form) the command stops in one line within
ADDRESS_TIMEOUT_S, before it takes the run's lease or writes anything."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from orchestrator import local_ray
from orchestrator.cli import main
from orchestrator.local_ray import ADDRESS_TIMEOUT_S

from .conftest import REPO, sets

DIGITS = str(REPO / "configs" / "digits.yaml")
TINY = ["condense.iterations=4", "condense.ipc=1", "plan.classes_per_shard=10", "resources.gpus_per_shard=0",
        "evaluate.num_models=0"]


@contextlib.contextmanager
def tcp_server(reply: bytes | None) -> Iterator[str]:
    """A service on 127.0.0.1 that is not Ray: it answers every connection with ``reply``, or
    holds it silent; yields its HOST:PORT."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                held.append(conn)
                if reply:
                    conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for conn in held:
            conn.close()


def _stopped(argv: list[str], capsys, run) -> tuple[str, float]:  # noqa: ANN001
    started = time.monotonic()
    assert main(argv) == 2
    took = time.monotonic() - started
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "Traceback" not in out, out
    assert not run.exists()  # no lease taken, nothing written
    return out, took


@pytest.mark.parametrize("given", ["--address", "RAY_ADDRESS"])
def test_a_service_that_is_not_ray_is_named_in_one_line_at_once(given, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    with tcp_server(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n") as address:
        if given == "RAY_ADDRESS":
            monkeypatch.setenv("RAY_ADDRESS", address)
        argv = ["run", DIGITS, *sets(*TINY), "--out", str(run), *(["--address", address] if given == "--address" else [])]
        out, took = _stopped(argv, capsys, run)
    assert out.startswith(f"error: {given} {address}: what answers there is not a Ray cluster (it does not answer "
                          "as a gRPC server); give the head node's GCS address"), out
    assert took < ADDRESS_TIMEOUT_S


def test_a_service_that_accepts_and_says_nothing_is_given_up_on_in_the_stated_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(local_ray, "ADDRESS_TIMEOUT_S", 2.0)  # the README's 10 s, shortened for the test
    run = tmp_path / "run"
    with tcp_server(None) as address:
        out, took = _stopped(["run", DIGITS, *sets(*TINY), "--out", str(run), "--address", address], capsys, run)
    assert f"--address {address}: what answers there is not a Ray cluster (it accepts connections but gives no " \
           "gRPC answer within 2 s)" in out
    assert 1.5 < took < 2 + 5  # the plan's few tenths of a second, then the check's 2 s


@pytest.mark.parametrize("address", ["ray://127.0.0.1:10001", "http://127.0.0.1:8265"])
def test_the_client_and_dashboard_forms_are_refused_naming_the_one_that_works(address, tmp_path, capsys):
    run = tmp_path / "run"
    out, took = _stopped(["run", DIGITS, *sets(*TINY), "--out", str(run), "--address", address], capsys, run)
    scheme = address.split("://")[0]
    assert f"--address {address}: the {scheme}:// form is not an address a driver runs against" in out
    assert "HOST:PORT" in out and "Ray job" in out
    assert took < 5

"""Submit `dmcondense run CONFIG --out URI` to a Ray cluster as a Ray job, stream its logs,
and exit with the job's exit status.

    python deploy/submit_job.py configs/imagenet1k-ipc10.yaml \
        --out s3://YOUR-BUCKET/dmcondense/runs/imagenet1k-ipc10 \
        --set dataset.root=s3://YOUR-BUCKET/dmcondense/imagenet64 \
        --address http://127.0.0.1:8265

The repository's source and configs travel as the job's working_dir, so the cluster runs
this checkout's code and CONFIG may be any file under the repository. The cluster's image
must already hold the dependencies (deploy/Dockerfile); --install-deps adds them to the
runtime_env's pip list instead, for a stock Ray image.

Token authentication: with RAY_AUTH_MODE unset, the token is sent when one is found
(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); Ray's Jobs SDK only sends it
when RAY_AUTH_MODE=token, so this script sets that before importing Ray.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ADDRESS = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
# Never uploaded: environments, outputs, data, caches (Ray also honours .gitignore).
EXCLUDES = [".git", ".venv", "runs", "data", "bench-out", "tests", "**/__pycache__", "*.egg-info"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config, a path inside the repository (e.g. configs/cifar10-ipc10.yaml)")
    p.add_argument("--out", required=True, help="run directory on storage every node can reach (s3://, gs://, shared path)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, passed on to `dmcondense run`")
    p.add_argument("--address", default=DEFAULT_ADDRESS,
                   help="the cluster's dashboard (Jobs API) address, as for `ray job submit`; "
                        "default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS or http://127.0.0.1:8265")
    p.add_argument("--install-deps", action="store_true",
                   help="install pyproject.toml's dependencies through the runtime_env (stock Ray image)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return without following the logs")
    return p.parse_args(argv)


def config_in_repo(config: str) -> str:
    """CONFIG as a path relative to the repository root, which is the job's working directory."""
    path = Path(config).resolve()
    if not path.is_file():
        sys.exit(f"error: config {config} not found")
    if not path.is_relative_to(REPO):
        sys.exit(f"error: {config} is outside {REPO}; copy it under configs/ so that it travels with the job")
    return path.relative_to(REPO).as_posix()


def entrypoint(config: str, out: str, overrides: list[str]) -> str:
    # `python -m` runs the shipped source even where an older dmcondense is installed.
    args = ["python", "-m", "orchestrator", "run", config, "--out", out]  # the program: signals handled from its start
    for item in overrides:
        args += ["--set", item]
    return shlex.join(args)


def runtime_env(install_deps: bool) -> dict[str, Any]:
    env: dict[str, Any] = {"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": {"PYTHONUNBUFFERED": "1"}}
    if install_deps:
        deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        env["pip"] = [d for d in deps if not d.startswith("ray")]  # the cluster's own Ray stays
    return env


def enable_token_auth_if_available() -> None:
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


async def follow(client: Any, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        print(chunk, end="", flush=True)


def exit_status(client: Any, job_id: str) -> int:
    while not client.get_job_status(job_id).is_terminal():
        time.sleep(1)  # the log stream can end a moment before the status does
    info = client.get_job_info(job_id)
    code = 0 if info.status == "SUCCEEDED" else info.driver_exit_code or 1
    print(f"\njob {job_id}: {info.status}, exit status {code}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = entrypoint(config_in_repo(args.config), args.out, args.overrides)
    enable_token_auth_if_available()
    from ray.job_submission import JobSubmissionClient  # after RAY_AUTH_MODE is settled

    client = JobSubmissionClient(args.address)
    job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env(args.install_deps))
    print(f"submitted {job_id}: {command}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return 0
    try:
        asyncio.run(follow(client, job_id))
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (ray job stop {job_id} --address {args.address})",
              file=sys.stderr)
        return 130
    return exit_status(client, job_id)


if __name__ == "__main__":
    sys.exit(main())

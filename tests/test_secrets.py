"""The values of resources.worker_env, whichever way they arrive (each form of --set, the YAML),
reach neither the run directory (run.json), nor the lease (lease.json), nor any message: a second
driver's "in use" message, advice, config errors."""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import pytest
import yaml

from orchestrator import driver_session, pipeline
from orchestrator.cli import main
from orchestrator.commands import job, shown_command_line
from orchestrator.config import ConfigError, load_config

from .conftest import REPO

DIGITS = str(REPO / "configs" / "digits.yaml")
TINY = ["condense.iterations=4", "condense.ipc=1", "condense.batch_real=8", "resources.gpus_per_shard=0",
        "evaluate.num_models=0", "evaluate.baselines=[]"]
# Each way a value reaches resources.worker_env: the config file, then --set's forms.
FORMS = {
    "yaml": lambda secret: [],
    "--set KEY": lambda secret: ["--set", f"resources.worker_env.API_TOKEN={secret}"],
    "--set=KEY": lambda secret: [f"--set=resources.worker_env.API_TOKEN={secret}"],
    "--set mapping": lambda secret: ["--set", f"resources.worker_env={{API_TOKEN: {secret}}}"],
    "--set resources mapping": lambda secret: ["--set", f"resources={{gpus_per_shard: 0, "
                                               f"worker_env: {{API_TOKEN: {secret}}}}}"],
}


@contextlib.contextmanager
def _no_ray(address, **kwargs):  # noqa: ANN001, ANN202 - driver_session's Ray session, left out
    yield "no cluster (the stages are replaced)"


@pytest.mark.parametrize("form", FORMS)
def test_no_form_of_worker_env_leaves_its_value_in_the_run_the_lease_or_a_message(form, tmp_path, monkeypatch,
                                                                                 capsys):
    secret = "s3cr3t-" + uuid.uuid4().hex
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"resources": {"worker_env": {"API_TOKEN": secret} if form == "yaml" else {}}}))
    out = str(tmp_path / "run")
    seen = {}

    def second_driver_meanwhile(run, console, **kwargs):  # noqa: ANN001, ANN202 - in place of the stages
        seen["lease"] = Path(out, "lease.json").read_text()
        seen["exit"] = main(second)  # while the first driver holds the lease
        return []

    monkeypatch.setattr(driver_session, "ray_session", _no_ray)
    monkeypatch.setattr(pipeline, "run_stages", second_driver_meanwhile)
    first = ["run", str(config), *[a for s in TINY for a in ("--set", s)], *FORMS[form](secret), "--out", out]
    second = ["evaluate", out]
    assert main(first) == 0
    printed = capsys.readouterr().out
    assert seen["exit"] == 2 and "is in use" in printed  # the holder's command is named ...
    assert '"$API_TOKEN"' in json.loads(seen["lease"])["command"] or form == "yaml"  # ... with the variable
    assert secret not in printed and secret not in seen["lease"]
    for path in Path(out).rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
    stored = json.loads(Path(out, "run.json").read_text())["config"]["resources"]["worker_env"]
    assert stored["API_TOKEN"].startswith("redacted:sha256:")


@pytest.mark.parametrize("form", [f for f in FORMS if f != "yaml"])
def test_the_command_lines_shown_and_advised_hold_the_shell_variable_not_the_value(form):
    secret = "s3cr3t-" + uuid.uuid4().hex
    words = FORMS[form](secret)
    shown = shown_command_line(["pool", DIGITS, *words])
    advised = job("pool", DIGITS, [words[-1].removeprefix("--set=")])
    for line in (shown, advised):
        assert secret not in line and 'resources.worker_env.API_TOKEN="$API_TOKEN"' in line
    if form == "--set resources mapping":  # the mapping's other keys are kept
        assert "resources.gpus_per_shard=0" in shown and "resources.gpus_per_shard=0" in advised


@pytest.mark.parametrize("assignment", [
    "resources.worker_env={1BAD: %s}",  # a name that is not a variable's: the mapping is refused
    "resources.worker_env.API_TOKEN=[%s",  # not YAML
    "resources.worker_env.API_TOKEN.X=%s",  # not a section
    "resources={worker_env: [%s]}",  # not a mapping
])
def test_a_config_error_about_worker_env_does_not_quote_its_value(assignment):
    secret = "s3cr3t-" + uuid.uuid4().hex
    with pytest.raises(ConfigError) as refused:
        load_config(DIGITS, [assignment % secret])
    assert secret not in str(refused.value) and "resources" in str(refused.value)

"""The docs stay true: the README's defaults block is RunConfig()'s defaults, and every function
and class the contracts of docs/internals.md name exists with the parameters written there."""

from __future__ import annotations

import ast
import importlib
import inspect
import re

import pytest
import yaml

from benchmarks.fidelity_chart import FIGURE, table_cells  # FIGURE: a measured mean ± std
from orchestrator.config import RunConfig

from .conftest import REPO

README = (REPO / "README.md").read_text()
RESULTS = (REPO / "docs" / "results.md").read_text()
INTERNALS = (REPO / "docs" / "internals.md").read_text()


def _defaults_block() -> str:
    """The yaml block that follows "The defaults are the paper's" in the README."""
    after = README.split("The defaults are the paper's", 1)[1]
    return re.search(r"```yaml\n(.*?)```", after, re.S).group(1)


def test_the_readme_defaults_block_is_runconfigs_defaults():
    text = re.sub(r"\{\.\.\.[^}]*\}", "null", _defaults_block())  # a placeholder for a long default
    shown = yaml.safe_load(text)
    actual = RunConfig().model_dump(mode="json")
    assert set(shown) == set(actual), "top-level sections differ"
    for section, value in actual.items():
        if not isinstance(value, dict):
            assert shown[section] == value, section
            continue
        assert set(shown[section]) == set(value), f"{section}: keys differ"
        for key, default in value.items():
            if shown[section][key] is not None or default is None:  # null shows a placeholder
                got = shown[section][key]
                assert got == default or (isinstance(default, list) and tuple(got) == tuple(default)), \
                    f"{section}.{key}: README says {got!r}, RunConfig() has {default!r}"


def _contracts() -> list[tuple[str, ast.stmt]]:
    """(module, top-level def or class) of every python block of internals.md; a block's
    comment line ``# path/to/module.py`` names the module of what follows it."""
    found = []
    for block in re.findall(r"```python\n(.*?)```", INTERNALS, re.S):
        module = None
        for line in block.splitlines(keepends=True):
            m = re.match(r"# ([\w/]+)\.py\s*$", line)
            if m:
                module = m.group(1).replace("/", ".").removesuffix(".__init__")
        tree = ast.parse(block)
        # each statement belongs to the last module comment above it
        modules = {}
        current = None
        for number, line in enumerate(block.splitlines(), start=1):
            m = re.match(r"# ([\w/]+)\.py\s*$", line)
            if m:
                current = m.group(1).replace("/", ".").removesuffix(".__init__")
            modules[number] = current
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found.append((modules[node.lineno], node))
        assert module is not None, "a python block of internals.md names no module"
    return found


def _params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    return [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]


def _actual_params(obj: object) -> list[str]:
    return [p.name for p in inspect.signature(obj).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


CONTRACTS = _contracts()


@pytest.mark.parametrize("module, node", CONTRACTS, ids=[f"{m}.{n.name}" for m, n in CONTRACTS])
def test_every_contract_in_internals_exists_as_written(module, node):
    obj = getattr(importlib.import_module(module), node.name, None)
    assert obj is not None, f"docs/internals.md names {module}.{node.name}, which does not exist"
    if isinstance(node, ast.FunctionDef):
        assert _actual_params(obj) == _params(node), f"{module}.{node.name}"
        return
    fields = set(getattr(obj, "model_fields", None) or getattr(obj, "__dataclass_fields__", None) or ())
    for item in node.body:
        if isinstance(item, ast.AnnAssign):
            name = item.target.id
            assert name in fields or hasattr(obj, name), f"{module}.{node.name} has no field {name}"
        elif isinstance(item, ast.FunctionDef):
            method = inspect.getattr_static(obj, item.name)
            function = method.__func__ if isinstance(method, (classmethod, staticmethod)) else method
            assert _actual_params(function) == _params(item), f"{module}.{node.name}.{item.name}"


# ------------------------------------------------------------------ fidelity, README, layer table
FIDELITY = (REPO / "docs" / "fidelity.md").read_text()


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a line of its own) up to the next heading of the same level."""
    level = heading.split(" ", 1)[0]
    after = text.split(f"\n{heading}\n", 1)[1]
    return re.split(rf"\n{level} ", after, maxsplit=1)[0]


def _fidelity_table() -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table that opens docs/fidelity.md ("Every cell measured")."""
    return table_cells(FIDELITY)


def _table_numbers() -> tuple[set[tuple[str, str]], set[str]]:
    """(mean, std) of every figure of the table, and every number in its ours and paper cells."""
    header, rows = _fidelity_table()
    ours, paper = header.index("ours (%)"), header.index("paper (%)")
    figures = {m.groups() for r in rows for m in FIGURE.finditer(r[ours])}
    numbers = {n for r in rows for n in re.findall(r"\d+\.\d+", r[ours] + " " + r[paper])}
    return figures, numbers


def test_fidelity_opens_with_the_one_table_of_every_cell():
    first_heading = re.search(r"^## (.+)$", FIDELITY, re.M).group(1)
    assert first_heading == "Every cell measured"
    header, rows = _fidelity_table()
    for column in ("data set", "method", "images per class", "ours (%)", "paper (%)", "ours - paper",
                   "iterations", "networks x epochs", "labels", "augmentation", "commit", "run"):
        assert column in header, column
    assert len(rows) > 100
    ours, paper, diff = header.index("ours (%)"), header.index("paper (%)"), header.index("ours - paper")
    for row in rows:
        assert FIGURE.fullmatch(row[ours]), f"row {row[0]}: {row[ours]!r} is not mean ± std"
        if re.fullmatch(r"\d+\.\d", row[paper]):  # the difference is computed, not typed
            assert row[diff] == f"{float(row[ours].split()[0]) - float(row[paper]):+.2f}", f"row {row[0]}"
        else:
            assert row[diff] == "-", f"row {row[0]}: a difference without the paper's figure"


def test_fidelity_states_each_figure_once_in_its_table():
    table = _section(FIDELITY, "## Every cell measured")
    elsewhere = FIDELITY.replace(table, "")
    assert not FIGURE.search(elsewhere), f"a figure outside the table: {FIGURE.search(elsewhere).group(0)}"
    header, rows = _fidelity_table()
    keys = [tuple(r[1:4]) + tuple(r[7:12]) for r in rows]  # the cell, its protocol and its commit
    duplicated = {k for k in keys if keys.count(k) > 1}
    assert not duplicated, f"one cell under one protocol and commit with two figures: {duplicated}"


def test_fidelity_rows_name_a_reproducing_command_and_the_page_stays_short():
    header, rows = _fidelity_table()
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', FIDELITY))
    for row in rows:
        target = re.fullmatch(r"\[\w+\]\(#([\w-]+)\)", row[header.index("run")]).group(1)
        assert target in anchors, f"row {row[0]}: no command block {target}"
    assert len(FIDELITY.splitlines()) < 500, "docs/fidelity.md runs past 500 lines: move a study's log to docs/notes/"


@pytest.mark.parametrize("page, text, results", [("README.md", README, _section(README, "## Results")),
                                                 ("docs/results.md", RESULTS, RESULTS)])
def test_every_figure_of_the_readme_and_results_page_is_the_fidelity_tables(page, text, results):
    figures, numbers = _table_numbers()
    for figure in FIGURE.finditer(text):
        assert figure.groups() in figures, f"{page} states {figure.group(0)}, which docs/fidelity.md's table lacks"
    for number in re.findall(r"(?<![\d.])\d+\.\d+(?![\d.])", results):
        assert number in numbers, f"{page}'s results state {number}, which docs/fidelity.md's table lacks"


def _reproducing_commands() -> list[str]:
    """Every dmcondense command of docs/fidelity.md's "Reproducing a row", its shell variables expanded."""
    variables: dict[str, str] = {}
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", _section(FIDELITY, "## Reproducing a row"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), line)
            assignment = re.fullmatch(r'(\w+)="?([^"]*)"?', line.strip())
            if assignment:
                variables[assignment.group(1)] = assignment.group(2)
            elif line.startswith("dmcondense "):
                commands.append(line)
    return commands


@pytest.mark.parametrize("line", _reproducing_commands())
def test_every_reproducing_command_parses_and_its_config_validates(line):
    import shlex

    from orchestrator.cli import _parser
    from orchestrator.config import load_config

    args = _parser().parse_args(shlex.split(line, comments=True)[1:])
    overrides = getattr(args, "overrides", [])
    if args.command in ("run", "continual", "pool"):
        load_config(args.source, overrides)
    else:  # a run directory's own config: the keys and values checked against the defaults
        load_config(None, overrides)


def test_the_layer_table_of_internals_lists_every_orchestrator_module():
    section = _section(INTERNALS, "## The layers of `orchestrator/`, bottom up")
    rows = [line for line in section.splitlines() if line.startswith("|")]
    table = "\n".join(rows)
    for path in sorted((REPO / "orchestrator").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        relative = path.relative_to(REPO / "orchestrator")
        if len(relative.parts) == 1:
            assert f"`{path.name}`" in table, f"docs/internals.md's layer table lacks orchestrator/{relative}"
        else:
            package = f"`{relative.parts[0]}/`"
            row = next((r for r in rows if package in r), "")
            assert f"`{path.stem}`" in row, f"docs/internals.md's layer table lacks orchestrator/{relative}"

"""The docs stay true: the README's defaults block is RunConfig()'s defaults, and every function
and class the contracts of docs/internals.md name exists with the parameters written there."""

from __future__ import annotations

import ast
import importlib
import inspect
import re

import pytest
import yaml

from orchestrator.config import RunConfig

from .conftest import REPO

README = (REPO / "README.md").read_text()
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

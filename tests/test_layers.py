"""The layering of docs/architecture.md: the pure core stays pure, contracts cover every module and bite,
and no module builds a stateful object at import time (only the composition root does).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import authproxy

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _contract(contract_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(contract for contract in CONTRACTS if contract["id"] == contract_id)
    return found


def _top_level_modules() -> set[str]:
    return {f"authproxy.{info.name}" for info in pkgutil.iter_modules(authproxy.__path__)} - {
        "authproxy.__main__"
    }


def test_importing_the_core_loads_no_framework_and_nothing_of_the_proxy_outside_it() -> None:
    core = [
        f"authproxy.core.{info.name}"
        for info in pkgutil.iter_modules(importlib.import_module("authproxy.core").__path__)
    ]
    script = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in core)
        + "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(core) >= 8
    for framework in (
        "aiohttp",
        "pydantic",
        "pydantic_settings",
        "redis",
        "structlog",
        "prometheus_client",
        "asyncio",
    ):
        assert framework not in loaded, f"importing the core loaded {framework}"
    outside = [
        name for name in loaded if name.startswith("authproxy.") and not name.startswith("authproxy.core")
    ]
    assert outside == []


def test_every_top_level_module_has_a_layer_and_the_fake_is_kept_from_all_of_them() -> None:
    layered = {name.strip() for layer in _contract("layers")["layers"] for name in re.split(r"[:|]", layer)}
    modules = _top_level_modules()
    assert modules - {"authproxy.devidp"} == layered, (
        "a new module must be placed in a layer (pyproject.toml)"
    )
    assert set(_contract("fake-apart")["forbidden_modules"]) == modules - {"authproxy.devidp"}


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is a dev dependency")
def test_the_contracts_pass_and_a_wrong_import_breaks_them(tmp_path: Path) -> None:
    assert subprocess.run([LINT_IMPORTS], cwd=ROOT, capture_output=True, text=True).returncode == 0
    # The same tree with one import that breaks each kind of rule in turn.
    wrong_imports = {
        "core/paths.py": "import aiohttp  # noqa\n",  # the core reaching for a framework
        "core/csrf.py": "import authproxy.config  # noqa\n",  # the core reaching up
        "routes/signout.py": "import authproxy.routes.proxy  # noqa\n",  # one route importing another
        "devidp/app.py": "import authproxy.pages  # noqa\n",  # the fake importing the proxy
        "watch.py": "import authproxy.gate  # noqa\n",  # a service importing a layer above it
    }
    for path, line in wrong_imports.items():
        tree = tmp_path / path.replace("/", "_")
        shutil.copytree(ROOT / "authproxy", tree / "authproxy")
        shutil.copy(ROOT / "pyproject.toml", tree)
        target = tree / "authproxy" / path
        target.write_text(target.read_text() + line)
        result = subprocess.run(
            [LINT_IMPORTS],
            cwd=tree,
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(tree), "PATH": ""},
        )
        assert result.returncode != 0, f"the contracts let {line.strip()} in {path} pass"
        assert "BROKEN" in result.stdout


# Module-level objects that are values, not services: immutable, or kept by the library that made them.
_VALUE_TYPES: tuple[type, ...] = (
    type,
    str,
    bytes,
    int,
    float,
    bool,
    tuple,
    frozenset,
    re.Pattern,
    enum.Enum,
    BaseException,
)


def _stateful(value: object) -> bool:
    cls = type(value)
    if not cls.__module__.startswith("authproxy") or isinstance(value, _VALUE_TYPES) or callable(value):
        return False
    # What @dataclass(frozen=...) recorded on the class (typeshed does not declare it).
    params = getattr(cls, "__dataclass_params__", None)
    frozen = dataclasses.is_dataclass(cls) and params is not None and params.frozen
    # A sentinel (an instance with no attributes at all) holds nothing either.
    sentinel = not getattr(value, "__dict__", None) and not getattr(cls, "__slots__", ())
    return not frozen and not sentinel


def test_no_module_builds_a_stateful_object_at_import_time() -> None:
    found = []
    for info in pkgutil.walk_packages(authproxy.__path__, "authproxy."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if _stateful(value):
                found.append(f"{info.name}.{name}: {type(value).__name__}")
    # logging filters are handed to the logging module once, at configuration; they hold no state.
    allowed = {"authproxy.logs._CLIENT_ERRORS: _ClientProtocolErrors"}
    assert set(found) <= allowed, sorted(set(found) - allowed)

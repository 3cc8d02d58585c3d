"""The distribution installs as designed: `operator/` is a source root, never a package that
shadows the standard library's `operator`, and the console script runs."""

from __future__ import annotations

import operator
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import specfleet
from tests.corpus import ROOT

STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def test_operator_is_the_standard_library_module_here() -> None:
    assert Path(operator.__file__).resolve().parent == STDLIB
    assert operator.itemgetter(1)([0, 1]) == 1


@pytest.mark.parametrize("cwd", [ROOT, ROOT / "operator"], ids=["repo-root", "source-root"])
def test_operator_is_the_standard_library_module_in_the_installed_package(cwd: Path) -> None:
    probe = (
        "import operator, specfleet, specfleet.api, specfleet_runtime, pathlib; "
        "print(pathlib.Path(operator.__file__).resolve().parent); "
        "print(pathlib.Path(specfleet.__file__).resolve().parent.parent)"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert Path(out[0]) == STDLIB
    assert Path(out[1]) == ROOT / "operator"


def test_packages_come_from_their_source_roots() -> None:
    assert Path(specfleet.__file__).resolve().parent == ROOT / "operator" / "specfleet"
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert not (ROOT / "runtime" / "__init__.py").exists()


def test_console_script_prints_the_crds() -> None:
    script = Path(sys.executable).parent / "specfleet"
    out = subprocess.run([str(script), "crds"], capture_output=True, text=True, check=True)
    assert "name: inferencemodels.specfleet.dev" in out.stdout
    assert "name: routingpolicies.specfleet.dev" in out.stdout


def _imports_without(blocked: tuple[str, ...], modules: str) -> subprocess.CompletedProcess[str]:
    """Import ``modules`` (comma-separated) in a fresh interpreter where ``blocked`` cannot
    be imported."""
    probe = (
        "import sys\n"
        f"for blocked in {blocked!r}:\n"
        "    sys.modules[blocked] = None\n"
        f"import {modules}\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_the_operator_renders_router_configuration_without_the_runtime_extra() -> None:
    """The operator imports the router's configuration model (so it renders files the router
    accepts); that must not pull in what only the `runtime` extra installs (aiohttp comes with
    kopf; uvloop, the router's app and the proxy core are the data path's)."""
    run = _imports_without(
        ("uvloop", "specfleet_runtime.router.app", "specfleet_runtime.proxy"),
        "specfleet.cli, specfleet.reconcile.routingpolicy, specfleet.render.routingpolicy",
    )
    assert run.returncode == 0, run.stderr


def test_the_operator_starts_without_what_only_learning_needs() -> None:
    """`specfleet run` imports the whole command line; numpy, scipy, scikit-learn and the
    openai SDK are for the learning commands only (the operator's image cannot even load
    numpy), so they are imported where those commands run."""
    run = _imports_without(
        ("numpy", "scipy", "sklearn", "openai"), "specfleet.cli, specfleet.handlers"
    )
    assert run.returncode == 0, run.stderr

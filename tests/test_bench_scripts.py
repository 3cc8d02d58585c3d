"""The benchmarks run as scripts (`python bench/gate.py`), which puts bench/ first on sys.path:
a file there named like a standard library module replaces it for every import of that run
(a bench/operator.py once broke `python bench/gate.py` with "cannot import name 'index' from
partially initialized module 'operator'")."""

from __future__ import annotations

import sys

from tests.corpus import ROOT


def test_no_bench_script_is_named_like_a_standard_library_module() -> None:
    scripts = sorted((ROOT / "bench").glob("*.py"))
    assert scripts
    assert [p.name for p in scripts if p.stem in sys.stdlib_module_names] == []

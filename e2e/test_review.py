"""`specfleet review NAME` against the local control plane: it reads the InferenceModel
through kubectl and the current kubeconfig and shows the decisions its status records; a
missing model or a server it cannot reach is one line saying so, with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from e2e import harness
from tests.review.test_review import RECORDED, manifest

SPECFLEET = Path(sys.executable).parent / "specfleet"


def _review(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SPECFLEET), "review", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_review_reads_the_decisions_from_the_cluster(
    crds: harness.Cluster, namespace: str, tmp_path: Path
) -> None:
    body = yaml.safe_load(manifest(tmp_path).read_text())
    status = body.pop("status")
    body["metadata"]["namespace"] = namespace
    crds.kubectl("apply", "-f", "-", input=json.dumps(body))
    crds.kubectl(
        "patch", "im", "llama-70b", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip

    shown = _review(crds.env(), "llama-70b", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:5] == ["TIME", "FROM", "TO", "APPLIED", "RULE"]
    assert [line.split()[5] for line in lines[1 : len(RECORDED) + 1]] == [d.rule for d in RECORDED]

    missing = _review(crds.env(), "nosuch", "-n", namespace)
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        "specfleet review: kubectl get: Error from server (NotFound): "
        'inferencemodels.specfleet.dev "nosuch" not found'
    ]


def test_review_says_in_one_line_when_the_server_is_unreachable(
    cluster: harness.Cluster, tmp_path: Path
) -> None:
    unreachable = tmp_path / "kubeconfig.yaml"
    server = f"http://127.0.0.1:{harness.free_port()}"
    unreachable.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "contexts": [{"name": "c", "context": {"cluster": "c"}}],
                "current-context": "c",
            }
        )
    )
    done = _review({**cluster.env(), "KUBECONFIG": str(unreachable)}, "llama-70b")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("specfleet review: kubectl get: "), line
    assert server.removeprefix("http://") in line, line

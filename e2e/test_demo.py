"""`make demo`, the README's first command, end to end on a cluster of its own (beside the
session's): `scripts/demo` runs to its end on the real node (it fails by itself when the limit
does not reach 128 and then 32 in time): the operator's pod from the chart, the model and
router pods Running there, the router answering the three questions where the example policy
sends them, its capture read back redacted, and the policy learning from it (the team's
requests answered well more often by the promoted classifier than by the heuristic, the
learning Job's pod Succeeded); and `scripts/demo down` leaves nothing running, mounted or in
iptables.

There is one real node per machine: the session's stops while the demo runs and comes back
after.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import harness, node

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "scripts" / "demo"
CLUSTER = "specfleet-demo-e2e"
"""Not the default demo cluster: a demo someone left running is not touched."""


def _processes() -> dict[int, int]:
    """Every live process's parent, from /proc (zombies excluded: they have exited)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if state != "Z":
            parents[int(stat.parent.name)] = int(ppid)
    return parents


def _commands(pids: set[int]) -> dict[int, bytes]:
    """Each live pid's command line: a pid is the same process only while it is unchanged
    (pids are reused, and on a machine with a small pid_max soon)."""
    commands = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            commands[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
    return commands


def _tree(root: int) -> set[int]:
    """`root` and every live process under it."""
    parents = _processes()
    tree = {root} if root in parents else set()
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


@pytest.fixture
def real_node_lent() -> Iterator[None]:
    """The machine's real node free for the demo's cluster, and back with its owner after."""
    owner = harness.real_node_owner()
    lent = owner is not None and owner != CLUSTER
    if lent:
        assert owner is not None
        harness.real_node(harness.Cluster(owner, harness.bin_dir())).down()
    yield
    if lent:
        assert owner is not None
        harness.ensure_real_node(harness.Cluster(owner, harness.bin_dir()))


def _check_what_it_printed(printed: str) -> None:
    """The demo's output: the router's answers, the capture read back, the learning, the
    unreachable target."""
    lines = printed.splitlines()
    assert "tier simple -> llama-3b: What is the capital of France?" in lines, printed
    routed = {line.split(":")[0] for line in lines if " -> " in line}
    assert routed >= {"override -> llama-8b", "tier complex -> llama-70b"}, printed
    assert f"--cluster {CLUSTER} ask assistant" in printed
    # The router's capture, read back from the S3 store: the question the step asked, its
    # address and card number redacted, its route beside.
    capture = printed[
        printed.index("capture: assistant's router") : printed.index("learning: assistant's")
    ]
    asked, read_back = capture.split("\n", 1)[1].split("was charged twice.\n", 1)
    assert "jane.doe@example.com" in asked, capture
    assert "[email]" in read_back and "[card]" in read_back, capture
    assert "jane.doe@example.com" not in read_back and "4111" not in read_back, capture
    assert '"tier": "' in read_back, capture
    # The policy learned from its captured traffic: the same team's requests, by the
    # heuristic and then by the promoted classifier, are answered well more often.
    mixes = re.findall(
        r"requests by (heuristic|learned sha256:\w+): .*answered well (\d+)%", printed
    )
    assert [by.split()[0] for by, _ in mixes] == ["heuristic", "learned"], printed[-6000:]
    assert int(mixes[1][1]) > int(mixes[0][1]), mixes
    assert "ClassifierPromoted" in printed, printed[-6000:]
    # A target no batch limit meets is explained, not left over target in silence.
    assert "TargetUnreachable: ITL P99 target 20ms" in printed, printed[-6000:]


def test_the_demo_runs_to_its_end_and_down_stops_what_it_started(
    tmp_path: Path, real_node_lent: None
) -> None:
    env = {**os.environ, "SPECFLEET_DEMO_CLUSTER": CLUSTER, "VENV": sys.prefix}
    state = harness.state_dir(CLUSTER)
    cluster = harness.Cluster(CLUSTER, harness.bin_dir())
    started: dict[int, bytes] = {}
    """What the demo left running, each with its command line."""
    output = tmp_path / "demo.log"
    try:
        # Into a file, not a pipe: a process left holding the pipe would keep the run from
        # ending, where a file lets the assertions below name it.
        with output.open("w") as out:
            returncode = subprocess.call(
                [str(DEMO)], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1200
            )
        printed = output.read_text()
        # What the demo left running: the cluster's processes, the Prometheus Operator, the
        # real node's (containerd, its shims, the kubelet, kube-proxy, CoreDNS), the traffic.
        pids = {p.pid for p in cluster.processes()}
        for pidfile in (state / "traffic.pid", state / harness.PROMETHEUS_OPERATOR / "pid"):
            if pidfile.exists():
                pids |= _tree(int(pidfile.read_text()))
        pids |= {pid for pid in harness.real_node(cluster).running().values() if pid}
        started = _commands(pids)
        assert returncode == 0, printed[-6000:]
        _check_what_it_printed(printed)
        # The limit moved every 5 s with the chart's default resync.
        operators = cluster.kubectl_json("get", "deployments", "--all-namespaces")["items"]
        (operator,) = [d for d in operators if d["metadata"]["name"].startswith("specfleet")]
        (container,) = operator["spec"]["template"]["spec"]["containers"]
        settings = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert settings["SPECFLEET_RESYNC_SECONDS"] == "30", settings
        # Every pod it shows runs on the real node: the operator's, the models', the router's.
        pods = cluster.kubectl_json("get", "pods", "--all-namespaces")["items"]
        where = {p["metadata"]["name"]: p["spec"].get("nodeName") for p in pods}
        assert any(name.startswith("specfleet-") for name in where), where
        assert {"llama-70b", "llama-8b", "llama-3b", "assistant"} <= {
            name.rsplit("-", 2)[0] for name in where
        }, where
        assert set(where.values()) == {node.NODE_NAME}, where
        # Every pod runs, but the learning pass's, which ended.
        phases = {p["metadata"]["name"]: p["status"]["phase"] for p in pods}
        assert {
            name: phase
            for name, phase in phases.items()
            if phase != ("Succeeded" if name.startswith("learn-now-") else "Running")
        } == {}, phases
        assert any(name.startswith("learn-now-") for name in phases), phases
    finally:
        down = subprocess.run(
            [str(DEMO), "down"], env=env, capture_output=True, text=True, timeout=300, check=False
        )
    assert down.returncode == 0, down.stdout + down.stderr
    still = _commands(set(started) & set(_processes()))
    assert {pid: cmd for pid, cmd in still.items() if started[pid] == cmd} == {}
    assert harness.real_node(cluster).leftovers() == []

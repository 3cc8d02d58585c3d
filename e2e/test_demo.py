"""`make demo`, the README's first command, end to end on a cluster of its own (beside the
session's): `scripts/demo` runs to its end (it fails by itself when the limit does not reach
128 and then 32 in time), its router answers the three questions where the example policy
sends them, and `scripts/demo down` leaves none of the processes it started running.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from e2e import harness

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


def test_the_demo_runs_to_its_end_and_down_stops_what_it_started(tmp_path: Path) -> None:
    env = {**os.environ, "SPECFLEET_DEMO_CLUSTER": CLUSTER, "VENV": sys.prefix}
    state = harness.state_dir(CLUSTER)
    started: set[int] = set()
    output = tmp_path / "demo.log"
    try:
        # Into a file, not a pipe: a process left holding the pipe would keep the run from
        # ending, where a file lets the assertions below name it.
        with output.open("w") as out:
            returncode = subprocess.call(
                [str(DEMO)], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900
            )
        printed = output.read_text()
        # What the demo left running: its fleet (with Prometheus, simulators, gates and the
        # router under it) and its operator, by the pids the script recorded.
        for pidfile in (state / "fleet.pid", state / "operator.pid"):
            if pidfile.exists():
                started |= _tree(int(pidfile.read_text()))
        assert returncode == 0, printed[-6000:]
        lines = printed.splitlines()
        assert "tier simple -> llama-3b: What is the capital of France?" in lines, printed
        routed = {line.split(":")[0] for line in lines if " -> " in line}
        assert routed >= {"override -> llama-8b", "tier complex -> llama-70b"}, printed
        assert f"--cluster {CLUSTER} ask assistant" in printed
        # The fleet runs the models' pods, a Prometheus and the router: more than itself.
        assert len(started) > 2, started
    finally:
        down = subprocess.run(
            [str(DEMO), "down"], env=env, capture_output=True, text=True, timeout=300, check=False
        )
    assert down.returncode == 0, down.stdout + down.stderr
    assert started & set(_processes()) == set()

"""How the operator scales, on the local control plane.

1. `--models` InferenceModels (default 500) are created at once (one `kubectl create` of one
   file holding them all); for each, the time from its create call returning to its
   Deployment appearing in a watch.
2. Once every model is Ready, the API writes the operator makes over two full resync rounds
   in which nothing changed (its own write counter).
3. More models up to `--total` (default 1000), and the operator's resident memory once all
   are reconciled.

Every model is a Llama 3.2 3B on one H100 with one replica; the node pools are sized so every
pod is scheduled and turns Ready (kwok). Prints a table, then the last line
`apply_to_deployment_p99_s=<x> noop_writes=<n> rss_mb_1000=<m>`.

With `--baseline REV` the same steps run first with the operator of git revision REV (checked
out in a temporary worktree and run from it), then with this tree's, on the same cluster, and
the last line adds `apply_to_deployment_p99_ratio=<this tree's p99 over REV's>`.

Run: .venv/bin/python bench/operator_scale.py [--models 500] [--total 1000] [--baseline REV]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Run as a script this file's folder leads sys.path; put the repository root there instead.
sys.path[0] = str(ROOT)

from e2e import harness  # noqa: E402
from e2e.operator_process import Operator  # noqa: E402
from specfleet import crdgen  # noqa: E402

NAMESPACE = "bench"
CLUSTER = "specfleet-bench"
RESYNC_SECONDS = 10.0


def manifest(index: int, replicas: int) -> dict[str, object]:
    return {
        "apiVersion": "specfleet.dev/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": f"m{index:04d}", "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "meta-llama/Llama-3.2-3B-Instruct"},
            "maxModelLen": 8192,
            "gpu": {"count": 1},
            "replicas": replicas,
            "batching": {"max": 256},
        },
    }


class DeploymentWatch:
    """Records when each Deployment in the namespace is first seen."""

    def __init__(self, cluster: harness.Cluster) -> None:
        self.seen: dict[str, float] = {}
        self._process = subprocess.Popen(
            [
                str(cluster.bin_dir / "kubectl"),
                f"--kubeconfig={cluster.kubeconfig}",
                "get",
                "deployments",
                "-n",
                NAMESPACE,
                "--watch",
                "-o",
                "name",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            name = line.strip().rsplit("/", 1)[-1]
            self.seen.setdefault(name, time.monotonic())

    def stop(self) -> None:
        self._process.terminate()


def create_all(cluster: harness.Cluster, indexes: range, replicas: int) -> dict[str, float]:
    """Creates the models at once, all in one ``kubectl create -f -``; returns when each
    create call returned (kubectl prints each object's line as its call returns).

    One client process for all of them, as a user applying one file would: hundreds of
    kubectl processes would take more of the two cores than the operator under test."""
    text = yaml.safe_dump_all(manifest(index, replicas) for index in indexes)
    created: dict[str, float] = {}
    process = subprocess.Popen(
        [str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", "create",
         "-f", "-", "-o", "name"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    writer = threading.Thread(target=_write_and_close, args=(process.stdin, text), daemon=True)
    writer.start()
    for line in process.stdout:
        created[line.strip().rsplit("/", 1)[-1]] = time.monotonic()
    if process.wait() != 0 or len(created) != len(indexes):
        raise SystemExit(f"kubectl create made {len(created)} of {len(indexes)} models")
    return created


def _write_and_close(stream: IO[str], text: str) -> None:
    with stream:
        stream.write(text)


def ready_count(cluster: harness.Cluster) -> int:
    items = cluster.kubectl_json("get", "im", "-n", NAMESPACE)["items"]
    return sum(
        1
        for item in items
        for c in item.get("status", {}).get("conditions", [])
        if c["type"] == "Ready" and c["status"] == "True"
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--total", type=int, default=1000)
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="replicas of each of the first --models (0 leaves pods out, to see the operator "
        "without the scheduler and kwok competing for the CPU)",
    )
    parser.add_argument(
        "--keep-cluster",
        action="store_true",
        help="leave the cluster (specfleet-bench) running afterwards; by default it is deleted",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="first run the operator of this git revision the same way, and print the ratio",
    )
    args = parser.parse_args()
    try:
        return run(args)
    finally:
        if not args.keep_cluster:
            harness.delete(CLUSTER)


@dataclass(frozen=True)
class Figures:
    latencies: list[float]
    noop_writes: int
    rss_mb: float

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)

    def table(self, models: int, total: int) -> str:
        p50 = percentile(self.latencies, 0.5)
        return "\n".join(
            [
                f"{'models':>8} {'apply->Deployment p50':>22} {'p99':>8} {'max':>8}",
                f"{models:>8} {p50:>21.3f}s {self.p99:>7.3f}s {max(self.latencies):>7.3f}s",
                f"API writes over two resync rounds with nothing to do: {self.noop_writes}",
                f"operator resident memory with {total} models: {self.rss_mb:.0f} MiB "
                f"(mean {statistics.fmean(self.latencies):.3f}s apply->Deployment)",
            ]
        )


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """A temporary git worktree of `revision`."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "--detach", str(tree), revision], check=True)
        try:
            yield tree
        finally:
            subprocess.run([*git, "remove", "--force", str(tree)], check=False)


def run(args: argparse.Namespace) -> int:
    gpus_needed = args.models  # one GPU per model
    nodes_per_pool = -(-gpus_needed // 16) + 1  # two H100 pools of 8-GPU nodes, one spare
    print(f"cluster: {nodes_per_pool} nodes per pool for {gpus_needed} GPUs", flush=True)
    cluster = harness.up(CLUSTER, nodes_per_pool=nodes_per_pool, real_node=False)
    cluster.kubectl("apply", "--server-side", "-f", "-", input=crdgen.render_all())
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/inferencemodels.specfleet.dev"
    )
    baseline = None
    if args.baseline:
        with checkout(args.baseline) as tree:
            # The revision's source roots ahead of this tree's (installed editable).
            source = f"{tree / 'operator'}:{tree / 'runtime'}"
            print(f"== the operator at {args.baseline}", flush=True)
            baseline = scenario(cluster, args, {"PYTHONPATH": source})
        print(baseline.table(args.models, args.total), flush=True)
        print("== the operator of this tree", flush=True)
    figures = scenario(cluster, args, {})
    print()
    print(figures.table(args.models, args.total))
    last = (
        f"apply_to_deployment_p99_s={figures.p99:.3f} noop_writes={figures.noop_writes} "
        f"rss_mb_1000={figures.rss_mb:.0f}"
    )
    if baseline is not None:
        last += f" apply_to_deployment_p99_ratio={figures.p99 / baseline.p99:.3f}"
    print(last)
    return 0


def scenario(cluster: harness.Cluster, args: argparse.Namespace, env: dict[str, str]) -> Figures:
    """The three steps in a fresh namespace, with an operator started with `env`."""
    cluster.kubectl(
        "delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", timeout=900
    )
    cluster.kubectl("create", "namespace", NAMESPACE)

    with tempfile.TemporaryDirectory() as tmp:
        operator = Operator(cluster, NAMESPACE, Path(tmp) / "operator.log", RESYNC_SECONDS, env=env)
        operator.start()
        try:
            watch = DeploymentWatch(cluster)
            time.sleep(1)  # let the watch establish before the first create
            started = time.monotonic()
            created = create_all(cluster, range(args.models), replicas=args.replicas)
            print(f"created {len(created)} models in {time.monotonic() - started:.1f}s", flush=True)
            harness.wait_for(
                lambda: len(watch.seen) >= args.models, timeout=600, what="every Deployment"
            )
            watch.stop()
            latencies = [watch.seen[name] - at for name, at in created.items()]

            harness.wait_for(
                lambda: ready_count(cluster) >= args.models,
                timeout=900,
                what="every model Ready",
                interval=5,
            )
            unchanged = "specfleet_operator_reconcile_seconds_count"

            def quiet_passes() -> float:
                return operator.metric(unchanged, outcome="unchanged")

            # Settle: one full round in which nothing changed, then measure two more.
            base = quiet_passes()
            harness.wait_for(
                lambda: quiet_passes() >= base + args.models,
                timeout=600,
                what="a quiet resync round",
                interval=2,
            )
            writes = operator.metric("specfleet_operator_api_writes_total")
            base = quiet_passes()
            harness.wait_for(
                lambda: quiet_passes() >= base + 2 * args.models,
                timeout=600,
                what="two quiet resync rounds",
                interval=2,
            )
            noop_writes = int(operator.metric("specfleet_operator_api_writes_total") - writes)

            create_all(cluster, range(args.models, args.total), replicas=0)
            harness.wait_for(
                lambda: ready_count(cluster) >= args.total,
                timeout=900,
                what=f"all {args.total} models Ready",
                interval=5,
            )
            rss = rss_mb(operator.pid)
        finally:
            operator.stop()
    return Figures(latencies, noop_writes, rss)


if __name__ == "__main__":
    sys.exit(main())

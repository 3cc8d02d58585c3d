"""`e2e/cluster`, the local control plane from the command line (see USAGE): a thin layer
over e2e/harness.py, which does the work, e2e/prometheus_operator.py (`up --prometheus`) and
e2e/s3.py (`up --s3`: the S3-compatible store, SeaweedFS, only when asked for; `down` stops it
and removes its data).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from e2e import harness, prometheus_operator, s3

USAGE = """\
e2e/cluster [--name NAME] up [--nodes-per-pool N] [--prometheus] [--s3] [--no-real-node]
e2e/cluster [--name NAME] down | status | kubeconfig
e2e/cluster place FILE...             (print the manifests placed on the real node)
e2e/cluster [--name NAME] kubectl ARGS... | helm ARGS...   (the pinned tools, on this cluster)

The cluster name defaults to $SPECFLEET_E2E_CLUSTER, else specfleet-e2e."""


def passthrough(tool: str, name: str, args: Sequence[str]) -> int:
    """Run the pinned kubectl or helm against cluster ``name`` with the caller's stdio."""
    cluster = harness.Cluster(name, harness.bin_dir())
    if not cluster.kubeconfig.exists():
        raise harness.HarnessError(
            f"cluster {name} is not running: run e2e/cluster up --name {name}"
        )
    argv = [str(cluster.bin_dir / tool), f"--kubeconfig={cluster.kubeconfig}", *args]
    return subprocess.run(argv, env=cluster.env(), check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    name = os.environ.get("SPECFLEET_E2E_CLUSTER") or harness.DEFAULT_CLUSTER_NAME
    if len(args) >= 2 and args[0] == "--name":
        name, args = args[1], args[2:]
    if args and args[0] in ("kubectl", "helm"):
        # Everything after the tool's name is the tool's, flags included.
        try:
            return passthrough(args[0], name, args[1:])
        except harness.HarnessError as exc:
            print(f"e2e/cluster {args[0]}: {exc}", file=sys.stderr)
            return 1
    parser = argparse.ArgumentParser(prog="e2e/cluster", usage=USAGE)
    if args and args[0] == "place":
        for path in args[1:]:
            for document in yaml.safe_load_all(Path(path).read_text()):
                if document:
                    print("---")
                    print(
                        yaml.safe_dump(harness.on_the_real_node(document), sort_keys=False), end=""
                    )
        return 0
    parser.add_argument("command", choices=["up", "down", "status", "kubeconfig"])
    parser.add_argument("--name", default=name, help="cluster name")
    parser.add_argument("--nodes-per-pool", type=int, default=None, help="nodes in every pool")
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="also the Prometheus Operator, and a Prometheus it runs on the real node that "
        "takes every namespace's PodMonitors, ServiceMonitors and PrometheusRules",
    )
    parser.add_argument(
        "--s3",
        action="store_true",
        help="also an S3-compatible store (SeaweedFS) on this host, with static keys and a "
        "bucket, that the real node's pods reach on its bridge",
    )
    parser.add_argument(
        "--no-real-node",
        dest="real_node",
        action="store_false",
        help="only kwok's fake nodes: no kubelet, containerd, kube-proxy or CoreDNS",
    )
    opts = parser.parse_args(args)
    try:
        if opts.command == "up":
            cluster = harness.up(
                opts.name, nodes_per_pool=opts.nodes_per_pool, real_node=opts.real_node
            )
            print(f"kubeconfig: {cluster.kubeconfig}")
            print(f"export KUBECONFIG={cluster.kubeconfig} PATH={cluster.bin_dir}:$PATH")
            if opts.prometheus:
                url = prometheus_operator.serve_cluster(cluster, real_node=opts.real_node)
                print(f"prometheus: {url} (in pods also {prometheus_operator.IN_CLUSTER_URL})")
            if opts.s3:
                store = s3.ensure(cluster)
                print(f"s3: {store.endpoint} (in pods {store.pod_endpoint})")
                print(f"s3 bucket: {store.bucket}")
                keys = f"AWS_ACCESS_KEY_ID={store.access_key}"
                print(f"s3 keys: {keys} AWS_SECRET_ACCESS_KEY={store.secret_key}")
            return 0
        if opts.command == "down":
            if not harness.delete(opts.name):
                print(f"cluster {opts.name}: not running")
            return 0
        if opts.command == "kubeconfig":
            kubeconfig = harness.Cluster(opts.name, harness.bin_dir()).kubeconfig
            print(kubeconfig)
            if not kubeconfig.exists():
                print(f"cluster {opts.name} is not running: run e2e/cluster up", file=sys.stderr)
                return 1
            return 0
        report, healthy = harness.format_status(opts.name)
        print(report)
        return 0 if healthy else 1
    except (harness.HarnessError, TimeoutError) as exc:
        print(f"e2e/cluster {opts.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

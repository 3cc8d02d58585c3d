"""The `specfleet` command: the entry point people and pipelines call.

Each subcommand parses its arguments and delegates at once; the work lives in the modules it
names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from specfleet import api, crdgen, review
from specfleet import plan as planner
from specfleet.api.inferencemodel import InferenceModel
from specfleet.api.routingpolicy import RoutingPolicy
from specfleet.config import Config
from specfleet.render import inferencemodel as render_model
from specfleet.render import routingpolicy as render_policy


def _crds(args: argparse.Namespace) -> int:
    written: list[Path] = []
    if args.write:
        written += crdgen.write(Path(args.write))
    if args.chart:
        written += crdgen.write_chart(Path(args.chart))
    for path in written:
        print(f"wrote {path}")
    if not written:
        sys.stdout.write(crdgen.render_all())
    return 0


def _read_resources(paths: Sequence[str]) -> list[api.Resource]:
    """The specfleet resources in manifest files (`-` for standard input), in order; raises
    ManifestError."""
    found: list[api.Resource] = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        try:
            found.extend(api.load(text))
        except api.ManifestError as exc:
            raise api.ManifestError(f"{path}: {exc}") from exc
    return found


def _read_models(paths: Sequence[str]) -> list[InferenceModel]:
    """The InferenceModels in manifest files (`-` for standard input); raises ManifestError."""
    return [r for r in _read_resources(paths) if isinstance(r, InferenceModel)]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the router's configuration file) as literal blocks, readable in a
    review."""


_Dumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)


def _plan(args: argparse.Namespace) -> int:
    plans = [planner.plan(m.metadata.name, m.spec) for m in _read_models(args.files)]
    if args.output == "json":
        print(json.dumps([p.summary() for p in plans], indent=2))
    else:
        print(_plan_table(plans))
    return 0 if all(p.fits for p in plans) else 1


def _render(args: argparse.Namespace) -> int:
    config = Config.from_env()
    documents: list[str] = []
    failed = False
    for resource in _read_resources(args.files):
        if isinstance(resource, RoutingPolicy):
            # Offline, nothing is known of the models' readiness: see render.routingpolicy.
            manifests = render_policy.manifests(resource, config, models=None)
        else:
            plan = planner.plan(resource.metadata.name, resource.spec)
            if not plan.fits:
                failed = True
                for message in plan.errors:
                    print(f"InferenceModel {resource.metadata.name}: {message}", file=sys.stderr)
                continue
            manifests = render_model.manifests(resource, plan, config)
        for manifest in manifests:
            documents.append(yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100))
    sys.stdout.write("---\n".join(documents))
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    # Importing the handlers registers them with kopf; only the operator wants that.
    import kopf  # noqa: PLC0415
    import prometheus_client  # noqa: PLC0415

    import specfleet.handlers  # noqa: F401, PLC0415
    from specfleet import engine  # noqa: PLC0415

    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port, addr=args.metrics_address)
    kopf.configure(verbose=args.verbose)
    settings = kopf.OperatorSettings()
    # Watching named namespaces needs nothing cluster-scoped, so the Helm chart grants Roles
    # only: tell kopf not to observe namespaces and CRDs (it would warn on every start).
    settings.scanning.disabled = bool(args.namespace)
    # kopf lets the highest priority act. The earlier an operator started, the higher its
    # priority: a replica that restarts never preempts the one that is acting, so the active
    # replica changes only when it goes away. Milliseconds keep two replicas that start
    # together apart (equal priorities would make kopf pause both).
    priority = -time.time_ns() // 1_000_000
    peering = None
    if args.peering:
        first = args.namespace[0] if args.namespace else None
        peering = engine.Peering(args.peering, priority, first)
    kopf.run(
        memo=kopf.Memo(engine=engine.Engine.from_config(Config.from_env(), peering)),
        settings=settings,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=not args.peering,
        peering_name=args.peering,
        priority=priority if args.peering else None,
        liveness_endpoint=f"http://{args.metrics_address}:{args.health_port}/healthz"
        if args.health_port
        else None,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    # The demo drives the local control plane of a source checkout (e2e/, scripts/), which an
    # installed wheel does not carry.
    script = Path(__file__).resolve().parents[2] / "scripts" / "demo"
    if not script.is_file():
        print(
            "specfleet demo: runs from a source checkout of specfleet (clone it, then `make "
            "demo`); this installation has no scripts/demo",
            file=sys.stderr,
        )
        return 2
    env = {**os.environ, "VENV": sys.prefix}
    os.execve(script, [str(script), *(["down"] if args.down else [])], env)


def _review(args: argparse.Namespace) -> int:
    if args.from_file:
        model = review.read_file(Path(args.from_file))
    elif args.name:
        model = review.read_cluster(args.name, args.namespace)
    else:
        raise review.ReviewError("name the InferenceModel, or give --from-file")
    recorded = review.decisions(model)
    target = model.spec.autoscaling.p99_target
    target_seconds = target.seconds if target else None
    if args.plot:
        review.plot(
            recorded, Path(args.plot), title=f"InferenceModel {model.metadata.name}",
            p99_target=target_seconds,
        )  # fmt: skip
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.replay:
        autoscaling, batching = review.load_policy(Path(args.replay).read_text(), model.spec)
        replayed = review.replay(recorded, model, autoscaling, batching)
        found = review.differences(recorded, replayed)
        if args.json:
            print(review.as_json(replayed))
        else:
            print(review.differences_table(found, len(recorded)))
        return 0
    print(review.as_json(recorded) if args.json else review.table(recorded, target_seconds))
    return 0


def _plan_table(plans: list[planner.Plan]) -> str:
    header = ("NAME", "GPU", "GPUS", "QUANT", "WEIGHTS", "DRAFT", "KV", "USABLE", "FITS")
    rows = [header]
    for p in plans:
        s = p.summary()
        rows.append(
            (
                p.name,
                p.gpu.product,
                str(p.tensor_parallel_size),
                p.quantization,
                f"{s['weightsGiB']}Gi",
                f"{s['draftWeightsGiB']}Gi",
                f"{s['kvCacheGiB']}Gi",
                f"{s['usableGiB']}Gi",
                "yes" if p.fits else "NO",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    for p in plans:
        if p.schedule:
            lines.append(f"{p.name}: {_schedule_line(p)}")
        lines.extend(f"{p.name}: {message}" for message in p.messages)
    return "\n".join(lines)


def _schedule_line(p: planner.Plan) -> str:
    assumed = (
        f" for acceptance {p.schedule_acceptance:.2f}" if p.schedule_acceptance is not None else ""
    )
    ranges = ", ".join(
        f"{r.first}-{r.last} K={r.k}"
        + (f" (x{r.speedup_first:.2f}..x{r.speedup_last:.2f})" if r.k else "")
        for r in p.schedule
    )
    return f"speculation schedule{assumed}: {ranges}"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="specfleet",
        description="A Kubernetes operator for LLM fleets: speculative decoding, FP8, and "
        "batch limits tuned from live metrics.",
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crds = commands.add_parser(
        "crds",
        help="print the CustomResourceDefinitions",
        description="Print the CRDs generated from specfleet's API models, as multi-document "
        "YAML (pipe it to `kubectl apply -f -`), or write one file per CRD.",
    )
    crds.add_argument("--write", metavar="DIR", help="write one file per CRD into DIR")
    crds.add_argument(
        "--chart",
        metavar="CHART",
        help="also write the Helm chart's copy into CHART/crds, with kopf's peering CRDs",
    )
    crds.set_defaults(run=_crds)

    plan = commands.add_parser(
        "plan",
        help="size the GPUs of every InferenceModel in manifest files",
        description="Print the GPU plan of every InferenceModel in the files: tensor-parallel "
        "size, precision and memory, with what to change when a spec cannot fit. Exits 1 when "
        "one does not fit.",
    )
    plan.add_argument("files", metavar="FILE", nargs="+", help="YAML manifests; - for stdin")
    plan.add_argument("--output", "-o", choices=("table", "json"), default="table")
    plan.set_defaults(run=_plan)

    render = commands.add_parser(
        "render",
        help="print the Kubernetes objects the operator makes for manifest files",
        description="Print, without a cluster, the objects the operator would apply for every "
        "InferenceModel in the files (Deployment, Service, gate ConfigMap, "
        "PodDisruptionBudget) and every RoutingPolicy (router Deployment, Service and "
        "ConfigMap; readiness is known only in the cluster, so every backend is rendered as "
        "not ready), for code review and GitOps diffs. Images and other operator settings come "
        "from SPECFLEET_* variables as in the operator. Exits 1 when a spec cannot be planned.",
    )
    render.add_argument("files", metavar="FILE", nargs="+", help="YAML manifests; - for stdin")
    render.set_defaults(run=_render)

    rev = commands.add_parser(
        "review",
        help="show an InferenceModel's autoscaling decisions",
        description="Print the autoscaling decisions recorded in an InferenceModel's status "
        "(the inputs, the rule and whether it was applied), plot them, or replay them under "
        "another policy to see where it would have decided differently.",
    )
    rev.add_argument("name", metavar="NAME", nargs="?", help="the InferenceModel")
    rev.add_argument("--namespace", "-n", metavar="NS", help="its namespace")
    rev.add_argument(
        "--from-file",
        metavar="STATUS.yaml",
        help="read the InferenceModel (with status) from a file instead of the cluster",
    )
    rev.add_argument("--plot", metavar="FILE.png", help="draw acceptance, P99 and the limit")
    rev.add_argument(
        "--replay",
        metavar="POLICY.yaml",
        help="re-run the recorded observations under the autoscaling: and batching: of this "
        "file and show the decisions that differ",
    )
    rev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rev.set_defaults(run=_review)

    demo = commands.add_parser(
        "demo",
        help="run the demo on a local control plane",
        description="Bring up a local control plane with simulated H100 node pools and one "
        "real node, Prometheus, the operator installed with its chart, and the examples served "
        "by real pods; then lower the draft's acceptance and show the batch limit following. "
        "Needs a source checkout, run as root (`make demo` sets it up first).",
    )
    demo.add_argument("--down", action="store_true", help="stop the demo and its cluster")
    demo.set_defaults(run=_demo)

    run = commands.add_parser(
        "run",
        help="run the operator",
        description="Run the operator against the cluster of the current kubeconfig (or the "
        "in-cluster service account). Settings come from SPECFLEET_* variables.",
    )
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        metavar="NS",
        help="watch only this namespace (repeatable); default: every namespace",
    )
    run.add_argument("--metrics-port", type=int, default=8080, help="0 turns metrics off")
    run.add_argument("--health-port", type=int, default=8081, help="0 turns /healthz off")
    run.add_argument("--metrics-address", default="0.0.0.0", help="where both ports listen")
    run.add_argument(
        "--peering",
        metavar="NAME",
        help="high availability: of the operators sharing the kopf peering object NAME (a "
        "ClusterKopfPeering, or a KopfPeering in each watched namespace; the Helm chart makes "
        "it), only the longest-running one acts; another takes over when it stops. Default: "
        "standalone, as the only operator",
    )
    run.add_argument("--verbose", "-v", action="store_true", help="log every handler run")
    run.set_defaults(run=_run)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except (api.ManifestError, review.ReviewError, OSError) as exc:
        print(f"specfleet {args.command}: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())

"""The `specfleet` command: the entry point people and pipelines call.

Each subcommand parses its arguments and delegates at once; the work lives in the modules it
names.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import yaml

from specfleet import api, capturestore, crdgen, kube, review
from specfleet import plan as planner
from specfleet.api import learning as learning_api
from specfleet.api import storelayout
from specfleet.api.capture import CaptureSpec
from specfleet.api.common import ObjectMeta, duration_seconds
from specfleet.api.inferencemodel import InferenceModel
from specfleet.api.routingpolicy import RoutingPolicy, RoutingPolicySpec
from specfleet.config import Config
from specfleet.learn import LearnError, labelling, labels, labelstore, router_learn
from specfleet.learn.policy import Policy
from specfleet.render import inferencemodel as render_model
from specfleet.render import routingpolicy as render_policy
from specfleet.routing import learned


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
    # The earlier an operator started, the higher its priority (engine.peering_priority).
    priority = engine.peering_priority(time.time_ns(), random.randrange(engine.TIEBREAKS))
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


POLICY_KINDS = ("rp", "routingpolicy", "routingpolicies")
MODEL_KINDS = ("im", "inferencemodel", "inferencemodels")


def _review(args: argparse.Namespace) -> int:
    if args.from_file:
        resource = review.read_any(Path(args.from_file))
    elif args.name:
        kind, slash, name = args.name.rpartition("/")
        if slash and kind.lower() in POLICY_KINDS:
            resource = review.read_policy(name, args.namespace)
        elif not slash or kind.lower() in MODEL_KINDS:
            resource = review.read_cluster(name, args.namespace)
        else:
            raise review.ReviewError(
                f"{args.name}: name an InferenceModel (NAME or im/NAME) or a RoutingPolicy "
                "(rp/NAME)"
            )
    else:
        raise review.ReviewError("name the InferenceModel (or rp/NAME), or give --from-file")
    if isinstance(resource, RoutingPolicy):
        return _review_policy(args, resource)
    model = resource
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


def _review_policy(args: argparse.Namespace, policy: RoutingPolicy) -> int:
    """A RoutingPolicy's promotion decisions (status.learning), or their replay."""
    from specfleet.learn import review as promotions  # noqa: PLC0415

    if args.plot:
        raise review.ReviewError("--plot draws an InferenceModel's autoscaling, not a policy's")
    name = f"RoutingPolicy {policy.metadata.name}"
    recorded = (
        list(policy.status.learning.decisions) if policy.status and policy.status.learning else []
    )
    if policy.spec.learning is None and not recorded:
        raise review.ReviewError(f"{name} does not learn (no spec.learning): nothing to review")
    if args.replay:
        own = policy.spec.learning or learning_api.LearningSpec()
        wanted = promotions.load_learning(Path(args.replay).read_text(), own)
        replayed = promotions.replay(recorded, wanted)
        if args.json:
            print(json.dumps([promotion_json(d) for d in replayed], indent=2))
        else:
            found = promotions.differences(recorded, replayed)
            print(promotions.differences_table(found, len(recorded)))
        return 0
    if args.json:
        print(json.dumps([d.model_dump(by_alias=True, mode="json") for d in recorded], indent=2))
        return 0
    in_force = (
        policy.status.learning.in_force if policy.status and policy.status.learning else "heuristic"
    )
    print(f"{name}: in force {in_force}")
    print(promotions.table(recorded) if recorded else "no promotion decided yet")
    return 0


def promotion_json(decision: Any) -> dict[str, Any]:
    from specfleet.learn import promotion  # noqa: PLC0415

    found: dict[str, Any] = promotion.as_json(decision)
    return found


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


# specfleet capture: what a resource's pods captured, read back from its store.

TERMINATION_LOG = Path("/dev/termination-log")
"""Where a Job's pod leaves its last words; the operator reads retention's report there."""
_KINDS: dict[str, capturestore.Kind] = {
    "routingpolicy": "RoutingPolicy",
    "routingpolicies": "RoutingPolicy",
    "rp": "RoutingPolicy",
    "inferencemodel": "InferenceModel",
    "inferencemodels": "InferenceModel",
    "im": "InferenceModel",
}
_API_VERSION = "specfleet.dev/v1alpha1"


class _Cluster(Protocol):
    def get_path(
        self, path: str, what: str, query: list[tuple[str, str]] | None = None
    ) -> dict[str, Any] | None: ...


def _cluster() -> _Cluster:
    """The cluster of the current kubeconfig (or the pod's service account)."""
    return kube.Kube()


def _resource_ref(text: str) -> tuple[capturestore.Kind, str]:
    """(kind, name) of `KIND/NAME`, KIND as kubectl takes it (`rp`, `routingpolicy`, `im`)."""
    kind, _, name = text.partition("/")
    found = _KINDS.get(kind.lower().removesuffix(".specfleet.dev"))
    if found is None or not name:
        raise capturestore.CaptureError(
            f"{text!r}: name the resource as KIND/NAME, KIND one of routingpolicy (rp) or "
            "inferencemodel (im)"
        )
    return found, name


def _moment(text: str | None, flag: str, now: datetime) -> datetime | None:
    """A time given as a duration before `now` (`2h`, `30m`) or in ISO 8601 (UTC unless it
    says otherwise)."""
    if text is None:
        return None
    try:
        return now - timedelta(seconds=duration_seconds(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise capturestore.CaptureError(
            f"{flag} {text!r}: neither a duration before now (2h, 30m) nor an ISO 8601 time "
            "(2026-12-07T06:00:00Z)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _read_cluster_store(
    args: argparse.Namespace,
) -> tuple[capturestore.StoreConfig, capturestore.Store, CaptureSpec]:
    """The resource's store as its spec.capture says, with the credentials its pods use."""
    kind, name = _resource_ref(args.resource)
    namespace = args.namespace or "default"
    resource = f"{kind} {namespace}/{name}"
    cluster = _cluster()
    try:
        body = cluster.get_path(
            kube.object_path(_API_VERSION, kind, namespace, name), f"reading {resource}"
        )
    except kube.ApiError as exc:
        raise capturestore.CaptureError(str(exc)) from exc
    if body is None:
        raise capturestore.CaptureError(f"{resource} not found")
    found = (body.get("spec") or {}).get("capture")
    if found is None:
        raise capturestore.CaptureError(
            f"{resource} has no spec.capture: it captures nothing (set spec.capture to start)"
        )
    try:
        spec = CaptureSpec.model_validate(found)
    except ValueError as exc:
        raise capturestore.CaptureError(f"{resource}: spec.capture: {exc}") from exc
    location = capturestore.location(spec.store, args.directory, resource)
    config = capturestore.StoreConfig(kind=kind, namespace=namespace, name=name, store=location)
    secret = spec.store.s3.credentials_secret if spec.store.s3 else None
    if location.s3 is None or secret is None:
        return config, capturestore.open_store(location), spec
    credentials = _secret_credentials(cluster, namespace, secret)
    store = capturestore.open_store(
        location, credentials=credentials, credentials_from=f"Secret {namespace}/{secret}"
    )
    return config, store, spec


def _secret_credentials(cluster: _Cluster, namespace: str, secret: str) -> tuple[str, str]:
    """The S3 credentials in the store's credentialsSecret, as the pods get them."""
    what = f"Secret {namespace}/{secret} (spec.capture.store.s3.credentialsSecret)"
    try:
        body = cluster.get_path(f"/api/v1/namespaces/{namespace}/secrets/{secret}", what)
    except kube.ApiError as exc:
        raise capturestore.CaptureError(
            f"{exc}; reading the store's credentials needs get on that Secret, or run where "
            "they are in the environment with --store-config"
        ) from exc
    if body is None:
        raise capturestore.CaptureError(f"{what} not found")
    data = body.get("data") or {}
    missing = [key for key in api.capture.S3_CREDENTIAL_ENV if key not in data]
    if missing:
        raise capturestore.CaptureError(f"{what} has no key {', '.join(missing)}")
    access_key, secret_key = (
        base64.b64decode(data[key]).decode() for key in api.capture.S3_CREDENTIAL_ENV
    )
    return access_key, secret_key


def _capture_store(
    args: argparse.Namespace,
) -> tuple[capturestore.StoreConfig, capturestore.Store, CaptureSpec | None]:
    """The resource and its store: from --store-config (credentials from the environment), or
    from the cluster."""
    if args.store_config:
        if args.resource or args.directory:
            raise capturestore.CaptureError(
                "--store-config names the resource and its store: give no KIND/NAME or "
                "--directory with it"
            )
        text = Path(args.store_config).read_text()
        config = capturestore.load_store_config(text, args.store_config)
        return config, capturestore.open_store(config.store), None
    if not args.resource:
        raise capturestore.CaptureError(
            "name the resource as KIND/NAME (such as rp/assistant), or give --store-config"
        )
    return _read_cluster_store(args)


def _capture_ls(args: argparse.Namespace) -> int:
    config, store, _ = _capture_store(args)
    now = datetime.now(UTC)
    since, until = _moment(args.since, "--since", now), _moment(args.until, "--until", now)
    # Whole hours: the table's rows.
    first, end = capturestore.whole_hours(since, until)
    batches = capturestore.list_batches(store, capturestore.root(config), first, end)
    if not batches:
        print(
            f"{config.kind} {config.namespace}/{config.name}: nothing captured"
            f"{' in that time' if since or until else ''} ({store!r})",
            file=sys.stderr,
        )
        return 0
    rows = capturestore.hour_rows(batches)
    if config.kind == "RoutingPolicy":
        capturestore.fill_routes(store, batches, rows)
    else:
        for row in rows:
            row.models.add(config.name)
    print(_capture_table(rows))
    return 0


def _capture_table(rows: Sequence[capturestore.HourRow]) -> str:
    header = ("HOUR", "TIER", "MODEL", "BATCHES", "RECORDS", "BYTES")
    table = [header]
    for row in rows:
        table.append(
            (
                f"{row.hour:%Y-%m-%d %H:00}",
                ",".join(sorted(row.tiers)) or "-",
                ",".join(sorted(row.models)) or "-",
                str(row.batches),
                str(row.records),
                str(row.bytes),
            )
        )
    table.append(
        (
            "TOTAL",
            "",
            "",
            str(sum(r.batches for r in rows)),
            str(sum(r.records for r in rows)),
            str(sum(r.bytes for r in rows)),
        )
    )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i >= 3 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    )


def _capture_show(args: argparse.Namespace) -> int:
    config, store, _ = _capture_store(args)
    batches = capturestore.list_batches(store, capturestore.root(config))
    if args.id is not None:
        record = capturestore.find(store, batches, args.id)
        if record is None:
            print(
                f"specfleet capture show: no record {args.id!r} in "
                f"{config.kind} {config.namespace}/{config.name}'s store ({store!r})",
                file=sys.stderr,
            )
            return 1
        found = [record]
    else:
        found = capturestore.last(store, batches, args.last)
    for record in found:
        print(json.dumps(record, indent=2, ensure_ascii=False))
    return 0


def _capture_export(args: argparse.Namespace) -> int:
    config, store, _ = _capture_store(args)
    now = datetime.now(UTC)
    since, until = _moment(args.since, "--since", now), _moment(args.until, "--until", now)
    # A batch holds records from before it was written, never after: a slice's last records
    # may be in a batch written a little after it ends.
    batches = capturestore.list_batches(
        store, capturestore.root(config), since, until + capturestore.LATE if until else None
    )
    wanted = (
        record
        for record in capturestore.records(store, batches)
        if capturestore.matches(
            record[1], since=since, until=until, tier=args.tier, model=args.model
        )
    )
    if args.output:
        with Path(args.output).open("wb") as out:
            written = _write_lines(wanted, out, args.limit)
        print(f"wrote {written} records to {args.output}", file=sys.stderr)
    else:
        sys.stdout.flush()
        written = _write_lines(wanted, sys.stdout.buffer, args.limit)
        sys.stdout.buffer.flush()
    return 0


def _write_lines(
    found: Iterable[tuple[bytes, capturestore.Record]], out: BinaryIO, limit: int | None
) -> int:
    written = 0
    for line, _ in found:
        if limit is not None and written >= limit:
            break
        out.write(line + b"\n")
        written += 1
    return written


def _capture_retain(args: argparse.Namespace) -> int:
    config, store, spec = _capture_store(args)
    if args.retention is not None:
        try:
            retention = timedelta(seconds=duration_seconds(args.retention))
        except ValueError as exc:
            raise capturestore.CaptureError(f"--retention: {exc}") from exc
    elif spec is not None:
        retention = spec.retention.delta
    else:
        raise capturestore.CaptureError("--retention is needed with --store-config (such as 720h)")
    report = capturestore.retain(store, capturestore.root(config), retention, datetime.now(UTC))
    line = report.line()
    print(line)
    if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
        TERMINATION_LOG.write_text(line)
    return 0


def _capture_parser(commands: Any) -> None:
    capture = commands.add_parser(
        "capture",
        help="read back what a resource's spec.capture kept",
        description="List, show and export the records a RoutingPolicy's or InferenceModel's "
        "pods captured, and apply retention. The store is found from the resource in the "
        "cluster (spec.capture.store, and its credentialsSecret read through the API), or "
        "from --store-config with S3 credentials in the environment.",
    )
    actions = capture.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(action: argparse.ArgumentParser) -> None:
        action.add_argument(
            "resource",
            metavar="KIND/NAME",
            nargs="?",
            help="rp/NAME (routingpolicy) or im/NAME (inferencemodel)",
        )
        action.add_argument("--namespace", "-n", metavar="NS", help="default: default")
        action.add_argument(
            "--directory",
            metavar="PATH",
            help="read the store from PATH, where its volume is mounted (a PVC store cannot "
            "be read from outside the cluster)",
        )
        action.add_argument(
            "--store-config",
            metavar="FILE",
            help="the resource and its store in a JSON/YAML file ({kind, namespace, name, "
            "store: {s3: {bucket, prefix, endpoint, region}} or {directory: PATH}}), S3 "
            "credentials from the environment; no cluster access",
        )

    def times(action: argparse.ArgumentParser) -> None:
        action.add_argument("--since", metavar="T", help="2h (before now) or ISO 8601")
        action.add_argument("--until", metavar="T", help="2h (before now) or ISO 8601")

    ls = actions.add_parser(
        "ls",
        help="what a resource captured, by hour",
        description="The resource's batches by hour: tiers and models, batches, records and "
        "compressed bytes, with totals. A RoutingPolicy's records are read for their tiers "
        "and models (narrow with --since); counts and bytes need no record read.",
    )
    common(ls)
    times(ls)
    ls.set_defaults(run=_capture_ls)

    show = actions.add_parser(
        "show", help="records as pretty JSON", description="Print records as pretty JSON."
    )
    common(show)
    which = show.add_mutually_exclusive_group()
    which.add_argument("--id", metavar="ID", help="the record with this id")
    which.add_argument(
        "--last", metavar="N", type=int, default=1, help="the N newest records (default 1)"
    )
    show.set_defaults(run=_capture_show)

    export = actions.add_parser(
        "export",
        help="records as JSON lines, as stored",
        description="Write the records, one per line exactly as stored, oldest batch first: "
        "the format training and evaluation take.",
    )
    common(export)
    times(export)
    export.add_argument("--tier", metavar="X", help="only records routed to this tier")
    export.add_argument("--model", metavar="X", help="only records routed to this model")
    export.add_argument("--limit", metavar="N", type=int, help="at most N records")
    export.add_argument("--output", "-o", metavar="FILE", help="default: standard output")
    export.set_defaults(run=_capture_export)

    retain = actions.add_parser(
        "retain",
        help="delete the hours older than the retention",
        description="Delete the batches whose hour ended more than the retention ago, and "
        "print a report as one JSON line (also the pod's termination message, when "
        "/dev/termination-log is writable).",
    )
    common(retain)
    retain.add_argument(
        "--retention",
        metavar="DURATION",
        help="such as 720h; default: the resource's spec.capture.retention",
    )
    retain.set_defaults(run=_capture_retain)


# specfleet router: labelled requests, and a classifier trained and judged on them.


def _router_policy(args: argparse.Namespace) -> tuple[RoutingPolicy, bool]:
    """The RoutingPolicy --policy names: a manifest file if one is there, else a policy in the
    cluster (-n, default "default"); and whether it came from the cluster."""
    text: str = args.policy
    if Path(text).is_file():
        found = [r for r in _read_resources([text]) if isinstance(r, RoutingPolicy)]
        if len(found) != 1:
            raise LearnError(
                f"--policy {text}: the file holds {len(found)} RoutingPolicies; give a file "
                "with exactly one, or the name of one in the cluster"
            )
        return found[0], False
    if "/" in text or text.endswith((".yaml", ".yml", ".json")):
        raise LearnError(f"--policy {text}: no such file (a policy in the cluster is a name)")
    namespace = args.namespace or "default"
    what = f"RoutingPolicy {namespace}/{text}"
    try:
        body = _cluster().get_path(
            kube.object_path(_API_VERSION, "RoutingPolicy", namespace, text), f"reading {what}"
        )
    except kube.ApiError as exc:
        raise LearnError(f"--policy {text}: {exc}") from exc
    if body is None:
        raise LearnError(
            f"--policy {text}: no file of that name, and {what} is not in the cluster "
            "(another namespace? give -n)"
        )
    try:
        spec = RoutingPolicySpec.model_validate(body.get("spec"))
    except ValueError as exc:
        raise LearnError(f"{what}: its spec is not a RoutingPolicy's: {exc}") from exc
    return RoutingPolicy(metadata=ObjectMeta(name=text, namespace=namespace), spec=spec), True


def _read_labels(args: argparse.Namespace, policy: Policy) -> labels.LabelSet:
    name = "standard input" if args.data == "-" else args.data
    if args.data == "-":
        lines = sys.stdin.buffer.read().splitlines()
    else:
        lines = Path(args.data).read_bytes().splitlines()
    found = labels.read(lines, policy.tiers, skip_invalid=args.skip_invalid, name=name)
    if found.skipped:
        print(
            f"left out {len(found.skipped)} invalid lines of {name} (--skip-invalid), the "
            f"first: {found.skipped[0]}",
            file=sys.stderr,
        )
    return found


def _learning() -> Any:
    """specfleet.learn.router_train, which needs the learn extra."""
    try:
        from specfleet.learn import router_train  # noqa: PLC0415 - scikit-learn is optional
    except ImportError as exc:
        raise LearnError(
            f"training needs scikit-learn ({exc}): pip install 'specfleet[learn]'"
        ) from exc
    return router_train


def _router_train(args: argparse.Namespace) -> int:
    router_train = _learning()
    resource, _ = _router_policy(args)
    policy = Policy.of(resource.spec)
    data = _read_labels(args, policy)
    # SOURCE_DATE_EPOCH, as reproducible builds use it: the same labels, the same file.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    trained_at = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    trained = router_train.train(
        data, policy, trained_at=trained_at, quality_target=args.quality_target
    )
    for warning in trained.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    artifact, report = router_train.write(trained, Path(args.out))
    figures = trained.report
    training = trained.artifact.training
    held_out = training.held_out.count if training.held_out else 0
    print(
        f"trained on {training.count} of {len(data.examples)} labelled requests "
        f"({', '.join(f'{t} {n}' for t, n in training.labels.items())}), "
        f"{figures['vocabulary']} terms; {held_out} held out for evaluation"
    )
    for note in policy.notes():
        print(f"note: {note}")
    cv, heuristic = figures["crossValidated"], figures["heuristic"]
    print(
        f"threshold {figures['threshold']:.4g} for quality target {figures['qualityTarget']}: "
        f"{figures['folds']}-fold cross-validated quality {cv['quality']:.3f}, cost "
        f"{cv['cost']:.3f} (the heuristic on the same requests: quality "
        f"{heuristic['quality']:.3f}, cost {heuristic['cost']:.3f})"
    )
    print(f"wrote {artifact} and {report}")
    return 0


def _router_evaluate(args: argparse.Namespace) -> int:
    from specfleet.learn import router_eval  # noqa: PLC0415

    resource, _ = _router_policy(args)
    policy = Policy.of(resource.spec)
    data = _read_labels(args, policy)
    classifier = learned.load(Path(args.classifier)) if args.classifier else None
    if classifier is None:
        _learning()
    print(router_eval.evaluate(data, policy, classifier).report())
    return 0


def _router_classifier(path: str, flag: str, fix: str) -> learned.Classifier:
    try:
        return learned.load(Path(path))
    except learned.ArtifactError as exc:
        raise LearnError(f"{flag} {path}: {exc}; {fix}") from None


def _router_promote(args: argparse.Namespace) -> int:
    from specfleet.learn import promotion, router_eval, split  # noqa: PLC0415

    objective = promotion.Objective(
        quality_target=args.quality_target,
        quality_tolerance=args.quality_tolerance,
        cost_margin=args.cost_margin,
    )
    resource, _ = _router_policy(args)
    policy = Policy.of(resource.spec)
    candidate = _router_classifier(
        args.candidate, "--candidate", "train it again with specfleet router train"
    )
    held = candidate.artifact.training.held_out
    if held is None or (held.rule, held.share) != (split.RULE, split.SHARE):
        how = "no training.heldOut" if held is None else f"split {held.rule} at {held.share:g}"
        raise LearnError(
            f"--candidate {args.candidate}: {candidate.content_hash} was not trained by the "
            f"split this evaluates with ({how}, not {split.RULE} at {split.SHARE:g}), so its "
            "training may hold the requests it would be judged on: train it again with "
            "specfleet router train"
        )
    in_force = (
        None
        if args.in_force == promotion.HEURISTIC
        else _router_classifier(
            args.in_force,
            "--in-force",
            "give the directory of the classifier in force, or heuristic",
        )
    )
    divided = split.divide(_read_labels(args, policy))
    held_out = divided.held_out
    print(
        f"held-out labels: {len(held_out.examples)} of "
        f"{len(held_out.examples) + len(divided.training.examples)} "
        f"({split.RULE}, {split.SHARE:.0%} by a hash of each request; sha256 "
        f"{held_out.sha256()[:16]})"
    )
    for note in policy.notes():
        print(f"note: {note}")
    if in_force is not None:
        other = in_force.artifact.training.held_out
        if other is None or (other.rule, other.share) != (split.RULE, split.SHARE):
            print(
                "note: the classifier in force was not trained by this split: it may have "
                "seen held-out requests, and its figures may flatter it"
            )
    # An empty side gives 0 for both; the rule refuses it as too few labels.
    found = [router_eval.figures_of(held_out, policy, c) for c in (candidate, in_force)]
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    decision = promotion.decide(
        objective,
        found[0],
        found[1],
        len(held_out.examples),
        now=datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC),
        pin=args.pin,
        mode=args.mode,
        held_out=held_out.sha256(),
    )
    print(
        f"objective: quality target {objective.quality_target:g} (met at "
        f"{objective.floor:.3f} or more on held-out labels), cost margin "
        f"{objective.cost_margin:g}, at least {objective.min_labels()} held-out labels"
    )
    rows = [("", "classifier", "quality", "cost")] + [
        (who, f.classifier, f"{f.quality:.3f}", f"{f.cost:.3f}")
        for who, f in (("candidate", decision.candidate), ("in force", decision.in_force))
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  "
            + "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    print(f"{decision.verdict} ({decision.rule}): {decision.reason}")
    if args.record:
        Path(args.record).write_text(json.dumps(promotion.as_json(decision), indent=2) + "\n")
        print(f"wrote the decision to {args.record}")
    print(decision.line())
    return 0 if decision.verdict == "Promote" else 1


def _labels_store(
    args: argparse.Namespace, resource: RoutingPolicy, from_cluster: bool
) -> tuple[capturestore.StoreConfig, capturestore.Store]:
    """The policy's capture store, and credentials as specfleet capture finds them: from
    --store-config (and the environment), else the policy's spec.capture.store (its
    credentialsSecret read from the cluster for a policy read from there; the environment's
    for a manifest file)."""
    if args.store_config:
        if args.directory:
            raise capturestore.CaptureError(
                "--store-config names the store: give no --directory with it"
            )
        config = capturestore.load_store_config(
            Path(args.store_config).read_text(), args.store_config
        )
        return config, capturestore.open_store(config.store)
    name = resource.metadata.name
    namespace = resource.metadata.namespace or args.namespace or "default"
    what = f"RoutingPolicy {namespace}/{name}"
    capture = resource.spec.capture
    if capture is None:
        raise capturestore.CaptureError(
            f"{what} has no spec.capture, so no store to keep labels in: set "
            "spec.capture.store, or give --store-config (or --directory)"
        )
    location = capturestore.location(capture.store, args.directory, what)
    config = capturestore.StoreConfig(
        kind="RoutingPolicy", namespace=namespace, name=name, store=location
    )
    secret = capture.store.s3.credentials_secret if capture.store.s3 else None
    if not from_cluster or location.s3 is None or secret is None:
        return config, capturestore.open_store(location)
    credentials = _secret_credentials(_cluster(), namespace, secret)
    store = capturestore.open_store(
        location, credentials=credentials, credentials_from=f"Secret {namespace}/{secret}"
    )
    return config, store


def _labels_import(args: argparse.Namespace) -> int:
    resource, from_cluster = _router_policy(args)
    policy = Policy.of(resource.spec)
    args.data = args.file
    data = _read_labels(args, policy)
    if not data.examples:
        raise LearnError(f"{args.file}: no labelled requests to import")
    config, store = _labels_store(args, resource, from_cluster)
    path, written = labelstore.write(store, capturestore.root(config), data, datetime.now(UTC))
    if written:
        print(f"imported {len(data.examples)} labelled requests into {path} ({store!r})")
    else:
        print(f"these {len(data.examples)} labelled requests are already in {path} ({store!r})")
    return 0


def _labels_export(args: argparse.Namespace) -> int:
    if args.store_config:
        config = capturestore.load_store_config(
            Path(args.store_config).read_text(), args.store_config
        )
        store = capturestore.open_store(config.store)
    elif args.policy:
        resource, from_cluster = _router_policy(args)
        config, store = _labels_store(args, resource, from_cluster)
    else:
        raise LearnError("give --policy (a manifest or a policy's name) or --store-config")
    found: Iterable[tuple[bytes, capturestore.Record]] = (
        (line, {}) for line in labelstore.export(store, capturestore.root(config))
    )
    if args.output:
        with Path(args.output).open("wb") as out:
            written = _write_lines(found, out, None)
        print(f"wrote {written} labelled requests to {args.output}", file=sys.stderr)
    else:
        sys.stdout.flush()
        written = _write_lines(found, sys.stdout.buffer, None)
        sys.stdout.buffer.flush()
    if not written:
        print(
            f"no labels in {config.kind} {config.namespace}/{config.name}'s store", file=sys.stderr
        )
    return 0


def _labels_judge(args: argparse.Namespace) -> int:
    resource, _ = _router_policy(args)
    policy = Policy.of(resource.spec)
    _check_labelling(args)
    name = "standard input" if args.data == "-" else args.data
    raw = sys.stdin.buffer.read() if args.data == "-" else Path(args.data).read_bytes()
    labeller = _labeller(args, policy)
    counts = labeller.counts
    with Path(args.out).open("wb") as out:
        for asked in labelling.requests(raw.splitlines(), counts):
            if not labelling.sampled(asked, args.sample):
                counts.not_sampled += 1
                continue
            line = labeller.label(asked)
            if line is not None:
                out.write(line + b"\n")
                out.flush()
    for text in counts.report(policy.tiers, labeller.judge, name, args.sample):
        print(text)
    for detail in counts.details:
        print(f"  {detail}", file=sys.stderr)
    print(f"wrote {counts.total_labelled} judged labels to {args.out}")
    print(counts.line(policy.tiers))
    problem = counts.problem(name)
    if problem:
        print(f"specfleet router labels judge: {problem}", file=sys.stderr)
    return 1 if counts.failed else 0


def _check_labelling(args: argparse.Namespace) -> None:
    if not 0 < args.sample <= 1:
        raise LearnError(f"--sample {args.sample}: give a share above 0 and at most 1 (1: all)")
    if not args.rate > 0:
        raise LearnError(f"--rate {args.rate}: give requests per second above 0, such as 2")


def _labeller(args: argparse.Namespace, policy: Policy) -> labelling.Labeller:
    """The tiers' servers and the judge's, from --tier, --judge and --judge-model, paced at
    --rate."""
    urls = _tier_urls(args.tier, policy.tiers)
    options = {"timeout": args.timeout, "retries": args.retries}
    servers = [
        labelling.connect(f"tier {tier}", f"--tier {tier}={urls[tier]}", urls[tier], **options)
        for tier in policy.tiers
    ]
    if args.judge:
        url = _base_url(args.judge, "--judge")
        judge = labelling.connect(
            "judge", f"--judge {args.judge}", url, model=args.judge_model, **options
        )
    else:
        last = servers[-1]
        judge = labelling.Server("judge", last.url, args.judge_model or last.model, last.client)
    pacer = labelling.Pacer(args.rate, time.monotonic, time.sleep)
    return labelling.Labeller(policy.tiers, servers, judge, pacer, args.max_tokens)


def _router_learn(args: argparse.Namespace) -> int:
    from specfleet.learn import promotion  # noqa: PLC0415

    _check_labelling(args)
    if args.min_new_labels < 0:
        raise LearnError(f"--min-new-labels {args.min_new_labels}: give a count, 0 or more")
    if args.pin is not None and not storelayout.is_content_hash(args.pin):
        raise LearnError(f"--pin {args.pin}: give a classifier's content hash, sha256:HEX")
    resource, from_cluster = _router_policy(args)
    policy = Policy.of(resource.spec)
    _tier_urls(args.tier, policy.tiers)
    settings = router_learn.Settings(
        objective=promotion.Objective(
            quality_target=args.quality_target,
            quality_tolerance=args.quality_tolerance,
            cost_margin=args.cost_margin,
        ),
        mode=args.mode,
        pin=args.pin,
        min_new_labels=args.min_new_labels,
        sample=args.sample,
    )
    config, store = _labels_store(args, resource, from_cluster)
    root = capturestore.root(config)

    def train(
        data: labels.LabelSet, policy: Policy, trained_at: datetime, target: float
    ) -> tuple[learned.Artifact, list[str]]:
        trained = _learning().train(data, policy, trained_at=trained_at, quality_target=target)
        return trained.artifact, list(trained.warnings)

    _learning()
    now = datetime.now(UTC)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    report, labeller = router_learn.run(
        store,
        root,
        policy,
        settings,
        lambda: _labeller(args, policy),
        train,
        now=now,
        trained_at=datetime.fromtimestamp(int(epoch), UTC) if epoch else now,
    )
    name = f"{config.kind} {config.namespace}/{config.name}"
    counts = report.counts
    print(f"{name}: {report.batches} unread batches in {store!r}")
    if labeller is not None:
        for text in counts.report(policy.tiers, labeller.judge, "the unread batches", args.sample):
            print(text)
        for detail in counts.details:
            print(f"  {detail}", file=sys.stderr)
    if report.labels_written:
        print(f"kept {counts.total_labelled} judged labels in {report.labels_written}")
    print(
        f"labels in the store: {report.labels}, {report.new_labels} since the last training"
        + ("" if report.cursor_moved or not report.batches else "; the cursor stays")
    )
    for note in report.notes:
        print(f"note: {note}")
    if report.trained:
        print(f"trained {report.trained}")
    if report.decision is not None:
        decision = report.decision
        print(f"{decision.verdict} ({decision.rule}): {decision.reason}")
        print(f"recorded {report.decision_key}" + ("" if decision.applied else " (not applied)"))
    print(f"in force: {report.in_force}")
    print(report.line())
    if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
        TERMINATION_LOG.write_text(json.dumps(report.status_json()))
    if report.labelling_failed:
        problem = counts.problem("the unread batches")
        print(f"specfleet router learn: {problem}", file=sys.stderr)
        return 1
    return 0


def _tier_urls(given: Sequence[str] | None, tiers: Sequence[str]) -> dict[str, str]:
    """Each tier's OpenAI base URL from the repeated --tier NAME=URL."""
    urls: dict[str, str] = {}
    example = f"{tiers[0]}=http://HOST:PORT/v1"
    for text in given or ():
        name, equals, url = text.partition("=")
        if not equals or not name or not url:
            raise LearnError(f"--tier {text}: write NAME=URL, such as {example}")
        if name not in tiers:
            raise LearnError(
                f"--tier {text}: {name} is not a tier of the policy: use one of {', '.join(tiers)}"
            )
        if name in urls:
            raise LearnError(f"--tier {name} is given twice: give each tier once")
        urls[name] = _base_url(url, f"--tier {text}")
    missing = [tier for tier in tiers if tier not in urls]
    if missing:
        raise LearnError(
            f"--tier: no URL for {', '.join(missing)}: give --tier NAME=URL for every tier of "
            f"the policy ({', '.join(tiers)}), such as {example}"
        )
    return urls


def _base_url(url: str, flag: str) -> str:
    """An OpenAI base URL; a bare server (no path) gets /v1."""
    if not url.startswith(("http://", "https://")):
        raise LearnError(f"{flag}: the URL must start with http:// or https://")
    host, _, path = url.partition("://")[2].partition("/")
    if not host:
        raise LearnError(f"{flag}: the URL has no host")
    return url.rstrip("/") + "/v1" if not path.strip("/") else url.rstrip("/")


def _router_parser(commands: Any) -> None:
    router = commands.add_parser(
        "router",
        help="train and evaluate a learned router classifier on labelled requests",
        description="Keep a RoutingPolicy's labelled requests in its capture store, train a "
        "classifier on them, and evaluate it beside the policy's heuristic. POLICY is a "
        "RoutingPolicy manifest file if one is there, else a RoutingPolicy's name in the "
        "cluster (-n). Training needs scikit-learn: pip install 'specfleet[learn]'.",
    )
    actions = router.add_subparsers(dest="action", required=True, metavar="ACTION")

    def policy(action: argparse.ArgumentParser, required: bool = True) -> None:
        action.add_argument(
            "--policy",
            metavar="POLICY",
            required=required,
            help="a RoutingPolicy manifest (YAML), or a RoutingPolicy's name in the cluster",
        )
        action.add_argument("--namespace", "-n", metavar="NS", help="default: default")

    def data(action: argparse.ArgumentParser) -> None:
        action.add_argument(
            "--data", metavar="LABELS", required=True, help="labelled requests, JSON lines; -"
        )
        skip(action)

    def skip(action: argparse.ArgumentParser) -> None:
        action.add_argument(
            "--skip-invalid",
            action="store_true",
            help="leave invalid lines out (and say how many) instead of refusing the file",
        )

    train = actions.add_parser(
        "train",
        help="train a classifier on labelled requests",
        description="Fit a classifier to the labelled requests, choose its threshold by "
        "cross-validation to meet the quality target at the lowest cost, and write "
        "classifier.json and report.json into DIR.",
    )
    policy(train)
    data(train)
    train.add_argument("--out", metavar="DIR", required=True, help="where to write")
    train.add_argument(
        "--quality-target",
        metavar="Q",
        type=float,
        default=0.95,
        help="the share of requests that must get a tier at or above their label (default 0.95)",
    )
    train.set_defaults(run=_router_train)

    evaluate = actions.add_parser(
        "evaluate",
        help="the learned classifier beside the heuristic, on labelled requests",
        description="Route the labelled requests with the learned classifier (--classifier, "
        "else cross-validation of training on these requests) and with the policy's heuristic, "
        "overrides first for both, and print each one's confusion, quality and cost, the "
        "learned one's APGR, and last a line of key=value figures.",
    )
    policy(evaluate)
    data(evaluate)
    evaluate.add_argument(
        "--classifier", metavar="DIR", help="a trained classifier (its directory or file)"
    )
    evaluate.set_defaults(run=_router_evaluate)

    promote = actions.add_parser(
        "promote",
        help="whether a trained classifier should replace the one in force, on held-out labels",
        description="Route the held-out side of the labelled requests (about 20%, chosen by a "
        "hash of each request; training never takes them) with the candidate and with the "
        "classifier in force, overrides first, print both one's quality and cost side by side, "
        "and decide by the promotion rule: promote a candidate that meets the quality target "
        "(within the tolerance) at least the cost margin cheaper than the one in force, or "
        "that meets it where the one in force does not; refuse otherwise, and when there are "
        "too few held-out labels to judge; a pinned classifier wins over any candidate. The "
        "last line is key=value figures. Exit status 0: promote; 1: refuse; 2: bad input. "
        "Nothing is changed.",
    )
    policy(promote)
    data(promote)
    promote.add_argument(
        "--candidate", metavar="DIR", required=True, help="the trained classifier to judge"
    )
    promote.add_argument(
        "--in-force",
        metavar="DIR",
        default="heuristic",
        help="the classifier in force (its directory or file), or heuristic (the default)",
    )
    _objective_flags(
        promote,
        "what the decision records: Apply when its caller acts on a promotion (this command "
        "itself changes nothing; default Recommend)",
    )
    promote.add_argument("--record", metavar="FILE", help="write the decision as JSON")
    promote.set_defaults(run=_router_promote)

    label = actions.add_parser(
        "labels",
        help="label requests with a judge; keep labelled requests in the policy's store",
        description="Label requests by asking the tiers and a judge model; import labelled "
        "requests into the policy's capture store (under labels/ beside its captured records), "
        "or export them all as JSON lines.",
    )
    kinds = label.add_subparsers(dest="labels_action", required=True, metavar="ACTION")

    def store(action: argparse.ArgumentParser) -> None:
        action.add_argument(
            "--directory",
            metavar="PATH",
            help="the store is at PATH, where its volume is mounted",
        )
        action.add_argument(
            "--store-config",
            metavar="FILE",
            help="the policy's store in a JSON/YAML file, as specfleet capture takes it; S3 "
            "credentials from the environment",
        )

    into = kinds.add_parser(
        "import",
        help="check labelled requests against the policy's tiers and store them",
        description="Check FILE against the policy's tiers and write its accepted lines "
        "(source imported unless a line names another) into the policy's store. S3 "
        "credentials as specfleet capture finds them.",
    )
    into.add_argument("file", metavar="FILE", help="labelled requests, JSON lines; -")
    policy(into)
    skip(into)
    store(into)
    into.set_defaults(run=_labels_import)

    _labels_judge_parser(kinds, policy)

    out = kinds.add_parser(
        "export",
        help="every stored labelled request, as JSON lines",
        description="Write the policy's stored labelled requests, oldest import first.",
    )
    policy(out, required=False)
    store(out)
    out.add_argument("--output", "-o", metavar="FILE", help="default: standard output")
    out.set_defaults(run=_labels_export)

    _router_learn_parser(actions, policy, store)


def _router_learn_parser(
    actions: Any,
    policy: Callable[[argparse.ArgumentParser], None],
    store: Callable[[argparse.ArgumentParser], None],
) -> None:
    learn = actions.add_parser(
        "learn",
        help="one pass of the learning loop over the policy's store: judge, train, promote",
        description="Judge a sample of the captured requests not read yet (a cursor in the "
        "store remembers how far it read), keep their labels in the store, train a candidate "
        "when at least --min-new-labels labels arrived since the last training (or none ever "
        "ran), decide on held-out labels whether it replaces the classifier in force (the "
        "store's latest applied promotion, else the heuristic; a pin wins), and record the "
        "artifact, the decision and, for an applied promotion, the new classifier in force in "
        "the store. Prints a report, last a line of key=value figures, and writes it as JSON to "
        "/dev/termination-log when that is writable. Exit status 0: the pass ended (whatever "
        "it decided); 1: requests were asked and none was labelled (the cursor stays); 2: "
        "input, a store or an artifact it cannot use.",
    )
    policy(learn)
    store(learn)
    _labelling_flags(learn)
    _objective_flags(
        learn,
        "Apply: an applied promotion moves the classifier in force; Recommend (default): the "
        "decision is recorded and nothing moves",
    )
    learn.add_argument(
        "--min-new-labels",
        metavar="N",
        type=int,
        default=router_learn.DEFAULT_MIN_NEW_LABELS,
        help="train only when at least N labels arrived since the last training "
        f"(default {router_learn.DEFAULT_MIN_NEW_LABELS})",
    )
    learn.set_defaults(run=_router_learn)


def _objective_flags(action: argparse.ArgumentParser, mode_help: str) -> None:
    """The promotion rule's objective, margins, pin and mode."""
    action.add_argument(
        "--pin", metavar="HASH", help="the content hash the team pins (sha256:...): it wins"
    )
    action.add_argument(
        "--quality-target",
        metavar="Q",
        type=float,
        default=learning_api.DEFAULT_QUALITY_TARGET,
        help="the share of requests that must get a tier at or above their label "
        f"({learning_api.DEFAULT_QUALITY_TARGET})",
    )
    action.add_argument(
        "--quality-tolerance",
        metavar="T",
        type=float,
        default=learning_api.DEFAULT_QUALITY_TOLERANCE,
        help="how far below the target a held-out quality still meets it "
        f"({learning_api.DEFAULT_QUALITY_TOLERANCE})",
    )
    action.add_argument(
        "--cost-margin",
        metavar="M",
        type=float,
        default=learning_api.DEFAULT_COST_MARGIN,
        help="the share of the cost in force a candidate must save "
        f"({learning_api.DEFAULT_COST_MARGIN})",
    )
    action.add_argument(
        "--mode",
        choices=("Apply", "Recommend"),
        default="Recommend",
        help=mode_help,
    )


def _labels_judge_parser(kinds: Any, policy: Callable[[argparse.ArgumentParser], None]) -> None:
    judged = kinds.add_parser(
        "judge",
        help="label requests by asking the tiers and a judge model",
        description="For a sample of the requests in DATA (captured records as specfleet "
        "capture export writes them, or labelled lines), ask the strongest tier and then the "
        "cheaper ones, from the cheapest, for an answer, and ask the judge whether each "
        "cheaper answer is as good as the strongest's; the label is the cheapest tier judged "
        "as good, else the strongest. Writes the labelled lines (source judged, with the "
        "judge's prompt and parser versions) to OUT, and prints what it asked, labelled and "
        "dropped: a verdict that does not parse, or an error from a server, leaves the request "
        "without a label. Every server is asked through the openai SDK (OPENAI_API_KEY if "
        "set), all of them together at most --rate requests a second. Exits 1 when nothing "
        "was labelled.",
    )
    policy(judged)
    judged.add_argument(
        "--data",
        metavar="CAPTURED",
        required=True,
        help="captured records (specfleet capture export) or labelled requests, JSON lines; -",
    )
    judged.add_argument("--out", metavar="LABELS", required=True, help="where to write")
    _labelling_flags(judged)
    judged.set_defaults(run=_labels_judge)


def _labelling_flags(action: argparse.ArgumentParser) -> None:
    """The tiers' and the judge's servers, the sample and the pacing."""
    action.add_argument(
        "--tier",
        metavar="NAME=URL",
        action="append",
        help="a tier's OpenAI base URL, such as simple=http://llama-3b:8000/v1 (a URL without "
        "a path gets /v1); once for every tier of the policy",
    )
    action.add_argument(
        "--judge", metavar="URL", help="the judge's OpenAI base URL (default: the last tier's)"
    )
    action.add_argument(
        "--judge-model",
        metavar="NAME",
        help="the judge's served model name (default: the first its server lists)",
    )
    action.add_argument(
        "--sample",
        metavar="SHARE",
        type=float,
        default=1.0,
        help="the share of requests to label, chosen by content so a rerun picks the same "
        "(default 1: all)",
    )
    action.add_argument(
        "--rate",
        metavar="RPS",
        type=float,
        default=2.0,
        help="at most this many requests a second to all servers together (default 2)",
    )
    action.add_argument(
        "--max-tokens",
        metavar="N",
        type=int,
        default=512,
        help="the answers' cap for a request that sets none (default 512)",
    )
    action.add_argument(
        "--timeout", metavar="SECONDS", type=float, default=120.0, help="per call (default 120)"
    )
    action.add_argument(
        "--retries", metavar="N", type=int, default=2, help="the SDK's retries (default 2)"
    )


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
        help="show an InferenceModel's autoscaling decisions, or a RoutingPolicy's promotions",
        description="Print the autoscaling decisions recorded in an InferenceModel's status "
        "(the inputs, the rule and whether it was applied), plot them, or replay them under "
        "another policy to see where it would have decided differently. For rp/NAME, the "
        "promotion decisions in the RoutingPolicy's status.learning (the held-out figures, the "
        "rule, whether it was applied), replayed under another learning: (objective, pin, mode).",
    )
    rev.add_argument(
        "name", metavar="NAME", nargs="?", help="the InferenceModel (or im/NAME), or rp/NAME"
    )
    rev.add_argument("--namespace", "-n", metavar="NS", help="its namespace")
    rev.add_argument(
        "--from-file",
        metavar="STATUS.yaml",
        help="read the InferenceModel or RoutingPolicy (with status) from a file instead of "
        "the cluster",
    )
    rev.add_argument("--plot", metavar="FILE.png", help="draw acceptance, P99 and the limit")
    rev.add_argument(
        "--replay",
        metavar="POLICY.yaml",
        help="re-run the recorded observations under the autoscaling: and batching: of this "
        "file (for a policy: its learning:) and show the decisions that differ",
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

    _capture_parser(commands)
    _router_parser(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except (
        api.ManifestError,
        review.ReviewError,
        capturestore.CaptureError,
        LearnError,
        learned.ArtifactError,
        OSError,
    ) as exc:
        command = " ".join(
            str(part)
            for part in (
                args.command,
                getattr(args, "action", None),
                getattr(args, "labels_action", None),
            )
            if part
        )
        print(f"specfleet {command}: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())

"""The operator's kopf wiring: watches, handlers and settings, nothing else.

Each handler parses the body into the API model once, hands it to `reconcile` (an
InferenceModel) or `reconcile_routing` (a RoutingPolicy, with the InferenceModels it names) with
the children observed through kopf indexes (in-memory watches, so a pass that changes nothing
reads nothing and writes nothing), and translates errors: a spec that cannot be served is a
`kopf.PermanentError` (retried only when the spec changes), an API failure that may pass is a
`kopf.TemporaryError` with a delay. An InferenceModel's handler writes only what its pods
need; the backlog's thread (`specfleet.backlog`) runs the full pass after it, and a resync loop
walks every resource. Imported by `specfleet run`, which starts kopf.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from specfleet import api, kube, metrics, prometheus, reconcile, reconcile_routing
from specfleet.api.common import duration_seconds
from specfleet.api.crdinfo import GROUP, VERSION
from specfleet.api.inferencemodel import InferenceModel, Observation
from specfleet.api.labels import INFERENCE_MODEL, MANAGED_BY, MANAGER, ROUTING_POLICY
from specfleet.api.routingpolicy import RoutingPolicy
from specfleet.backlog import Backlog
from specfleet.config import Config
from specfleet.render.routingpolicy import ModelState

RESOURCE = (GROUP, VERSION, InferenceModel.crd.plural)
POLICIES = (GROUP, VERSION, RoutingPolicy.crd.plural)
CONFIG = Config.from_env()
"""Read once at import: kopf takes the timer interval when the handlers are registered."""
RETRY_SECONDS = 10.0
"""How long to wait before retrying after an API failure that may pass."""
PEERING_LIFETIME_SECONDS = 15
"""With `specfleet run --peering`: how long an operator's keep-alive counts. kopf renews it
5-10 s before it lapses, and a waiting replica takes over once the acting one's has lapsed, so
this bounds the takeover after a crash (kopf's default, 60 s, is long for on-call)."""

OWNED: dict[str, Any] = {INFERENCE_MODEL: kopf.PRESENT, MANAGED_BY: MANAGER}
CHILDREN = {
    "ConfigMap": ("", "v1", "configmaps"),
    "Service": ("", "v1", "services"),
    "Deployment": ("apps", "v1", "deployments"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
}
"""The kinds the operator makes for an InferenceModel; each is watched into an index named
after its plural, which kopf passes to handlers as a keyword."""

ROUTER_OWNED: dict[str, Any] = {ROUTING_POLICY: kopf.PRESENT, MANAGED_BY: MANAGER}
ROUTER_CHILDREN = {kind: CHILDREN[kind] for kind in ("ConfigMap", "Service", "Deployment")}
"""The kinds the operator makes for a RoutingPolicy, indexed as `router_<plural>`."""
MODELS_INDEX = "model_states"
"""The index of every InferenceModel's `ModelState`, which RoutingPolicies resolve from."""

Key = tuple[str, str]


def _index_child(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    """Keys a child's summary by its InferenceModel."""
    return {(namespace or "", labels[INFERENCE_MODEL]): reconcile.summary(body)}


def _index_router_child(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    """Keys a router child's summary by its RoutingPolicy."""
    return {(namespace or "", labels[ROUTING_POLICY]): reconcile.summary(body)}


for _group, _version, _plural in CHILDREN.values():
    kopf.index(_group, _version, _plural, labels=OWNED, id=_plural)(_index_child)
for _group, _version, _plural in ROUTER_CHILDREN.values():
    kopf.index(_group, _version, _plural, labels=ROUTER_OWNED, id=f"router_{_plural}")(
        _index_router_child
    )


@kopf.index(*RESOURCE, id=MODELS_INDEX)
def _index_model(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[Key, ModelState]:
    """What RoutingPolicies need of each InferenceModel. kopf fills its indexes before it
    runs handlers, so a policy is never resolved against a half-listed set of models."""
    return {(namespace or "", name): reconcile_routing.model_state(body)}


def _remember_indexes(memo: Any, kwargs: Mapping[str, Any]) -> None:
    """Keeps kopf's indexes where the resync loop finds them. Handlers get a shallow copy of
    the operator's memo: update the shared dicts in place."""
    memo["indexes"].update({kind: kwargs[plural] for kind, (_, _, plural) in CHILDREN.items()})
    memo["router_indexes"].update(
        {kind: kwargs[f"router_{plural}"] for kind, (_, _, plural) in ROUTER_CHILDREN.items()}
    )
    memo["router_indexes"][MODELS_INDEX] = kwargs[MODELS_INDEX]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    prefix = GROUP
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    # specfleet posts its own Events (refusals, rollouts); kopf turning its log lines into
    # Events too would repeat them.
    settings.posting.enabled = False
    settings.execution.max_workers = 8
    settings.peering.lifetime = PEERING_LIFETIME_SECONDS
    memo["kube"] = kube.Kube()
    memo["observe"] = _observer(CONFIG.prometheus_url)
    memo["children"] = kube.Children()
    memo["models"] = {}
    memo["indexes"] = {}
    memo["policies"] = {}
    memo["router_indexes"] = {}
    memo["model_states"] = {}
    memo["backlog"] = Backlog()
    # One policy reconcile at a time: a pass triggered by a model's readiness and one by the
    # policy's own handler must not write their views out of order.
    memo["policy_lock"] = threading.Lock()


def _observed(key: Key, indexes: Mapping[str, kopf.Index[Key, dict[str, Any]]]) -> dict[str, Any]:
    observed = {}
    for kind, index in indexes.items():
        store = index.get(key)
        if store:
            observed[kind] = next(iter(store))
    return observed


def _observer(url: str) -> reconcile.Observer | None:
    """Reads a model's metrics from Prometheus over its autoscaling window; None (no
    autoscaling) when no Prometheus is configured."""
    if not url:
        return None
    source = prometheus.Source(url)

    def observe(model: InferenceModel) -> tuple[Observation, str]:
        window = duration_seconds(model.spec.autoscaling.window)
        return source.observe(model.metadata.namespace or "", model.metadata.name, window)

    return observe


def _event(memo: Any, body: kopf.Body, type: str, reason: str, message: str) -> None:
    """Posts an Event through specfleet's own client: kopf's posting works only inside its
    handlers' context, and the resync loop runs outside it. A failure to post is logged,
    never fatal."""
    try:
        memo["kube"].event(dict(body), type, reason, message, datetime.now(UTC))
    except kube.ApiError as exc:
        logging.getLogger(__name__).warning("%s", exc)


def _pass(
    body: kopf.Body,
    memo: Any,
    run: Callable[[api.Resource], reconcile.Outcome],
    *,
    quiet: bool,
    refused: str,
) -> reconcile.Outcome | None:
    """One reconcile of a resource by `run`, with what every kind shares: parsing, errors
    translated for kopf (an Event `refused` when the spec cannot be served, unless `quiet`),
    Events posted and the pass timed. Returns what the pass did (None when refused quietly)."""
    started = time.monotonic()
    outcome = "error"
    try:
        try:
            resource = api.parse(dict(body))
        except api.ManifestError as exc:
            _event(memo, body, "Warning", "InvalidSpec", str(exc))
            raise kopf.PermanentError(str(exc)) from exc
        try:
            result = run(resource)
        except reconcile.RefusedError as exc:
            outcome = "refused"
            if quiet:
                return None
            _event(memo, body, "Warning", refused, str(exc))
            raise kopf.PermanentError(str(exc)) from exc
        except kube.ApiError as exc:
            if exc.namespace_terminating:
                # Its namespace is being deleted, the resource with it: nothing to serve, and
                # no Event to post (the API server refuses that too).
                outcome = "unchanged"
                logging.getLogger(__name__).info("%s: its namespace is being deleted", exc)
                return None
            if exc.transient:
                raise kopf.TemporaryError(str(exc), delay=RETRY_SECONDS) from exc
            raise kopf.PermanentError(str(exc)) from exc
        for event in result.events:
            _event(memo, body, event.type, event.reason, event.message)
        outcome = "changed" if result.applied or result.status_changed else "unchanged"
        if result.applied:
            logging.getLogger(__name__).info("applied %s", ", ".join(result.applied))
        return result
    finally:
        metrics.RECONCILE_SECONDS.labels(body.get("kind", ""), outcome).observe(
            time.monotonic() - started
        )


def _reconcile(
    body: kopf.Body,
    memo: Any,
    indexes: Mapping[str, Any],
    *,
    quiet: bool,
    rollout_only: bool = False,
    applied_before: Sequence[str] = (),
) -> reconcile.Outcome | None:
    def run(model: api.Resource) -> reconcile.Outcome:
        assert isinstance(model, InferenceModel)
        key = (model.metadata.namespace or "", model.metadata.name)
        return reconcile.inference_model(
            model,
            _observed(key, indexes),
            memo["kube"],
            CONFIG,
            datetime.now(UTC),
            memo["children"],
            memo["observe"],
            rollout_only=rollout_only,
            applied_before=applied_before,
        )

    return _pass(body, memo, run, quiet=quiet, refused="Infeasible")


def _reconcile_model_logged(
    body: kopf.Body, memo: Any, key: Key, applied_before: Sequence[str] = ()
) -> None:
    """A full pass outside the model's own handler (the backlog, resync): failures are logged
    and retried on the next resync."""
    log = logging.getLogger(__name__)
    try:
        _reconcile(body, memo, memo["indexes"], quiet=True, applied_before=applied_before)
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        log.warning("reconcile of InferenceModel %s/%s: %s", *key, exc)
    except Exception:
        log.exception("reconcile of InferenceModel %s/%s failed", *key)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
def inference_model(body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    """A new, changed or (after a restart) existing InferenceModel: what its pods need at once,
    the rest in a full pass from the backlog (see `specfleet.backlog`)."""
    indexes = {kind: kwargs[plural] for kind, (_, _, plural) in CHILDREN.items()}
    backlog: Backlog = memo["backlog"]
    with backlog.handling():
        outcome = _reconcile(body, memo, indexes, quiet=False, rollout_only=True)
    if outcome is not None:
        backlog.add((body.metadata.namespace or "", body.metadata.name or ""), outcome.applied)


@kopf.on.event(*RESOURCE)
def track(event: Mapping[str, Any], body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    """Keeps the list the resync loop walks: each model's latest body, compactly as JSON (a
    kopf timer per model would cost memory per model and, worse, a finalizer that blocks
    deleting models while the operator is away). When what a router needs of the model
    changes (it turns Ready or not, appears or goes away), the policies naming it are
    reconciled at once: only their ConfigMaps change, so the routers reload, not restart."""
    _remember_indexes(memo, kwargs)
    key = (body.metadata.namespace or "", body.metadata.name or "")
    state: ModelState | None
    if event.get("type") == "DELETED":
        memo["models"].pop(key, None)
        memo["backlog"].discard(key)
        memo["children"].forget(*key)
        state = None
    else:
        memo["models"][key] = json.dumps(dict(body), separators=(",", ":"))
        state = reconcile_routing.model_state(body)
    known = key in memo["model_states"]
    if (known and memo["model_states"][key] == state) or (state is None and not known):
        return
    if state is None:
        memo["model_states"].pop(key)
    else:
        memo["model_states"][key] = state
    for policy_key, text in list(memo["policies"].items()):
        if policy_key[0] != key[0]:
            continue
        policy_body = kopf.Body(json.loads(text))
        try:
            policy = api.parse(dict(policy_body))
        except api.ManifestError:
            continue
        assert isinstance(policy, RoutingPolicy)
        if key[1] in reconcile_routing.names(policy):
            _reconcile_policy_logged(policy_body, memo, policy_key)


def _models_of(
    policy: RoutingPolicy, index: kopf.Index[Key, ModelState] | None
) -> dict[str, ModelState]:
    namespace = policy.metadata.namespace or ""
    found: dict[str, ModelState] = {}
    for name in reconcile_routing.names(policy):
        store = index.get((namespace, name)) if index is not None else None
        if store:
            found[name] = next(iter(store))
    return found


def _reconcile_policy(body: kopf.Body, memo: Any, *, quiet: bool) -> None:
    def run(policy: api.Resource) -> reconcile.Outcome:
        assert isinstance(policy, RoutingPolicy)
        key = (policy.metadata.namespace or "", policy.metadata.name)
        indexes = memo["router_indexes"]
        with memo["policy_lock"]:
            return reconcile_routing.routing_policy(
                policy,
                _models_of(policy, indexes.get(MODELS_INDEX)),
                _observed(key, {k: v for k, v in indexes.items() if k != MODELS_INDEX}),
                memo["kube"],
                CONFIG,
                datetime.now(UTC),
                memo["children"],
            )

    _pass(body, memo, run, quiet=quiet, refused="Refused")


def _reconcile_policy_logged(body: kopf.Body, memo: Any, key: Key) -> None:
    """A pass outside the policy's own handlers (resync, a model's readiness): failures are
    logged and retried on the next pass."""
    log = logging.getLogger(__name__)
    try:
        _reconcile_policy(body, memo, quiet=True)
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        log.warning("reconcile of RoutingPolicy %s/%s: %s", *key, exc)
    except Exception:
        log.exception("reconcile of RoutingPolicy %s/%s failed", *key)


@kopf.on.resume(*POLICIES)
@kopf.on.create(*POLICIES)
@kopf.on.update(*POLICIES, field="spec")
def routing_policy(body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    """A new, changed or (after a restart) existing RoutingPolicy."""
    _remember_indexes(memo, kwargs)
    _reconcile_policy(body, memo, quiet=False)


@kopf.on.event(*POLICIES)
def track_policy(event: Mapping[str, Any], body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    """Keeps the policies the resync loop walks and models' readiness changes look up."""
    _remember_indexes(memo, kwargs)
    key = (body.metadata.namespace or "", body.metadata.name or "")
    if event.get("type") == "DELETED":
        memo["policies"].pop(key, None)
        memo["children"].forget(*key, owner_kind="RoutingPolicy")
    else:
        memo["policies"][key] = json.dumps(dict(body), separators=(",", ":"))


@dataclass(frozen=True)
class Peering:
    """This operator's place among peers (`specfleet run --peering`), which kopf keeps in a
    ClusterKopfPeering (or a KopfPeering in the first watched namespace)."""

    name: str
    priority: int
    namespace: str | None = None

    def path(self) -> str:
        if self.namespace:
            return f"/apis/kopf.dev/v1/namespaces/{self.namespace}/kopfpeerings/{self.name}"
        return f"/apis/kopf.dev/v1/clusterkopfpeerings/{self.name}"


PEERING: Peering | None = None
"""Set by `specfleet run --peering` before kopf starts; None when running standalone."""


def acting(peers: Mapping[str, Any], priority: int, now: datetime) -> bool:
    """Whether an operator of `priority` acts, given the peers kopf recorded: not while a live
    peer has a higher priority (kopf's own rule; it pauses handlers the same way). Pure."""
    for peer in peers.values():
        if not isinstance(peer, Mapping):
            continue
        seen = datetime.fromisoformat(str(peer.get("lastseen")))
        alive = seen + timedelta(seconds=int(peer.get("lifetime", 0))) > now
        if alive and int(peer.get("priority", 0)) > priority:
            return False
    return True


def _resync(memo: Any) -> None:
    """One pass over every known model, then every policy: status from their Deployments,
    drifted children put back. Failures are logged and retried on the next pass. A paused
    peer skips the pass: kopf pauses its handlers, not this loop."""
    if PEERING is not None:
        peering = memo["kube"].get_path(PEERING.path(), f"reading peering {PEERING.name}")
        peers = (peering or {}).get("status") or {}
        if not acting(peers, PEERING.priority, datetime.now(UTC)):
            return
    for key, text in list(memo["models"].items()):
        if key in memo["backlog"]:
            continue  # its full pass is on the way
        _reconcile_model_logged(kopf.Body(json.loads(text)), memo, key)
    for key, text in list(memo["policies"].items()):
        _reconcile_policy_logged(kopf.Body(json.loads(text)), memo, key)


async def _resync_forever(memo: Any) -> None:
    while True:
        await asyncio.sleep(CONFIG.resync_seconds)
        await asyncio.to_thread(_resync, memo)


def _finish_forever(memo: Any) -> None:
    """The backlog's thread: the full pass of each model a handler began, when it is due.
    Failures are logged; the resync loop retries them."""
    backlog: Backlog = memo["backlog"]
    while (item := backlog.take()) is not None:
        key, applied = item
        text = memo["models"].get(key)
        if text is None:
            continue  # deleted meanwhile
        _reconcile_model_logged(kopf.Body(json.loads(text)), memo, key, applied)


@kopf.on.startup()
async def start_background(memo: Any, **_: Any) -> None:
    """The resync loop and the backlog's thread."""
    memo["resync"] = asyncio.get_running_loop().create_task(_resync_forever(memo))
    threading.Thread(target=_finish_forever, args=(memo,), name="backlog", daemon=True).start()


@kopf.on.cleanup()
async def stop_background(memo: Any, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()
    backlog = memo.get("backlog")
    if backlog is not None:
        backlog.close()

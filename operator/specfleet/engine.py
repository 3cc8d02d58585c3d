"""The operator's engine: the state it keeps between passes, one keyed work queue, and the
workers that run the passes.

`specfleet run` makes one `Engine` from the `Config` it reads at start and hands it to kopf;
`specfleet.handlers` only delegates to it. The engine keeps the parsed resources it watches,
which versions of the children match their rendering (`kube.Children`) and a
`workqueue.WorkQueue` of resources waiting for a pass.

One rule for concurrency: only the workers run passes, and the queue hands a resource to one
worker at a time. Everything else only enqueues:
- kopf's handlers: a new or changed InferenceModel is queued `URGENT` for its first pass
  (what its pods need to start: the Deployment and the gate's ConfigMap), a RoutingPolicy
  `NORMAL`; a model whose readiness changed queues the policies that name it (their routers
  follow it); a Deployment's watch events queue its owner (status follows the rollout);
- a first pass queues the model's full pass (Service, PodDisruptionBudget, autoscaling,
  status, Events) `NORMAL`, so when hundreds of models arrive at once every one starts its
  pods before any gets its Service (bench/operator_scale.py measures it);
- a full pass with autoscaling queues the model again for when its next decision falls due
  (the last decision plus `autoscaling.interval`): each model's decisions keep their own
  clock, whatever `Config.resync_seconds` is;
- a pass that failed in a way that may pass queues itself again after a backoff;
- the resync loop (a task on kopf's event loop) queues every resource every
  `Config.resync_seconds`, to put back children someone changed (their watches keep only
  resourceVersions) and refresh what no watch reports (why pods cannot run).
Only the acting peer (`specfleet run --peering`) runs passes: kopf pauses a standby's
handlers, and a standby's workers drop what reaches them.

Passes report what happened as a `Result` (done, refused, retry later, gone); the workers act
on it, and only kopf's entry points (a body that does not parse) raise kopf's exceptions.
The state (`_models`, `_policies`) is written only under `_lock`, by the watch events, and read
as snapshots taken under it; no pass runs while holding it. `kube.Children` guards itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol, TypeVar

import kopf

from specfleet import api, kube, metrics, prometheus
from specfleet.api.crdinfo import API_VERSION
from specfleet.api.inferencemodel import InferenceModel, Observation
from specfleet.api.manifests import Manifest
from specfleet.api.routingpolicy import RoutingPolicy
from specfleet.config import Config
from specfleet.reconcile import Applied, Outcome, apply
from specfleet.reconcile import capture as capture_pass
from specfleet.reconcile import inferencemodel as model_pass
from specfleet.reconcile import routingpolicy as policy_pass
from specfleet.workqueue import Priority, Taken, WorkQueue

log = logging.getLogger(__name__)

WORKERS = 8
"""Passes that may run at once, over different resources: they wait on the API server."""
BACKOFF_SECONDS = 0.5
"""The first wait before a pass that failed in a way that may pass runs again; it doubles
with each failure in a row, up to `MAX_BACKOFF_SECONDS`."""
MAX_BACKOFF_SECONDS = 60.0
ACTING_TTL_SECONDS = 2.0
"""How long the workers trust one reading of the peering object (kopf renews it every few
seconds and a peer's keep-alive lasts `handlers.PEERING_LIFETIME_SECONDS`)."""

Key = tuple[str, str]
"""A resource of a known kind by namespace and name."""
Index = Mapping[Key, Any]
"""A kopf index as the engine reads it: a key to the store of what was indexed under it."""

MODEL = InferenceModel.crd.kind
POLICY = RoutingPolicy.crd.kind


class Ref(NamedTuple):
    """A resource in the work queue: its kind, namespace and name."""

    kind: str
    namespace: str
    name: str

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)


class Api(apply.Writer, Protocol):
    """What the engine needs of the API: the reconcile passes' writes, Events, and reading the
    peering object."""

    def event(
        self, involved: Mapping[str, Any], type: str, reason: str, message: str, now: datetime
    ) -> None: ...

    def get_path(
        self, path: str, what: str, query: list[tuple[str, str]] | None = None
    ) -> Manifest | None: ...


@dataclass
class Indexes:
    """kopf's in-memory watches of the children (each kind's summaries by owner) and of every
    InferenceModel's `ModelState`. kopf fills them before it runs handlers, so a policy is
    never resolved against a half-listed set of models."""

    children: Mapping[str, Index] = field(default_factory=dict)
    """An InferenceModel's children, by kind."""
    router_children: Mapping[str, Index] = field(default_factory=dict)
    """A RoutingPolicy's children, by kind."""
    models: Index = field(default_factory=dict)


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


TIEBREAKS = 1_000_000
"""How many priorities share one millisecond of start time (``peering_priority``)."""


def peering_priority(started_ns: int, tiebreak: int) -> int:
    """An operator's priority among its peers, from when it started (nanoseconds since the
    epoch) and a random ``tiebreak`` below ``TIEBREAKS``. kopf lets the highest priority act.
    The earlier an operator started, to the millisecond, the higher its priority, so a replica
    that restarts never preempts the one acting, and the active replica changes only when it
    goes away. Two replicas of one Deployment started together on one node run their start in
    lockstep and read the same millisecond; the tiebreak keeps them apart, since two peers at
    the same highest priority make kopf pause every operator, for good. The value fits a
    signed 64-bit integer, as the peering object stores it. Pure."""
    if not 0 <= tiebreak < TIEBREAKS:
        raise ValueError(f"tiebreak must be in [0, {TIEBREAKS}), got {tiebreak}")
    return -(started_ns // 1_000_000) * TIEBREAKS + tiebreak


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


def observer(url: str) -> model_pass.Observer | None:
    """Reads a model's metrics from Prometheus over its autoscaling window; None (no
    autoscaling) when no Prometheus is configured."""
    if not url:
        return None
    source = prometheus.Source(url)

    def observe(model: InferenceModel) -> tuple[Observation, str]:
        window = model.spec.autoscaling.window.seconds
        return source.observe(model.metadata.namespace or "", model.metadata.name, window)

    return observe


def capture_counter(url: str) -> capture_pass.Counter | None:
    """Reads what a capturing resource's pods counted from Prometheus; None when no
    Prometheus is configured (status.capture then says what retention reports alone)."""
    return prometheus.Source(url).capture_counts if url else None


def key_of(resource: api.Resource | kopf.Body) -> Key:
    metadata = resource.metadata
    return (metadata.namespace or "", metadata.name or "")


def _first(key: Key, index: Index) -> Any:
    store = index.get(key)
    return next(iter(store)) if store else None


def _observed(key: Key, indexes: Mapping[str, Index]) -> dict[str, Manifest]:
    """The summaries of the children under `key` that exist, by `apply.key`."""
    return {
        apply.key(kind, summary["metadata"]["name"]): summary
        for kind, index in indexes.items()
        for summary in index.get(key, ())
    }


R = TypeVar("R", InferenceModel, RoutingPolicy)
V = TypeVar("V")


def _put(store: dict[Key, V], key: Key, value: V | None) -> None:
    """Keeps `value` under `key`, or forgets the key when there is none."""
    if value is None:
        store.pop(key, None)
    else:
        store[key] = value


def _reference(resource: api.Resource) -> dict[str, Any]:
    """What an Event needs of the object it is about."""
    metadata = resource.metadata
    return {
        "apiVersion": API_VERSION,
        "kind": resource.crd.kind,
        "metadata": {
            "name": metadata.name,
            "namespace": metadata.namespace or "",
            "uid": metadata.uid or "",
        },
    }


# What a pass reports.


@dataclass(frozen=True)
class Done:
    """The pass ran to the end (its spec may still have been refused: `outcome.refused`)."""

    outcome: Outcome


@dataclass(frozen=True)
class Retry:
    """The pass failed in a way that may pass (the API server was busy or unreachable, or
    another writer changed the resource since it was read): run it again after a backoff."""

    message: str


@dataclass(frozen=True)
class Failed:
    """The API server refused a write in a way retrying will not mend; the next resync tries
    again."""

    message: str


@dataclass(frozen=True)
class Gone:
    """Nothing to serve: the resource, or its namespace, is being deleted."""

    message: str


Result = Done | Retry | Failed | Gone


def result_of(run: Callable[[], Outcome]) -> Result:
    """What a pass `run` did, its API failures included."""
    try:
        return Done(run())
    except kube.ApiError as exc:
        if exc.namespace_terminating:
            return Gone(f"{exc}: its namespace is being deleted")
        if exc.transient:
            return Retry(str(exc))
        return Failed(str(exc))


def _label(result: Result) -> str:
    """The outcome label of `specfleet_operator_reconcile_seconds`."""
    if isinstance(result, Done):
        outcome = result.outcome
        if outcome.refused is not None:
            return "refused"
        return "changed" if outcome.applied or outcome.status_changed else "unchanged"
    if isinstance(result, Gone):
        return "unchanged"
    return "error"


class Engine:
    """The operator's state, queue and workers (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        client: Api,
        observe: model_pass.Observer | None = None,
        peering: Peering | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        count_capture: capture_pass.Counter | None = None,
    ) -> None:
        self.config = config
        self.api = client
        self.observe = observe
        self.count_capture = count_capture
        self.peering = peering
        self.clock = clock
        self.monotonic = monotonic
        self.children = kube.Children()
        self.queue: WorkQueue[Ref] = WorkQueue(clock=monotonic)
        self.indexes = Indexes()
        self._lock = threading.Lock()
        self._models: dict[Key, InferenceModel] = {}
        self._policies: dict[Key, RoutingPolicy] = {}
        self._rolled: dict[Key, tuple[Applied, ...]] = {}
        """What each model's first pass wrote, for the full pass that follows to report."""
        self._failures: dict[Ref, int] = {}
        """Passes that failed in a row, by resource, for the backoff."""
        self._acting: tuple[float, bool] | None = None
        self._resync: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: Config, peering: Peering | None = None) -> Engine:
        """An engine on the API server of the current kubeconfig (or the pod's account)."""
        url = config.prometheus_url
        return cls(config, kube.Kube(), observer(url), peering, count_capture=capture_counter(url))

    # kopf's entry points: they keep what the watch saw and enqueue.

    def model_changed(self, body: kopf.Body) -> None:
        """A new, changed or (after a restart) existing InferenceModel: its first pass, urgent."""
        model = self._parse(body)
        assert isinstance(model, InferenceModel)
        with self._lock:
            self._models[key_of(model)] = model
        self.queue.add(Ref(MODEL, *key_of(model)), Priority.URGENT)

    def model_seen(self, deleted: bool, body: kopf.Body) -> None:
        """A watch event of an InferenceModel: keeps the model for the passes and, when what
        routers need of it changed (it turned Ready or not, appeared or went away), queues the
        policies naming it (only their ConfigMaps change, so the routers reload rather than
        restart). What routers need is kept in kopf's index alone; the change is told from
        the model the engine kept."""
        key = key_of(body)
        if deleted:
            self.queue.forget(Ref(MODEL, *key))
            self.children.forget(*key)
        model = None if deleted else self._parse_quietly(body, InferenceModel)
        state = None if deleted else policy_pass.model_state(body)
        with self._lock:
            before = self._models.get(key)
            _put(self._models, key, model)
            if deleted:
                self._rolled.pop(key, None)
            if before is not None and state == policy_pass.state_of(before):
                return
            naming = [
                policy_key
                for policy_key, policy in self._policies.items()
                if policy_key[0] == key[0] and key[1] in policy_pass.names(policy)
            ]
        for policy_key in naming:
            self.queue.add(Ref(POLICY, *policy_key))

    def policy_changed(self, body: kopf.Body) -> None:
        """A new, changed or (after a restart) existing RoutingPolicy."""
        policy = self._parse(body)
        assert isinstance(policy, RoutingPolicy)
        with self._lock:
            self._policies[key_of(policy)] = policy
        self.queue.add(Ref(POLICY, *key_of(policy)))

    def policy_seen(self, deleted: bool, body: kopf.Body) -> None:
        """A watch event of a RoutingPolicy: keeps it for the passes."""
        key = key_of(body)
        if deleted:
            self.queue.forget(Ref(POLICY, *key))
            self.children.forget(*key, owner_kind=POLICY)
        policy = None if deleted else self._parse_quietly(body, RoutingPolicy)
        with self._lock:
            _put(self._policies, key, policy)

    def child_seen(self, kind: str, namespace: str, owner: str) -> None:
        """A watch event of a child that status is computed from (a Deployment): its owner's
        status follows it."""
        with self._lock:
            known = (namespace, owner) in (self._models if kind == MODEL else self._policies)
        if known:
            self.queue.add(Ref(kind, namespace, owner))

    # The background work.

    def resync(self) -> None:
        """Queues every known model, then every policy: status from their Deployments,
        drifted children put back. A standby skips it."""
        if not self.acting():
            return
        with self._lock:
            refs = [Ref(MODEL, *key) for key in self._models]
            refs += [Ref(POLICY, *key) for key in self._policies]
        for ref in refs:
            self.queue.add(ref)

    def acting(self) -> bool:
        """Whether this operator acts: always without peering, else while no live peer
        outranks it (read from kopf's peering object, trusted for `ACTING_TTL_SECONDS`)."""
        if self.peering is None:
            return True
        now = self.monotonic()
        with self._lock:
            if self._acting is not None and now - self._acting[0] < ACTING_TTL_SECONDS:
                return self._acting[1]
        found = self.api.get_path(self.peering.path(), f"reading peering {self.peering.name}")
        peers = (found or {}).get("status") or {}
        verdict = acting(peers, self.peering.priority, self.clock())
        with self._lock:
            self._acting = (now, verdict)
        return verdict

    def work(self) -> None:
        """A worker: takes resources from the queue and runs their passes, until closed."""
        while (taken := self.queue.take()) is not None:
            try:
                self.run_one(taken)
            except Exception:
                log.exception("pass over %s %s/%s failed", *taken.key)
            finally:
                self.queue.done(taken.key)

    def run_due(self) -> list[Result | None]:
        """Runs every pass that is due now, in the calling thread, as one worker would (what
        a test steps through)."""
        results = []
        while isinstance(taken := self.queue.next(), Taken):
            try:
                results.append(self.run_one(taken))
            finally:
                self.queue.done(taken.key)
        return results

    def run_one(self, taken: Taken[Ref]) -> Result | None:
        """The pass `taken` asks for, and what follows from what it reports (a full pass
        after a first one, the next decision's time, a retry); None when it did not run."""
        ref = taken.key
        try:
            if not self.acting():
                log.debug("%s %s/%s: a peer acts, not this operator", *ref)
                return None
        except kube.ApiError as exc:
            log.warning("%s; %s %s/%s waits", exc, *ref)
            self.queue.add(ref, taken.priority, after=self._backoff(ref))
            return None
        first = ref.kind == MODEL and taken.priority == Priority.URGENT
        result = self._pass(ref, first=first)
        if result is None:
            return None
        if isinstance(result, Retry):
            delay = self._backoff(ref)
            log.warning("%s %s/%s: %s; again in %.1fs", *ref, result.message, delay)
            self.queue.add(ref, taken.priority, after=delay)
            return result
        self._failures.pop(ref, None)
        if isinstance(result, Failed):
            log.error("%s %s/%s: %s", *ref, result.message)
        elif isinstance(result, Gone):
            log.info("%s %s/%s: %s", *ref, result.message)
        elif first and result.outcome.refused is None:
            with self._lock:
                before = self._rolled.get(ref.key, ())
                self._rolled[ref.key] = tuple(dict.fromkeys((*before, *result.outcome.applied)))
            self.queue.add(ref)
        elif result.outcome.next_decision is not None:
            wait = (result.outcome.next_decision - self.clock()).total_seconds()
            self.queue.add(ref, after=wait)
        return result

    def _backoff(self, ref: Ref) -> float:
        failures = self._failures.get(ref, 0)
        self._failures[ref] = failures + 1
        return float(min(MAX_BACKOFF_SECONDS, BACKOFF_SECONDS * 2**failures))

    async def start(self) -> None:
        """Starts the workers and the resync loop."""
        self._resync = asyncio.get_running_loop().create_task(self._resync_forever())
        for number in range(WORKERS):
            threading.Thread(target=self.work, name=f"worker-{number}", daemon=True).start()

    async def stop(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
        self.queue.close()

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            try:
                await asyncio.to_thread(self.resync)
            except kube.ApiError as exc:
                log.warning("resync skipped: %s", exc)

    # The passes.

    def _parse(self, body: kopf.Body) -> api.Resource:
        """The resource in a handler's body; a body the API should have refused is reported
        by an Event and never retried until it changes (kopf's PermanentError)."""
        try:
            return api.parse(dict(body))
        except api.ManifestError as exc:
            self._event(dict(body), "Warning", "InvalidSpec", str(exc))
            raise kopf.PermanentError(str(exc)) from exc

    @staticmethod
    def _parse_quietly(body: kopf.Body, kind: type[R]) -> R | None:
        """The resource in a watch event's body; None when it does not parse (its handler
        reports that)."""
        try:
            resource = api.parse(dict(body))
        except api.ManifestError:
            return None
        return resource if isinstance(resource, kind) else None

    def _event(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """Posts an Event through specfleet's own client: kopf's posting works only inside its
        handlers' context, and the passes run outside it. A failure to post is logged, never
        fatal."""
        try:
            self.api.event(involved, type, reason, message, self.clock())
        except kube.ApiError as exc:
            log.warning("%s", exc)

    def _pass(self, ref: Ref, *, first: bool) -> Result | None:
        """One pass over `ref` as the watch last saw it (None: it is gone or never parsed),
        its Events posted and its time measured."""
        full = ref.kind == MODEL and not first
        with self._lock:
            resource: api.Resource | None = (
                self._models.get(ref.key) if ref.kind == MODEL else self._policies.get(ref.key)
            )
            applied_before = self._rolled.pop(ref.key, ()) if full else ()
        if resource is None:
            return None
        started = time.monotonic()
        if isinstance(resource, InferenceModel):
            result = result_of(lambda: self._model_pass(resource, first, applied_before))
        else:
            assert isinstance(resource, RoutingPolicy)
            result = result_of(lambda: self._policy_pass(resource))
        if isinstance(result, Done):
            outcome = result.outcome
            for event in outcome.events:
                self._event(_reference(resource), event.type, event.reason, event.message)
            if outcome.applied:
                log.info("applied %s", ", ".join(map(str, outcome.applied)))
        elif full:
            with self._lock:  # the full pass did not happen: it still owes the report
                self._rolled.setdefault(ref.key, applied_before)
        metrics.RECONCILE_SECONDS.labels(ref.kind, _label(result)).observe(
            time.monotonic() - started
        )
        return result

    def _model_pass(
        self, model: InferenceModel, first: bool, applied_before: tuple[Applied, ...]
    ) -> Outcome:
        return model_pass.run(
            model,
            _observed(key_of(model), self.indexes.children),
            self.api,
            self.config,
            self.clock(),
            self.children,
            self.observe,
            rollout_only=first,
            applied_before=applied_before,
            count=self.count_capture,
        )

    def _policy_pass(self, policy: RoutingPolicy) -> Outcome:
        namespace = policy.metadata.namespace or ""
        found = {n: _first((namespace, n), self.indexes.models) for n in policy_pass.names(policy)}
        return policy_pass.run(
            policy,
            {n: state for n, state in found.items() if state is not None},
            _observed(key_of(policy), self.indexes.router_children),
            self.api,
            self.config,
            self.clock(),
            self.children,
            self.count_capture,
        )

"""The operator's engine: the state it keeps between passes, and who runs which pass.

`specfleet run` makes one `Engine` from the `Config` it reads at start and hands it to kopf;
`specfleet.handlers` only delegates to it. The engine keeps the parsed resources it watches,
what routers need of each model (`ModelState`), which versions of the children match their
rendering (`kube.Children`) and the backlog of full passes, and runs the passes
(`specfleet.reconcile`), translating their failures for kopf.

Two passes per change, by design. A handler's pass over a new or changed InferenceModel writes
only what its pods need (the Deployment and the gate's ConfigMap); the full pass (Service,
PodDisruptionBudget, autoscaling, status, Events) follows from the backlog's thread once the
handlers are idle (`specfleet.backlog`). So when hundreds of models arrive at once, every one
starts its pods before any gets its Service; bench/operator_scale.py measures it.

Threads, and what each owns:
- kopf's worker threads run the handlers: a model's first pass, every policy pass a handler
  or a model's readiness asks for, and the watch events that keep the state;
- the `backlog` thread runs the full passes the first passes left;
- the resync loop (a task on kopf's event loop) runs a pass over every resource every
  `Config.resync_seconds`, in a worker thread, unless a peer outranks this operator.
The state (`_models`, `_policies`, `_states`) is written only under `_lock`, by the watch
events, and read as snapshots taken under it; no pass runs while holding it. `kube.Children`
guards itself. Policy passes run one at a time (`_policy_lock`), so two views of a policy
are never written out of order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import kopf

from specfleet import api, kube, metrics, prometheus
from specfleet.api.crdinfo import API_VERSION
from specfleet.api.inferencemodel import InferenceModel, Observation
from specfleet.api.manifests import Manifest
from specfleet.api.routingpolicy import RoutingPolicy
from specfleet.backlog import Backlog, Key
from specfleet.config import Config
from specfleet.reconcile import Applied, Outcome, RefusedError, apply
from specfleet.reconcile import inferencemodel as model_pass
from specfleet.reconcile import routingpolicy as policy_pass
from specfleet.render.routingpolicy import ModelState

log = logging.getLogger(__name__)

RETRY_SECONDS = 10.0
"""How long to wait before retrying after an API failure that may pass."""

Index = Mapping[Key, Any]
"""A kopf index as the engine reads it: a key to the store of what was indexed under it."""


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
    InferenceModel's `ModelState`. kopf fills them before it runs handlers."""

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


def key_of(resource: api.Resource | kopf.Body) -> Key:
    metadata = resource.metadata
    return (metadata.namespace or "", metadata.name or "")


def _first(key: Key, index: Index) -> Any:
    store = index.get(key)
    return next(iter(store)) if store else None


def _observed(key: Key, indexes: Mapping[str, Index]) -> dict[str, Manifest]:
    """Each kind's child summary under `key`, for the kinds that exist."""
    found = {kind: _first(key, index) for kind, index in indexes.items()}
    return {kind: summary for kind, summary in found.items() if summary is not None}


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


class Engine:
    """The operator's state and passes (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        client: Api,
        observe: model_pass.Observer | None = None,
        peering: Peering | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.api = client
        self.observe = observe
        self.peering = peering
        self.clock = clock
        self.children = kube.Children()
        self.backlog = Backlog()
        self.indexes = Indexes()
        self._lock = threading.Lock()
        self._policy_lock = threading.Lock()
        self._models: dict[Key, InferenceModel] = {}
        self._policies: dict[Key, RoutingPolicy] = {}
        self._states: dict[Key, ModelState] = {}
        self._resync: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: Config, peering: Peering | None = None) -> Engine:
        """An engine on the API server of the current kubeconfig (or the pod's account)."""
        return cls(config, kube.Kube(), observer(config.prometheus_url), peering)

    # The handlers' entry points.

    def model_changed(self, body: kopf.Body) -> None:
        """A new, changed or (after a restart) existing InferenceModel: its first pass now,
        its full pass from the backlog."""
        model = self._parse(body)
        assert isinstance(model, InferenceModel)
        with self.backlog.handling():
            outcome = self._model_pass(model, quiet=False, rollout_only=True)
        if outcome is not None:
            self.backlog.add(key_of(model), tuple(outcome.applied))

    def model_seen(self, deleted: bool, body: kopf.Body) -> None:
        """A watch event of an InferenceModel: keeps the model for the resync loop and, when
        what routers need of it changes (it turns Ready or not, appears or goes away), runs
        the passes of the policies naming it at once (only their ConfigMaps change, so the
        routers reload rather than restart)."""
        key = key_of(body)
        if deleted:
            self.backlog.discard(key)
            self.children.forget(*key)
        model = None if deleted else self._parse_quietly(body, InferenceModel)
        state = None if deleted else policy_pass.model_state(body)
        with self._lock:
            _put(self._models, key, model)
            if self._states.get(key) == state:
                return
            _put(self._states, key, state)
            naming = [
                policy
                for policy_key, policy in self._policies.items()
                if policy_key[0] == key[0] and key[1] in policy_pass.names(policy)
            ]
        for policy in naming:
            self._policy_pass_logged(policy)

    def policy_changed(self, body: kopf.Body) -> None:
        """A new, changed or (after a restart) existing RoutingPolicy."""
        policy = self._parse(body)
        assert isinstance(policy, RoutingPolicy)
        self._policy_pass(policy, quiet=False)

    def policy_seen(self, deleted: bool, body: kopf.Body) -> None:
        """A watch event of a RoutingPolicy: keeps it for the resync loop and for the
        readiness changes of its models."""
        key = key_of(body)
        if deleted:
            self.children.forget(*key, owner_kind="RoutingPolicy")
        policy = None if deleted else self._parse_quietly(body, RoutingPolicy)
        with self._lock:
            _put(self._policies, key, policy)

    # The background work.

    def resync(self) -> None:
        """One pass over every known model, then every policy: status from their Deployments,
        drifted children put back. Failures are logged and retried on the next resync. A
        paused peer skips it: kopf pauses its handlers, not this loop."""
        if self.peering is not None:
            found = self.api.get_path(self.peering.path(), f"reading peering {self.peering.name}")
            peers = (found or {}).get("status") or {}
            if not acting(peers, self.peering.priority, self.clock()):
                return
        with self._lock:
            models = list(self._models.items())
            policies = list(self._policies.values())
        for key, model in models:
            if key not in self.backlog:  # else its full pass is on the way
                self._model_pass_logged(model)
        for policy in policies:
            self._policy_pass_logged(policy)

    def finish_forever(self) -> None:
        """The backlog's thread: the full pass of each model a handler began, when it is due."""
        while (item := self.backlog.take()) is not None:
            key, applied = item
            with self._lock:
                model = self._models.get(key)
            if model is not None:  # else deleted meanwhile
                self._model_pass_logged(model, applied)

    async def start(self) -> None:
        """Starts the resync loop and the backlog's thread."""
        self._resync = asyncio.get_running_loop().create_task(self._resync_forever())
        threading.Thread(target=self.finish_forever, name="backlog", daemon=True).start()

    async def stop(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
        self.backlog.close()

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            await asyncio.to_thread(self.resync)

    # The passes.

    def _parse(self, body: kopf.Body) -> api.Resource:
        """The resource in a handler's body; a body the API should have refused is reported
        by an Event and never retried until it changes."""
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
        handlers' context, and the background passes run outside it. A failure to post is
        logged, never fatal."""
        try:
            self.api.event(involved, type, reason, message, self.clock())
        except kube.ApiError as exc:
            log.warning("%s", exc)

    def _run(
        self,
        resource: api.Resource,
        run: Callable[[], Outcome],
        *,
        quiet: bool,
        refused: str,
    ) -> Outcome | None:
        """One pass by `run`, with what every kind shares: failures translated for kopf (an
        Event `refused` when the spec cannot be served, unless `quiet`), Events posted and the
        pass timed. Returns what the pass did (None when refused quietly or let go)."""
        started = time.monotonic()
        result = "error"
        try:
            try:
                outcome = run()
            except RefusedError as exc:
                result = "refused"
                if quiet:
                    return None
                self._event(_reference(resource), "Warning", refused, str(exc))
                raise kopf.PermanentError(str(exc)) from exc
            except kube.ApiError as exc:
                if exc.namespace_terminating:
                    # Its namespace is being deleted, the resource with it: nothing to serve,
                    # and no Event to post (the API server refuses that too).
                    result = "unchanged"
                    log.info("%s: its namespace is being deleted", exc)
                    return None
                if exc.transient:
                    raise kopf.TemporaryError(str(exc), delay=RETRY_SECONDS) from exc
                raise kopf.PermanentError(str(exc)) from exc
            for event in outcome.events:
                self._event(_reference(resource), event.type, event.reason, event.message)
            changed = outcome.applied or outcome.status_changed
            result = "changed" if changed else "unchanged"
            if outcome.applied:
                log.info("applied %s", ", ".join(map(str, outcome.applied)))
            return outcome
        finally:
            metrics.RECONCILE_SECONDS.labels(resource.crd.kind, result).observe(
                time.monotonic() - started
            )

    def _model_pass(
        self,
        model: InferenceModel,
        *,
        quiet: bool,
        rollout_only: bool = False,
        applied_before: tuple[Applied, ...] = (),
    ) -> Outcome | None:
        def run() -> Outcome:
            return model_pass.run(
                model,
                _observed(key_of(model), self.indexes.children),
                self.api,
                self.config,
                self.clock(),
                self.children,
                self.observe,
                rollout_only=rollout_only,
                applied_before=applied_before,
            )

        return self._run(model, run, quiet=quiet, refused="Infeasible")

    def _policy_pass(self, policy: RoutingPolicy, *, quiet: bool) -> Outcome | None:
        def run() -> Outcome:
            namespace = policy.metadata.namespace or ""
            names = policy_pass.names(policy)
            with self._policy_lock:
                found = {n: _first((namespace, n), self.indexes.models) for n in names}
                return policy_pass.run(
                    policy,
                    {n: state for n, state in found.items() if state is not None},
                    _observed(key_of(policy), self.indexes.router_children),
                    self.api,
                    self.config,
                    self.clock(),
                    self.children,
                )

        return self._run(policy, run, quiet=quiet, refused="Refused")

    def _model_pass_logged(
        self, model: InferenceModel, applied_before: tuple[Applied, ...] = ()
    ) -> None:
        """A full pass outside the model's own handler (the backlog, resync): failures are
        logged and retried on the next resync."""
        try:
            self._model_pass(model, quiet=True, applied_before=applied_before)
        except (kopf.PermanentError, kopf.TemporaryError) as exc:
            log.warning("reconcile of InferenceModel %s/%s: %s", *key_of(model), exc)
        except Exception:
            log.exception("reconcile of InferenceModel %s/%s failed", *key_of(model))

    def _policy_pass_logged(self, policy: RoutingPolicy) -> None:
        """A pass outside the policy's own handlers (resync, a model's readiness): failures
        are logged and retried on the next pass."""
        try:
            self._policy_pass(policy, quiet=True)
        except (kopf.PermanentError, kopf.TemporaryError) as exc:
            log.warning("reconcile of RoutingPolicy %s/%s: %s", *key_of(policy), exc)
        except Exception:
            log.exception("reconcile of RoutingPolicy %s/%s failed", *key_of(policy))

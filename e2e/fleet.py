"""A local fleet behind the operator: what a kubelet and a Prometheus Operator would do for
specfleet's model pods, on loopback.

Pods on kwok nodes never run, so for each model Deployment specfleet renders in a namespace
this runs its replicas as local processes:
- the `vllm` container becomes `specfleet-sim`, with the model, served name, tensor-parallel
  size, quantization, `--max-num-seqs` and speculative config read from the container's own
  vLLM arguments, and the GPU from the pod's node selector (`sim_args`);
- the `gate` container runs as itself (the real `specfleet-gate`) with its own arguments, its
  upstream, listen address and limit file made local (`gate_args`);
- the gate's ConfigMap volume is projected into a local file and kept in step with the
  ConfigMap, as the kubelet does, so a limit the operator writes reaches the gate;
- a changed pod template (a rollout: a Restart-mode limit change rewrites `--max-num-seqs`)
  restarts both;
- Prometheus scrapes both with the labels the chart's PodMonitors set (`namespace`,
  `inferencemodel`, `pod`), so the operator's queries select them as on a real cluster.

Router Deployments (a RoutingPolicy's) run too, one local replica each: the `router` container
as itself (the real `specfleet-router`) with its own arguments, listening on loopback
(`router_args`), its ConfigMap (and, with API keys, its Secret) projected to files. The
configuration names backends by in-cluster Service URL (`http://NAME.NAMESPACE.svc:80`), which
do not resolve here, so the projection rewrites each to the local gate of the InferenceModel
that Service fronts (`localize_router_config`) — this fleet knows which gate serves which
model. A model with no local pod (stopped with `kill`, or not started yet) gets an address that
refuses connections, as a Service without ready endpoints does. The rewrite is redone on every
pass, so a new or killed gate reaches the router like a configuration change (reread without a
restart).

The load (`e2e.traffic.Load`) and the simulator's knob (`e2e.traffic.post_behaviour`) are
not stand-ins and live in e2e/traffic.py. Used by the closed-loop e2e tests
(e2e/test_autoscale.py, e2e/test_ha.py) and the routing e2e test (e2e/test_routing.py), which
have not moved onto the real node yet; the demo and e2e/test_real_pods.py run real pods.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from e2e import harness
from e2e.traffic import post_behaviour
from specfleet import catalog, kube
from specfleet.api import labels

Manifest = dict[str, Any]

log = logging.getLogger("specfleet.fleet")

BIN = Path(sys.executable).parent
SIM = BIN / "specfleet-sim"
GATE = BIN / "specfleet-gate"
ROUTER = BIN / "specfleet-router"
MODEL_SERVERS = f"{labels.MANAGED_BY}=specfleet,{labels.COMPONENT}=model-server"
"""The label selector of the Deployments specfleet renders for InferenceModels."""
ROUTERS = f"{labels.MANAGED_BY}=specfleet,{labels.COMPONENT}=router"
"""The label selector of the router Deployments specfleet renders for RoutingPolicies."""
GATE_CONFIG_MOUNT = "/etc/specfleet/gate"
START_TIMEOUT = 30.0

PRODUCTS = {label: product for product, label in labels.GPU_PRODUCT_LABELS.items()}
"""GPU product by the `nvidia.com/gpu.product` label value."""


class FleetError(Exception):
    """A Deployment the fleet cannot run, or a process that would not start."""


def _container(pod: Mapping[str, Any], name: str) -> Manifest:
    for container in pod.get("containers", []):
        if container["name"] == name:
            return dict(container)
    raise FleetError(f"the pod template has no {name!r} container")


def _option(args: Sequence[str], flag: str) -> str | None:
    """The value of `--flag VALUE` (or `--flag=VALUE`) in `args`; the last one wins."""
    value = None
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith(f"{flag}="):
            value = arg.split("=", 1)[1]
    return value


def sim_args(pod: Mapping[str, Any]) -> list[str]:
    """`specfleet-sim` flags that simulate the pod template's vLLM container on its GPU."""
    container = _container(pod, "vllm")
    args = [*container.get("command", []), *container.get("args", [])]
    if args[:2] != ["vllm", "serve"] or len(args) < 3:
        raise FleetError(f"the vllm container does not run `vllm serve MODEL`: {args}")
    model = args[2]
    try:
        catalog.model(model)
    except ValueError as exc:
        raise FleetError(f"the simulator cannot serve it: {exc}") from exc
    product = pod.get("nodeSelector", {}).get(labels.GPU_PRODUCT)
    if product not in PRODUCTS:
        raise FleetError(f"no known {labels.GPU_PRODUCT} in the node selector: {product!r}")
    flags = ["--architecture", model, "--gpu", PRODUCTS[product]]
    for flag in ("--served-model-name", "--tensor-parallel-size", "--max-num-seqs"):
        if (value := _option(args, flag)) is not None:
            flags += ["--model" if flag == "--served-model-name" else flag, value]
    flags += ["--quantization", "fp8" if _option(args, "--quantization") == "fp8" else "none"]
    speculative = _option(args, "--speculative-config")
    if speculative is not None:
        config = json.loads(speculative)
        if config.get("method", "draft_model") == "draft_model":
            flags += ["--draft", config["model"]]
            flags += ["--num-speculative-tokens", str(config.get("num_speculative_tokens", 5))]
    return flags


def gate_args(pod: Mapping[str, Any], upstream: str, config_dir: Path) -> list[str]:
    """The gate container's command line, run locally: in front of `upstream`, on a free
    loopback port, reading its limit from `config_dir` (the projected ConfigMap)."""

    def limit_file(value: str) -> str:
        mounted = Path(value)
        if mounted.parent != Path(GATE_CONFIG_MOUNT):
            raise FleetError(f"the gate reads its limit outside {GATE_CONFIG_MOUNT}: {mounted}")
        return str(config_dir / mounted.name)

    local = {"--upstream": upstream, "--host": harness.LOOPBACK, "--port": "0"}
    return _made_local(_container(pod, "gate"), local, {"--limit-file": limit_file})


def gate_config_name(pod: Mapping[str, Any]) -> str:
    """The ConfigMap the pod template mounts for the gate."""
    for volume in pod.get("volumes", []):
        if volume["name"] == "gate-config" and "configMap" in volume:
            return str(volume["configMap"]["name"])
    raise FleetError("the pod template mounts no gate-config ConfigMap")


def router_args(pod: Mapping[str, Any], mounts: Mapping[str, Path]) -> list[str]:
    """The router container's command line, run locally: on a free loopback port, reading its
    configuration from where `mounts` (mount path -> local directory) projects its volume."""
    local = {"--host": harness.LOOPBACK, "--port": "0"}
    return _made_local(
        _container(pod, "router"), local, {"--config": lambda value: str(local_path(value, mounts))}
    )


def _made_local(
    container: Mapping[str, Any],
    local: Mapping[str, str],
    paths: Mapping[str, Callable[[str], str]],
) -> list[str]:
    """A container's arguments (after the program) with each flag in `local` set to its local
    value (added when absent) and each flag in `paths` given its value mapped through it."""
    args = [*container.get("command", []), *container.get("args", [])][1:]
    missing = dict(local)
    result: list[str] = []
    values = iter(args)
    for arg in values:
        if arg in local:
            next(values, None)
            result += [arg, missing.pop(arg, local[arg])]
        elif arg in paths:
            result += [arg, paths[arg](next(values))]
        else:
            result.append(arg)
    for flag, value in missing.items():
        result += [flag, value]
    return result


def local_path(path: str, mounts: Mapping[str, Path]) -> Path:
    """Where a file the container reads under one of its mounts is projected locally."""
    for mount, directory in mounts.items():
        if Path(path).parent == Path(mount):
            return directory / Path(path).name
        if Path(path) == Path(mount):
            return directory
    raise FleetError(f"{path} is under none of the mounts {sorted(mounts)}")


def router_mounts(pod: Mapping[str, Any], directory: Path) -> dict[str, Path]:
    """Mount path -> local directory for each ConfigMap and Secret volume of the router
    container (its emptyDir scratch space is this machine's temp directory)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {}
    for mount in _container(pod, "router").get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        if "emptyDir" in volume:
            continue
        if "configMap" not in volume and "secret" not in volume:
            raise FleetError(f"volume {mount['name']}: only ConfigMaps and Secrets run locally")
        mounts[mount["mountPath"]] = directory / mount["name"]
    return mounts


def localize_router_config(
    text: str, namespace: str, gates: Mapping[str, str], mounts: Mapping[str, Path], refused: str
) -> str:
    """A router configuration file made local: each backend's in-cluster Service URL becomes
    the local gate of the model that Service fronts (`gates`: InferenceModel name -> gate URL),
    or `refused` (an address nothing listens on) when no local pod serves it; `apiKeysFile`
    points into its projected Secret. Anything else is kept as it is."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        return text  # not a configuration: the router says so itself
    for backend in (data.get("backends") or {}).values():
        url = backend.get("url") if isinstance(backend, dict) else None
        if not url:
            continue
        host = (urlsplit(url).hostname or "").split(".")
        service, service_namespace = host[0], (host[1] if len(host) > 1 else namespace)
        local = gates.get(service) if service_namespace == namespace else None
        backend["url"] = local or refused
    if data.get("apiKeysFile"):
        data["apiKeysFile"] = str(local_path(data["apiKeysFile"], mounts))
    return yaml.safe_dump(data, sort_keys=False)


def template_hash(pod: Mapping[str, Any]) -> str:
    """Changes exactly when the pod template does, as the ReplicaSet's pod-template-hash."""
    return hashlib.sha256(json.dumps(pod, sort_keys=True).encode()).hexdigest()[:10]


def project(
    config_map: Mapping[str, Any],
    directory: Path,
    transform: Callable[[str], str] = lambda text: text,
) -> None:
    """Write each key of the ConfigMap (or Secret, decoded) as a file, replacing atomically
    (as the kubelet does); `transform` rewrites each value on the way."""
    directory.mkdir(parents=True, exist_ok=True)
    data = dict(config_map.get("data") or {})
    if config_map.get("kind") == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in data.items()}
    for key, raw in data.items():
        value = transform(raw)
        path = directory / key
        if not path.exists() or path.read_text() != value:
            scratch = directory / f".{key}.tmp"
            scratch.write_text(value)
            scratch.replace(path)


class LocalProcess:
    """One local process whose log announces the URL it listens on."""

    def __init__(self, argv: Sequence[str], log_path: Path, announce: str) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        with log_path.open("ab") as out:
            start = out.tell()
            self.process = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.url = harness.wait_for(
            lambda: self._announced(start, announce),
            timeout=START_TIMEOUT,
            what=f"{argv[0]} to listen (log {log_path})",
        )

    def _announced(self, start: int, announce: str) -> str | None:
        with self.log_path.open("rb") as text:
            text.seek(start)
            found = re.search(announce, text.read().decode(errors="replace"))
        if found is None and self.process.poll() is not None:
            raise FleetError(f"exited with {self.process.returncode}; log {self.log_path}")
        return found.group(1) if found else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class LocalPod:
    """One replica of a model Deployment: a simulator and the real gate in front of it."""

    name: str
    namespace: str
    inference_model: str
    template: str
    config_map: str
    config_dir: Path
    sim: LocalProcess
    gate: LocalProcess

    def stop(self) -> None:
        self.gate.stop()
        self.sim.stop()

    def labels(self) -> dict[str, str]:
        return {
            "namespace": self.namespace,
            "inferencemodel": self.inference_model,
            "pod": self.name,
        }


@dataclass
class LocalRouter:
    """The one local replica of a router Deployment."""

    name: str
    template: str
    mounts: dict[str, Path]
    process: LocalProcess

    @property
    def url(self) -> str:
        return self.process.url

    def stop(self) -> None:
        self.process.stop()


@dataclass
class Fleet:
    """Runs every specfleet model Deployment of `namespace` locally; call `sync` (or `start`
    a thread that does every `period` seconds) to follow the cluster."""

    cluster: harness.Cluster
    namespace: str
    prometheus: harness.Prometheus | None
    """Where the pods' metrics are scraped; None: not scraped (a test that needs no metrics)."""
    workdir: Path
    sim_flags: Callable[[str], Sequence[str]] = lambda _name: ()
    """Extra simulator flags for an InferenceModel (acceptance rate, time factor, seed)."""
    replicas: int = 1
    """Local replicas per Deployment at most (each is a simulator and a gate)."""
    period: float = 0.5
    pods: dict[str, list[LocalPod]] = field(default_factory=dict)
    """Running replicas by Deployment name."""
    routers: dict[str, LocalRouter] = field(default_factory=dict)
    """Running routers by Deployment name (a RoutingPolicy's name)."""
    errors: dict[str, str] = field(default_factory=dict)
    """Why a Deployment is not running, by name."""
    killed: set[str] = field(default_factory=set)
    """Model Deployments whose local pods were killed and stay down (`kill`)."""
    _refused: str = field(
        default_factory=lambda: f"http://{harness.LOOPBACK}:{harness.free_port()}"
    )
    """An address nothing listens on: where a router's backend without a local pod points."""
    _kube: kube.Kube | None = None
    _targets: list[Manifest] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self) -> kube.Kube:
        if self._kube is None:
            self._kube = kube.Kube.from_kubeconfig(str(self.cluster.kubeconfig))
        return self._kube

    def _list(self, path: str, **query: str) -> list[Manifest]:
        found = self._client().get_path(path, f"listing {path}", list(query.items()))
        return list(found["items"]) if found else []

    def sync(self) -> None:
        """One pass: start, restart and stop local pods to match the Deployments, project the
        gates' ConfigMaps, and point Prometheus at what runs."""
        with self._lock:
            base = f"/api/v1/namespaces/{self.namespace}"
            deployments = self._list(
                f"/apis/apps/v1/namespaces/{self.namespace}/deployments",
                labelSelector=MODEL_SERVERS,
            )
            config_maps = {c["metadata"]["name"]: c for c in self._list(f"{base}/configmaps")}
            wanted = {
                d["metadata"]["name"]: d
                for d in deployments
                if d["metadata"]["name"] not in self.killed
            }
            for name in [n for n in self.pods if n not in wanted]:
                self._stop(name)
            for name, deployment in wanted.items():
                try:
                    self._reconcile(name, deployment, config_maps)
                except (FleetError, harness.HarnessError) as exc:
                    self._failed(name, exc)
                    self._stop(name)
                else:
                    self.errors.pop(name, None)
            self._point_prometheus()
            self._sync_routers(config_maps)

    def _failed(self, name: str, exc: Exception) -> None:
        if self.errors.get(name) != str(exc):
            log.warning("Deployment %s: %s", name, exc)
        self.errors[name] = str(exc)

    def _sync_routers(self, config_maps: Mapping[str, Manifest]) -> None:
        routers = self._list(
            f"/apis/apps/v1/namespaces/{self.namespace}/deployments", labelSelector=ROUTERS
        )
        wanted = {d["metadata"]["name"]: d for d in routers if d["spec"].get("replicas", 1) > 0}
        for name in [n for n in self.routers if n not in wanted]:
            self.routers.pop(name).stop()
        gates = {pods[0].inference_model: pods[0].gate.url for pods in self.pods.values() if pods}
        for name, deployment in wanted.items():
            try:
                self._reconcile_router(name, deployment, config_maps, gates)
            except (FleetError, harness.HarnessError, kube.ApiError) as exc:
                self._failed(name, exc)
                if name in self.routers:
                    self.routers.pop(name).stop()
            else:
                self.errors.pop(name, None)

    def _reconcile_router(
        self,
        name: str,
        deployment: Manifest,
        config_maps: Mapping[str, Manifest],
        gates: Mapping[str, str],
    ) -> None:
        pod = deployment["spec"]["template"]["spec"]
        template = template_hash(deployment["spec"]["template"])
        running = self.routers.get(name)
        if running is not None and running.template != template:
            self.routers.pop(name).stop()
            running = None
        mounts = (
            running.mounts if running else router_mounts(pod, self.workdir / f"{name}-{template}")
        )
        # As the kubelet: volumes are in place (and kept current) before and while it runs.
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in _container(pod, "router").get("volumeMounts", []):
            if mount["mountPath"] not in mounts:
                continue  # scratch space: this machine's temp directory (router_mounts)
            directory = mounts[mount["mountPath"]]
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                source = config_maps.get(volume["configMap"]["name"])
                if source is None:
                    raise FleetError(
                        f"ConfigMap {volume['configMap']['name']} does not exist (yet)"
                    )
                project(
                    source,
                    directory,
                    lambda text: localize_router_config(
                        text, self.namespace, gates, mounts, self._refused
                    ),
                )
            else:
                secret = volume["secret"]["secretName"]
                found = self._client().get_path(
                    f"/api/v1/namespaces/{self.namespace}/secrets/{secret}", f"reading {secret}"
                )
                if found is None:
                    raise FleetError(f"Secret {secret} does not exist (yet)")
                project(found, directory)
        if running is None:
            process = LocalProcess(
                [str(ROUTER), *router_args(pod, mounts)],
                self.workdir / f"{name}-{template}" / "router.log",
                r"listening on (http://\S+)",
            )
            log.info("router %s: %s", name, process.url)
            self.routers[name] = LocalRouter(name, template, mounts, process)

    def kill(self, deployment: str) -> None:
        """Stop a model Deployment's local pods and keep them down, as if its node died and
        nothing could replace it; the cluster still believes they run (kwok)."""
        with self._lock:
            self.killed.add(deployment)
            self._stop(deployment)

    def _reconcile(
        self, name: str, deployment: Manifest, config_maps: Mapping[str, Manifest]
    ) -> None:
        pod = deployment["spec"]["template"]["spec"]
        template = template_hash(deployment["spec"]["template"])
        replicas = min(self.replicas, deployment["spec"].get("replicas", 1))
        running = self.pods.get(name, [])
        if any(p.template != template for p in running) or len(running) != replicas:
            self._stop(name)
            running = []
        config_map = gate_config_name(pod)
        if config_map not in config_maps:
            raise FleetError(f"ConfigMap {config_map} does not exist (yet)")
        for local in running:
            project(config_maps[config_map], local.config_dir)
        for index in range(len(running), replicas):
            # As the kubelet: volumes are in place before the containers start.
            pod_name = f"{name}-{template}-{index}"
            project(config_maps[config_map], self.workdir / pod_name / "gate-config")
            running.append(self._start(pod_name, deployment, pod, template))
            self.pods[name] = running

    def _start(self, pod_name: str, deployment: Manifest, pod: Manifest, template: str) -> LocalPod:
        inference_model = deployment["metadata"]["labels"][labels.INFERENCE_MODEL]
        directory = self.workdir / pod_name
        config_dir = directory / "gate-config"
        sim = LocalProcess(
            [str(SIM), "--port", "0", *sim_args(pod), *self.sim_flags(inference_model)],
            directory / "sim.log",
            r"on (http://\S+)",
        )
        try:
            gate = LocalProcess(
                [str(GATE), *gate_args(pod, sim.url, config_dir)],
                directory / "gate.log",
                r"listening on (http://\S+)",
            )
        except BaseException:
            sim.stop()
            raise
        log.info("pod %s: simulator %s, gate %s", pod_name, sim.url, gate.url)
        return LocalPod(
            pod_name,
            self.namespace,
            inference_model,
            template,
            gate_config_name(pod),
            config_dir,
            sim,
            gate,
        )

    def _stop(self, name: str) -> None:
        for local in self.pods.pop(name, []):
            local.stop()

    def _point_prometheus(self) -> None:
        def job(name: str, attribute: str) -> Manifest:
            return {
                "job_name": name,
                "static_configs": [
                    {
                        "targets": [getattr(p, attribute).url.removeprefix("http://")],
                        "labels": p.labels(),
                    }
                    for pods in self.pods.values()
                    for p in pods
                ],
            }

        targets = [job("vllm", "sim"), job("gate", "gate")]
        if self.prometheus is None:
            return
        if targets != self._targets:
            for scrape_config in targets:
                self.prometheus.add_scrape_config(scrape_config)
            self._targets = targets

    def scrape_configs(self) -> list[Manifest]:
        """Prometheus' scrape configs for what runs: jobs `vllm` and `gate`."""
        return list(self._targets)

    def start(self) -> None:
        """Follow the cluster from a thread until `stop`."""

        def loop() -> None:
            while not self._stopping.wait(self.period):
                try:
                    self.sync()
                except Exception:  # the API server may be busy; the next pass retries
                    log.exception("fleet pass failed")

        self.sync()
        self._thread = threading.Thread(target=loop, name="fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            for name in list(self.pods):
                self._stop(name)
            for router in self.routers.values():
                router.stop()
            self.routers.clear()

    def urls(self) -> dict[str, dict[str, str]]:
        """The simulator and gate URLs of each Deployment's first replica."""
        with self._lock:
            return {
                name: {"sim": pods[0].sim.url, "gate": pods[0].gate.url}
                for name, pods in self.pods.items()
                if pods
            }

    def router_urls(self) -> dict[str, str]:
        """The local router of each router Deployment."""
        with self._lock:
            return {name: router.url for name, router in self.routers.items()}

    def set_behaviour(self, deployment: str, **behaviour: float) -> None:
        """Change how every replica's simulator behaves (its admin endpoint):
        `acceptanceRate` as if prompts got easier or harder, `latencyFactor` as if the GPUs
        slowed down."""
        for local in self.pods[deployment]:
            post_behaviour(local.sim.url, behaviour)

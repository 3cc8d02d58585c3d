"""The local control plane that specfleet's end-to-end tests run against.

Owns five things:
- the binaries: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok,
  kwokctl, helm, Prometheus, the Prometheus Operator (e2e/prometheus_operator.py runs it) and
  the real node's at the versions pinned in ``e2e/versions.env``, found in (or built into) the
  cache by ``e2e/build`` (which also copies the Prometheus Operator's CRDs there);
- the cluster: ``kwokctl create cluster --runtime binary`` with those local binaries (kwokctl
  never downloads anything), every process listening on 127.0.0.1 but the API server, which
  the real node's pods reach over its bridge (firewalled to loopback and that bridge, for IPv4
  and IPv6), kwok's state under the cache;
- the node pools of ``e2e/nodepools.yaml``: kwok-managed fake nodes with NVIDIA GPU Feature
  Discovery labels, the ``nvidia.com/gpu`` taint and GPU capacity;
- the real node (``e2e/node.py`` runs it), which ``up`` starts unless told not to, with the
  images ``scripts/images`` builds loaded into it; one machine has at most one;
- Prometheus: the real one, built by e2e/build (Debian's lacks Kubernetes service discovery),
  started with a config file the caller can extend and reload.

Called by ``e2e/conftest.py`` (pytest fixtures), the other e2e modules, ``e2e/cluster``
(``e2e/cli.py``: ``up``, ``down``, ``status``, ``kubeconfig``, ``place`` and the pinned
``kubectl`` and ``helm``) and ``bench/operator_scale.py``. ``specfleet demo`` runs
``scripts/demo``, which reaches this module only through ``e2e/cluster``: ``up --prometheus``
(its Prometheus is the Prometheus Operator's, a pod on the real node, not the one
``start_prometheus`` runs), ``place``, ``kubectl``, ``helm`` and ``down``. Standard library
and PyYAML only, so it works before the specfleet package is installed.

Environment: ``SPECFLEET_CACHE`` (default ``~/.cache/specfleet``) holds binaries, kwok's work
directory (``$SPECFLEET_CACHE/kwok``) and per-cluster state (``$SPECFLEET_CACHE/state/<name>``);
``SPECFLEET_E2E_NODES_PER_POOL`` overrides the node count of every pool.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from e2e import node

E2E_DIR = Path(__file__).resolve().parent
BUILD_SCRIPT = E2E_DIR / "build"
VERSIONS_FILE = E2E_DIR / "versions.env"
NODEPOOLS_FILE = E2E_DIR / "nodepools.yaml"

DEFAULT_CLUSTER_NAME = "specfleet-e2e"
NODE_POOL_LABEL = "specfleet.dev/node-pool"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
APISERVER_CHAIN = "SPECFLEET-APISERVER"
"""The INPUT chain that keeps the API server, which listens on every address, to this host."""

PROMETHEUS_OPERATOR = "prometheus-operator"
"""The binary, and the state directory, of the CLI's detached Prometheus Operator."""
SEAWEEDFS = "seaweedfs"
"""The state directory of a cluster's S3-compatible store (e2e/s3.py), SeaweedFS's weed."""
FIREWALLED_PORTS = "firewalled-ports"
"""In a detached program's state directory: the ports it opened to the real node's pods, one
``CHAIN PORT`` line each (``firewall_port``), which ``stop_detached`` closes."""

Manifest = dict[str, Any]
T = TypeVar("T")


class HarnessError(Exception):
    """Something the local control plane cannot do; the message says what to do about it."""


class CommandError(HarnessError):
    """A command (kubectl, kwokctl, e2e/build) exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{' '.join(self.argv)} exited {returncode}: {stderr.strip()}")


def log(message: str) -> None:
    print(f"[e2e] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Pure helpers: no I/O, unit-testable.


def parse_env(text: str) -> dict[str, str]:
    """Parse ``KEY=value`` lines (comments and blank lines ignored), as in versions.env."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise HarnessError(f"versions.env line {number}: expected KEY=value, got {raw!r}")
        values[key] = value.strip().strip("'\"")
    return values


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def as_manifest(self) -> Manifest:
        return {"key": self.key, "value": self.value, "effect": self.effect}


@dataclass(frozen=True)
class NodePool:
    """One pool of identical fake nodes, as declared in nodepools.yaml."""

    name: str
    nodes: int
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    resources: Mapping[str, str]

    def node_names(self) -> list[str]:
        return [f"{self.name}-{index}" for index in range(self.nodes)]


def parse_node_pools(text: str, nodes_per_pool: int | None = None) -> list[NodePool]:
    """Parse nodepools.yaml; ``nodes_per_pool`` overrides the file's default and per-pool counts."""
    data = yaml.safe_load(text)
    default_count = int(data.get("nodesPerPool", 2))
    common = {str(k): str(v) for k, v in (data.get("commonLabels") or {}).items()}
    pools = []
    for entry in data["pools"]:
        name = str(entry["name"])
        count = (
            nodes_per_pool if nodes_per_pool is not None else int(entry.get("nodes", default_count))
        )
        if count < 0:
            raise HarnessError(f"node pool {name}: node count must be >= 0, got {count}")
        labels = {**common, **{str(k): str(v) for k, v in (entry.get("labels") or {}).items()}}
        labels[NODE_POOL_LABEL] = name
        taints = tuple(
            Taint(str(t["key"]), str(t.get("value", "")), str(t["effect"]))
            for t in entry.get("taints") or []
        )
        resources = {str(k): str(v) for k, v in entry["resources"].items()}
        pools.append(NodePool(name, count, labels, taints, resources))
    return pools


def node_manifest(pool: NodePool, node_name: str) -> Manifest:
    """A kwok-managed Node of ``pool``, with status (a Node keeps the status it is created with)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {**pool.labels, "kubernetes.io/hostname": node_name},
        },
        "spec": {"taints": [taint.as_manifest() for taint in pool.taints]},
        "status": {"capacity": dict(pool.resources), "allocatable": dict(pool.resources)},
    }


def kwokctl_config(versions: Mapping[str, str], bin_dir: Path) -> list[Manifest]:
    """kwokctl's configuration: loopback only, the pinned versions, the local kubectl."""
    return [
        {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "options": {
                "runtime": "binary",
                # The default, 0.0.0.0, would expose an unauthenticated etcd to the network.
                "bindAddress": LOOPBACK,
                "kubeVersion": versions["KUBERNETES_VERSION"],
                "etcdVersion": versions["ETCD_VERSION"].removeprefix("v"),
                # There is no flag for kubectl; without this kwokctl would fetch one if it is
                # not on PATH.
                "kubectlBinary": str(bin_dir / "kubectl"),
                # Pods of the real node reach the API server at the `kubernetes` Service's
                # address (what in-cluster clients such as kopf dial) and at the bridge's
                # address it advertises.
                "kubeApiserverCertSANs": [KUBERNETES_SERVICE_IP, node.GATEWAY],
            },
            "componentsPatches": [
                {
                    "name": "kube-apiserver",
                    "extraArgs": [
                        # The default Service range is a /24: 254 Services, too few for a
                        # fleet of models (bench/operator_scale.py makes 1000).
                        {"key": "service-cluster-ip-range", "value": SERVICE_CIDR},
                        # Pods cannot reach loopback: the API server listens on every address
                        # (a firewall chain, APISERVER_CHAIN, admits only loopback and the
                        # real node's bridge) and advertises the bridge's.
                        {"key": "bind-address", "value": "0.0.0.0", "override": True},
                        {"key": "advertise-address", "value": node.GATEWAY},
                        # The real node's name resolves nowhere: call its kubelet (logs,
                        # exec) at its address.
                        {"key": "kubelet-preferred-address-types", "value": "InternalIP"},
                    ],
                },
                {
                    # kwokctl starts kwok with --manage-all-nodes=true, which would fake the
                    # real node's pods too: kwok manages only the nodes it was given.
                    "name": "kwok-controller",
                    "extraArgs": [
                        {"key": "manage-all-nodes", "value": "false", "override": True},
                        {
                            "key": "manage-nodes-with-annotation-selector",
                            "value": f"{KWOK_NODE_ANNOTATION}=fake",
                        },
                    ],
                },
            ],
        }
    ]


def status_mismatches(node: Manifest, pool: NodePool) -> list[str]:
    """Resource quantities of a live Node that differ from what its pool declares."""
    status = node.get("status") or {}
    problems = []
    for field_name in ("capacity", "allocatable"):
        actual = status.get(field_name) or {}
        for resource, quantity in pool.resources.items():
            if actual.get(resource) != quantity:
                problems.append(
                    f"{field_name}[{resource}]={actual.get(resource)!r}, want {quantity!r}"
                )
    return problems


def node_is_ready(node: Manifest) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def node_is_schedulable(node: Manifest) -> bool:
    """Ready, and the node lifecycle controller has lifted its not-ready taint.

    A new node carries ``node.kubernetes.io/not-ready:NoSchedule`` until the controller manager
    notices the Ready condition, a moment after kwok sets it; until then nothing schedules there.
    """
    taints = (node.get("spec") or {}).get("taints") or []
    lifecycle = [t for t in taints if str(t.get("key", "")).startswith("node.kubernetes.io/")]
    return node_is_ready(node) and not lifecycle and not node["spec"].get("unschedulable")


def prometheus_config(
    scrape_configs: Iterable[Mapping[str, Any]], scrape_interval: str
) -> Manifest:
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [dict(job) for job in scrape_configs],
    }


def parse_listening_sockets(proc_net_tcp: str) -> dict[str, str]:
    """Map socket inode -> "address:port" for LISTEN sockets in /proc/net/tcp or tcp6 text."""
    listening = {}
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != "0A":  # 0A is TCP_LISTEN
            continue
        address_hex, port_hex = fields[1].split(":")
        listening[fields[9]] = f"{_decode_proc_address(address_hex)}:{int(port_hex, 16)}"
    return listening


def _decode_proc_address(address_hex: str) -> str:
    raw = bytes.fromhex(address_hex)
    # /proc stores each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return socket.inet_ntop(socket.AF_INET, words)
    return "[" + socket.inet_ntop(socket.AF_INET6, words) + "]"


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


# --------------------------------------------------------------------------------------------
# Paths, versions, binaries.


def cache_dir() -> Path:
    return Path(os.environ.get("SPECFLEET_CACHE") or Path.home() / ".cache" / "specfleet")


def kwok_workdir() -> Path:
    return cache_dir() / "kwok"


def state_dir(name: str) -> Path:
    """Our own per-cluster state (Prometheus started by the CLI); kwokctl owns kwok_workdir()."""
    return cache_dir() / "state" / name


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    return parse_env(path.read_text())


def load_node_pools(
    path: Path = NODEPOOLS_FILE, nodes_per_pool: int | None = None
) -> list[NodePool]:
    if nodes_per_pool is None and os.environ.get("SPECFLEET_E2E_NODES_PER_POOL"):
        nodes_per_pool = int(os.environ["SPECFLEET_E2E_NODES_PER_POOL"])
    return parse_node_pools(path.read_text(), nodes_per_pool)


def run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    args = [str(a) for a in argv]
    try:
        result = subprocess.run(
            args, env=env, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise HarnessError(
            f"{args[0]} not found: run e2e/build to build the local control plane"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{' '.join(args)} did not finish within {timeout:.0f}s") from exc
    if check and result.returncode != 0:
        raise CommandError(args, result.returncode, result.stderr or result.stdout)
    return result


def bin_dir() -> Path:
    """The directory e2e/build puts (symlinks to) all binaries of the pinned versions in."""
    return Path(run([BUILD_SCRIPT, "--print-bin-dir"]).stdout.strip())


def ensure_binaries(build: bool = True) -> Path:
    """The binary directory; runs e2e/build (progress on stderr) if anything is missing."""
    if run([BUILD_SCRIPT, "--check"], check=False).returncode != 0:
        if not build:
            raise HarnessError(
                "the local control plane is not built: run e2e/build (about 10 minutes cold)"
            )
        log("binaries missing: running e2e/build (about 10 minutes cold on 2 cores)")
        if subprocess.run([str(BUILD_SCRIPT)], check=False).returncode != 0:
            raise HarnessError("e2e/build failed: see its output above")
    return bin_dir()


def prometheus_operator_crds(build: bool = True) -> list[Path]:
    """The Prometheus Operator CRDs at the pinned version: those of the chart's monitoring
    objects (ServiceMonitor, PodMonitor, PrometheusRule) and the rest the operator reads
    (Prometheus, Probe, ...); runs e2e/build if they are missing.

    e2e/build copies them from the Go module into the cache; the directory appears only
    once complete.
    """
    directory = Path(run([BUILD_SCRIPT, "--print-crd-dir"]).stdout.strip())
    if not directory.is_dir():
        if not build:
            raise HarnessError(f"no Prometheus Operator CRDs in {directory}: run e2e/build")
        log("Prometheus Operator CRDs missing: running e2e/build")
        if subprocess.run([str(BUILD_SCRIPT)], check=False).returncode != 0:
            raise HarnessError("e2e/build failed: see its output above")
    return sorted(directory.glob("*.yaml"))


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.5,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns something other than None/False; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            detail = f"; last seen: {describe()}" if describe else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def listening_addresses(pid: int) -> list[str]:
    """Addresses ``pid`` listens on (TCP), read from /proc."""
    sockets: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        try:
            sockets.update(parse_listening_sockets(Path(f"/proc/{pid}/net/{table}").read_text()))
        except OSError:
            continue
    found = []
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return []
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match and match.group(1) in sockets:
            found.append(sockets[match.group(1)])
    return sorted(set(found))


# --------------------------------------------------------------------------------------------
# The cluster.


@dataclass(frozen=True)
class Process:
    component: str
    pid: int
    alive: bool
    listening: list[str]


@dataclass(frozen=True)
class Cluster:
    """A kwok cluster run by kwokctl's binary runtime; a handle, cheap to create."""

    name: str
    bin_dir: Path

    @property
    def workdir(self) -> Path:
        return kwok_workdir() / "clusters" / self.name

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig.yaml"

    def exists(self) -> bool:
        return (self.workdir / "kwok.yaml").exists()

    def env(self) -> dict[str, str]:
        """Environment for kubectl, kwokctl and helm: our binaries first on PATH, our kubeconfig."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KWOK_")}
        env["KWOK_WORKDIR"] = str(kwok_workdir())
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        # Helm keeps its repositories, plugins and cache under the cache too, not in ~.
        for kind in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{kind}_HOME"] = str(cache_dir() / "helm" / kind.lower())
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> str:
        """Run the pinned kubectl against this cluster and return its stdout."""
        argv: list[str | Path] = [
            self.bin_dir / "kubectl",
            f"--kubeconfig={self.kubeconfig}",
            *args,
        ]
        return run(argv, env=self.env(), input=input, check=check, timeout=timeout).stdout

    def helm(self, *args: str, timeout: float = 300) -> str:
        """Run the pinned helm against this cluster and return its stdout."""
        argv: list[str | Path] = [self.bin_dir / "helm", f"--kubeconfig={self.kubeconfig}", *args]
        return run(argv, env=self.env(), timeout=timeout).stdout

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json"))

    def get_raw(self, path: str) -> Any:
        return json.loads(self.kubectl("get", "--raw", path))

    def apply(self, manifests: Iterable[Manifest]) -> None:
        """Server-side apply under the field manager ``specfleet-e2e``."""
        text = yaml.safe_dump_all(list(manifests), sort_keys=False)
        self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=specfleet-e2e",
            "-f",
            "-",
            input=text,
        )

    def healthy(self) -> bool:
        if not self.kubeconfig.exists():
            return False
        result = run(
            [
                self.bin_dir / "kubectl",
                f"--kubeconfig={self.kubeconfig}",
                "get",
                "--raw",
                "/readyz",
                "--request-timeout=5s",
            ],
            check=False,
            timeout=15,
        )
        return result.returncode == 0 and result.stdout.strip() == "ok"

    def kwokctl(self, *args: str, timeout: float = 300) -> str:
        argv: list[str | Path] = [self.bin_dir / "kwokctl", f"--name={self.name}", *args]
        return run(argv, env=self.env(), timeout=timeout).stdout

    def processes(self) -> list[Process]:
        found = []
        for pid_file in sorted((self.workdir / "pids").glob("*.pid")):
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            alive = _pid_alive(pid)
            found.append(
                Process(pid_file.stem, pid, alive, listening_addresses(pid) if alive else [])
            )
        return found

    def nodes(self) -> list[Manifest]:
        items: list[Manifest] = self.kubectl_json("get", "nodes", "-l", NODE_POOL_LABEL)["items"]
        return items


def create(name: str = DEFAULT_CLUSTER_NAME, *, timeout: float = 180) -> Cluster:
    """Start a new kwok cluster from the local binaries (build them first if missing)."""
    cluster = Cluster(name, ensure_binaries())
    versions = read_versions()
    config_path = state_dir(name) / "kwokctl.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        yaml.safe_dump_all(kwokctl_config(versions, cluster.bin_dir), sort_keys=False)
    )
    b = cluster.bin_dir
    log(f"creating cluster {name} (kwokctl, Kubernetes {versions['KUBERNETES_VERSION']})")
    start = time.monotonic()
    cluster.kwokctl(
        f"--config={config_path}",
        "create",
        "cluster",
        "--runtime=binary",
        # Empty: do not add a context to the user's kubeconfig; ours is cluster.kubeconfig.
        "--kubeconfig=",
        f"--kube-apiserver-binary={b / 'kube-apiserver'}",
        f"--kube-controller-manager-binary={b / 'kube-controller-manager'}",
        f"--kube-scheduler-binary={b / 'kube-scheduler'}",
        f"--kwok-controller-binary={b / 'kwok'}",
        f"--etcd-binary={b / 'etcd'}",
        f"--wait={int(timeout)}s",
        f"--timeout={int(timeout)}s",
        timeout=timeout + 30,
    )
    wait_for(cluster.healthy, timeout=timeout, what=f"the API server of {name} to be ready")
    firewall_port(*apiserver_chain(cluster))
    log(f"cluster {name} is up in {time.monotonic() - start:.0f}s")
    return cluster


def cluster_process_ids(cluster: Cluster) -> list[int]:
    """Processes running a binary from the cluster's own bin/ directory (kwokctl links them there).

    kwokctl tracks its processes by pid file only; a component started twice (for instance by
    two sessions racing on one cluster name) leaves a process no pid file names. This finds it.
    """
    prefix = f"{cluster.workdir / 'bin'}{os.sep}"
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            argv0 = (proc_dir / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        if argv0.startswith(prefix):
            found.append(int(proc_dir.name))
    return sorted(found)


def stop_processes(pids: Iterable[int], *, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``grace`` seconds."""
    pending = [pid for pid in pids if _pid_alive(pid)]
    for pid in pending:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        time.sleep(0.2)
        pending = [pid for pid in pending if _pid_alive(pid)]
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # A killed process is still there while the kernel tears it down: gone means gone.
    wait_for(
        lambda: not any(_pid_alive(pid) for pid in pending),
        timeout=30,
        what=f"processes {pending} to die",
    )


def terminate(process: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM ``process``, SIGKILL it if it is still there after ``grace`` seconds; reaped."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_detached(name: str, program: str) -> None:
    """Stop ``program``, started detached for cluster ``name`` with its pid in
    ``state_dir(name)/program/pid``, if it still runs (and that pid is still it); remove the
    firewall chains it recorded in FIREWALLED_PORTS there."""
    directory = state_dir(name) / program
    pid_file = directory / "pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            command = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        except OSError:
            command = ""  # gone already
        if program in command and _pid_alive(pid):
            log(f"stopping {program} (pid {pid})")
            os.kill(pid, signal.SIGTERM)
            try:
                wait_for(lambda: not _pid_alive(pid), timeout=30, what=f"{program} to stop")
            except TimeoutError:
                log(f"{program} (pid {pid}) did not stop in 30s: killing it")
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not _pid_alive(pid), timeout=10, what=f"{program} to die")
        pid_file.unlink()
    firewalled = directory / FIREWALLED_PORTS
    if firewalled.exists():
        for line in firewalled.read_text().splitlines():
            chain, port = line.split()
            unfirewall_port(chain, int(port))
        firewalled.unlink()


def delete(name: str = DEFAULT_CLUSTER_NAME) -> bool:
    """Stop and delete cluster ``name`` and anything the CLI started with it; False if absent."""
    stop_detached(name, PROMETHEUS_OPERATOR)
    stop_detached(name, SEAWEEDFS)
    cluster = Cluster(name, bin_dir())
    existed = cluster.exists() or cluster.workdir.exists()
    handle = real_node(cluster)
    if (state_dir(name) / "node").exists():
        log(f"stopping the real node {node.NODE_NAME}")
        handle.down()
        owner = cache_dir() / "node" / "owner"
        if owner.exists() and owner.read_text().strip() == name:
            owner.unlink()
    if existed:
        with contextlib.suppress(OSError, HarnessError, KeyError, TypeError):
            unfirewall_port(*apiserver_chain(cluster))
        log(f"deleting cluster {name}")
        try:
            # kwokctl insists on a kubeconfig to remove the context from; give it its own,
            # which goes away with the cluster (the user's kubeconfig was never touched).
            cluster.kwokctl("delete", "cluster", f"--kubeconfig={cluster.kubeconfig}", timeout=120)
        except CommandError as exc:
            # A half-created cluster (kwokctl failed early) may be beyond kwokctl's delete:
            # stop the processes it recorded and remove its directory ourselves.
            log(f"kwokctl could not delete {name} ({exc}); stopping its processes directly")
            stop_processes(proc.pid for proc in cluster.processes())
    strays = cluster_process_ids(cluster)
    if strays:
        log(f"stopping processes of {name} that kwokctl did not track: {strays}")
        stop_processes(strays)
    shutil.rmtree(cluster.workdir, ignore_errors=True)
    shutil.rmtree(state_dir(name), ignore_errors=True)
    return existed


def ensure_node_pools(cluster: Cluster, pools: Sequence[NodePool], *, timeout: float = 120) -> None:
    """Create the pools' nodes with their capacity, delete stale ones, wait until all are Ready."""
    wanted = {node: pool for pool in pools for node in pool.node_names()}
    # kwok's nodes only: the real node (e2e/node.py) registers itself.
    existing = {
        item["metadata"]["name"]: item
        for item in cluster.nodes()
        if KWOK_NODE_ANNOTATION in item["metadata"].get("annotations", {})
    }
    stale = sorted(set(existing) - set(wanted))
    if stale:
        cluster.kubectl("delete", "node", *stale, "--wait=false")
    manifests = [node_manifest(pool, node) for node, pool in wanted.items()]
    if manifests:
        cluster.apply(manifests)
    # The API server keeps a Node's status on create (kubelets register that way), but not on
    # update, and kwok's node-initialize stage fills in a default capacity when there is none.
    # So check, and patch the status subresource where it is not what the pool declares.
    for item in cluster.nodes():
        name = item["metadata"]["name"]
        if name in wanted and status_mismatches(item, wanted[name]):
            resources = dict(wanted[name].resources)
            patch = json.dumps({"status": {"capacity": resources, "allocatable": resources}})
            cluster.kubectl(
                "patch", "node", name, "--subresource=status", "--type=merge", "-p", patch
            )

    def not_ready() -> list[str]:
        nodes = {n["metadata"]["name"]: n for n in cluster.nodes()}
        return sorted(
            name
            for name, pool in wanted.items()
            if name not in nodes
            or not node_is_schedulable(nodes[name])
            or status_mismatches(nodes[name], pool)
        )

    wait_for(
        lambda: not not_ready(),
        timeout=timeout,
        what=f"{len(wanted)} nodes of {len(pools)} pools to be Ready, untainted by the node "
        "lifecycle controller and with their capacity",
        describe=lambda: f"not ready: {', '.join(not_ready())}",
    )


def up(
    name: str = DEFAULT_CLUSTER_NAME,
    *,
    nodes_per_pool: int | None = None,
    pools_file: Path = NODEPOOLS_FILE,
    real_node: bool = True,
) -> Cluster:
    """Bring cluster ``name`` up with its node pools and (unless told not to) the real node;
    reuse what already runs and is healthy."""
    cluster = Cluster(name, ensure_binaries())
    if cluster.exists() and cluster.healthy():
        log(f"reusing running cluster {name}")
    else:
        if cluster.exists() or cluster.workdir.exists():
            log(f"cluster {name} exists but is not healthy: recreating it")
            delete(name)
        cluster = create(name)
    pools = load_node_pools(pools_file, nodes_per_pool)
    ensure_node_pools(cluster, pools)
    log(f"node pools ready: {', '.join(f'{p.name} x{p.nodes}' for p in pools)}")
    if real_node:
        ensure_real_node(cluster)
    return cluster


# --------------------------------------------------------------------------------------------
# The real node (e2e/node.py) and the images it runs (scripts/images).

IMAGES_SCRIPT = E2E_DIR.parent / "scripts" / "images"
CHART_FILE = E2E_DIR.parent / "charts" / "specfleet" / "Chart.yaml"
APP_VERSION = str(yaml.safe_load(CHART_FILE.read_text())["appVersion"])
"""The images' tag: the chart's appVersion, as scripts/images tags them."""
RUNTIME_IMAGE = f"specfleet/runtime:{APP_VERSION}"
OPERATOR_IMAGE = f"specfleet/operator:{APP_VERSION}"
VLLM_SIM_IMAGE = f"specfleet/vllm-sim:{APP_VERSION}"


def real_node(cluster: Cluster) -> node.RealNode:
    layout = node.Layout(
        state=state_dir(cluster.name) / "node",
        cache=cache_dir() / "node",
        run=Path("/run/specfleet") / cluster.name,
    )
    return node.RealNode(cluster.name, cluster.bin_dir, cluster.kubeconfig, layout)


def real_node_owner() -> str | None:
    """The cluster whose real node runs on this machine, if any."""
    owner = cache_dir() / "node" / "owner"
    if not owner.exists():
        return None
    name = owner.read_text().strip()
    return name if real_node(Cluster(name, bin_dir())).pid("containerd") else None


def image_archives() -> list[Path]:
    """Build the images if needed (scripts/images: the first time takes minutes) and return
    their OCI archives."""
    if subprocess.run([str(IMAGES_SCRIPT)], check=False).returncode != 0:
        raise HarnessError("scripts/images failed: see its output above")
    return [Path(line) for line in run([IMAGES_SCRIPT, "--print-archives"]).stdout.split()]


def ensure_real_node(cluster: Cluster) -> None:
    """Start the cluster's real node unless it runs; at most one cluster per machine has one."""
    handle = real_node(cluster)
    owner = real_node_owner()
    if owner is not None and owner != cluster.name:
        raise HarnessError(
            f"the real node of cluster {owner} runs on this machine and there can be one: "
            f"e2e/cluster down --name {owner}, or `up --no-real-node` for this one"
        )
    if owner == cluster.name and all(handle.running().values()):
        log(f"reusing the real node {node.NODE_NAME}")
        return
    handle.down()
    (cache_dir() / "node").mkdir(parents=True, exist_ok=True)
    (cache_dir() / "node" / "owner").write_text(f"{cluster.name}\n")
    archives = image_archives()
    start = time.monotonic()
    log(f"starting the real node {node.NODE_NAME} (containerd, kubelet, kube-proxy, CoreDNS)")
    try:
        handle.up(archives, cluster.kubectl)
    except (node.NodeError, CommandError):
        handle.down()
        raise
    log(f"real node {node.NODE_NAME} is Ready in {time.monotonic() - start:.0f}s")


def apiserver_port(cluster: Cluster) -> int:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    server = urllib.parse.urlparse(config["clusters"][0]["cluster"]["server"])
    port: int | None = server.port
    if port is None:
        raise HarnessError(f"no port in the kubeconfig's server {server.geturl()}")
    return port


def port_firewall_rules(chain: str, port: int) -> list[list[str]]:
    """iptables commands (after ``iptables``) that admit TCP ``port`` from loopback and the
    real node's bridge only, through INPUT chain ``chain``."""
    return [
        ["-N", chain],
        ["-A", chain, "-i", "lo", "-j", "RETURN"],
        ["-A", chain, "-i", node.BRIDGE, "-j", "RETURN"],
        ["-A", chain, "-j", "DROP"],
        ["-I", "INPUT", "-p", "tcp", "--dport", str(port), "-j", chain],
    ]


IPTABLES = ("iptables", "ip6tables")
"""A wildcard socket takes IPv6 as well as IPv4: both tables guard it."""


def firewall_port(chain: str, port: int) -> None:
    for command in IPTABLES:
        for rule in port_firewall_rules(chain, port):
            run([command, "-w", *rule])


def unfirewall_port(chain: str, port: int) -> None:
    """Undo ``firewall_port``; what is already gone is skipped."""
    for command in IPTABLES:
        jump = ["-D", "INPUT", "-p", "tcp", "--dport", str(port), "-j", chain]
        run([command, "-w", *jump], check=False)
        for verb in ("-F", "-X"):
            run([command, "-w", verb, chain], check=False)


def apiserver_chain(cluster: Cluster) -> tuple[str, int]:
    port = apiserver_port(cluster)
    return f"{APISERVER_CHAIN}-{port}", port


@contextlib.contextmanager
def cluster_lock(name: str, *, shared: bool = False) -> Iterator[None]:
    """Hold cluster ``name`` for a test session: exclusive to (re)create it, shared to reuse it.

    Two sessions recreating one cluster at the same time would kill each other's processes.
    """
    path = cache_dir() / "state" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    with path.open("a") as lock_file:
        try:
            fcntl.flock(lock_file, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log(
                f"another test session is using cluster {name}: waiting for it to finish "
                "(set SPECFLEET_E2E_CLUSTER=<another name> to run side by side)"
            )
            fcntl.flock(lock_file, mode)
        yield


# --------------------------------------------------------------------------------------------
# Prometheus.


class PrometheusApi:
    """What the tests read of a Prometheus at ``url``: its HTTP API."""

    url: str

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as response:
            payload = json.load(response)
        if payload.get("status") != "success":
            raise HarnessError(f"Prometheus {path} failed: {payload}")
        return payload["data"]

    def query(self, promql: str) -> list[Manifest]:
        """Instant query; returns the result vector."""
        result: list[Manifest] = self.api("query", query=promql)["result"]
        return result

    def active_targets(self) -> list[Manifest]:
        targets: list[Manifest] = self.api("targets", state="active")["activeTargets"]
        return targets

    def ready(self) -> bool:
        """Whether it answers /-/ready."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False


@dataclass
class Prometheus(PrometheusApi):
    """A Prometheus on this host, on loopback; tests add scrape configs and reload it."""

    url: str
    pid: int
    config_path: Path
    data_dir: Path
    scrape_interval: str
    scrape_configs: list[Manifest] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    owns_data_dir: bool = False

    def add_scrape_config(self, scrape_config: Mapping[str, Any]) -> None:
        """Add (or replace, by job_name) a scrape config and reload."""
        job = dict(scrape_config)
        self.scrape_configs = [
            c for c in self.scrape_configs if c.get("job_name") != job["job_name"]
        ]
        self.scrape_configs.append(job)
        self.reload()

    def add_targets(
        self, job_name: str, targets: Sequence[str], labels: Mapping[str, str] | None = None
    ) -> None:
        """Scrape ``targets`` ("host:port", over HTTP at /metrics) as job ``job_name``."""
        static: Manifest = {"targets": list(targets)}
        if labels:
            static["labels"] = dict(labels)
        self.add_scrape_config({"job_name": job_name, "static_configs": [static]})

    def write_config(self) -> None:
        text = yaml.safe_dump(
            prometheus_config(self.scrape_configs, self.scrape_interval), sort_keys=False
        )
        self.config_path.write_text(text)

    def reload(self) -> None:
        """Write the config and make Prometheus load it; raises if Prometheus rejects it."""
        self.write_config()
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30):
                pass
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise HarnessError(f"Prometheus rejected {self.config_path}: {body.strip()}") from exc

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        if self.owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_prometheus(
    scrape_configs: Iterable[Mapping[str, Any]] = (),
    *,
    data_dir: Path | None = None,
    port: int | None = None,
    scrape_interval: str = "1s",
    binary: Path | None = None,
    timeout: float = 60,
) -> Prometheus:
    """Start Prometheus on loopback with ``scrape_configs``; it answers /-/ready on return.
    (Pods reach the one the Prometheus Operator runs: e2e/prometheus_operator.py.)

    Without ``data_dir`` it uses a temporary directory that ``stop()`` removes.
    """
    binary = binary or bin_dir() / "prometheus"
    if not binary.exists():
        raise HarnessError(f"prometheus not found at {binary}: run e2e/build")
    owns_data_dir = data_dir is None
    data_dir = (
        Path(tempfile.mkdtemp(prefix="specfleet-prometheus-")) if data_dir is None else data_dir
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"
    handle = Prometheus(
        url=url,
        pid=0,
        config_path=data_dir / "prometheus.yml",
        data_dir=data_dir,
        scrape_interval=scrape_interval,
        scrape_configs=[dict(c) for c in scrape_configs],
        owns_data_dir=owns_data_dir,
    )
    handle.write_config()
    log_path = data_dir / "prometheus.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={handle.config_path}",
                f"--storage.tsdb.path={data_dir / 'tsdb'}",
                f"--web.listen-address={LOOPBACK}:{port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    handle.pid = process.pid
    handle.process = process

    def ready() -> bool:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise HarnessError(
                f"prometheus exited with {process.returncode}; log {log_path}:\n{tail}"
            )
        return handle.ready()

    try:
        wait_for(ready, timeout=timeout, what=f"Prometheus at {url} to be ready")
    except BaseException:
        handle.process = process
        handle.stop()
        raise
    return handle


ON_THE_REAL_NODE: Manifest = {
    "nodeSelector": {NODE_POOL_LABEL: node.POOL},
    "tolerations": node.TOLERATIONS,
}
"""Where a pod runs on the real node: its pool, tolerating its taints (the chart's operator
takes these as values; a model's `spec.gpu` and a policy's `spec.placement` as fields)."""


def on_the_real_node(manifest: Mapping[str, Any]) -> Manifest:
    """``manifest`` placed on the real node: an InferenceModel's pods (one replica: the node's
    GPUs and cores hold one of each example) or a RoutingPolicy's routers (one) select the
    node's pool and tolerate its taints; anything else unchanged."""
    placed: Manifest = json.loads(json.dumps(manifest))
    where = json.loads(json.dumps(ON_THE_REAL_NODE))
    spec = placed.get("spec") or {}
    if placed.get("kind") == "InferenceModel":
        spec["gpu"] = {**(spec.get("gpu") or {}), **where}
        spec["replicas"] = 1
    elif placed.get("kind") == "RoutingPolicy":
        spec["placement"] = where
        spec["replicas"] = 1
    return placed


# --------------------------------------------------------------------------------------------
# CLI: e2e/cluster up|down|status.


def format_status(name: str) -> tuple[str, bool]:
    """A human-readable status report of cluster ``name`` and whether it is healthy."""
    cluster = Cluster(name, bin_dir())
    if not cluster.exists():
        return f"cluster {name}: not created (run e2e/cluster up --name {name})", False
    healthy = cluster.healthy()
    lines = [
        f"cluster {name}: {'healthy' if healthy else 'NOT healthy'}",
        f"  kubeconfig: {cluster.kubeconfig}",
        f"  workdir:    {cluster.workdir}",
        "  processes:",
    ]
    for proc in cluster.processes():
        state = "running" if proc.alive else "DEAD"
        lines.append(
            f"    {proc.component:<24} pid {proc.pid:<8} {state:<8} {' '.join(proc.listening)}"
        )
    # The CLI's Prometheus Operator (`up --prometheus`); its Prometheus is a pod.
    detached = state_dir(name) / PROMETHEUS_OPERATOR
    if (detached / "pid").exists():
        pid = int((detached / "pid").read_text())
        state = "running" if _pid_alive(pid) else "DEAD"
        lines.append(f"    {PROMETHEUS_OPERATOR:<24} pid {pid:<8} {state}")
        lines.append(f"  prometheus: {(detached / 'url').read_text().strip()}")
    # The CLI's S3-compatible store (`up --s3`, e2e/s3.py).
    store = state_dir(name) / SEAWEEDFS
    if (store / "pid").exists():
        pid = int((store / "pid").read_text())
        state = "running" if _pid_alive(pid) else "DEAD"
        lines.append(f"    {'seaweedfs (weed)':<24} pid {pid:<8} {state}")
        with contextlib.suppress(OSError, ValueError):
            details = json.loads((store / "store.json").read_text())
            lines.append(
                f"  s3: {details['endpoint']} (in pods {details['pod_endpoint']}), "
                f"bucket {details['bucket']}, access key {details['access_key']}"
            )
    running = real_node(cluster).running()
    if any(running.values()):
        lines.append(f"  real node {node.NODE_NAME}:")
        for component, component_pid in running.items():
            state = f"pid {component_pid:<8} running" if component_pid else "DEAD"
            lines.append(f"    {component:<24} {state}")
    if healthy:
        lines.append("  nodes:")
        for item in cluster.nodes():
            labels = item["metadata"].get("labels", {})
            gpus = (item.get("status") or {}).get("allocatable", {}).get("nvidia.com/gpu", "0")
            ready = "Ready" if node_is_ready(item) else "NotReady"
            pool = labels.get(NODE_POOL_LABEL, "?")
            lines.append(
                f"    {item['metadata']['name']:<12} pool {pool:<8} {ready:<9} gpus {gpus}"
            )
    return "\n".join(lines), healthy

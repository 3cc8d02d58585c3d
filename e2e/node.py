"""The local cluster's one real node: a kubelet on containerd that runs pods for real.

Beside kwok's fake GPU pools, this node runs containers: containerd 2.x with runc, CNI's bridge
plugin on a bridge of its own, kube-proxy (iptables mode, so Services reach pods) and CoreDNS
(so ``http://NAME.NAMESPACE.svc`` resolves in pods), all built by ``e2e/build`` and run as
processes on this machine. It carries the labels of an H100 pool of one 8-GPU node and advertises
``nvidia.com/gpu`` as an extended resource, so a model's pod schedules there and runs; its own
taint (``specfleet.dev/real-node``) keeps every pod that does not tolerate it on kwok's nodes.

What this machine imposes, and where it is handled:
- cgroup v1: the kubelet runs with ``failCgroupV1: false`` and the cgroupfs driver.
- root without CAP_SYS_RESOURCE: no process may lower its ``oom_score_adj``, but the kubelet
  gives every pod sandbox -998 and Guaranteed containers -997, and runc's init then dies
  (``can't get final child's PID from pipe: EOF``). containerd's ``restrict_oom_score_adj``
  does not cover sandboxes, so the node's runc is a wrapper (``RUNC_WRAPPER``) that raises a
  negative ``process.oomScoreAdj`` in the bundle's config.json to 0 before running the real
  runc. Nothing else differs from a production node.
- pods reach the API server through the ``kubernetes`` Service: the API server listens on all
  addresses and advertises the bridge's address (``harness.kwokctl_config``).

One machine has one kube-proxy's worth of iptables, so at most one cluster runs a real node;
``NodeLock`` says which. ``up`` starts everything and waits until the node is Ready and
schedulable; ``down`` removes every pod sandbox through CRI (which tears down their network),
stops the processes, and removes the bridge, kube-proxy's and CNI's iptables chains and every
mount under the node's directories. Called by e2e/harness.py (``up``, ``delete``, ``status``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NODE_NAME = "h100-real-0"
POOL = "h100-real"
GPUS = "8"
"""The extended resource the node advertises: one H100 server's worth of (pretend) GPUs, room
for the examples' three models side by side (4 + 1 + 1)."""
BRIDGE = "specfleet0"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"
"""The bridge's own address: pods reach the host here (API server, CoreDNS)."""
DNS_ADDRESS = GATEWAY
KUBELET_CHAIN = "SPECFLEET-KUBELET"
"""The INPUT chain that admits the kubelet's port (on the bridge's address) from this host
alone: its API takes anonymous requests, and pods must not reach it."""
CHAIN_PREFIXES = ("KUBE-", "CNI-", KUBELET_CHAIN)
"""The iptables chains of the node: kube-proxy's and the kubelet's, the CNI plugins', ours."""
IPTABLES_TABLES = ("filter", "nat", "mangle")
CLUSTER_DOMAIN = "cluster.local"
REAL_NODE_TAINT = {"key": "specfleet.dev/real-node", "value": "true", "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
TOLERATIONS = [
    {"key": "specfleet.dev/real-node", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
]
"""What a pod needs to run on the real node (a model's default toleration covers the second)."""
LABELS = {
    "specfleet.dev/node-pool": POOL,
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.count": GPUS,
    "nvidia.com/gpu.memory": "81559",
    "nvidia.com/gpu.family": "hopper",
    "nvidia.com/gpu.compute.major": "9",
    "nvidia.com/gpu.compute.minor": "0",
}
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"
CNI_BIN_DIR = Path("/usr/lib/cni")
BRIDGE_NF_SYSCTL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")

RUNC_WRAPPER = """#!/bin/sh
# The node's runc: the real one, after raising a negative process.oomScoreAdj in the bundle's
# config.json to 0. Root on this machine lacks CAP_SYS_RESOURCE, so runc's init cannot lower
# its oom_score_adj (the kubelet asks -998 for sandboxes, -997 for Guaranteed containers) and
# would die with "can't get final child's PID from pipe: EOF". See e2e/node.py.
bundle=""
previous=""
for arg in "$@"; do
  case $previous in --bundle|-b) bundle=$arg ;; esac
  case $arg in --bundle=*) bundle=${arg#--bundle=} ;; esac
  previous=$arg
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  sed -i 's/"oomScoreAdj":-[0-9]*/"oomScoreAdj":0/' "$bundle/config.json"
fi
exec REAL_RUNC "$@"
"""


class NodeError(Exception):
    """The real node cannot start or stop; the message says what to do."""


def log(message: str) -> None:
    print(f"[e2e/node] {message}", flush=True, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Pure: configuration files.


@dataclass(frozen=True)
class Layout:
    """Where the node keeps its files: configuration and logs in the cluster's state, the
    containerd store (images survive a restart) in the cache, sockets and runtime state in /run.
    """

    state: Path
    cache: Path
    run: Path

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.cache / "kubelet"

    @property
    def containerd_root(self) -> Path:
        return self.cache / "containerd"

    @property
    def cni_conf_dir(self) -> Path:
        return self.state / "cni"

    @property
    def bin(self) -> Path:
        return self.state / "bin"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pids(self) -> Path:
        return self.state / "pids"

    def mount_roots(self) -> list[Path]:
        return [self.kubelet_root, self.containerd_root, self.run]


def cni_config() -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "specfleet",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def containerd_config(layout: Layout, runc: Path) -> str:
    """containerd's configuration (version 3): its own socket, store and CNI directory."""
    cri_runtime = 'plugins."io.containerd.cri.v1.runtime"'
    cri_images = 'plugins."io.containerd.cri.v1.images"'
    return f"""version = 3
root = "{layout.containerd_root}"
state = "{layout.run / "state"}"

[grpc]
  address = "{layout.containerd_socket}"

[ttrpc]
  address = "{layout.containerd_socket}.ttrpc"

[{cri_runtime}]
  enable_selinux = false
  [{cri_runtime}.containerd]
    default_runtime_name = "runc"
    [{cri_runtime}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri_runtime}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
  [{cri_runtime}.cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{layout.cni_conf_dir}"

[{cri_images}]
  snapshotter = "overlayfs"
  [{cri_images}.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def kubelet_config(layout: Layout, ports: Ports) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This machine has cgroup v1 (deprecated, still supported when told so).
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        # The node's address (the API server calls it there for logs and exec); the kubelet
        # takes no loopback node address. KUBELET_CHAIN keeps its port to this host.
        "address": GATEWAY,
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.kubelet_healthz,
        # This host only (KUBELET_CHAIN): the API server (logs, exec) is the one client.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDNS": [DNS_ADDRESS],
        "clusterDomain": CLUSTER_DOMAIN,
        "registerWithTaints": [REAL_NODE_TAINT, GPU_TAINT],
        # Images are imported, never pulled: garbage-collecting one would lose it.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%"},
        "serializeImagePulls": False,
        # How often the kubelet syncs every pod, and so how soon a changed ConfigMap reaches
        # its volumes (default 1m): the gate's limit follows a decision within seconds.
        "syncFrequency": "10s",
        "staticPodPath": "",
    }


def kube_proxy_config(kubeconfig: Path, ports: Ports) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{ports.proxy_healthz}",
        "metricsBindAddress": f"127.0.0.1:{ports.proxy_metrics}",
        # Leave the machine's conntrack sysctls alone (they are not ours to size).
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
    }


def corefile(kubeconfig: Path) -> str:
    """Cluster names only: nothing outside the cluster is resolvable from here anyway."""
    return f""".:53 {{
    bind {DNS_ADDRESS}
    errors
    health 127.0.0.1:0
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa
    }}
    cache 5
}}
"""


@dataclass(frozen=True)
class Ports:
    kubelet: int
    kubelet_healthz: int
    proxy_healthz: int
    proxy_metrics: int


# --------------------------------------------------------------------------------------------
# I/O: processes, network, mounts.


def _run(argv: Sequence[str | Path], *, check: bool = True, timeout: float = 60) -> str:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise NodeError(
            f"{' '.join(map(str, argv))} exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return result.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait(check: Callable[[], bool], timeout: float, what: str, describe: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}{describe}")
        time.sleep(0.5)


@dataclass(frozen=True)
class RealNode:
    """The real node of cluster ``cluster``: a handle, cheap to create."""

    cluster: str
    bin_dir: Path
    kubeconfig: Path
    layout: Layout

    # ---- processes -------------------------------------------------------------------------

    def _start(self, component: str, argv: Sequence[str | Path], path: str = "") -> None:
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        self.layout.pids.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PATH"] = f"{path}{os.pathsep if path else ''}{env.get('PATH', '')}"
        # The components outlive this process (`e2e/cluster up` returns, a test session
        # reuses them): a shell starts each in the background and says its pid.
        started = subprocess.run(
            ["sh", "-c", 'exec "$@" </dev/null >>"$LOG" 2>&1 & echo $!', "sh", *map(str, argv)],
            env={**env, "LOG": str(self.layout.logs / f"{component}.log")},
            capture_output=True,
            text=True,
            check=True,
            start_new_session=True,
        )
        (self.layout.pids / f"{component}.pid").write_text(started.stdout)

    def pid(self, component: str) -> int | None:
        try:
            pid = int((self.layout.pids / f"{component}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def log_tail(self, component: str, lines: int = 30) -> str:
        try:
            text = (self.layout.logs / f"{component}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _stop(self, component: str, grace: float = 10) -> None:
        pid = self.pid(component)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(NodeError):
                _wait(lambda: not _alive(pid), grace, f"{component} to stop")
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                # Killed is not gone: the kernel still tears the process down.
                _wait(lambda: not _alive(pid), 30, f"{component} to die")
        (self.layout.pids / f"{component}.pid").unlink(missing_ok=True)

    COMPONENTS = ("containerd", "coredns", "kubelet", "kube-proxy")

    def running(self) -> dict[str, int | None]:
        return {component: self.pid(component) for component in self.COMPONENTS}

    # ---- up --------------------------------------------------------------------------------

    def up(self, images: Sequence[Path], kubectl: Callable[..., str]) -> None:
        """Start the node and load ``images`` (OCI archives); return once it is schedulable."""
        for directory in (self.layout.state, self.layout.bin, self.layout.cni_conf_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.layout.run.mkdir(parents=True, exist_ok=True)
        self._network_up()
        self._start_containerd()
        for archive in images:
            log(f"loading image {archive.name}")
            self.ctr("images", "import", "--all-platforms", str(archive), timeout=600)
        self._forget_replaced_images()
        ports = Ports(*(_free_port() for _ in range(4)))
        for rule in kubelet_firewall_rules(ports.kubelet):
            _run(["iptables", "-w", *rule])
        (self.layout.state / "Corefile").write_text(corefile(self.kubeconfig))
        self._start("coredns", [self.bin_dir / "coredns", "-conf", self.layout.state / "Corefile"])
        kubelet_yaml = self.layout.state / "kubelet.yaml"
        kubelet_yaml.write_text(yaml.safe_dump(kubelet_config(self.layout, ports)))
        node_labels = ",".join(f"{k}={v}" for k, v in LABELS.items())
        self._start(
            "kubelet",
            [
                self.bin_dir / "kubelet",
                f"--config={kubelet_yaml}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={self.layout.kubelet_root}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}",
                f"--node-labels={node_labels}",
            ],
        )
        proxy_yaml = self.layout.state / "kube-proxy.yaml"
        proxy_yaml.write_text(yaml.safe_dump(kube_proxy_config(self.kubeconfig, ports)))
        self._start("kube-proxy", [self.bin_dir / "kube-proxy", f"--config={proxy_yaml}"])
        self._wait_registered(kubectl)
        # An extended resource is advertised by patching the Node's status; the kubelet keeps it.
        patch = json.dumps({"status": {"capacity": {"nvidia.com/gpu": GPUS}}})
        kubectl("patch", "node", NODE_NAME, "--subresource=status", "--type=merge", "-p", patch)
        self._wait_schedulable(kubectl)

    def _network_up(self) -> None:
        if not BRIDGE_NF_SYSCTL.exists():
            _run(["modprobe", "br_netfilter"], check=False)
        if not BRIDGE_NF_SYSCTL.exists():
            raise NodeError(
                "the kernel has no br_netfilter: Services cannot reach pods on a bridge here"
            )
        saved = self.layout.state / "bridge-nf-call-iptables"
        if not saved.exists():
            saved.write_text(BRIDGE_NF_SYSCTL.read_text())
        BRIDGE_NF_SYSCTL.write_text("1\n")
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "replace", f"{GATEWAY}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        (self.layout.cni_conf_dir / "10-specfleet.conflist").write_text(
            json.dumps(cni_config(), indent=2)
        )

    def _start_containerd(self) -> None:
        wrapper = self.layout.bin / "runc"
        wrapper.write_text(RUNC_WRAPPER.replace("REAL_RUNC", str(self.bin_dir / "runc")))
        wrapper.chmod(0o755)
        config = self.layout.state / "containerd.toml"
        config.write_text(containerd_config(self.layout, wrapper))
        # The shim runs `runc` from PATH whatever BinaryName says: the wrapper comes first.
        self._start(
            "containerd",
            [self.bin_dir / "containerd", f"--config={config}"],
            path=f"{self.layout.bin}{os.pathsep}{self.bin_dir.resolve()}",
        )
        _wait(
            self._containerd_answers,
            60,
            "containerd to answer",
            describe=f"; its log:\n{self.log_tail('containerd')}",
        )

    def _containerd_answers(self) -> bool:
        """Whether containerd serves its socket (`ctr version` prints the client's version
        whether or not the server answers: only its exit status says)."""
        if self.pid("containerd") is None:
            raise NodeError(f"containerd exited; its log:\n{self.log_tail('containerd')}")
        try:
            self.ctr("version", timeout=5)
        except (NodeError, subprocess.TimeoutExpired):
            return False
        return True

    def _forget_replaced_images(self) -> None:
        """Drop the ID names of images no tag names any more. containerd's CRI plugin names
        every image by its ID too, so a rebuilt image loaded under the same tag leaves the
        build it replaced named by its ID alone, its layers kept until the kubelet's image
        garbage collection, which a roomy disk never triggers: gigabytes a week of rebuilds."""

        def configs(digest: str) -> set[str]:
            document = json.loads(self.ctr("content", "get", digest))
            if "manifests" in document:  # an index: the configs of its manifests
                return {c for m in document["manifests"] for c in configs(m["digest"])}
            return {document["config"]["digest"]}

        for name in replaced_image_ids(self.ctr("images", "ls"), configs):
            log(f"forgetting image {name[:19]}, which no tag names any more")
            self.ctr("images", "rm", name)

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        argv: list[str | Path] = [
            self.bin_dir / "ctr",
            f"--address={self.layout.containerd_socket}",
            "-n",
            "k8s.io",
        ]
        try:
            return _run([*argv, *args], check=check, timeout=timeout)
        except subprocess.TimeoutExpired:
            if check:
                raise
            return ""

    def _wait_registered(self, kubectl: Callable[..., str]) -> None:
        def registered() -> bool:
            if self.pid("kubelet") is None:
                raise NodeError(f"the kubelet exited; its log:\n{self.log_tail('kubelet')}")
            return bool(kubectl("get", "node", NODE_NAME, "--ignore-not-found", "-o", "name"))

        _wait(registered, 120, f"node {NODE_NAME} to register")

    def _wait_schedulable(self, kubectl: Callable[..., str]) -> None:
        def schedulable() -> bool:
            node = json.loads(kubectl("get", "node", NODE_NAME, "-o", "json"))
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions", [])
            )
            transient = [
                t
                for t in node["spec"].get("taints", [])
                if t["key"].startswith("node.kubernetes.io/")
            ]
            gpus = node.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu")
            return ready and not transient and gpus == GPUS

        _wait(
            schedulable,
            120,
            f"node {NODE_NAME} to be Ready with {GPUS} GPUs",
            describe=f"; kubelet log:\n{self.log_tail('kubelet')}",
        )

    # ---- down ------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop everything the node started and undo what it changed on this machine."""
        if self.pid("containerd") is not None:
            self._stop("kubelet")
            # CRI's own removal: containers stop, sandboxes go with their network namespaces,
            # IP leases and portmap rules.
            crictl: list[str | Path] = [
                self.bin_dir / "crictl",
                f"--runtime-endpoint=unix://{self.layout.containerd_socket}",
                "--timeout=30s",
            ]
            _run([*crictl, "rmp", "--all", "--force"], check=False, timeout=120)
        for component in ("kubelet", "kube-proxy", "coredns", "containerd"):
            self._stop(component)
        self._kill_shims()
        if (self.bin_dir / "kube-proxy").exists():
            _run([self.bin_dir / "kube-proxy", "--cleanup"], check=False)
        _remove_chains(CHAIN_PREFIXES)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            _run(["ip", "link", "del", BRIDGE], check=False)
        saved = self.layout.state / "bridge-nf-call-iptables"
        if saved.exists():
            BRIDGE_NF_SYSCTL.write_text(saved.read_text())
            saved.unlink()
        for mount in reversed(mounts_under(self.layout.mount_roots())):
            _run(["umount", "--lazy", mount], check=False)
        shutil.rmtree(self.layout.run, ignore_errors=True)
        # The CNI plugins' leases: a sandbox killed without CNI DEL keeps its address.
        shutil.rmtree("/var/lib/cni/networks/specfleet", ignore_errors=True)

    def _kill_shims(self) -> None:
        """Shims (and their containers) that outlived containerd: those serving our socket."""
        marker = str(self.layout.containerd_socket).encode()
        shims = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(proc.name), signal.SIGKILL)
                    shims.append(int(proc.name))
        # Killed is not gone: the kernel still tears them down.
        _wait(lambda: not any(map(_alive, shims)), 30, f"shims {shims} to die")

    def leftovers(self) -> list[str]:
        """What of the node is still on this machine: empty after a clean ``down``."""
        found = [f"process {c} (pid {p})" for c, p in self.running().items() if p is not None]
        found += [f"mount {m}" for m in mounts_under(self.layout.mount_roots())]
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            found.append(f"link {BRIDGE}")
        for table in IPTABLES_TABLES:
            listing = _run(["iptables", "-w", "-t", table, "-S"], check=False)
            found += [
                f"iptables {table} {line}"
                for line in listing.splitlines()
                if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
            ]
        marker = str(self.layout.containerd_socket).encode()
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if marker in (proc / "cmdline").read_bytes():
                    found.append(f"process {proc.name} (a shim)")
        return found


def replaced_image_ids(listing: str, configs: Callable[[str], set[str]]) -> list[str]:
    """From `ctr images ls` output: the names that are image IDs (``sha256:...``, the config
    digest containerd's CRI plugin names every image by) of no image a tag names; ``configs``
    gives the config digests of a tag's target."""
    rows = [line.split() for line in listing.splitlines()[1:] if line.strip()]
    ids = [row[0] for row in rows if row[0].startswith("sha256:")]
    named = {
        config for row in rows if not row[0].startswith("sha256:") for config in configs(row[2])
    }
    return [name for name in ids if name not in named]


def kubelet_firewall_rules(port: int) -> list[list[str]]:
    """iptables commands (after ``iptables``) that admit the kubelet's port from this host
    only: traffic between local addresses comes in on ``lo``, a pod's on the bridge."""
    return [
        ["-N", KUBELET_CHAIN],
        ["-A", KUBELET_CHAIN, "-i", "lo", "-j", "RETURN"],
        ["-A", KUBELET_CHAIN, "-j", "DROP"],
        ["-I", "INPUT", "-p", "tcp", "--dport", str(port), "-j", KUBELET_CHAIN],
    ]


def _remove_chains(prefixes: tuple[str, ...]) -> None:
    """Every iptables chain whose name starts with one of ``prefixes``, and every jump to one,
    in the tables the node's components write."""
    for table in IPTABLES_TABLES:
        listing = _run(["iptables", "-w", "-t", table, "-S"], check=False).splitlines()
        chains = [line.split()[1] for line in listing if line.startswith("-N ")]
        ours = [chain for chain in chains if chain.startswith(prefixes)]
        for line in listing:
            words = line.split()
            jumps_to = words[words.index("-j") + 1] if "-j" in words else ""
            if words[:1] == ["-A"] and words[1] not in ours and jumps_to in ours:
                _run(["iptables", "-w", "-t", table, "-D", *words[1:]], check=False)
        for verb in ("-F", "-X"):
            for chain in ours:
                _run(["iptables", "-w", "-t", table, verb, chain], check=False)


def mounts_under(roots: Sequence[Path]) -> list[str]:
    """Mount points below any of ``roots``, shallowest first, from /proc/mounts."""
    prefixes = [str(root.resolve()) + "/" for root in roots]
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if any(point.startswith(p) or point + "/" == p for p in prefixes):
            found.append(point)
    return sorted(found, key=lambda p: p.count("/"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port

"""The local cluster's S3-compatible store: SeaweedFS's S3 gateway, real, as a process.

``start`` runs ``weed server`` (built by e2e/build from its Go module at the version
e2e/versions.env pins) for one cluster, detached, so that it outlives the caller (the CLI, a
test session) until ``e2e/cluster down`` (``harness.delete``) stops it:
- SeaweedFS's master, volume server and filer on 127.0.0.1 only, each at a free port (none of
  their defaults: 8080 and 8888 are common ports here), their data under
  ``state_dir(NAME)/seaweedfs/data``, emptied on every start and removed on ``down``;
- its S3 gateway on every address at a free port, admitted (as the API server is) from
  loopback and the real node's bridge only (``harness.port_firewall_rules``), with one static
  identity: ACCESS_KEY and SECRET_KEY, allowed every action (``Admin``). Anonymous requests and
  wrong keys are refused.

It is ready when a request signed with those keys creates BUCKET and an object put into it
comes back (gateway, filer, master and volume server all answer): a condition polled, never a
fixed sleep. The running store's details are in ``state_dir(NAME)/seaweedfs/store.json``
(``running`` reads them): the endpoint from this host (``http://127.0.0.1:PORT``) and from pods
on the real node (``http://10.244.0.1:PORT``: the host's address on the node's bridge, where
pods also reach the API server and CoreDNS), the keys, the bucket and the region. Pods get the
keys from a Secret (``secret_manifest``: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).

Called by e2e/cli.py (``e2e/cluster up --s3``, which ``scripts/demo`` runs) and the ``s3``
fixture of e2e/conftest.py. Standard library only (requests are signed here with AWS
Signature Version 4), so it works before the specfleet package is installed.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e2e import harness, node

if TYPE_CHECKING:
    from specfleet import capturestore

PROGRAM = harness.SEAWEEDFS
"""The state directory of a cluster's store (harness.stop_detached stops it by this name)."""
ACCESS_KEY = "specfleet-e2e"
SECRET_KEY = "specfleet-e2e-local-store-secret"
"""Static credentials of the one identity: a throwaway store on this machine only."""
BUCKET = "specfleet-capture"
REGION = "us-east-1"
"""What clients sign for: SeaweedFS accepts any region; AWS SDKs need one."""
SECRET_NAME = "specfleet-s3"
"""The default name of the Secret ``secret_manifest`` makes."""
READY_KEY = ".specfleet-ready"
"""The object the readiness check puts, reads back and deletes."""
CHAIN = "SPECFLEET-S3"
"""The INPUT chains (one per port, suffixed with it) that keep the gateway to this host and
the real node's pods."""
TIMEOUT = 120.0
"""A bound for the store to start on a busy two-core machine (seconds, as a rule)."""

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Ports:
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    def exposed(self) -> tuple[int, int]:
        """The ports that listen on every address (the S3 gateway's), firewalled."""
        return self.s3, self.s3_grpc


@dataclass(frozen=True)
class S3Store:
    """A running store: where to reach it and with what."""

    endpoint: str
    """From this host (tests, boto3): http://127.0.0.1:PORT."""
    pod_endpoint: str
    """From pods on the real node: http://10.244.0.1:PORT."""
    access_key: str
    secret_key: str
    bucket: str
    region: str
    pid: int

    def secret_manifest(self, namespace: str, name: str = SECRET_NAME) -> Manifest:
        return secret_manifest(namespace, name, self.access_key, self.secret_key)

    def capture_store(self, prefix: str) -> capturestore.Store:
        """The bucket under ``prefix`` as ``specfleet capture`` reads it, from this host."""
        # Here, not at the top: e2e/cluster runs this module without specfleet installed.
        from specfleet import capturestore  # noqa: PLC0415
        from specfleet.api.capture import S3Location, StoreLocation  # noqa: PLC0415

        location = StoreLocation(
            s3=S3Location(
                bucket=self.bucket, prefix=prefix, endpoint=self.endpoint, region=self.region
            )
        )
        return capturestore.open_store(location, credentials=(self.access_key, self.secret_key))


# --------------------------------------------------------------------------------------------
# Pure: configuration, command line, manifests, request signing.


def identity_config(access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Manifest:
    """SeaweedFS's S3 identity file (``-s3.config``): one identity with every action; with
    identities configured, anonymous requests are refused."""
    return {
        "identities": [
            {
                "name": "specfleet",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


def secret_manifest(
    namespace: str,
    name: str = SECRET_NAME,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
) -> Manifest:
    """The Secret pods read the store's keys from, under the names AWS SDKs take from the
    environment (``envFrom: [{secretRef: {name: ...}}]``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "stringData": {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key},
    }


def weed_argv(binary: Path, directory: Path, ports: Ports) -> list[str]:
    """``weed server`` with a filer and the S3 gateway, everything but the gateway on loopback,
    every port given (SeaweedFS would put each gRPC port 10000 above its HTTP port, past 65535
    for a free port), files under ``directory``."""
    data = directory / "data"
    return [
        str(binary),
        "-logtostderr",  # to the log file the process writes, not to files under /tmp
        "server",
        f"-ip={harness.LOOPBACK}",
        f"-ip.bind={harness.LOOPBACK}",
        f"-dir={data}",
        f"-master.port={ports.master}",
        f"-master.port.grpc={ports.master_grpc}",
        "-master.telemetry=false",
        f"-volume.port={ports.volume}",
        f"-volume.port.grpc={ports.volume_grpc}",
        "-volume.preStopSeconds=0",  # no grace: the data goes with `down`
        "-filer",
        f"-filer.port={ports.filer}",
        f"-filer.port.grpc={ports.filer_grpc}",
        f"-filer.localSocket={directory / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3_grpc}",
        "-s3.ip.bind=0.0.0.0",  # pods reach it on the bridge; the firewall admits no more
        f"-s3.config={directory / 's3.json'}",
        f"-s3.localSocket={directory / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.iam=false",
    ]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _quote(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text, safe=safe)


def sign(
    method: str,
    url: str,
    *,
    access_key: str,
    secret_key: str,
    region: str = REGION,
    payload: bytes = b"",
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """The headers that sign a request with AWS Signature Version 4 (service ``s3``); send
    them with it, ``Host`` included."""
    now = now or datetime.datetime.now(datetime.UTC)
    parts = urllib.parse.urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    payload_hash = _sha256(payload)
    headers = {"host": parts.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    query = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    canonical = "\n".join(
        [
            method,
            _quote(parts.path or "/", safe="/-_.~"),
            "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query),
            "".join(f"{key}:{headers[key]}\n" for key in sorted(headers)),
            ";".join(sorted(headers)),
            payload_hash,
        ]
    )
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, _sha256(canonical.encode())])
    key = f"AWS4{secret_key}".encode()
    for part in (amz_date[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(sorted(headers))}, Signature={signature}"
    )
    return headers


# --------------------------------------------------------------------------------------------
# I/O.


def state(name: str) -> Path:
    """Cluster ``name``'s store: its pid, identity file, log, data and store.json."""
    return harness.state_dir(name) / PROGRAM


def request(
    store: S3Store, method: str, path: str, payload: bytes = b"", timeout: float = 10
) -> tuple[int, bytes]:
    """A signed request to the store from this host: its status and body (errors included)."""
    url = f"{store.endpoint}/{path.lstrip('/')}"
    headers = sign(
        method,
        url,
        access_key=store.access_key,
        secret_key=store.secret_key,
        region=store.region,
        payload=payload,
    )
    prepared = urllib.request.Request(url, data=payload or None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def answers(store: S3Store) -> bool:
    """Whether the store keeps and gives back an object in its bucket, with its keys (creating
    the bucket if needed): connection errors and server errors mean not yet."""
    try:
        status, body = request(store, "PUT", store.bucket)
        # 409 BucketAlreadyOwnedByYou: created by an earlier attempt.
        if status not in (200, 409) or (status == 409 and b"OwnedByYou" not in body):
            return False
        key = f"{store.bucket}/{READY_KEY}"
        if request(store, "PUT", key, b"ready")[0] != 200:
            return False
        if request(store, "GET", key) != (200, b"ready"):
            return False
        return request(store, "DELETE", key)[0] == 204
    except (OSError, TimeoutError):
        return False


def _runs(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def _is_store(pid: int, name: str) -> bool:
    """Whether ``pid`` is still cluster ``name``'s weed (not a process that reused its pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[0].endswith(b"/weed") and f"-dir={state(name) / 'data'}".encode() in argv


def running(name: str) -> S3Store | None:
    """Cluster ``name``'s store if its process runs (as recorded by ``start``)."""
    try:
        store = S3Store(**json.loads((state(name) / "store.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return store if _is_store(store.pid, name) else None


def stop(name: str) -> None:
    """Stop cluster ``name``'s store, close its ports and remove its data (what
    ``harness.delete`` does with the rest of the cluster's state)."""
    harness.stop_detached(name, PROGRAM)
    shutil.rmtree(state(name), ignore_errors=True)


def start(cluster: harness.Cluster, *, timeout: float = TIMEOUT) -> S3Store:
    """Start cluster ``cluster``'s store afresh (stopping one that runs, emptying its data);
    returns once it is ready."""
    binary = cluster.bin_dir / "weed"
    if not binary.exists():
        raise harness.HarnessError(f"weed not found at {binary}: run e2e/build")
    stop(cluster.name)
    directory = state(cluster.name)
    (directory / "data").mkdir(parents=True)
    config = directory / "s3.json"
    config.write_text(json.dumps(identity_config(), indent=2))
    config.chmod(0o600)
    ports = Ports(*(harness.free_port() for _ in range(8)))
    chains = [(f"{CHAIN}-{port}", port) for port in ports.exposed()]
    # Closed again by harness.stop_detached (`down`), which reads them from this file.
    (directory / harness.FIREWALLED_PORTS).write_text(
        "".join(f"{chain} {port}\n" for chain, port in chains)
    )
    for chain, port in chains:
        harness.firewall_port(chain, port)
    log_path = directory / "weed.log"
    argv = weed_argv(binary, directory, ports)
    # It outlives the caller (`e2e/cluster up` returns, a test session ends) until `down`: a
    # shell starts it in the background, in a session of its own, and says its pid; not being
    # the caller's child, it leaves no zombie for `down` to wait on.
    started = subprocess.run(
        ["sh", "-c", 'exec "$@" </dev/null >>"$LOG" 2>&1 & echo $!', "sh", *argv],
        env={**os.environ, "LOG": str(log_path)},
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    pid = int(started.stdout)
    (directory / "pid").write_text(f"{pid}\n")
    store = S3Store(
        endpoint=f"http://{harness.LOOPBACK}:{ports.s3}",
        pod_endpoint=f"http://{node.GATEWAY}:{ports.s3}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        bucket=BUCKET,
        region=REGION,
        pid=pid,
    )

    def ready() -> bool:
        if not _runs(pid):
            tail = log_path.read_text(errors="replace")[-3000:]
            raise harness.HarnessError(f"weed exited; its log {log_path}:\n{tail}")
        return answers(store)

    try:
        harness.wait_for(
            ready,
            timeout=timeout,
            what=f"SeaweedFS's S3 gateway at {store.endpoint} to keep an object in {BUCKET}",
            describe=lambda: log_path.read_text(errors="replace")[-1500:],
        )
    except BaseException:
        stop(cluster.name)
        raise
    (directory / "store.json").write_text(json.dumps(asdict(store), indent=2) + "\n")
    (directory / "store.json").chmod(0o600)
    harness.log(f"S3 (SeaweedFS) at {store.endpoint}, in pods {store.pod_endpoint}")
    return store


def ensure(cluster: harness.Cluster) -> S3Store:
    """Cluster ``cluster``'s store: the running one if it answers, else a fresh one."""
    store = running(cluster.name)
    if store is not None and answers(store):
        return store
    return start(cluster)

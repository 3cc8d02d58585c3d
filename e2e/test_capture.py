"""Capture, end to end, into a real S3 server: the chart's operator renders `spec.capture` for a
RoutingPolicy (its router pod captures half the requests, with their route) and the
InferenceModel behind it (its gate captures every request, with the answer), both writing to
the local SeaweedFS bucket (e2e/s3.py) with the credentials of a Secret. The test sends
requests carrying planted e-mail addresses, card numbers and bearer tokens through the router
with the official OpenAI SDK, streamed and not, and reads the records back from the bucket as
`specfleet capture` does:

- the router kept exactly the requests its sample rate picks (by request ID), each with its
  tier; the gate kept every one, and the streamed answers reassembled are what the client got;
- nothing planted reaches the store;
- what the pods wrote reaches each resource's `status.capture`, through Prometheus (the
  Prometheus Operator's, scraping the pods by the chart's PodMonitors);
- with the policy's store pointed at a server that is not there, requests are served as before,
  the drops are counted in the policy's status and its `Capturing` condition says so;
- retention, run from the policy's CronJob, deletes the hours older than `retention` from the
  bucket and reports what it kept in the policy's status.
"""

from __future__ import annotations

import gzip
import json
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest

from e2e import harness, prometheus_operator, s3
from e2e.release import Release, sim_env, small_model
from specfleet import capturestore
from specfleet.api.capture import BatchKey, resource_root
from specfleet_runtime.capture import sampling

TIMEOUT = 180.0
POLICY = "assistant"
MODEL = "llama-capture"
ROUTER_RATE = 0.5
REQUESTS = 16
PLANTED = (
    "jane.doe@example.com",
    "4111 1111 1111 1111",
    "Bearer abcdefghijklmnopqrstuvwxyz0123456789",
)
PROMPT = (
    "What is the capital of France? Mail the answer to jane.doe@example.com, bill card "
    "4111 1111 1111 1111, and call the API with Bearer abcdefghijklmnopqrstuvwxyz0123456789."
)


def capture_spec(store: s3.S3Store, prefix: str, rate: float, **s3_changes: Any) -> dict[str, Any]:
    return {
        "sampleRate": rate,
        "keep": "RequestsAndResponses",
        "store": {
            "s3": {
                "bucket": store.bucket,
                "prefix": prefix,
                "endpoint": store.pod_endpoint,
                "credentialsSecret": s3.SECRET_NAME,
                **s3_changes,
            }
        },
    }


def policy(capture: dict[str, Any]) -> dict[str, Any]:
    return harness.on_the_real_node(
        {
            "apiVersion": "specfleet.dev/v1alpha1",
            "kind": "RoutingPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "tiers": [{"name": "only", "model": MODEL}],
                "replicas": 1,
                "capture": capture,
            },
        }
    )


@dataclass
class Capturing:
    """The chart's operator reading a Prometheus (the Prometheus Operator's, scraping the
    pods), the store's Secret, and the bucket as `specfleet capture` reads it."""

    release: Release
    prometheus: prometheus_operator.OperatedPrometheus
    s3_store: s3.S3Store
    namespace: str

    @property
    def prefix(self) -> str:
        return f"e2e/{self.namespace}"

    def spec(self, rate: float, **s3_changes: Any) -> dict[str, Any]:
        return capture_spec(self.s3_store, self.prefix, rate, **s3_changes)

    def records(self, kind: str, name: str) -> list[tuple[bytes, dict[str, Any]]]:
        store = self.s3_store.capture_store(self.prefix)
        root = resource_root(self.prefix, kind, self.namespace, name)
        found = capturestore.records(store, capturestore.list_batches(store, root))
        return [(line, dict(record)) for line, record in found]

    def status(self, kind: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.release.get(kind, name).get("status", {})
        return found

    def wait_capture_status(self, kind: str, name: str, field: str, value: object) -> None:
        harness.wait_for(
            lambda: self.status(kind, name).get("capture", {}).get(field) == value,
            timeout=TIMEOUT,
            what=f"{kind} {name}: status.capture.{field} = {value}",
            describe=lambda: json.dumps(self.status(kind, name).get("capture")),
        )

    def serve(self, model: dict[str, Any], routing: dict[str, Any]) -> str:
        """The model and the policy applied; the router's URL once it routes to the model."""
        self.release.apply(model, routing)

        def policy_ready() -> bool:
            conditions = self.status("rp", POLICY).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        harness.wait_for(
            policy_ready,
            timeout=TIMEOUT,
            what="the policy Ready",
            describe=lambda: self.release.operator_log(30),
        )
        self.release.serving_pod(MODEL)
        url = self.release.service_url(POLICY)

        def routes() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                    return "only" in json.loads(reply.read())["readyTiers"]
            except OSError:
                return False

        # The router rereads its file (the kubelet updates the volume) once the model is Ready.
        harness.wait_for(routes, timeout=TIMEOUT, what="the router routing to the model")
        return url


@pytest.fixture
def capturing(
    monitoring_crds: harness.Cluster, namespace: str, tmp_path: Path, s3_store: s3.S3Store
) -> Iterator[Capturing]:
    release = Release(monitoring_crds, namespace)
    try:
        # The chart first: Prometheus starts with its monitors (see chart_values).
        release.install(*prometheus_operator.chart_values(namespace))
        release.apply(s3_store.secret_manifest(namespace))
        with prometheus_operator.start(monitoring_crds, namespace, tmp_path) as prometheus:
            yield Capturing(release, prometheus, s3_store, namespace)
    finally:
        release.uninstall()


def send(url: str, ids: list[str]) -> dict[str, str]:
    """One chat request per ID through the router with the OpenAI SDK, every other one
    streamed; the streamed answers' text by ID."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    streamed: dict[str, str] = {}
    for i, request_id in enumerate(ids):
        messages: Any = [{"role": "user", "content": PROMPT}]
        headers = {"X-Request-Id": request_id}
        if i % 2:
            stream = client.chat.completions.create(
                model=POLICY, messages=messages, max_tokens=8, stream=True, extra_headers=headers
            )
            streamed[request_id] = "".join(
                chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
            )
        else:
            client.chat.completions.create(
                model=POLICY, messages=messages, max_tokens=8, extra_headers=headers
            )
    return streamed


def test_router_and_gate_capture_a_redacted_sample_into_the_bucket(capturing: Capturing) -> None:
    namespace = capturing.namespace
    model = small_model(
        MODEL,
        "meta-llama/Llama-3.2-1B-Instruct",
        autoscaling={"enabled": False},
        env=sim_env(time_factor=0.02),
        capture=capturing.spec(1.0),
    )
    url = capturing.serve(model, policy(capturing.spec(ROUTER_RATE)))
    assert capturing.release.get("cronjob", f"{POLICY}-retention")["spec"]["schedule"]
    ids = [f"capture-{namespace}-{i}" for i in range(REQUESTS)]
    streamed = send(url, ids)
    wanted_by_router = {i for i in ids if sampling.sampled(i, ROUTER_RATE)}
    assert 0 < len(wanted_by_router) < REQUESTS, "pick other IDs: the sample must be a sample"

    def kept() -> tuple[list[tuple[bytes, dict[str, Any]]], ...]:
        return (
            capturing.records("RoutingPolicy", POLICY),
            capturing.records("InferenceModel", MODEL),
        )

    def complete() -> Any:
        routed, gated = kept()
        router_ids = {r["id"] for _, r in routed}
        gate_ids = {r["id"] for _, r in gated}
        return (routed, gated) if router_ids >= wanted_by_router and gate_ids >= set(ids) else None

    routed, gated = harness.wait_for(
        complete,
        timeout=TIMEOUT,
        what="the router's and the gate's records in the bucket",
        describe=lambda: json.dumps([sorted(r["id"] for _, r in found) for found in kept()]),
    )
    assert {r["id"] for _, r in routed} == wanted_by_router
    assert {r["id"] for _, r in gated} == set(ids)
    for _, record in routed:
        assert record["route"]["tier"] == "only", record
        assert record["source"]["component"] == "router"
        assert record["response"]["status"] == 200
    for line, record in [*routed, *gated]:
        for planted in PLANTED:
            assert planted.encode() not in line, (planted, record["id"])
        assert "[email]" in json.dumps(record["request"]), record["request"]
    by_id = {r["id"]: r for _, r in gated}
    for request_id, text in streamed.items():
        answer = by_id[request_id]["response"]
        assert answer["streamed"] is True
        assert answer["body"]["choices"][0]["message"]["content"] == text, answer

    # What the pods wrote reaches each resource's status through Prometheus.
    capturing.wait_capture_status("rp", POLICY, "captured", len(routed))
    capturing.wait_capture_status("im", MODEL, "captured", len(gated))


def test_a_store_that_is_down_costs_no_request_and_the_drops_are_in_status(
    capturing: Capturing,
) -> None:
    model = small_model(
        MODEL,
        "meta-llama/Llama-3.2-1B-Instruct",
        autoscaling={"enabled": False},
        env=sim_env(time_factor=0.02),
    )
    # Nothing listens at the discard port of the node's bridge address.
    nowhere = re.sub(r":\d+$", ":9", capturing.s3_store.pod_endpoint)
    url = capturing.serve(model, policy(capturing.spec(1.0, endpoint=nowhere)))
    ids = [f"down-{capturing.namespace}-{i}" for i in range(REQUESTS)]
    send(url, ids)  # raises if one fails

    def dropped() -> int | None:
        found = capturing.status("rp", POLICY).get("capture", {}).get("dropped", {})
        count = found.get("store_error", 0)
        return count if count >= REQUESTS else None

    harness.wait_for(
        dropped,
        timeout=TIMEOUT,
        what="the policy's status counting every record dropped on store errors",
        describe=lambda: json.dumps(capturing.status("rp", POLICY).get("capture")),
    )
    conditions = {c["type"]: c for c in capturing.status("rp", POLICY)["conditions"]}
    assert (conditions["Capturing"]["status"], conditions["Capturing"]["reason"]) == (
        "False",
        "StoreError",
    ), conditions["Capturing"]
    assert capturing.records("RoutingPolicy", POLICY) == []


def test_retention_prunes_the_bucket_from_its_cronjob_and_reports_in_status(
    capturing: Capturing,
) -> None:
    now = datetime.now(UTC)
    root = resource_root(capturing.prefix, "RoutingPolicy", capturing.namespace, POLICY)
    planted = {
        BatchKey(now - timedelta(hours=3), "router", "planted", 0, 2).name(root): 2,
        BatchKey(now, "router", "planted", 1, 3).name(root): 3,
    }
    client = boto3.client(
        "s3",
        endpoint_url=capturing.s3_store.endpoint,
        region_name=capturing.s3_store.region,
        aws_access_key_id=capturing.s3_store.access_key,
        aws_secret_access_key=capturing.s3_store.secret_key,
    )
    for key, count in planted.items():
        lines = b"".join(json.dumps({"id": f"{key}-{i}"}).encode() + b"\n" for i in range(count))
        client.put_object(Bucket=capturing.s3_store.bucket, Key=key, Body=gzip.compress(lines))
    spec = {**capturing.spec(1.0), "retention": "1h"}
    capturing.release.apply(policy(spec))
    cron = f"{POLICY}-retention"
    harness.wait_for(
        lambda: capturing.release.get("cronjob", "-l", f"specfleet.dev/routingpolicy={POLICY}")[
            "items"
        ],
        timeout=TIMEOUT,
        what="the retention CronJob",
    )
    # Run now what the schedule runs hourly.
    capturing.release.cluster.kubectl(
        "create", "job", "retention-now", f"--from=cronjob/{cron}", "-n", capturing.namespace
    )

    def report() -> dict[str, Any] | None:
        pods = capturing.release.get("pods", "-l", "job-name=retention-now")["items"]
        for pod in pods:
            for container in pod["status"].get("containerStatuses", []):
                terminated = container.get("state", {}).get("terminated")
                if terminated:
                    log = capturing.release.cluster.kubectl(
                        "logs", pod["metadata"]["name"], "-n", capturing.namespace
                    )
                    assert terminated.get("exitCode") == 0, (terminated, log)
                    assert terminated.get("message"), (terminated, log)
                    return dict(json.loads(terminated["message"]))
        return None

    found = harness.wait_for(report, timeout=TIMEOUT, what="the retention job's report")
    assert (found["deletedRecords"], found["keptRecords"]) == (2, 3), found
    listed = client.list_objects_v2(Bucket=capturing.s3_store.bucket, Prefix=root + "/")
    keys = {entry["Key"] for entry in listed.get("Contents", [])}
    assert keys == {key for key, count in planted.items() if count == 3}
    # The CronJob's controller notes the Job's completion; the operator's next pass reads the
    # report into status.
    capturing.wait_capture_status("rp", POLICY, "keptRecords", 3)
    retained = capturing.status("rp", POLICY)["capture"]
    assert datetime.fromisoformat(retained["lastRetentionTime"]) >= now - timedelta(minutes=1), (
        retained
    )

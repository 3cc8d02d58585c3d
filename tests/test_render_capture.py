"""What `spec.capture` adds to what the operator applies: the capture file the router and the
gates read (no credential in it), the Secrets as environment variables, a PVC mounted, the
retention CronJob whose pods no Service counts; and in a pass, retention's report read into
status once per run, and the CronJob removed when capture is turned off."""

from __future__ import annotations

from typing import Any

import yaml

from specfleet import kube, plan, prometheus
from specfleet.api import labels, routerconfig
from specfleet.api.capture import S3_CREDENTIAL_ENV, CaptureConfig, CaptureSpec, CaptureStatus
from specfleet.prometheus import CaptureCounts
from specfleet.reconcile import capture as capture_pass
from specfleet.render import capture
from specfleet.render import inferencemodel as render_model
from specfleet.render import routingpolicy as render_policy
from tests.test_reconcile import FakeApi
from tests.test_reconcile_routing import ALL_READY, Operator
from tests.test_render import CONFIG, _container, _model
from tests.test_render_routing import _policy

S3_CAPTURE = {
    "sampleRate": 0.25,
    "keep": "RequestsAndResponses",
    "store": {
        "s3": {
            "bucket": "fleet-traffic",
            "endpoint": "http://s3.storage.svc:8333",
            "credentialsSecret": "traffic-writer",
        }
    },
    "redaction": {
        "patterns": [{"name": "ticket", "regex": "TCK-[0-9]+"}],
        "hashKeySecret": {"name": "capture-hash", "key": "key"},
    },
    "retention": "168h",
}
PVC_CAPTURE = {"sampleRate": 1.0, "store": {"pvc": {"claimName": "traffic", "prefix": "raw"}}}


def _by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in container.get("env", [])}


def test_the_router_reads_capture_in_its_file_and_credentials_from_the_secret() -> None:
    objects = _by_kind(
        render_policy.manifests(_policy(capture=S3_CAPTURE), CONFIG, ALL_READY, owner=None)
    )
    data = objects["ConfigMap"]["data"]
    config = routerconfig.parse_config(data[render_policy.CONFIG_KEY]).capture
    assert config is not None
    assert config.source.model_dump() == {
        "kind": "RoutingPolicy",
        "namespace": "ml",
        "name": "assistant",
        "component": "router",
    }
    assert config.store.s3 is not None
    assert (config.store.s3.bucket, config.store.s3.endpoint) == (
        "fleet-traffic",
        "http://s3.storage.svc:8333",
    )
    assert (config.sample_rate, config.keep) == (0.25, "RequestsAndResponses")
    assert [p.name for p in config.patterns] == ["ticket"]
    # The same file stands alone for the retention job, and neither holds a secret's name.
    alone = CaptureConfig.model_validate(yaml.safe_load(data[capture.CONFIG_KEY]))
    assert alone == config
    assert "traffic-writer" not in data[capture.CONFIG_KEY] + data[render_policy.CONFIG_KEY]
    router = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = _env(router)
    for variable in S3_CREDENTIAL_ENV:
        assert env[variable] == {"secretKeyRef": {"name": "traffic-writer", "key": variable}}
    assert env["SPECFLEET_CAPTURE_HASH_KEY"] == {
        "secretKeyRef": {"name": "capture-hash", "key": "key"}
    }
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_a_policy_without_capture_renders_no_cronjob_and_no_capture_env() -> None:
    objects = _by_kind(render_policy.manifests(_policy(), CONFIG, ALL_READY))
    assert set(objects) == {"ConfigMap", "Deployment", "Service"}
    assert capture.CONFIG_KEY not in objects["ConfigMap"]["data"]
    assert "env" not in objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_retention_runs_hourly_with_the_same_file_and_credentials() -> None:
    objects = _by_kind(render_policy.manifests(_policy(capture=S3_CAPTURE), CONFIG, ALL_READY))
    cron = objects["CronJob"]
    assert cron["metadata"]["name"] == "assistant-retention"
    assert cron["metadata"]["labels"][labels.ROUTING_POLICY] == "assistant"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"][:3] == ["specfleet", "capture", "retain"]
    assert container["command"][-2:] == ["--retention", "168h"]
    config_path = container["command"][container["command"].index("--store-config") + 1]
    (config_volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "config"]
    assert config_volume["configMap"]["name"] == "assistant-router"
    assert config_path.endswith("/" + capture.CONFIG_KEY)
    assert set(_env(container)) == set(S3_CREDENTIAL_ENV)
    # No Service or Deployment of the policy selects the retention pods.
    for selecting in (objects["Service"]["spec"]["selector"], render_policy.selector("assistant")):
        assert not selecting.items() <= pod["metadata"]["labels"].items()
    assert capture.retention_pods("RoutingPolicy", "assistant").items() <= (
        pod["metadata"]["labels"].items()
    )
    # Where the routers run.
    placed = _policy(capture=S3_CAPTURE, placement={"nodeSelector": {"pool": "cpu"}})
    cron = _by_kind(render_policy.manifests(placed, CONFIG, ALL_READY))["CronJob"]
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["nodeSelector"] == {
        "pool": "cpu"
    }


def test_a_model_captures_in_its_gates_onto_a_mounted_claim() -> None:
    model = _model(capture=PVC_CAPTURE)
    manifests = render_model.manifests(model, plan.plan("llama", model.spec), CONFIG)
    objects = _by_kind(manifests)
    gate = _container(objects["Deployment"], "gate")
    flag = gate["command"].index("--capture-config")
    assert gate["command"][flag + 1] == f"{render_model.GATE_CONFIG_DIR}/{capture.CONFIG_KEY}"
    config = CaptureConfig.model_validate(
        yaml.safe_load(objects["ConfigMap"]["data"][capture.CONFIG_KEY])
    )
    assert (config.source.kind, config.source.component) == ("InferenceModel", "gate")
    assert config.store.directory == f"{capture.VOLUME_DIR}/raw"
    assert {"name": "capture", "mountPath": capture.VOLUME_DIR} in gate["volumeMounts"]
    volumes = objects["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "capture", "persistentVolumeClaim": {"claimName": "traffic"}} in volumes
    # vLLM itself never sees the store.
    assert "capture" not in str(_container(objects["Deployment"], "vllm"))
    retention = objects["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert {"name": "capture", "persistentVolumeClaim": {"claimName": "traffic"}} in (
        retention["volumes"]
    )
    assert render_model.ROLLOUT_KINDS.isdisjoint({"CronJob"})


def test_capturing_containers_get_room_for_a_writer_process_per_serving_process() -> None:
    def router(**spec: Any) -> dict[str, Any]:
        objects = _by_kind(render_policy.manifests(_policy(**spec), CONFIG, ALL_READY))
        (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
        return dict(container["resources"])

    def gate(**spec: Any) -> dict[str, Any]:
        model = _model(**spec)
        manifests = render_model.manifests(model, plan.plan("llama", model.spec), CONFIG)
        return dict(_container(_by_kind(manifests)["Deployment"], "gate")["resources"])

    def mebibytes(quantity: str) -> int:
        return int(quantity[:-2]) * (1024 if quantity.endswith("Gi") else 1)

    writer = capture.WRITER_MEMORY_MIB
    for without, with_, processes in (
        (router(workers=3), router(workers=3, capture=S3_CAPTURE), 3),
        (gate(), gate(capture=PVC_CAPTURE), 1),
    ):
        for bound in ("requests", "limits"):
            added = mebibytes(with_[bound]["memory"]) - mebibytes(without[bound]["memory"])
            assert added == writer * processes, (bound, without, with_)
        assert with_["requests"]["cpu"] == without["requests"]["cpu"]  # it runs on idle CPU
    assert (
        capture.memory(416, None, 4) == "1664Mi"
        and capture.memory(160, CaptureSpec.model_validate(PVC_CAPTURE), 4) == "1Gi"
    )


def _succeeded(created: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": created},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"message": message}}}],
        },
    }


def test_retention_report_reaches_status_once_per_run() -> None:
    operator = Operator()
    operator.run(ALL_READY, capture=S3_CAPTURE)
    assert operator.status is not None
    assert operator.status["capture"] == {"dropped": {}}
    assert operator.api.pod_lists == 0

    operator.api.edit(
        "CronJob", lambda c: c.update(status={"lastSuccessfulTime": "2026-12-07T06:17:09Z"})
    )
    operator.api.pods_now = [
        _succeeded("2026-12-07T05:17:00Z", '{"keptRecords": 10, "keptBytes": 999}'),
        _succeeded("2026-12-07T06:17:00Z", '{"keptRecords": 42, "keptBytes": 4096}'),
        {"metadata": {"creationTimestamp": "2026-12-07T06:18:00Z"}, "status": {"phase": "Failed"}},
    ]
    operator.run(ALL_READY, capture=S3_CAPTURE)
    assert operator.status["capture"]["keptRecords"] == 42
    assert operator.status["capture"]["keptBytes"] == 4096
    assert operator.status["capture"]["lastRetentionTime"] == "2026-12-07T06:17:09Z"
    assert operator.api.pod_selectors[-1] == capture.retention_pods("RoutingPolicy", "assistant")

    lists = operator.api.pod_lists
    operator.run(ALL_READY, capture=S3_CAPTURE)
    assert operator.api.pod_lists == lists, "the same run's report is read once"
    assert operator.status["capture"]["keptRecords"] == 42


def test_turning_capture_off_removes_the_cronjob_and_the_status() -> None:
    operator = Operator()
    operator.run(ALL_READY, capture=S3_CAPTURE)
    assert "CronJob" in operator.api.kinds()
    operator.run(ALL_READY, capture=None)
    assert operator.api.deleted == ["CronJob assistant-retention"]
    assert operator.status is not None
    assert "capture" not in operator.status


def test_the_pods_counters_reach_status_by_the_resource() -> None:
    asked: list[tuple[str, str, str]] = []

    def count(kind: str, namespace: str, name: str) -> CaptureCounts | None:
        asked.append((kind, namespace, name))
        return CaptureCounts(written=7, dropped={"queue_full": 2})

    spec = _policy(capture=S3_CAPTURE).spec.capture
    found = capture_pass.run(spec, "RoutingPolicy", "ml", "assistant", None, {}, FakeApi(), count)
    assert asked == [("RoutingPolicy", "ml", "assistant")]
    assert found is not None
    assert (found.captured, found.dropped) == (7, {"queue_full": 2})
    # Prometheus without the series keeps what status said.
    kept = capture_pass.run(spec, "RoutingPolicy", "ml", "assistant", found, {}, FakeApi(), None)
    assert kept == found
    written, dropped = prometheus.capture_queries("RoutingPolicy", "ml", "assistant")
    assert 'routingpolicy="assistant"' in written and 'namespace="ml"' in written
    assert dropped.startswith("sum by (reason)")
    assert (
        'inferencemodel="llama"' in prometheus.capture_queries("InferenceModel", "ml", "llama")[0]
    )


def test_the_operator_can_address_every_object_it_renders() -> None:
    model = _model(capture=PVC_CAPTURE)
    manifests = [
        *render_model.manifests(model, plan.plan("llama", model.spec), CONFIG),
        *render_policy.manifests(_policy(capture=S3_CAPTURE), CONFIG, ALL_READY),
    ]
    for manifest in manifests:
        path = kube.object_path(
            manifest["apiVersion"], manifest["kind"], "ml", manifest["metadata"]["name"]
        )
        assert path.endswith(
            f"/namespaces/ml/{manifest['kind'].lower()}s/{manifest['metadata']['name']}"
        )


def test_capturing_says_whether_records_reach_the_store_as_the_counters_move() -> None:
    def moved(previous: CaptureStatus | None, written: int, **dropped: int) -> tuple[str, ...]:
        found = capture_pass.condition(previous, CaptureStatus(captured=written, dropped=dropped))
        return found or ()

    assert moved(None, 0)[:2] == ("Unknown", "NothingWritten")
    assert moved(CaptureStatus(captured=0), 5)[:2] == ("True", "Writing")
    status, reason, message = moved(CaptureStatus(captured=5), 5, store_error=3)
    assert (status, reason) == ("False", "StoreError")
    assert message.startswith("3 records dropped") and "credentials Secret" in message
    # Nothing moved (no traffic): the condition stays as it was, False included.
    assert moved(CaptureStatus(captured=5, dropped={"store_error": 3}), 5, store_error=3) == ()
    # The store answers again: more written, no more store errors.
    status, reason, message = moved(
        CaptureStatus(captured=5, dropped={"store_error": 3}), 9, store_error=3, queue_full=2
    )
    assert (status, reason) == ("True", "Writing")
    assert message == "9 records written; dropped: 2 queue_full, 3 store_error"
    # Without Prometheus's counters nothing is known.
    assert capture_pass.condition(CaptureStatus(captured=5), CaptureStatus()) is None


def test_a_policy_s_capturing_condition_follows_its_pods_counters_and_goes_with_capture() -> None:
    operator = Operator()
    counts = CaptureCounts(written=4, dropped={})
    operator.run(ALL_READY, count=lambda *_: counts, capture=S3_CAPTURE)
    assert operator.condition("Capturing")[:2] == ("True", "Writing")
    counts = CaptureCounts(written=4, dropped={"store_error": 6})
    operator.run(ALL_READY, count=lambda *_: counts, capture=S3_CAPTURE)
    assert operator.condition("Capturing")[:2] == ("False", "StoreError")
    operator.run(ALL_READY, capture=None)
    assert operator.status is not None
    assert "Capturing" not in {c["type"] for c in operator.status["conditions"]}

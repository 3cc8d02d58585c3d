"""What `spec.learning` adds to what the operator applies for a RoutingPolicy: a learning
CronJob whose command `specfleet router learn` accepts, asking each tier through its model's
Service, with the spec's pacing, objective, mode and pin, reading the policy and the capture
file from the router's ConfigMap and the store's credentials from the capture Secret."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import yaml

from specfleet import api, cli
from specfleet.api import labels, routerconfig
from specfleet.api.capture import S3_CREDENTIAL_ENV
from specfleet.api.routingpolicy import RoutingPolicy
from specfleet.render import capture, learning
from specfleet.render import routingpolicy as render
from specfleet.render.inferencemodel import Owner
from tests.test_render_capture import PVC_CAPTURE, S3_CAPTURE, _env
from tests.test_render_routing import CONFIG, READY, _policy

LEARNING = {
    "mode": "Apply",
    "schedule": "*/20 * * * *",
    "objective": {"qualityTarget": 0.9, "qualityTolerance": 0.03, "costMargin": 0.1},
    "judge": {"model": "llama-70b", "share": 0.25, "requestsPerSecond": 0.5, "maxTokens": 256},
    "minNewLabels": 40,
    "pin": "sha256:" + "0f" * 32,
}


def _cron_jobs(policy: RoutingPolicy) -> dict[str, dict[str, Any]]:
    return {
        m["metadata"]["name"]: m
        for m in render.manifests(policy, CONFIG, READY)
        if m["kind"] == "CronJob"
    }


def _learning_pod(policy: RoutingPolicy) -> dict[str, Any]:
    cron = _cron_jobs(policy)["assistant-learning"]
    pod: dict[str, Any] = cron["spec"]["jobTemplate"]["spec"]["template"]
    return pod


def _parsed(command: list[str]) -> argparse.Namespace:
    assert command[0] == "specfleet"
    return cli.parser().parse_args(command[1:])


def test_a_policy_that_learns_gets_a_learning_cronjob_beside_retention() -> None:
    policy = _policy(capture=S3_CAPTURE, learning=LEARNING)
    crons = _cron_jobs(policy)
    assert set(crons) == {"assistant-retention", "assistant-learning"}
    cron = crons["assistant-learning"]
    assert cron["spec"]["schedule"] == "*/20 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["metadata"]["labels"][labels.ROUTING_POLICY] == "assistant"
    owned = render.manifests(policy, CONFIG, READY, Owner("assistant", "uid-1", "RoutingPolicy"))
    (cron_job,) = [m for m in owned if m["metadata"]["name"] == "assistant-learning"]
    (reference,) = cron_job["metadata"]["ownerReferences"]
    assert (reference["kind"], reference["uid"]) == ("RoutingPolicy", "uid-1")
    # Nothing learns without spec.learning.
    assert set(_cron_jobs(_policy(capture=S3_CAPTURE))) == {"assistant-retention"}


def test_the_learning_command_is_one_specfleet_router_learn_accepts_with_the_specs_values() -> None:
    pod = _learning_pod(_policy(capture=S3_CAPTURE, learning=LEARNING))
    (container,) = pod["spec"]["containers"]
    assert container["image"] == CONFIG.learn_image
    args = _parsed(container["command"])
    assert args.run is cli._router_learn
    assert args.tier == [
        "simple=http://llama-3b.ml.svc:80",
        "medium=http://llama-8b.ml.svc:80",
        "complex=http://llama-70b.ml.svc:80",
    ]
    assert args.judge == "http://llama-70b.ml.svc:80"
    assert (args.sample, args.rate, args.max_tokens) == (0.25, 0.5, 256)
    assert (args.quality_target, args.quality_tolerance, args.cost_margin) == (0.9, 0.03, 0.1)
    assert (args.mode, args.pin, args.min_new_labels) == ("Apply", LEARNING["pin"], 40)


def test_unset_the_judge_is_the_last_tier_and_the_defaults_are_the_specs() -> None:
    policy = _policy(capture=S3_CAPTURE, learning={})
    (container,) = _learning_pod(policy)["spec"]["containers"]
    args = _parsed(container["command"])
    assert args.judge is None  # the CLI's default: the last tier's server
    assert policy.spec.learning is not None
    judge = policy.spec.learning.judge
    assert (args.sample, args.rate, args.max_tokens) == (
        judge.share,
        judge.requests_per_second,
        judge.max_tokens,
    )
    assert (args.mode, args.pin) == ("Recommend", None)


def test_the_job_reads_the_policy_and_the_store_from_the_routers_configmap() -> None:
    policy = _policy(capture=S3_CAPTURE, learning=LEARNING)
    objects = render.manifests(policy, CONFIG, READY)
    (config_map,) = [m for m in objects if m["kind"] == "ConfigMap"]
    pod = _learning_pod(policy)
    (container,) = pod["spec"]["containers"]
    args = _parsed(container["command"])
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "config"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    files = {f"{mount['mountPath']}/{key}": text for key, text in config_map["data"].items()}
    # The policy file is the policy: what training and evaluation route by.
    (read,) = api.load(files[args.policy])
    assert isinstance(read, RoutingPolicy)
    assert read.spec == policy.spec
    assert (read.metadata.name, read.metadata.namespace) == ("assistant", "ml")
    assert "credentialsSecret" not in files[args.store_config]
    assert args.store_config.endswith("/" + capture.CONFIG_KEY)
    assert set(_env(container)) == set(S3_CREDENTIAL_ENV)
    # Without learning the ConfigMap holds no policy file.
    (plain,) = [
        m
        for m in render.manifests(_policy(capture=S3_CAPTURE), CONFIG, READY)
        if m["kind"] == "ConfigMap"
    ]
    assert learning.POLICY_KEY not in plain["data"]


def test_the_learning_pods_run_unprivileged_with_no_api_access_and_no_selector_of_the_policy() -> (
    None
):
    policy = _policy(
        capture=PVC_CAPTURE, learning=LEARNING, placement={"nodeSelector": {"pool": "cpu"}}
    )
    pod = _learning_pod(policy)
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["nodeSelector"] == {"pool": "cpu"}
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "capture", "mountPath": capture.VOLUME_DIR} in container["volumeMounts"]
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert learning.pods("assistant").items() <= pod["metadata"]["labels"].items()
    assert not render.selector("assistant").items() <= pod["metadata"]["labels"].items()


@pytest.mark.parametrize("share", [1.0, 0.1, 0.05])
def test_numbers_reach_the_command_as_written(share: float) -> None:
    policy = _policy(capture=S3_CAPTURE, learning={"judge": {"share": share}})
    (container,) = _learning_pod(policy)["spec"]["containers"]
    command = container["command"]
    assert command[command.index("--sample") + 1] == repr(share)


def test_a_learning_policys_routers_follow_the_classifier_in_force_in_its_store() -> None:
    def file(policy: RoutingPolicy) -> routerconfig.RouterConfig:
        (config_map,) = [
            m for m in render.manifests(policy, CONFIG, READY) if m["kind"] == "ConfigMap"
        ]
        return routerconfig.parse_config(config_map["data"][render.CONFIG_KEY])

    learning_file = file(_policy(capture=S3_CAPTURE, learning=LEARNING))
    assert isinstance(learning_file.classifier, routerconfig.InForceClassifier)
    assert learning_file.capture is not None  # where the store is
    assert file(_policy(capture=S3_CAPTURE)).classifier == "heuristic"


def test_a_router_file_that_follows_the_store_needs_the_store() -> None:
    with pytest.raises(routerconfig.ConfigError, match=r"inForce .* needs capture"):
        routerconfig.parse_config(
            yaml.safe_dump(
                {
                    "policy": "assistant",
                    "tiers": [{"name": "all", "model": "m"}],
                    "classifier": {"inForce": {"pollSeconds": 30}},
                }
            )
        )

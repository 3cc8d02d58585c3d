"""The API models accept the examples and refuse the invalid corpus with errors that name the
field, exactly as the API server does (e2e/test_crds.py runs the same corpus there)."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from specfleet import api
from specfleet.api.common import Duration, duration_seconds
from specfleet.api.inferencemodel import AutoscalingSpec, InferenceModel
from specfleet.api.routingpolicy import RoutingPolicy
from tests import corpus

INVALID = corpus.invalid_manifests()


def _im(spec: dict[str, Any]) -> InferenceModel:
    doc = {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "m"},
        "spec": spec,
    }
    resource = api.parse(doc)
    assert isinstance(resource, InferenceModel)
    return resource


MODEL = {"name": "meta-llama/Llama-3.1-8B-Instruct"}


def test_corpus_is_large_enough_to_mean_something() -> None:
    assert len(INVALID) >= 12
    kinds = {yaml.safe_load(case.text)["kind"] for case in INVALID}
    assert kinds == {"InferenceModel", "RoutingPolicy"}


@pytest.mark.parametrize("path", corpus.EXAMPLES, ids=lambda p: Path(p).name)
def test_every_example_is_a_valid_resource(path: Path) -> None:
    resources = api.load(path.read_text())
    assert resources, f"{path} holds no specfleet resource"
    for resource in resources:
        assert resource.metadata.name


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_manifest_is_refused_naming_the_field(case: corpus.Invalid) -> None:
    with pytest.raises(api.ManifestError) as refused:
        api.load(case.text)
    for expected in case.expects:
        assert expected in str(refused.value)


def test_a_refusal_names_the_resource_and_the_path() -> None:
    with pytest.raises(api.ManifestError) as refused:
        _im({"model": MODEL, "batching": {"min": 9, "max": 4}})
    assert str(refused.value).startswith("InferenceModel m: spec.batching: batching.min")


def test_defaults_are_the_documented_ones() -> None:
    spec = _im({"model": MODEL}).spec
    assert spec.quantization == "auto"
    assert spec.kv_cache_dtype == "auto"
    assert spec.gpu.product == "H100-80GB"
    assert spec.gpu.count == "auto"
    assert spec.replicas == 1
    assert (spec.batching.min, spec.batching.max, spec.batching.mode) == (1, 256, "Live")
    assert spec.batching.initial is None
    assert spec.autoscaling.mode == "Apply"
    assert (spec.autoscaling.acceptance_bands.high, spec.autoscaling.acceptance_bands.low) == (
        0.85,
        0.65,
    )
    assert spec.draft is None


def test_draft_defaults_to_five_tokens_from_a_draft_model() -> None:
    draft = _im({"model": MODEL, "draft": {"model": {"name": "x/y"}}}).spec.draft
    assert draft is not None
    assert (draft.num_speculative_tokens, draft.method) == (5, "draft_model")


@pytest.mark.parametrize("method", ["ngram", "mtp"])
def test_methods_without_a_draft_model_need_none(method: str) -> None:
    draft = _im({"model": MODEL, "draft": {"method": method}}).spec.draft
    assert draft is not None and draft.model is None


@pytest.mark.parametrize(
    ("spec", "accepted"),
    [
        ({"kvCacheDtype": "fp8", "maxModelLen": 8192}, True),
        ({"kvCacheDtype": "fp8", "maxModelLen": 8193}, False),
        ({"kvCacheDtype": "fp8_e5m2", "maxModelLen": 65536}, False),
        ({"kvCacheDtype": "fp8", "maxModelLen": 65536, "allowLongContextFP8KVCache": True}, True),
        ({"kvCacheDtype": "fp8", "allowLongContextFP8KVCache": True}, True),
        ({"kvCacheDtype": "auto", "maxModelLen": 131072}, True),
    ],
)
def test_fp8_kv_cache_with_long_context_needs_acknowledgement(
    spec: dict[str, Any], accepted: bool
) -> None:
    if accepted:
        _im({"model": MODEL, **spec})
    else:
        with pytest.raises(api.ManifestError, match="allowLongContextFP8KVCache"):
            _im({"model": MODEL, **spec})


@pytest.mark.parametrize(
    ("args", "accepted"),
    [
        (["--enable-chunked-prefill", "--max-num-batched-tokens=8192"], True),
        (["--max-num-seqs", "8"], False),
        (["--tensor-parallel-size=4"], False),
        (["-tp", "4"], False),
        (["--num-speculative-tokens=5"], False),
        (["--quantization-param-path", "x"], True),
    ],
)
def test_extra_args_may_not_repeat_or_resurrect_flags(args: list[str], accepted: bool) -> None:
    if accepted:
        assert _im({"model": MODEL, "extraArgs": args}).spec.extra_args == args
    else:
        with pytest.raises(api.ManifestError, match="extraArgs"):
            _im({"model": MODEL, "extraArgs": args})


@pytest.mark.parametrize(
    ("count", "accepted"),
    [(1, True), (8, True), ("auto", True), (0, False), (9, False), ("4", False)],
)
def test_gpu_count_is_auto_or_one_to_eight(count: object, accepted: bool) -> None:
    if accepted:
        assert _im({"model": MODEL, "gpu": {"count": count}}).spec.gpu.count == count
    else:
        with pytest.raises(api.ManifestError, match=r"spec\.gpu\.count"):
            _im({"model": MODEL, "gpu": {"count": count}})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("800ms", 0.8), ("1.5h", 5400)],
)
def test_durations_read_like_go_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "-1s", "1d"])
def test_a_duration_without_a_unit_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_seconds(text)


def test_a_duration_field_is_parsed_once_and_kept_as_written() -> None:
    spec = _im(
        {
            "model": MODEL,
            "autoscaling": {"interval": "800ms", "window": "1h30m", "p99Target": "1.5s"},
        }
    ).spec
    autoscaling = spec.autoscaling
    assert autoscaling.interval == "800ms" and autoscaling.interval.seconds == pytest.approx(0.8)
    assert autoscaling.window.delta == timedelta(hours=1, minutes=30)
    assert autoscaling.p99_target is not None and autoscaling.p99_target.seconds == 1.5
    assert autoscaling.cooldown is None
    dumped = spec.model_dump(by_alias=True, exclude_none=True)["autoscaling"]
    assert (dumped["interval"], dumped["window"], dumped["p99Target"]) == ("800ms", "1h30m", "1.5s")
    assert type(dumped["interval"]) is str  # so YAML and JSON write it as the string it was
    assert AutoscalingSpec.model_validate(dumped) == autoscaling


def test_token_latency_targets_stand_alone_or_under_the_end_to_end_one() -> None:
    alone = _im({"model": MODEL, "autoscaling": {"ttftP99Target": "500ms"}}).spec.autoscaling
    assert alone.ttft_p99_target is not None and alone.ttft_p99_target.seconds == 0.5
    assert alone.itl_p99_target is None and alone.p99_target is None
    both = {"p99Target": "4s", "ttftP99Target": "500ms", "itlP99Target": "50ms"}
    spec = _im({"model": MODEL, "autoscaling": both}).spec
    dumped = spec.model_dump(by_alias=True, exclude_none=True)["autoscaling"]
    assert {k: dumped[k] for k in both} == both
    with pytest.raises(api.ManifestError, match="ttftP99Target must be below p99Target"):
        _im({"model": MODEL, "autoscaling": {"p99Target": "4s", "ttftP99Target": "4s"}})


def test_default_durations_carry_their_length_too() -> None:
    autoscaling = _im({"model": MODEL}).spec.autoscaling
    assert (autoscaling.interval, autoscaling.interval.delta) == ("30s", timedelta(seconds=30))
    assert (autoscaling.window, autoscaling.window.seconds) == ("5m", 300)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "-1s"])
def test_a_duration_is_one_only_if_it_reads_as_one(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        Duration(text)


def test_status_with_unknown_fields_still_parses() -> None:
    body = {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "m"},
        "spec": {"model": MODEL},
        "status": {"batchLimit": 64, "fromTheFuture": True},
    }
    resource = api.parse(body)
    assert resource.status is not None
    assert isinstance(resource, InferenceModel) and resource.status.batch_limit == 64


def test_serialised_names_are_camel_case() -> None:
    dumped = _im({"model": MODEL, "draft": {"model": {"name": "x/y"}}}).model_dump(
        by_alias=True, exclude_none=True
    )
    assert "numSpeculativeTokens" in dumped["spec"]["draft"]
    assert "kvCacheDtype" in dumped["spec"]
    assert "apiVersion" in dumped


def test_routing_policy_keeps_tier_order() -> None:
    policy = api.load((corpus.ROOT / "examples" / "routing-policy.yaml").read_text())[0]
    assert isinstance(policy, RoutingPolicy)
    assert [t.name for t in policy.spec.tiers] == ["simple", "medium", "complex"]
    assert policy.spec.overrides[0].match.category == "sql"


def test_other_kinds_in_a_file_are_skipped_and_bad_ones_named() -> None:
    text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\n"
    assert api.load(text) == []
    with pytest.raises(api.ManifestError, match=r"apiVersion must be specfleet\.dev/v1alpha1"):
        api.parse({"apiVersion": "specfleet.dev/v1", "kind": "InferenceModel"})
    with pytest.raises(api.ManifestError, match="not valid YAML"):
        api.load("spec: [unclosed")


def _policy_with_pattern(pattern: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "RoutingPolicy",
        "metadata": {"name": "p"},
        "spec": {
            "tiers": [{"name": "all", "model": "llama-8b"}],
            "overrides": [{"match": {"pattern": pattern}, "model": "llama-8b"}],
        },
    }


@pytest.mark.parametrize("pattern", [r"\bselect\b", r"(?i)drop\s+table", r"\(unbalanced"])
def test_an_override_pattern_is_a_python_regular_expression(pattern: str) -> None:
    policy = api.parse(_policy_with_pattern(pattern))
    assert isinstance(policy, RoutingPolicy)
    assert policy.spec.overrides[0].match.pattern == pattern


@pytest.mark.parametrize("pattern", ["([", "(unbalanced", "*sql", r"(?<=a+)b"])
def test_an_override_pattern_that_does_not_compile_is_refused_naming_it(pattern: str) -> None:
    # The API server cannot check Python's re syntax (its CEL speaks RE2): the operator refuses
    # what it accepted, with this message, rather than the router skipping the override.
    with pytest.raises(api.ManifestError) as refused:
        api.parse(_policy_with_pattern(pattern))
    message = str(refused.value)
    assert message.startswith("RoutingPolicy p: spec.overrides[0].match.pattern: "), message
    assert f"{pattern!r} is not a regular expression in Python's re syntax" in message


LEARNING_POLICY: dict[str, Any] = {
    "apiVersion": api.API_VERSION,
    "kind": "RoutingPolicy",
    "metadata": {"name": "assistant"},
    "spec": {
        "tiers": [
            {"name": "simple", "model": "llama-3b", "when": {"maxComplexity": 0.4}},
            {"name": "complex", "model": "llama-70b"},
        ],
        "capture": {"sampleRate": 0.5, "store": {"pvc": {"claimName": "traffic"}}},
        "learning": {},
    },
}


def test_learning_defaults_to_recommending_hourly_under_the_promotion_rules_defaults() -> None:
    from specfleet.learn import promotion, router_learn  # noqa: PLC0415

    policy = api.parse(LEARNING_POLICY)
    assert isinstance(policy, RoutingPolicy)
    learning = policy.spec.learning
    assert learning is not None
    assert (learning.mode, learning.pin, learning.judge.model) == ("Recommend", None, None)
    assert learning.schedule.split()[1:] == ["*", "*", "*", "*"]
    rule = promotion.Objective()
    assert (
        learning.objective.quality_target,
        learning.objective.quality_tolerance,
        learning.objective.cost_margin,
    ) == (rule.quality_target, rule.quality_tolerance, rule.cost_margin)
    assert learning.min_new_labels == router_learn.DEFAULT_MIN_NEW_LABELS


@pytest.mark.parametrize("schedule", ["*/30 * * * *", "0 3 * * mon-fri", "@daily", "15 2,14 1 * ?"])
def test_a_learning_schedule_is_a_cronjob_schedule(schedule: str) -> None:
    doc = copy.deepcopy(LEARNING_POLICY)
    doc["spec"]["learning"] = {"schedule": schedule, "pin": "sha256:" + "ab" * 32}
    policy = api.parse(doc)
    assert isinstance(policy, RoutingPolicy) and policy.spec.learning is not None
    assert policy.spec.learning.schedule == schedule


def test_the_policy_examples_commented_capture_and_learning_are_valid_uncommented() -> None:
    example = corpus.ROOT / "examples" / "routing-policy.yaml"
    lines = example.read_text().splitlines()
    opened = [
        line.replace("# ", "", 1)
        if line.lstrip().startswith(("# capture:", "# learning:"))
        else line
        for line in lines
    ]
    assert opened != lines
    (policy,) = api.load("\n".join(opened))
    assert isinstance(policy, RoutingPolicy)
    assert policy.spec.capture is not None and policy.spec.learning is not None
    assert policy.spec.learning.mode == "Recommend"

"""The LatencyTargetsMet condition as tables: targets the performance model says no batch
limit meets, breaches the limit has stopped moving, and the plain states, each with the
figures a person acts on."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from specfleet import api
from specfleet import plan as planner
from specfleet.api.inferencemodel import Decision, InferenceModel, InferenceModelSpec, Observation
from specfleet.autoscale import targets
from tests import corpus

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EXAMPLES = corpus.ROOT / "examples"


def example(name: str, **autoscaling: Any) -> InferenceModel:
    """An example with its autoscaling settings replaced by `autoscaling` (targets unset
    unless given)."""
    doc = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    given = doc["spec"]["autoscaling"]
    kept = {k: v for k, v in given.items() if not k.lower().endswith("p99target")}
    doc["spec"]["autoscaling"] = kept | autoscaling
    model = api.parse(doc)
    assert isinstance(model, InferenceModel)
    return model


def verdict(
    model: InferenceModel, observation: Observation, decision: Decision | None = None
) -> targets.Verdict:
    spec = model.spec
    return targets.verdict(spec, planner.plan(model.metadata.name, spec), observation, decision)


def decided(rule: str, limit: int = 64, to: int | None = None) -> Decision:
    return Decision(
        time=NOW, from_limit=limit, to_limit=limit if to is None else to, rule=rule, applied=True
    )


def test_without_targets_there_is_nothing_to_meet() -> None:
    found = verdict(example("llama-8b"), Observation())
    assert (found.status, found.reason) == ("True", "NoTargets")


def test_a_gap_between_tokens_shorter_than_one_step_at_the_smallest_batch_is_unreachable() -> None:
    # The 70B on four H100s drafting K=4 at batch 8 takes 25ms a step by the performance model.
    found = verdict(example("llama-70b-speculative", itlP99Target="20ms"), Observation())
    assert (found.status, found.reason) == ("False", "TargetUnreachable")
    assert found.message.startswith(
        "ITL P99 target 20ms is below one decode step of batching.min (8) sequences drafting "
        "K=4: 25ms by the performance model (4 x H100-80GB at fp8, 1024 tokens per sequence)"
    )
    # What would meet it, each with what the performance model says it gives.
    assert "gpu.count: 8 (19ms)" in found.message
    assert "no drafting at small batches" in found.message
    assert found.message.endswith("or a target of at least 25ms")


def test_a_first_token_faster_than_one_prefill_is_unreachable_whatever_is_measured() -> None:
    found = verdict(
        example("llama-8b", ttftP99Target="5ms", itlP99Target="50ms"),
        Observation(ttft_p99_seconds=0.004, itl_p99_seconds=0.02, queue_depth=0),
    )
    assert (found.status, found.reason) == ("False", "TargetUnreachable")
    assert found.message.startswith(
        "TTFT P99 target 5ms is below prefilling one prompt of batching.averageTokens (1024): "
        "16ms by the performance model"
    )
    assert "ITL" not in found.message  # only the target out of reach is named
    assert "shorter prompts" in found.message


def test_without_the_models_shape_nothing_is_judged_out_of_reach() -> None:
    spec = example("llama-8b", itlP99Target="1ms").spec
    unknown = spec.model_copy(
        update={"model": spec.model.model_copy(update={"name": "acme/unknown", "parameters": "8B"})}
    )
    found = targets.verdict(unknown, planner.plan("m", unknown), Observation(), None)
    assert (found.status, found.reason) == ("Unknown", "NotMeasured")


def test_targets_in_reach_wait_for_a_measurement() -> None:
    found = verdict(example("llama-8b", ttftP99Target="500ms"), Observation(p99_seconds=1.0))
    assert (found.status, found.reason, found.message) == (
        "Unknown",
        "NotMeasured",
        "no TTFT P99 measured yet",
    )


def test_targets_met_give_the_figures() -> None:
    found = verdict(
        example("llama-8b", ttftP99Target="500ms", itlP99Target="50ms"),
        Observation(ttft_p99_seconds=0.21, itl_p99_seconds=0.018, queue_depth=0),
    )
    assert (found.status, found.reason) == ("True", "TargetsMet")
    assert (
        found.message == "ITL P99 18ms under the 50ms target; TTFT P99 210ms under the 500ms target"
    )


def test_a_breach_the_autoscaler_acts_on_says_how() -> None:
    found = verdict(
        example("llama-8b", itlP99Target="50ms"),
        Observation(itl_p99_seconds=0.08, queue_depth=0),
        decided("itl-breach", 64, 44),
    )
    assert (found.status, found.reason) == ("False", "OverTarget")
    assert (
        found.message
        == "ITL P99 80ms over the 50ms target; the autoscaler acts (itl-breach: 64 -> 44)"
    )


def test_an_end_to_end_breach_the_batch_does_not_cause_is_explained() -> None:
    # The demo's llama-8b: 8 sequences under a limit of 268, nothing queued, P99 4.9s over 4s
    # after a shrink that did not lower it.
    found = verdict(
        example("llama-8b", p99Target="4s"),
        Observation(
            p99_seconds=4.9,
            ttft_p99_seconds=0.08,
            itl_p99_seconds=0.012,
            queue_depth=0,
            in_flight=8,
        ),
        decided("p99-breach-no-gain", 187),
    )
    assert (found.status, found.reason) == ("False", "BatchCannotMoveLatency")
    assert found.message.startswith(
        "P99 4.90s over the 4.00s target: shrinking the batch did not lower the P99 "
        "(p99-breach-no-gain), so the batch is not what makes it slow; end-to-end latency "
        "grows with each answer's length, which no batch limit shortens (4.90s is the first "
        "token's 0.08s and about 402 decode steps of 12ms: a long answer)"
    )
    assert "set ttftP99Target and itlP99Target" in found.message
    assert "a p99Target for the answers' typical length" in found.message


def test_a_slow_gap_between_tokens_under_a_queue_asks_for_replicas() -> None:
    # 40 in flight and 10 waiting over 2 replicas: at 70% of the batch, ceil(2 x 50 / 28).
    found = verdict(
        example("llama-8b", itlP99Target="50ms"),
        Observation(itl_p99_seconds=0.08, queue_depth=10, in_flight=40),
        decided("itl-breach-saturated"),
    )
    assert (found.status, found.reason) == ("False", "BatchCannotMoveLatency")
    assert "40 in flight and 10 waiting over 2 replica(s)" in found.message
    assert "spec.replicas 4 or more" in found.message


def test_a_breach_at_the_smallest_limit_cannot_shrink_further() -> None:
    found = verdict(
        example("llama-70b-speculative", ttftP99Target="500ms"),
        Observation(ttft_p99_seconds=0.9, queue_depth=0),
        decided("bounds", 8),
    )
    assert (found.status, found.reason) == ("False", "BatchCannotMoveLatency")
    assert "the limit is at batching.min (8)" in found.message
    assert "the prompts' prefill, not the batch" in found.message


@pytest.mark.parametrize("path", corpus.EXAMPLES, ids=lambda p: Path(p).name)
def test_the_examples_targets_are_within_reach(path: Path) -> None:
    for model in api.load(path.read_text()):
        if not isinstance(model, InferenceModel):
            continue
        spec: InferenceModelSpec = model.spec
        found = targets.verdict(spec, planner.plan(model.metadata.name, spec), Observation(), None)
        assert found.reason in ("NoTargets", "NotMeasured"), found.message

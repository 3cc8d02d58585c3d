"""`specfleet review`: the decision table, JSON, replay under another policy and the plot, from
a manifest with status (no cluster)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from specfleet import cli, review
from specfleet.api.inferencemodel import Decision, Observation

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def decision(
    minute: float, before: int, after: int, rule: str, p99: float, queue: float = 0.0
) -> Decision:
    return Decision(
        time=START + timedelta(minutes=minute),
        from_limit=before,
        to_limit=after,
        rule=rule,
        applied=True,
        observation=Observation(
            acceptance_rate=0.75,
            p99_seconds=p99,
            queue_depth=queue,
            throughput=9000.0,
            in_flight=12.5,
        ),
        message=f"{rule} at {minute}",
    )


def recorded() -> list[Decision]:
    """What the operator would have written: the spec's own policy (8s target) over windows
    whose P99 breaches with nothing waiting, then recovers."""
    raw = [
        decision(i * 0.5, 64, 64, "observed", p99)
        for i, p99 in enumerate([7.0, 7.0, 15.0, 15.0, 15.0, 15.0, 6.0, 6.0])
    ]
    return review.replay(raw, review.parse_model(_body([])))


def _body(decisions: list[Decision]) -> dict[str, Any]:
    return {
        "apiVersion": "specfleet.dev/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": "llama-70b", "namespace": "ml"},
        "spec": {
            "model": {"name": "meta-llama/Llama-3.1-70B-Instruct"},
            "draft": {"model": {"name": "meta-llama/Llama-3.2-3B-Instruct"}},
            "batching": {"min": 8, "max": 256, "initial": 64},
            "autoscaling": {"p99Target": "8s"},
        },
        "status": {
            "batchLimit": 44,
            "decisions": [d.model_dump(by_alias=True, mode="json") for d in decisions],
        },
    }


RECORDED = recorded()


def manifest(tmp_path: Path, decisions: list[Decision] = RECORDED) -> Path:
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(_body(decisions)))
    return path


def test_table_lists_every_decision_and_explains_changes() -> None:
    lines = review.table(RECORDED, 8.0).splitlines()
    assert lines[0].split() == [
        "TIME", "FROM", "TO", "APPLIED", "RULE", "ACCEPT", "P99", "(target", "8s)", "QUEUE",
        "INFLIGHT", "TOK/S",
    ]  # fmt: skip
    assert lines[3].split() == [
        "2026-11-23", "12:01:00", "64", "44", "yes", "p99-breach", "0.75", "15.00", "0.0",
        "12.5", "9000",
    ]  # fmt: skip
    assert [line.split()[5] for line in lines[1:9]] == [
        "steady", "steady", "p99-breach", "cooldown", "cooldown", "cooldown", "steady", "steady",
    ]  # fmt: skip
    assert lines[9] == "8 decisions, 1 changes"
    assert lines[10].startswith("12:01:00 p99-breach: P99 15.00s")


def test_json_round_trips() -> None:
    parsed = [Decision.model_validate(d) for d in json.loads(review.as_json(RECORDED))]
    assert parsed == RECORDED


def test_replay_under_the_same_policy_changes_nothing(tmp_path: Path) -> None:
    model = review.read_file(manifest(tmp_path))
    recorded = review.decisions(model)
    replayed = review.replay(recorded, model)
    assert review.differences(recorded, replayed) == []


def test_replay_shows_where_another_policy_differs(tmp_path: Path) -> None:
    model = review.read_file(manifest(tmp_path))
    recorded = review.decisions(model)
    # A looser target: the 15s window is no breach, so no shrink and no cooldown.
    autoscaling, batching = review.load_policy(
        "autoscaling: {p99Target: 20s}\nbatching: {min: 8, max: 256, initial: 64}\n", model.spec
    )
    replayed = review.replay(recorded, model, autoscaling, batching)
    found = review.differences(recorded, replayed)
    # The replay never shrinks, so it differs from the breach on (rule, then limit).
    assert [(f.original.rule, f.replayed.rule, f.replayed.to_limit) for f in found] == [
        ("p99-breach", "steady", 64),
        ("cooldown", "steady", 64),
        ("cooldown", "steady", 64),
        ("cooldown", "steady", 64),
        ("steady", "steady", 64),
        ("steady", "steady", 64),
    ]
    text = review.differences_table(found, len(recorded))
    assert "64->44 p99-breach  64->64 steady" in text
    assert "6 of 8 decisions differ" in text


def test_a_policy_file_is_validated_like_the_spec(tmp_path: Path) -> None:
    model = review.read_file(manifest(tmp_path))
    with pytest.raises(review.ReviewError, match="low must be below high"):
        review.load_policy("autoscaling: {acceptanceBands: {high: 0.5, low: 0.7}}", model.spec)


def test_cli_table_json_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = manifest(tmp_path)
    assert cli.main(["review", "--from-file", str(path)]) == 0
    assert "p99-breach" in capsys.readouterr().out
    assert cli.main(["review", "--from-file", str(path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 8
    policy = tmp_path / "policy.yaml"
    policy.write_text("autoscaling: {p99Target: 20s}\n")
    assert cli.main(["review", "--from-file", str(path), "--replay", str(policy)]) == 0
    assert "6 of 8 decisions differ" in capsys.readouterr().out


def test_the_readme_replay_example_is_what_review_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README's on-call section shows a replay of these decisions; it must stay true."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```console\n", 1)[1].split("```", 1)[0]
    lines = [line.removeprefix("  ") for line in example.rstrip().splitlines()]
    policy_text = lines[lines.index("$ cat wider.yaml") + 1]
    command = lines.index("$ specfleet review llama-70b --replay wider.yaml")
    shown = lines[command + 1 :]
    policy = tmp_path / "wider.yaml"
    policy.write_text(policy_text + "\n")
    argv = ["review", "--from-file", str(manifest(tmp_path)), "--replay", str(policy)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == shown


def test_cli_needs_a_name_or_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["review"]) == 2
    assert "--from-file" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "decisions.png"
    assert cli.main(["review", "--from-file", str(manifest(tmp_path)), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_schedule_changes_are_listed_and_replayed(tmp_path: Path) -> None:
    # Windows whose draft acceptance falls from the prior 0.8 to 0.3 with 32 in flight.
    raw = [
        Decision(
            time=START + timedelta(minutes=i * 0.5),
            from_limit=64,
            to_limit=64,
            rule="observed",
            applied=True,
            observation=Observation(
                acceptance_rate=0.2, draft_acceptance=0.3, in_flight=32.0, queue_depth=0.0
            ),
        )
        for i in range(5)
    ]
    model = review.read_file(manifest(tmp_path, raw))
    recorded = review.replay(raw, model)
    changes = [d.schedule for d in recorded if d.schedule is not None]
    # The third window has enough samples; the change is applied once, and the measured
    # acceptance stays within the hysteresis of the new schedule's afterwards.
    assert [c.rule for c in changes] == ["schedule-retune"]
    assert recorded[2].schedule is not None and recorded[2].schedule.applied
    lines = review.table(recorded, 8.0).splitlines()
    assert "1 speculation schedule proposals" in lines[-2]
    assert lines[-1].startswith("12:01:00 schedule-retune: speculation schedule applied")
    # Recorded in status, the same history replays to the same schedule decisions...
    stored = review.read_file(manifest(tmp_path, recorded))
    again = review.replay(review.decisions(stored), stored)
    assert review.differences(review.decisions(stored), again) == []
    # ... and a replay under a fixed schedule, which nothing retunes, says where it differs.
    assert stored.spec.draft is not None
    draft = stored.spec.draft.model_copy(update={"schedule": "fixed"})
    fixed = stored.model_copy(update={"spec": stored.spec.model_copy(update={"draft": draft})})
    without = review.replay(review.decisions(stored), fixed)
    assert len(review.differences(review.decisions(stored), without)) == 1

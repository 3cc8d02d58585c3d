"""`specfleet review rp/NAME`: a RoutingPolicy's promotion decisions from its status.learning,
as a table and JSON, and replayed under another learning: with the operator's own rule (under
the policy's own objective, every decision comes back as recorded)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from specfleet import cli
from specfleet.api.learning import LearningDecision, LearningSpec
from specfleet.learn import promotion
from specfleet.learn import review as promotions

START = datetime(2026, 12, 7, 9, 41, tzinfo=UTC)
FIRST = "sha256:" + "1a" * 32
SECOND = "sha256:" + "2b" * 32


def _recorded() -> list[LearningDecision]:
    """Three passes as the learning Job decides them: the heuristic replaced, a cheaper one
    promoted, one within the margin refused."""
    passes = [
        (FIRST, 0.958, 0.394, promotion.HEURISTIC, 0.491, 0.145),
        (SECOND, 0.951, 0.330, FIRST, 0.958, 0.394),
        ("sha256:" + "3c" * 32, 0.953, 0.320, SECOND, 0.951, 0.330),
    ]
    found = []
    for hour, (candidate, cq, cc, in_force, iq, ic) in enumerate(passes):
        decided = promotion.decide(
            promotion.Objective(),
            promotion.Figures(candidate, cq, cc),
            promotion.Figures(in_force, iq, ic),
            212,
            now=START + timedelta(hours=hour),
        )
        record = {**promotion.as_json(decided), "record": f"learning/decisions/{hour}.json"}
        found.append(LearningDecision.model_validate(record))
    return found


def _manifest(tmp_path: Path, learning: dict[str, Any] | None = None) -> Path:
    decisions = [d.model_dump(by_alias=True, mode="json") for d in _recorded()]
    body = {
        "apiVersion": "specfleet.dev/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": "assistant", "namespace": "ml"},
        "spec": {
            "tiers": [{"name": "all", "model": "llama-8b"}],
            "capture": {"sampleRate": 0.2, "store": {"pvc": {"claimName": "traffic"}}},
            "learning": learning if learning is not None else {"mode": "Apply"},
        },
        "status": {
            "conditions": [],
            "learning": {"inForce": SECOND, "decisions": decisions},
        },
    }
    path = tmp_path / "assistant.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_the_table_shows_each_decision_its_figures_and_why() -> None:
    recorded = _recorded()
    assert [d.rule for d in recorded] == ["MeetsWhereInForceMisses", "Cheaper", "NotCheaper"]
    printed = promotions.table(recorded).splitlines()
    assert printed[0].split()[:4] == ["TIME", "VERDICT", "RULE", "APPLIED"]
    assert "Promote" in printed[1] and "0.958" in printed[1] and "heuristic" in printed[1]
    assert FIRST[:19] in printed[1] and FIRST not in printed[1]  # a short hash in the table
    assert printed[4] == "3 decisions, 2 promotions, 2 applied"
    assert printed[-1].startswith("11:41:00 NotCheaper: ")


def test_under_its_own_objective_every_decision_replays_as_recorded() -> None:
    recorded = _recorded()
    replayed = promotions.replay(recorded, LearningSpec(mode="Apply"))
    assert promotions.differences(recorded, replayed) == []


def test_a_stricter_target_or_a_pin_decides_otherwise() -> None:
    recorded = _recorded()
    stricter = LearningSpec.model_validate(
        {"mode": "Apply", "objective": {"qualityTarget": 0.99, "qualityTolerance": 0.02}}
    )
    found = promotions.differences(recorded, promotions.replay(recorded, stricter))
    assert [(f.recorded.rule, f.replayed.rule) for f in found] == [
        ("MeetsWhereInForceMisses", "MissesTarget"),
        ("Cheaper", "MissesTarget"),
        ("NotCheaper", "MissesTarget"),
    ]
    pinned = LearningSpec(mode="Recommend", pin=FIRST)
    replayed = promotions.replay(recorded, pinned)
    assert [(d.verdict, d.rule, d.applied) for d in replayed] == [
        ("Promote", "Pinned", False),
        ("Refuse", "Pinned", False),
        ("Refuse", "Pinned", False),
    ]
    assert "3 of 3 decisions differ" in promotions.differences_table(
        promotions.differences(recorded, replayed), 3
    )


def test_cli_reviews_a_policy_from_its_manifest_and_replays_an_edited_learning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _manifest(tmp_path)
    assert cli.main(["review", "--from-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"RoutingPolicy assistant: in force {SECOND}"
    assert "3 decisions, 2 promotions, 2 applied" in out
    assert cli.main(["review", "--from-file", str(path), "--json"]) == 0
    rules = [d["rule"] for d in json.loads(capsys.readouterr().out)]
    assert rules == ["MeetsWhereInForceMisses", "Cheaper", "NotCheaper"]
    assert cli.main(["review", "--from-file", str(path), "--replay", str(path)]) == 0
    assert "decides as recorded at all 3 decisions" in capsys.readouterr().out
    edited = tmp_path / "stricter.yaml"
    edited.write_text("learning:\n  mode: Apply\n  objective: {qualityTarget: 0.99}\n")
    assert cli.main(["review", "--from-file", str(path), "--replay", str(edited)]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 decisions differ" in out and "MissesTarget" in out


def test_cli_names_what_it_cannot_review(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["review", "deploy/assistant"]) == 2
    assert "rp/NAME" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning: {objective: {qualityTarget: 2}}\n")
    assert cli.main(["review", "--from-file", str(_manifest(tmp_path)), "--replay", str(bad)]) == 2
    assert "qualityTarget" in capsys.readouterr().err

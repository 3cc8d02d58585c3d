"""`specfleet router promote`: both classifiers' held-out figures side by side, the decision and
its reason, its record (which replays), the exit status (0 promote, 1 refuse), and a message
with exit status 2 for every bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from specfleet import cli
from specfleet.learn import labels, promotion, router_eval, split
from specfleet.learn.policy import Policy
from specfleet.routing import learned
from tests.learn import traffic

LAST_LINE = re.compile(
    r"decision=(promote|refuse) rule=\w+ candidate_quality=\d\.\d{3} candidate_cost=\d\.\d{3} "
    r"in_force_quality=\d\.\d{3} in_force_cost=\d\.\d{3} labels=\d+"
)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A policy, labels to train on and new labels, and two classifiers trained on the first:
    ``lean`` at quality target 0.97, ``rich`` at 0.99 (dearer)."""
    root = tmp_path_factory.mktemp("promote")
    (root / "policy.yaml").write_text(traffic.POLICY_YAML)
    (root / "train.jsonl").write_bytes(traffic.jsonl(traffic.lines(750, 1)))
    (root / "new.jsonl").write_bytes(traffic.jsonl(traffic.lines(1000, 2)))
    (root / "few.jsonl").write_bytes(traffic.jsonl(traffic.lines(200, 3)))
    for name, target in (("lean", "0.97"), ("rich", "0.99")):
        argv = [
            "router",
            "train",
            "--policy",
            str(root / "policy.yaml"),
            "--data",
            str(root / "train.jsonl"),
            "--out",
            str(root / name),
            "--quality-target",
            target,
        ]
        assert cli.main(argv) == 0
    return root


def promote(made: Path, *more: str, data: str = "new.jsonl") -> list[str]:
    return [
        "router",
        "promote",
        "--policy",
        str(made / "policy.yaml"),
        "--data",
        str(made / data),
        *more,
    ]


def held_out_count(made: Path, data: str) -> int:
    found = labels.read((made / data).read_bytes().splitlines(), traffic.TIERS)
    return len(split.divide(found).held_out.examples)


def test_a_candidate_that_meets_the_target_replaces_the_heuristic(
    made: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796083200")
    capsys.readouterr()
    record = made / "decision.json"
    argv = promote(made, "--candidate", str(made / "lean"), "--record", str(record))
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    count = held_out_count(made, "new.jsonl")
    assert lines[0].startswith(
        f"held-out labels: {count} of 1000 (specfleet.dev/router-split/v1, 20% by a hash"
    )
    assert lines[1] == (
        "objective: quality target 0.95 (met at 0.930 or more on held-out labels), cost margin "
        "0.05, at least 119 held-out labels"
    )
    lean = learned.load(made / "lean").content_hash
    assert re.fullmatch(r"  \s+classifier\s+quality\s+cost", lines[2])
    assert re.fullmatch(rf"  candidate  {lean}\s+0\.9\d\d\s+0\.\d{{3}}", lines[3])
    assert re.fullmatch(r"  in force   heuristic\s+0\.[45]\d\d\s+0\.1\d\d", lines[4])
    assert lines[5].startswith(
        "Promote (MeetsWhereInForceMisses): the candidate meets the quality target 0.95 (at "
        "least 0.930) where the classifier in force does not: candidate quality 0.9"
    )
    assert lines[6] == f"wrote the decision to {record}"
    assert LAST_LINE.fullmatch(lines[-1]) and lines[-1].endswith(f" labels={count}")
    assert lines[-1].startswith("decision=promote rule=MeetsWhereInForceMisses ")
    # The record: what was printed, decided on the held-out side, and it replays.
    decision = promotion.from_json(json.loads(record.read_text()))
    assert decision.line() == lines[-1]
    assert (decision.mode, decision.applied) == ("Recommend", False)
    assert decision.time.isoformat() == "2026-12-01T00:00:00+00:00"
    held_out = split.divide(
        labels.read((made / "new.jsonl").read_bytes().splitlines(), traffic.TIERS)
    ).held_out
    assert decision.held_out == held_out.sha256()
    policy = Policy.of(traffic.policy_spec())
    assert decision.candidate == router_eval.figures_of(
        held_out, policy, learned.load(made / "lean")
    )
    assert decision.in_force == router_eval.figures_of(held_out, policy, None)
    assert promotion.replay(decision) == decision


def test_a_cheaper_candidate_is_promoted_and_a_dearer_one_refused(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lean, rich = str(made / "lean"), str(made / "rich")
    assert cli.main(promote(made, "--candidate", lean, "--in-force", rich)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("Promote (Cheaper): both meet the quality target 0.95 and the ")
    assert cli.main(promote(made, "--candidate", rich, "--in-force", lean)) == 1
    out = capsys.readouterr().out.splitlines()
    assert re.match(r"Refuse \(NotCheaper\): .* the candidate costs [\d.]+% more", out[-2])
    assert out[-1].startswith("decision=refuse rule=NotCheaper ")
    # The one in force, judged again: nothing to change.
    assert cli.main(promote(made, "--candidate", lean, "--in-force", lean)) == 1
    assert "Refuse (InForce)" in capsys.readouterr().out


def test_a_pin_wins_and_too_few_labels_refuse(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lean, rich = str(made / "lean"), str(made / "rich")
    pinned = learned.load(made / "rich").content_hash
    argv = promote(made, "--candidate", lean, "--in-force", rich, "--pin", pinned)
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert f"Refuse (Pinned): the policy pins {pinned}, which wins over any candidate" in out
    assert cli.main(promote(made, "--candidate", lean, data="few.jsonl")) == 1
    count = held_out_count(made, "few.jsonl")
    assert f"Refuse (TooFewLabels): {count} held-out labels, fewer than the 119" in (
        capsys.readouterr().out
    )


def test_a_classifier_in_force_trained_on_every_label_is_noted(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unsplit = tmp_path / "unsplit"
    unsplit.mkdir()
    learned.dump(traffic.constant_classifier(list(traffic.TIERS), 0.9).artifact, unsplit)
    assert (
        cli.main(promote(made, "--candidate", str(made / "lean"), "--in-force", str(unsplit))) == 0
    )
    out = capsys.readouterr().out
    assert (
        "note: the classifier in force was not trained by this split: it may have seen held-out "
        "requests, and its figures may flatter it"
    ) in out
    # Everything to the last tier: it meets the target, and the candidate is far cheaper.
    assert "in_force_cost=1.000" in out and "decision=promote rule=Cheaper " in out
    assert (
        cli.main(promote(made, "--candidate", str(made / "lean"), "--in-force", str(made / "rich")))
        == 0
    )
    assert "note: the classifier in force" not in capsys.readouterr().out


def test_the_objective_comes_from_the_options(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lean = str(made / "lean")
    argv = promote(
        made, "--candidate", lean, "--quality-target", "0.995", "--quality-tolerance", "0.001"
    )
    # 0.995 * 0.005 / 0.001**2: more labels than the file holds.
    assert cli.main(argv) == 1
    assert "fewer than the 4975" in capsys.readouterr().out
    # A target the candidate (trained for 0.97) misses: 0.97 at the tolerance 0.02.
    assert cli.main(promote(made, "--candidate", lean, "--quality-target", "0.99")) == 1
    out = capsys.readouterr().out
    assert "at least 30 held-out labels" in out
    assert "Refuse (MissesTarget): the candidate misses the quality target 0.99 (at least " in out


def test_bad_inputs_are_named_with_the_fix(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "classifier.json").write_bytes((made / "lean" / "classifier.json").read_bytes()[:99])
    assert cli.main(promote(made, "--candidate", str(corrupt))) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"specfleet router promote: --candidate {corrupt}: {corrupt}/classifier.json: not a "
        "classifier's JSON"
    )
    assert err.rstrip().endswith("; train it again with specfleet router train")

    argv = promote(made, "--candidate", str(made / "lean"), "--in-force", str(corrupt))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"specfleet router promote: --in-force {corrupt}: ")
    assert "give the directory of the classifier in force, or heuristic" in err

    # Trained on every label (no held-out side): its figures would include its own training.
    unsplit = tmp_path / "unsplit"
    unsplit.mkdir()
    learned.dump(traffic.constant_classifier(list(traffic.TIERS)).artifact, unsplit)
    assert cli.main(promote(made, "--candidate", str(unsplit))) == 2
    err = capsys.readouterr().err
    assert "was not trained by the split this evaluates with (no training.heldOut" in err
    assert "train it again with specfleet router train" in err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "label": "gpt-huge"}\n')
    argv = promote(made, "--candidate", str(made / "lean"), "--data", str(bad))
    assert cli.main(argv) == 2
    assert "label 'gpt-huge' is not a tier of the policy: use one of simple, medium, complex" in (
        capsys.readouterr().err
    )

    argv = promote(made, "--candidate", str(made / "lean"), "--cost-margin", "1.5")
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        "specfleet router promote: the cost margin 1.5 must be in [0, 1)\n"
    )

"""`specfleet router learn`, one pass of the learning loop, over a directory store that the
capture writer filled, against real simulator processes as tiers and judge: the first pass
judges every captured request, trains and promotes over the heuristic; a pass with nothing new
asks and trains nothing; new records are judged once; Recommend records without moving what is
in force; a pin wins; a corrupt artifact is named and never in force; a judge that answers
garbage labels nothing, moves no cursor and promotes nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from specfleet import capturestore, cli
from specfleet.api import learning, storelayout
from specfleet.learn import promotion, router_learn
from specfleet.routing import learned
from specfleet_runtime.capture import Capture, CaptureMetrics
from tests.capture.builders import chat_exchange, config
from tests.learn import traffic
from tests.learn.fleet import expected_label, figures, policy_file, tier_flags

FIRST = 700
"""Captured requests before the first pass: about a fifth are held out, and promotion needs
119 held-out labels at a quality target of 0.95."""
ROOT = "team-a/routingpolicy/assistant"
"""Where the capture writer puts the policy's batches in a directory store."""


def capture(store: Path, count: int, seed: int, first_id: int = 0) -> None:
    """``count`` requests of the team's traffic, offered to the capture writer as the router
    offers them, written as its batches into the directory store."""
    writer = Capture(
        config(store, flushRecords=250),
        pod="router-0",
        metrics=CaptureMetrics(CollectorRegistry()),
        environ={},
    )
    for i, body in enumerate(traffic.requests(count, seed), start=first_id):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        writer.offer(chat_exchange(f"req-{i}", path=path, body=json.dumps(body).encode()))
    assert writer.close(timeout=30)


def store_config(store: Path) -> Path:
    path = store.parent / "store.yaml"
    path.write_text(
        json.dumps(
            {
                "kind": "RoutingPolicy",
                "namespace": "team-a",
                "name": "assistant",
                "store": {"directory": str(store)},
            }
        )
    )
    return path


@dataclass
class Pass:
    status: int
    out: str
    err: str
    report: dict[str, Any] | None
    """What the termination log received."""

    @property
    def line(self) -> dict[str, str]:
        return figures(self.out)


def learn(store: Path, urls: dict[str, str], *flags: str) -> Pass:
    argv = [
        "router", "learn", "--policy", str(policy_file(store.parent)),
        "--store-config", str(store_config(store)), *tier_flags(urls), "--rate", "1000",
        *flags,
    ]  # fmt: skip
    log = store.parent / "termination-log"
    log.unlink(missing_ok=True)
    log.touch()
    out, err = io.StringIO(), io.StringIO()
    with (
        pytest.MonkeyPatch.context() as patch,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        patch.setattr(cli, "TERMINATION_LOG", log)
        status = cli.main(argv)
    written = log.read_text()
    return Pass(status, out.getvalue(), err.getvalue(), json.loads(written) if written else None)


@pytest.fixture(scope="module")
def first(
    fleet: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Pass]]:
    """A store with FIRST captured requests after one pass in Apply mode."""
    store = tmp_path_factory.mktemp("first") / "store"
    capture(store, FIRST, seed=5)
    yield store, learn(store, fleet, "--mode", "Apply")


def copy(first: tuple[Path, Pass], tmp_path: Path) -> Path:
    """A copy of the store after the first pass, to go on from."""
    store = tmp_path / "store"
    shutil.copytree(first[0], store)
    return store


def read(store: Path, key: str) -> Any:
    return json.loads((store / key).read_text())


def decisions(store: Path) -> list[str]:
    folder = store / storelayout.decisions(ROOT)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_first_pass_judges_trains_and_promotes_over_the_heuristic(
    first: tuple[Path, Pass],
) -> None:
    store, done = first
    assert done.status == 0, done.err
    line = done.line
    trained = line["trained"]
    assert line | {"trained": "-", "in_force": "-"} == {
        "batches": "3",
        "records": str(FIRST),
        "asked": str(FIRST),
        "labelled": str(FIRST),
        "unparseable": "0",
        "tier_errors": "0",
        "judge_errors": "0",
        "labels": str(FIRST),
        "new_labels": str(FIRST),
        "trained": "-",
        "decision": "promote",
        "rule": "MeetsWhereInForceMisses",
        "applied": "true",
        "in_force": "-",
    }
    assert line["in_force"] == trained
    # The labels kept are the judge's: the cheapest tier able to answer each request.
    kept = router_learn.stored_labels(capturestore.DirectoryStore(store), ROOT, traffic.TIERS)
    assert len(kept.examples) == FIRST
    assert [traffic.TIERS[e.label] for e in kept.examples] == [
        expected_label(e.request.text) for e in kept.examples
    ]
    # The artifact is stored under its content hash, and loads as the router loads it.
    artifact = store / storelayout.classifier(ROOT, trained)
    assert learned.load(artifact).content_hash == trained
    # The decision is recorded, replays, and the pointer names it.
    pointer = read(store, storelayout.in_force(ROOT))
    assert pointer["classifier"] == trained
    recorded = promotion.from_json(read(store, pointer["decision"]))
    assert (recorded.verdict, recorded.rule, recorded.applied, recorded.mode) == (
        "Promote",
        "MeetsWhereInForceMisses",
        True,
        "Apply",
    )
    assert recorded.candidate.classifier == trained
    assert recorded.in_force.classifier == promotion.HEURISTIC
    assert recorded.labels >= promotion.Objective().min_labels()
    assert promotion.differences([recorded]) == []
    # The termination log holds what status takes of the pass: small, and the same decision.
    assert done.report is not None
    assert len(json.dumps(done.report)) < 4096
    assert done.report["trained"] == trained
    assert done.report["inForce"] == trained
    status = learning.LearningDecision.model_validate(done.report["decision"])
    assert status.record == pointer["decision"]
    assert (status.verdict, status.rule, status.applied, status.reason) == (
        recorded.verdict,
        recorded.rule,
        recorded.applied,
        recorded.reason,
    )
    assert (status.candidate.classifier, status.in_force.classifier) == (
        trained,
        promotion.HEURISTIC,
    )
    assert done.report["lastRun"]["labelled"] == len(kept.examples)
    assert done.report["lastRun"]["asked"] == int(done.line["asked"])


def test_a_second_pass_with_nothing_new_asks_and_trains_nothing(
    first: tuple[Path, Pass], fleet: dict[str, str], tmp_path: Path
) -> None:
    store = copy(first, tmp_path)
    before = decisions(store)
    again = learn(store, fleet, "--mode", "Apply")
    assert again.status == 0, again.err
    line = again.line
    assert {k: line[k] for k in ("batches", "records", "asked", "labelled", "labels")} == {
        "batches": "0",
        "records": "0",
        "asked": "0",
        "labelled": "0",
        "labels": str(FIRST),
    }
    assert (line["new_labels"], line["trained"], line["decision"]) == ("0", "none", "none")
    assert line["in_force"] == first[1].line["trained"]
    assert "not trained: 0 labels arrived since the last training, fewer than 100" in again.out
    assert decisions(store) == before
    assert len(list((store / ROOT / "labels").iterdir())) == 1


def test_new_records_are_judged_once(
    first: tuple[Path, Pass], fleet: dict[str, str], tmp_path: Path
) -> None:
    store = copy(first, tmp_path)
    capture(store, 30, seed=6, first_id=FIRST)
    judged = learn(store, fleet, "--mode", "Apply")
    assert judged.status == 0, judged.err
    assert (judged.line["batches"], judged.line["asked"]) == ("1", "30")
    # Fewer new labels than --min-new-labels (100): nothing trained yet.
    assert judged.line["trained"] == "none"
    assert int(judged.line["new_labels"]) == int(judged.line["labels"]) - FIRST > 0
    again = learn(store, fleet, "--mode", "Apply")
    assert (again.line["batches"], again.line["asked"], again.line["new_labels"]) == (
        "0",
        "0",
        judged.line["new_labels"],
    )


def test_recommend_records_and_a_pin_wins(
    first: tuple[Path, Pass], fleet: dict[str, str], tmp_path: Path
) -> None:
    store = copy(first, tmp_path)
    promoted = first[1].line["trained"]
    pointer = read(store, storelayout.in_force(ROOT))
    # Training again on the same labels (another trainedAt) gives another artifact that
    # routes alike: not cheaper than the one in force, so refused.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOURCE_DATE_EPOCH", "1796600000")
        retrained = learn(store, fleet, "--mode", "Apply", "--min-new-labels", "0")
    assert retrained.status == 0, retrained.err
    other = retrained.line["trained"]
    assert other not in ("none", promoted)
    assert (retrained.line["decision"], retrained.line["rule"]) == ("refuse", "NotCheaper")
    assert read(store, storelayout.in_force(ROOT)) == pointer

    # Recommend: the pinned one is promoted on record, and nothing moves.
    recommended = learn(store, fleet, "--pin", other)
    assert recommended.status == 0, recommended.err
    line = recommended.line
    assert (line["trained"], line["decision"], line["rule"], line["applied"]) == (
        "none",
        "promote",
        "Pinned",
        "false",
    )
    assert line["in_force"] == promoted
    assert read(store, storelayout.in_force(ROOT)) == pointer
    assert recommended.report is not None
    key = recommended.report["decision"]["record"]
    recorded = promotion.from_json(read(store, key))
    assert (recorded.mode, recorded.applied, recorded.pin) == ("Recommend", False, other)

    # Apply: the pin goes in force; a candidate trained under the pin is refused.
    applied = learn(store, fleet, "--pin", other, "--mode", "Apply")
    assert (applied.line["decision"], applied.line["applied"]) == ("promote", "true")
    assert applied.line["in_force"] == other
    assert read(store, storelayout.in_force(ROOT))["classifier"] == other
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOURCE_DATE_EPOCH", "1796700000")
        pinned = learn(store, fleet, "--pin", other, "--mode", "Apply", "--min-new-labels", "0")
    assert pinned.line["trained"] not in ("none", other)
    assert (pinned.line["decision"], pinned.line["rule"], pinned.line["in_force"]) == (
        "refuse",
        "Pinned",
        other,
    )


def test_a_corrupt_artifact_is_named_and_never_in_force(
    first: tuple[Path, Pass], fleet: dict[str, str], tmp_path: Path
) -> None:
    store = copy(first, tmp_path)
    promoted = first[1].line["trained"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOURCE_DATE_EPOCH", "1796600000")
        other = learn(store, fleet, "--mode", "Apply", "--min-new-labels", "0").line["trained"]
    pointer = read(store, storelayout.in_force(ROOT))
    before = decisions(store)
    # Its threshold changed after it was written: the bytes no longer match its hash.
    key = storelayout.classifier(ROOT, other)
    artifact = json.loads((store / key).read_bytes())
    artifact["threshold"] = 0.01
    (store / key).write_text(json.dumps(artifact))
    refused = learn(store, fleet, "--pin", other, "--mode", "Apply")
    assert refused.status == 2
    assert refused.err.startswith(f"specfleet router learn: the pinned classifier {other} cannot")
    assert key in refused.err and "does not match the content" in refused.err
    assert read(store, storelayout.in_force(ROOT)) == pointer
    assert decisions(store) == before
    # An artifact under another's name is refused as well.
    (store / key).write_bytes((store / storelayout.classifier(ROOT, promoted)).read_bytes())
    refused = learn(store, fleet, "--pin", other, "--mode", "Apply")
    assert refused.status == 2
    assert f"{key} holds {promoted}, not the classifier its name says" in refused.err
    assert read(store, storelayout.in_force(ROOT)) == pointer
    # The one in force broken: a pass with nothing to decide does not need it, one with a
    # candidate cannot judge against it, says so, and leaves it the pointer's.
    in_force = store / storelayout.classifier(ROOT, promoted)
    in_force.write_bytes(in_force.read_bytes()[:-40])
    assert learn(store, fleet, "--mode", "Apply").status == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOURCE_DATE_EPOCH", "1796700000")
        refused = learn(store, fleet, "--mode", "Apply", "--min-new-labels", "0")
    assert refused.status == 2
    assert "the classifier in force cannot be used: " in refused.err
    assert storelayout.classifier(ROOT, promoted) in refused.err
    assert read(store, storelayout.in_force(ROOT)) == pointer
    assert decisions(store) == before


def test_a_judge_that_answers_garbage_labels_and_promotes_nothing(
    fleet: dict[str, str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    capture(store, 20, seed=7)
    for _ in range(2):
        done = learn(store, fleet, "--judge", fleet["plain"], "--mode", "Apply")
        assert done.status == 1
        line = done.line
        # The cursor stays: the next pass asks the same requests again.
        assert (line["batches"], line["asked"], line["unparseable"], line["labelled"]) == (
            "1",
            "20",
            "20",
            "0",
        )
        assert (line["trained"], line["decision"], line["in_force"]) == (
            "none",
            "none",
            promotion.HEURISTIC,
        )
        assert "held no 'Verdict: yes' or 'Verdict: no'" in done.err
        assert done.report is not None and done.report["labellingFailed"] is True
    assert not (store / ROOT / "labels").exists()
    assert not (store / storelayout.in_force(ROOT)).exists()
    assert decisions(store) == []


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--pin", "abc"], "--pin abc: give a classifier's content hash, sha256:HEX"),
        (["--min-new-labels", "-1"], "--min-new-labels -1: give a count, 0 or more"),
        (["--tier", "simple=http://127.0.0.1:1"], "--tier: no URL for medium, complex"),
    ],
)
def test_bad_flags_name_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    store = tmp_path / "store"
    capture(store, 1, seed=8)
    argv = ["router", "learn", "--policy", str(policy_file(tmp_path))]
    argv += ["--store-config", str(store_config(store)), *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("specfleet router learn: ")
    assert expected in err

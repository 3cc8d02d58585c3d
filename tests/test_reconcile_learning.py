"""A RoutingPolicy's learning in a pass, against the fake API: the learning CronJob applied,
each pass's report (as `specfleet router learn` writes it) read into status once, its decision
kept in a bounded history and posted as an Event, a failed pass said in the `Learning`
condition, and everything removed with spec.learning."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from specfleet.api.learning import HEURISTIC, HISTORY
from specfleet.learn import labelling, promotion, router_learn
from specfleet.render import learning as render
from tests.test_reconcile_routing import ALL_READY, NOW, Operator
from tests.test_render_capture import S3_CAPTURE

LEARNING = {"mode": "Apply"}
CANDIDATE = "sha256:" + "c1" * 32


def _report(
    when: Any = NOW, candidate: str = CANDIDATE, *, labelled: int = 150, asked: int = 160
) -> str:
    """What a pass that promoted `candidate` writes as its termination message."""
    counts = labelling.Counts(lines=400, asked=asked)
    counts.labelled.update({"simple": labelled})
    decision = promotion.decide(
        promotion.Objective(),
        promotion.Figures(candidate, 0.96, 0.41),
        promotion.Figures(HEURISTIC, 0.88, 0.22),
        labels=140,
        now=when,
    )
    report = router_learn.Report(
        time=when,
        batches=3,
        counts=counts,
        labels=700,
        new_labels=150,
        trained=candidate,
        decision=decision,
        decision_key=f"learning/decisions/{when:%Y%m%dT%H%M%S%fZ}-promote.json",
        in_force=candidate,
    )
    return json.dumps(report.status_json())


def _pod(created: str, phase: str, message: str, exit_code: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": created},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {"state": {"terminated": {"message": message, "exitCode": exit_code}}}
            ],
        },
    }


def _job_ended(operator: Operator, scheduled: str, *pods: dict[str, Any]) -> None:
    """The CronJob started a Job at `scheduled`, which has ended, leaving `pods`."""
    operator.api.edit(
        "CronJob",
        lambda c: c.update(status={"lastScheduleTime": scheduled}),
        name=render.name("assistant"),
    )
    operator.api.pods_now = list(pods)


def test_a_learning_policy_gets_its_cronjob_and_waits_for_a_first_pass() -> None:
    operator = Operator()
    outcome = operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    names = [a.name for a in outcome.children if a.kind == "CronJob"]
    assert names == ["assistant-retention", "assistant-learning"]
    assert operator.status is not None
    assert operator.status["learning"] == {"inForce": HEURISTIC, "lastRun": {}, "decisions": []}
    assert operator.condition("Learning")[:2] == ("Unknown", "NoPassYet")
    assert operator.api.pod_lists == 0


def test_a_pass_report_reaches_status_once_with_its_decision_and_an_event() -> None:
    operator = Operator()
    operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    # A Job runs: nothing to read yet.
    operator.api.edit(
        "CronJob",
        lambda c: c.update(status={"lastScheduleTime": "2026-11-23T12:41:00Z", "active": [{}]}),
        name=render.name("assistant"),
    )
    operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    assert operator.api.pod_lists == 0

    _job_ended(
        operator,
        "2026-11-23T12:41:00Z",
        _pod(
            "2026-11-23T11:41:00Z",
            "Succeeded",
            _report(NOW - timedelta(hours=1), "sha256:" + "0" * 64),
        ),
        _pod("2026-11-23T12:41:00Z", "Succeeded", _report()),
    )
    outcome = operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    assert operator.api.pod_selectors[-1] == render.pods("assistant")
    learning = operator.status["learning"] if operator.status else {}
    assert learning["inForce"] == CANDIDATE
    assert (learning["labels"], learning["newLabels"]) == (700, 150)
    assert learning["lastRun"]["asked"] == 160 and learning["lastRun"]["labelled"] == 150
    assert learning["lastJobTime"] == "2026-11-23T12:41:00Z"
    (decision,) = learning["decisions"]
    assert (decision["verdict"], decision["rule"], decision["applied"]) == (
        "Promote",
        "MeetsWhereInForceMisses",
        True,
    )
    assert decision["candidate"]["classifier"] == CANDIDATE
    assert decision["record"].endswith("-promote.json")
    assert [(e.type, e.reason) for e in outcome.events] == [("Normal", "ClassifierPromoted")]
    assert CANDIDATE in outcome.events[0].message
    status, reason, message = operator.condition("Learning")
    assert (status, reason) == ("True", "PassEnded")
    assert "labelled 150 of 160" in message and CANDIDATE in message

    lists = operator.api.pod_lists
    again = operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    assert operator.api.pod_lists == lists, "one pass's report is read once"
    assert not [e for e in again.events if e.reason == "ClassifierPromoted"]
    assert len(operator.status["learning"]["decisions"]) == 1 if operator.status else False


def test_recommend_and_refuse_are_posted_as_what_they_are() -> None:
    operator = Operator()
    operator.run(ALL_READY, capture=S3_CAPTURE, learning={})
    report = json.loads(_report())
    report["decision"]["applied"] = False
    report["decision"]["mode"] = "Recommend"
    report["inForce"] = HEURISTIC
    _job_ended(
        operator,
        "2026-11-23T12:41:00Z",
        _pod("2026-11-23T12:41:00Z", "Succeeded", json.dumps(report)),
    )
    outcome = operator.run(ALL_READY, capture=S3_CAPTURE, learning={})
    assert [e.reason for e in outcome.events] == ["PromotionRecommended"]
    assert operator.status is not None and operator.status["learning"]["inForce"] == HEURISTIC

    report["decision"].update(verdict="Refuse", rule="NotCheaper", record="learning/decisions/b")
    _job_ended(
        operator,
        "2026-11-23T13:41:00Z",
        _pod("2026-11-23T13:41:00Z", "Succeeded", json.dumps(report)),
    )
    outcome = operator.run(ALL_READY, capture=S3_CAPTURE, learning={})
    assert [e.reason for e in outcome.events] == ["PromotionRefused"]
    assert [d["verdict"] for d in operator.status["learning"]["decisions"]] == ["Promote", "Refuse"]


def test_a_failed_pass_says_why_in_the_condition_and_a_warning_and_keeps_what_was_known() -> None:
    operator = Operator()
    operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    _job_ended(
        operator, "2026-11-23T12:41:00Z", _pod("2026-11-23T12:41:00Z", "Succeeded", _report())
    )
    operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)

    log = (
        "Traceback ...\nspecfleet: cannot read s3://fleet-traffic: AccessDenied (check the Secret)"
    )
    _job_ended(operator, "2026-11-23T13:41:00Z", _pod("2026-11-23T13:41:00Z", "Failed", log, 2))
    outcome = operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    status, reason, message = operator.condition("Learning")
    assert (status, reason) == ("False", "JobFailed")
    assert "exit status 2" in message and "AccessDenied (check the Secret)" in message
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "LearningFailed")]
    assert operator.status is not None
    assert operator.status["learning"]["inForce"] == CANDIDATE  # the store's pointer stays

    # A judge that answers garbage: the report says so, and the condition names the judge.
    garbage = json.loads(_report(labelled=0))
    garbage.update(labellingFailed=True)
    garbage["lastRun"]["unparseable"] = 160
    del garbage["decision"]
    _job_ended(
        operator,
        "2026-11-23T14:41:00Z",
        _pod("2026-11-23T14:41:00Z", "Failed", json.dumps(garbage), 1),
    )
    operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    status, reason, message = operator.condition("Learning")
    assert (status, reason) == ("False", "LabellingFailed")
    assert "160 verdicts did not parse" in message and "judge" in message


def test_the_decision_history_is_bounded_newest_last() -> None:
    operator = Operator()
    operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    for hour in range(HISTORY + 3):
        when = NOW + timedelta(hours=hour)
        stamp = f"{when:%Y-%m-%dT%H:%M:%SZ}"
        _job_ended(operator, stamp, _pod(stamp, "Succeeded", _report(when)))
        operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    assert operator.status is not None
    decisions = operator.status["learning"]["decisions"]
    assert len(decisions) == HISTORY
    assert decisions[-1]["time"].startswith(f"{NOW + timedelta(hours=HISTORY + 2):%Y-%m-%dT%H}")
    assert decisions[0]["time"].startswith(f"{NOW + timedelta(hours=3):%Y-%m-%dT%H}")


def test_turning_learning_off_removes_its_cronjob_status_and_condition() -> None:
    operator = Operator()
    operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    operator.run(ALL_READY, capture=S3_CAPTURE, learning=None)
    assert operator.api.deleted == ["CronJob assistant-learning"]
    assert operator.status is not None
    assert "learning" not in operator.status
    assert "Learning" not in {c["type"] for c in operator.status["conditions"]}
    assert operator.api.kinds().count("CronJob") == 1  # retention stays with capture


def test_a_job_made_by_hand_from_the_cronjob_is_read_once_it_succeeds() -> None:
    # kubectl create job --from=cronjob/assistant-learning: no schedule time, a success time.
    operator = Operator()
    operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    operator.api.edit(
        "CronJob",
        lambda c: c.update(status={"lastSuccessfulTime": "2026-11-23T12:44:10Z"}),
        name=render.name("assistant"),
    )
    operator.api.pods_now = [_pod("2026-11-23T12:43:00Z", "Succeeded", _report())]
    outcome = operator.run(ALL_READY, capture=S3_CAPTURE, learning=LEARNING)
    assert [e.reason for e in outcome.events] == ["ClassifierPromoted"]
    assert operator.status is not None
    assert operator.status["learning"]["lastJobTime"] == "2026-11-23T12:44:10Z"

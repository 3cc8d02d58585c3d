"""`specfleet router labels judge` against real simulator processes through the openai SDK:
three tiers of different capability, the strongest as the judge. Each request's label must be
the cheapest tier whose capability reaches the question's difficulty; a judge that answers
garbage labels nothing, and says so; a judge or a tier that refuses is counted, never a crash.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest

from specfleet import cli
from specfleet.learn import judge, labelling, labels
from specfleet.learn.policy import Policy
from specfleet_runtime.capture import record
from tests.capture.builders import chat_exchange, config
from tests.learn import traffic
from tests.learn.fleet import (
    CAPABILITIES,
    MODELS,
    expected_label,
    figures,
    policy_file,
    tier_flags,
)


def captured(tmp_path: Path, count: int) -> Path:
    """The team's traffic as the router captures it (chat turns and completions), and a few
    lines of a labelled file, whose labels the judge replaces."""
    builder = record.Builder(config(), "router-0", b"k" * 32)
    lines = []
    for i, found in enumerate(traffic.lines(count, seed=11)):
        body = {k: v for k, v in found.items() if k not in ("label", "source")}
        if i % 5 == 4:
            lines.append(json.dumps({**body, "label": "simple"}).encode() + b"\n")
            continue
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        exchange = chat_exchange(f"req-{i}", path=path, body=json.dumps(body).encode())
        line = builder.line(exchange)
        assert line is not None
        lines.append(line)
    data = tmp_path / "captured.jsonl"
    data.write_bytes(b"".join(lines))
    return data


def judge_argv(tmp_path: Path, urls: dict[str, str], *more: str) -> list[str]:
    tiers = tier_flags(urls)
    return [
        "router", "labels", "judge", "--policy", str(policy_file(tmp_path)),
        "--data", str(captured(tmp_path, 40)), "--out", str(tmp_path / "judged.jsonl"),
        *tiers, "--rate", "1000", *more,
    ]  # fmt: skip


def test_labels_are_the_cheapest_tier_able_to_answer(
    tmp_path: Path, fleet: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(judge_argv(tmp_path, fleet)) == 0
    printed = capsys.readouterr().out
    judged = labels.read((tmp_path / "judged.jsonl").read_bytes().splitlines(), traffic.TIERS)
    assert len(judged.examples) == 40
    wanted = [expected_label(e.request.text) for e in judged.examples]
    assert [traffic.TIERS[e.label] for e in judged.examples] == wanted
    # The traffic needs every tier, and the heuristic gets some of it wrong: what judged labels
    # are for.
    assert set(wanted) == set(traffic.TIERS)
    policy = Policy.of(traffic.policy_spec())
    assert any(policy.heuristic(e.request) != e.label for e in judged.examples)
    for line in (tmp_path / "judged.jsonl").read_bytes().splitlines():
        found = json.loads(line)
        assert found["source"] == "judged"
        assert found["judge"] == judge.record("llama-70b")
    counts = figures(printed)
    assert counts == {
        "asked": "40",
        "labelled": "40",
        **{tier: str(n) for tier, n in Counter(wanted).items()},
        "unparseable": "0",
        "tier_errors": "0",
        "judge_errors": "0",
        "unreadable": "0",
        "not_sampled": "0",
    }
    assert f"judge llama-70b at {fleet['complex']}/v1 ({judge.PROMPT_VERSION}" in printed


def test_a_sample_labels_a_share_chosen_by_content(
    tmp_path: Path, fleet: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(judge_argv(tmp_path, fleet, "--sample", "0.5")) == 0
    counts = figures(capsys.readouterr().out)
    assert int(counts["asked"]) + int(counts["not_sampled"]) == 40
    assert 0 < int(counts["asked"]) < 40
    assert counts["labelled"] == counts["asked"]


def test_a_judge_that_answers_garbage_labels_nothing_and_says_so(
    tmp_path: Path, fleet: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = judge_argv(tmp_path, fleet, "--judge", fleet["plain"])
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    counts = figures(out)
    # Every request reached a verdict before a label could be given, and none parsed.
    assert counts["labelled"] == "0"
    assert counts["unparseable"] == counts["asked"] == "40"
    assert "dropped 40: 40 verdicts that do not parse" in out
    assert "held no 'Verdict: yes' or 'Verdict: no'" in err
    assert "the judge said ' " in err
    assert (tmp_path / "judged.jsonl").read_bytes() == b""


def test_a_judge_that_refuses_is_counted_not_a_crash(
    tmp_path: Path, fleet: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = judge_argv(tmp_path, fleet, "--judge-model", "nobody", "--retries", "0")
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    counts = figures(out)
    assert counts["judge_errors"] == counts["asked"] == "40"
    assert "judge (http://127.0.0.1:" in err and "nobody" in err


def test_a_tier_that_refuses_drops_only_the_requests_that_needed_it(
    tmp_path: Path, fleet: dict[str, str]
) -> None:
    def server(tier: str, model: str) -> labelling.Server:
        url = f"{fleet[tier]}/v1"
        sdk = openai.OpenAI(base_url=url, api_key="unused", timeout=30, max_retries=0)
        return labelling.Server(f"tier {tier}", url, model, sdk)

    servers = [server(t, MODELS[t]) for t in CAPABILITIES]
    servers[1] = server("medium", "not-served")
    labeller = labelling.Labeller(
        traffic.TIERS, servers, servers[2], labelling.Pacer(1000, lambda: 0.0, lambda _: None)
    )
    counts = labelling.Counts()
    asked = list(labelling.requests(captured(tmp_path, 40).read_bytes().splitlines(), counts))
    written: list[Any] = [labeller.label(a) for a in asked]
    for sdk in {s.client for s in servers}:
        sdk.close()
    wanted = [expected_label(a.parsed.text) for a in asked]
    # The cheapest tier's requests never ask medium; every other request needs its answer.
    assert [w is not None for w in written] == [label == "simple" for label in wanted]
    assert labeller.counts.labelled == Counter({"simple": wanted.count("simple")})
    assert labeller.counts.tier_errors == Counter({"medium": len(wanted) - wanted.count("simple")})
    assert "not-served" in labeller.counts.details[0]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--tier", "simple=http://127.0.0.1:1"],
            "--tier: no URL for medium, complex: give --tier NAME=URL for every tier of the "
            "policy (simple, medium, complex), such as simple=http://HOST:PORT/v1",
        ),
        (["--tier", "huge=http://h"], "--tier huge=http://h: huge is not a tier of the policy"),
        (["--tier", "simple"], "--tier simple: write NAME=URL, such as simple=http://HOST:PORT/v1"),
        (["--tier", "simple=h:8000"], "--tier simple=h:8000: the URL must start with http://"),
        (
            ["--tier", "simple=http://a", "--tier", "simple=http://b"],
            "--tier simple is given twice",
        ),
        (["--sample", "0"], "--sample 0.0: give a share above 0 and at most 1"),
        (["--rate", "-1"], "--rate -1.0: give requests per second above 0"),
        (
            [f"--tier={t}=http://127.0.0.1:1" for t in traffic.TIERS],
            "--tier simple=http://127.0.0.1:1/v1: cannot list the models at "
            "http://127.0.0.1:1/v1 (Connection error.): give the server's OpenAI base URL",
        ),
    ],
)
def test_bad_flags_name_the_flag_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "hello"}\n')
    argv = ["router", "labels", "judge", "--policy", str(policy_file(tmp_path)), "--data"]
    argv += [str(data), "--out", str(tmp_path / "out.jsonl"), "--retries", "0", *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("specfleet router labels judge: ")
    assert expected in err

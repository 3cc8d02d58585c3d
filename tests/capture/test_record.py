"""The record of one exchange: its fields, keyed hashes, redaction, keep, the size cap."""

from __future__ import annotations

import json
from typing import Any

from specfleet.api.capture import RECORD_SCHEMA
from specfleet_runtime.capture import RouteDecision, record
from tests.capture.builders import chat_exchange, config

KEY = b"k" * 32
CREDENTIAL = "sk-team-a-0123456789abcdef"


def build(**changes: Any) -> record.Builder:
    return record.Builder(config(**changes), "router-7d9f-abc", KEY)


def test_a_record_holds_what_the_exchange_says() -> None:
    route = RouteDecision(
        kind="tier",
        model="llama-8b",
        tier="medium",
        complexity=0.42,
        expected_tokens=300,
        categories=("code",),
        fallback_from="llama-3b",
        classifier="learned",
        classifier_hash="sha256:" + "c" * 64,
    )
    line = build().line(chat_exchange(route=route, credentials=(f"Bearer {CREDENTIAL}",)))
    assert line is not None and line.endswith(b"\n")
    kept = json.loads(line)
    assert kept["schema"] == RECORD_SCHEMA
    assert kept["id"] == "req-1"
    assert kept["time"] == "2026-12-07T05:06:40.250Z"
    assert kept["source"] == {
        "kind": "RoutingPolicy",
        "namespace": "team-a",
        "name": "assistant",
        "component": "router",
        "pod": "router-7d9f-abc",
    }
    assert kept["request"]["path"] == "/v1/chat/completions"
    assert kept["request"]["body"]["messages"][0]["content"] == "Hello there"
    assert kept["response"]["status"] == 200
    assert kept["response"]["streamed"] is False
    assert kept["response"]["body"]["choices"][0]["message"]["content"] == "Hi!"
    assert kept["route"] == {
        "kind": "tier",
        "tier": "medium",
        "model": "llama-8b",
        "complexity": 0.42,
        "expectedTokens": 300,
        "categories": ["code"],
        "fallbackFrom": "llama-3b",
        "classifier": {"kind": "learned", "contentHash": "sha256:" + "c" * 64},
    }
    assert kept["tokens"] == {"prompt": 5, "completion": 2, "total": 7}
    assert kept["latency"] == {"firstByteSeconds": 0.5, "totalSeconds": 0.75}
    assert kept["redactions"] == {}
    assert kept["truncated"] is False


def test_credentials_and_the_caller_are_kept_only_as_keyed_hashes() -> None:
    body = {"model": "auto", "prompt": "hi", "user": "jane@corp.example"}
    exchange = chat_exchange(body=json.dumps(body).encode(), credentials=(f"Bearer {CREDENTIAL}",))
    line = build().line(exchange)
    assert line is not None
    assert CREDENTIAL.encode() not in line
    assert b"jane@corp.example" not in line
    kept = json.loads(line)
    assert "user" not in kept["request"]["body"]
    builder = build()
    assert kept["credential"] == builder.keyed_hash(CREDENTIAL)
    assert kept["caller"] == builder.keyed_hash("jane@corp.example")
    assert len(kept["credential"]) == record.HASH_HEX_DIGITS
    # The same key, the same hash (an api-key header too); another key, another hash.
    same = build().line(chat_exchange(credentials=(CREDENTIAL,)))
    assert same is not None and json.loads(same)["credential"] == kept["credential"]
    other = record.Builder(config(), "router-7d9f-abc", b"o" * 32)
    assert other.keyed_hash(CREDENTIAL) != kept["credential"]
    assert other.keyed_hash("jane@corp.example") != kept["caller"]


def test_keep_requests_drops_the_answer_but_not_its_measures() -> None:
    line = build(keep="Requests").line(chat_exchange())
    assert line is not None
    kept = json.loads(line)
    assert kept["response"] == {"status": 200, "streamed": False, "cancelled": False}
    assert kept["tokens"] == {"prompt": 5, "completion": 2, "total": 7}
    assert b"Hi!" not in line


def test_redaction_counts_land_in_the_record() -> None:
    body = {"messages": [{"role": "user", "content": "mail a@b.example and c@d.example"}]}
    answer = {"choices": [{"message": {"content": "call 415-555-0132"}}]}
    line = build().line(
        chat_exchange(body=json.dumps(body).encode(), chunks=[json.dumps(answer).encode()])
    )
    assert line is not None
    kept = json.loads(line)
    assert kept["redactions"] == {"email": 2, "phone": 1}
    assert kept["response"]["body"]["choices"][0]["message"]["content"] == "call [phone]"


def test_a_streamed_answer_is_kept_reassembled() -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
    ]
    chunks = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
    line = build().line(chat_exchange(chunks=chunks, streamed=True))
    assert line is not None
    kept = json.loads(line)
    assert kept["response"]["streamed"] is True
    assert kept["response"]["body"]["choices"][0]["message"]["content"] == "Hello"
    assert kept["tokens"] == {"prompt": 3, "completion": 2, "total": 5}
    assert b"data:" not in line


def test_a_body_that_is_not_json_is_kept_as_text_and_redacted() -> None:
    line = build().line(chat_exchange(body=b"not json, mail x@y.example", chunks=[]))
    assert line is not None
    kept = json.loads(line)
    assert kept["request"]["body"] == "not json, mail [email]"
    assert kept["response"]["body"] is None


def test_the_longest_strings_are_cut_to_the_cap() -> None:
    long_prompt = "word " * 2000
    body = {
        "messages": [{"role": "user", "content": long_prompt}, {"role": "user", "content": "ok"}]
    }
    line = build(maxRecordBytes=4096).line(chat_exchange(body=json.dumps(body).encode()))
    assert line is not None
    assert len(line) <= 4096
    kept = json.loads(line)
    assert kept["truncated"] is True
    content = kept["request"]["body"]["messages"][0]["content"]
    assert long_prompt.startswith(content)
    assert len(content) > 2000, "cut to fit, not more"
    assert kept["request"]["body"]["messages"][1]["content"] == "ok"


def test_a_record_that_cannot_fit_is_dropped() -> None:
    # Thousands of short strings: no string is long enough to cut.
    body = {"messages": [{"role": "user", "content": f"m{n}"} for n in range(2000)]}
    assert build(maxRecordBytes=4096).line(chat_exchange(body=json.dumps(body).encode())) is None


def test_a_record_under_the_cap_is_untouched() -> None:
    line = build(maxRecordBytes=1024 * 1024).line(chat_exchange())
    assert line is not None
    assert json.loads(line)["truncated"] is False

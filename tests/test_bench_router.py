"""bench/router.py's pure helpers: the HTTP/1.1 framing its backend and client rely on, the
configurations it generates, how it reads wrk, how it counts what the capturing router wrote,
and the ratio and line it reports. (Its timings are the bench's to report.)"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from bench import router as bench
from prometheus_client import CollectorRegistry, generate_latest

from specfleet.api.routerconfig import RouterConfig, parse_config
from specfleet.routing import features, heuristic
from specfleet_runtime.capture import Capture, CaptureMetrics, Exchange
from specfleet_runtime.capture import store as stores

COMPLETE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 503 Busy\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n3;x=1\r\nabc\r\n0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        (COMPLETE, (200, len(COMPLETE))),
        (COMPLETE[:-1], None),
        (COMPLETE[:20], None),
        (COMPLETE + COMPLETE[:10], (200, len(COMPLETE))),  # the next response is left alone
        (b"HTTP/1.1 204 No Content\r\n\r\n", (204, 27)),
        (CHUNKED, (503, len(CHUNKED))),
        (CHUNKED[:-2], None),  # the last chunk's closing CRLF is missing
        (CHUNKED[:-5], None),
        (CHUNKED[: CHUNKED.index(b"abc")], None),
    ],
)
def test_response_end(buffer: bytes, expected: tuple[int, int] | None) -> None:
    assert bench.response_end(bytearray(buffer)) == expected


def test_request_end_splits_pipelined_requests() -> None:
    post = bench.http_request("POST", "/v1/completions", "h", b'{"a": 1}')
    get = bench.http_request("GET", "/health", "h")
    assert bench.request_end(post + get) == (b"POST /v1/completions HTTP/1.1", len(post))
    assert bench.request_end(get) == (b"GET /health HTTP/1.1", len(get))
    assert bench.request_end(post[:-1]) is None


def test_request_end_refuses_chunked_bodies() -> None:
    with pytest.raises(ValueError, match="chunked"):
        bench.request_end(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_the_backend_answer_parses_as_a_complete_response() -> None:
    answer = bench.http_response(bench.COMPLETION)
    assert bench.response_end(answer) == (200, len(answer))


def test_router_config_is_one_routed_tier_the_router_accepts() -> None:
    config = RouterConfig.model_validate(bench.router_config("http://127.0.0.1:9"))
    assert config.policy == bench.POLICY
    assert [tier.model for tier in config.tiers] == [bench.MODEL]
    assert config.backends[bench.MODEL].ready


def test_capture_router_config_is_the_same_router_capturing_every_request(
    tmp_path: Path,
) -> None:
    config = parse_config(json.dumps(bench.capture_router_config("http://127.0.0.1:9", tmp_path)))
    assert config.model_copy(update={"capture": None}) == RouterConfig.model_validate(
        bench.router_config("http://127.0.0.1:9")
    )
    assert config.capture is not None
    assert config.capture.sample_rate == 1.0
    assert config.capture.keep == "RequestsAndResponses"
    assert config.capture.store.directory == str(tmp_path)
    assert config.capture.store.s3 is None
    # Where the writer puts the batches is where the bench counts them.
    assert stores.batch_root(config.capture.store, config.capture.source) == bench.capture_root()


def exchange(index: int) -> Exchange:
    return Exchange(
        request_id=f"bench-{index}",
        time=1_796_620_000.0,
        path="/v1/completions",
        body=bench.REQUEST_BODY,
        status=200,
        chunks=[bench.COMPLETION],
    )


def test_count_capture_finds_what_the_router_capture_wrote(tmp_path: Path) -> None:
    config = parse_config(json.dumps(bench.capture_router_config("http://127.0.0.1:9", tmp_path)))
    assert config.capture is not None
    registry = CollectorRegistry()
    capture = Capture(
        config.capture.model_copy(update={"flush_records": 2}),
        pod="bench",
        metrics=CaptureMetrics(registry),
        environ={"SPECFLEET_CAPTURE_HASH_KEY": "test-key"},
    )
    for index in range(3):
        capture.offer(exchange(index))
    assert capture.close()
    dropped = bench.dropped_records(generate_latest(registry).decode())
    assert dropped == {
        "queue_full": 0,
        "store_error": 0,
        "too_large": 0,
        "record_error": 0,
        "capture_off": 0,
    }
    tally = bench.count_capture(tmp_path, sent=3, dropped=dropped)
    assert (tally.batches, tally.written) == (2, 3)
    assert tally.problem() is None
    assert tally.line() == (
        "specfleet-capture: 3 records written in 2 batches, 0 dropped, of 3 requests sent"
    )


def test_dropped_records_by_reason() -> None:
    registry = CollectorRegistry()
    metrics = CaptureMetrics(registry)
    metrics.dropped_by["queue_full"].inc(3)
    metrics.dropped_by["store_error"].inc(2)
    metrics.written.inc(7)  # not a drop
    assert bench.dropped_records(generate_latest(registry).decode()) == {
        "queue_full": 3,
        "store_error": 2,
        "too_large": 0,
        "record_error": 0,
        "capture_off": 0,
    }
    assert bench.dropped_records("# no capture here\nother_total 1\n") == {}


NO_DROPS = {"queue_full": 0, "store_error": 0}


@pytest.mark.parametrize(
    ("sent", "written", "dropped", "problem"),
    [
        (100, 100, NO_DROPS, None),
        (100, 90, {"queue_full": 10, "store_error": 0}, None),
        (100, 0, NO_DROPS, "captured nothing"),
        (100, 0, {"queue_full": 100}, "captured nothing"),
        (100, 95, NO_DROPS, "5 of 100 requests neither written nor dropped"),
        (100, 95, {"queue_full": 10}, "5 more records written or dropped than requests sent"),
        (100, 100, {}, "no capture counters"),
    ],
)
def test_a_capture_that_did_not_write_what_it_was_sent_is_a_problem(
    sent: int, written: int, dropped: dict[str, int], problem: str | None
) -> None:
    tally = bench.CaptureTally(sent=sent, batches=1, written=written, dropped=dropped)
    found = tally.problem()
    assert found is None if problem is None else found is not None and problem in found


def test_the_tally_line_names_the_reasons_records_were_dropped() -> None:
    tally = bench.CaptureTally(
        sent=100, batches=2, written=90, dropped={"queue_full": 7, "store_error": 3}
    )
    assert tally.line() == (
        "specfleet-capture: 90 records written in 2 batches,"
        " 10 dropped (queue_full 7, store_error 3), of 100 requests sent"
    )


def test_nginx_config_proxies_to_the_backend_over_keepalive() -> None:
    text = bench.nginx_config(Path("/tmp/x"), 8001, 9002)
    assert "listen 127.0.0.1:8001;" in text
    assert "server 127.0.0.1:9002;" in text
    assert "keepalive 64;" in text
    assert 'proxy_set_header Connection "";' in text  # without it nginx closes upstreams
    assert "/var/" not in text  # everything it writes stays in the temp dir


WRK_OK = """Running 2s test @ http://127.0.0.1:1/v1/completions
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   450.12us  100.00us   2.00ms   90.00%
  70000 requests in 2.00s, 30.00MB read
Requests/sec:  35000.00
Transfer/sec:     15.00MB
"""


def test_parse_wrk() -> None:
    assert bench.parse_wrk(WRK_OK) == (70000, 2.0, 0)
    failing = WRK_OK.replace(
        "Requests/sec",
        "  Socket errors: connect 0, read 2, write 1, timeout 3\n"
        "  Non-2xx or 3xx responses: 5\nRequests/sec",
    )
    assert bench.parse_wrk(failing) == (70000, 2.0, 11)
    assert bench.parse_wrk(WRK_OK.replace("2.00s", "1.50m"))[1] == 90.0
    with pytest.raises(ValueError, match="no request count"):
        bench.parse_wrk("wrk: connection refused")


def test_percentile_and_rotation() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 50) == 50.0
    assert bench.percentile(values, 99) == 99.0
    assert bench.rotated(("a", "b", "c"), 4) == ["b", "c", "a"]


def test_capture_is_measured_in_the_open_loop_only() -> None:
    assert bench.CAPTURE in bench.PATHS
    assert bench.CAPTURE not in bench.CLOSED_LOOP_PATHS
    assert set(bench.CLOSED_LOOP_PATHS) == set(bench.PATHS) - {bench.CAPTURE}


@pytest.mark.parametrize(
    ("direct", "without", "with_", "ratio"),
    [
        (1.0, 3.0, 3.2, 1.1),  # adds 2.2 ms with capture, 2.0 without
        (1.0, 3.0, 2.0, 0.5),
        (1.0, 3.0, 0.5, -0.25),  # faster than direct with capture: reported as measured
        (0.5, 0.5, 0.6, math.nan),  # the router added nothing without: no ratio
        (0.5, 0.4, 0.6, math.nan),
    ],
)
def test_added_p99_ratio(direct: float, without: float, with_: float, ratio: float) -> None:
    found = bench.added_p99_ratio(direct, without, with_)
    assert math.isnan(found) if math.isnan(ratio) else found == pytest.approx(ratio)


def test_last_line_is_key_value_pairs_in_a_fixed_order() -> None:
    line = bench.last_line(0.0020814, 0.2841, 0.10666, 0.7049, 0.0000934)
    assert line == (
        "router_p99_overhead_ms=2.081 rps_ratio_vs_vllm_router=0.284"
        " rps_ratio_vs_nginx=0.107 capture_p99_ratio=0.705 classify_learned_p99_ms=0.093"
    )
    pairs = dict(pair.split("=") for pair in bench.last_line(0.001, 1, 1, math.nan, 0).split())
    assert list(pairs) == [
        "router_p99_overhead_ms",
        "rps_ratio_vs_vllm_router",
        "rps_ratio_vs_nginx",
        "capture_p99_ratio",
        "classify_learned_p99_ms",
    ]
    assert pairs["capture_p99_ratio"] == "nan"
    assert all(re.fullmatch(r"-?\d+\.\d{3}|nan", value) for value in pairs.values())


def test_the_long_prompt_is_prose_of_the_length_asked() -> None:
    text = bench.prose(bench.LONG_PROMPT_CHARS)
    assert len(text) == bench.LONG_PROMPT_CHARS
    words = text.split()
    assert len(words) > 10_000 and any(w.endswith(",") for w in words)
    assert bench.prose(500) == bench.prose(500)  # the same text in every run


def test_the_bench_classifier_weighs_every_term_of_what_it_times() -> None:
    texts = [bench.prose(20_000), bench.CHAT_TURN]
    classifier = bench.bench_classifier(texts)
    vocabulary = set(classifier.artifact.vocabulary)
    assert len(vocabulary) == bench.VOCABULARY_TERMS
    for text in texts:
        assert features.terms(text) <= vocabulary
    assert classifier.tiers == ("simple", "medium", "complex")
    # It routes: the requests it times reach a tier by the router's way and the trainer's alike.
    parsed = bench.chat_request(texts[0])
    seen = heuristic.read(parsed.text)
    classification = heuristic.classify(parsed, seen)
    expected = classifier.tier(features.extract(parsed, classification))
    assert classifier.choose(seen, classification) == expected

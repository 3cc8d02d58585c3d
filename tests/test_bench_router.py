"""bench/router.py's pure helpers: the HTTP/1.1 framing its backend and client rely on, the
configurations it generates and how it reads wrk. (Its timings are the bench's to report.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import router as bench

from specfleet.api.routerconfig import RouterConfig

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

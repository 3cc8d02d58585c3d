"""What ``specfleet-router`` adds to a request, side by side with vllm-router and nginx, what
capturing every request adds to that, and what a learned classifier adds to classifying one.

Every path ends at the same fixed-answer backend: this script in another process, a raw
asyncio protocol on uvloop that answers every POST with one fixed OpenAI completion (no JSON
parsing, no framework), so nearly all the time a request takes beyond the direct path is the
proxy's. The paths, all up at once and measured in interleaved order (rotated every round) so
they see the same machine:

- ``direct``: the backend itself;
- ``specfleet``: ``specfleet-router`` with one tier on the backend; requests name the policy,
  so each one is parsed, classified and routed, the full routed path. It runs
  ``--router-workers`` processes (default: one per CPU), as nginx runs ``worker_processes
  auto`` and vllm-router a thread per CPU;
- ``specfleet-capture``: the same router, as many workers, capturing every request
  (``sampleRate`` 1.0, ``keep: RequestsAndResponses``, the rest at a pod's defaults)
  to a directory store in the temp dir: the queue and its thread in each worker, the
  records built, redacted and gzipped in each worker's writer process, as in a pod (its CPU
  counted with the router's), and no store server is needed;
- ``vllm-router``: the PyPI package (Rust), ``--worker-urls`` the backend, round robin;
- ``nginx``: Debian's nginx as a plain reverse proxy (keep-alive upstream, access log off,
  ``worker_processes auto``), run as a process with a config generated in a temp dir.

Measured for each path:
- open loop: requests sent on a fixed schedule at ``--rate`` per second (500), whatever the
  replies do, over a pool of keep-alive connections; latency counts from the scheduled send
  time, so a stall is charged to every request it delays (no coordinated omission);
- single client: one connection, one request after another;
- ceiling: the requests per second ``--clients`` (32) closed-loop keep-alive connections get,
  with ``wrk`` when it is installed (C; the Python client cannot saturate nginx) or this
  script's own client (``--ceiling-client python``), and the proxy's CPU time per request.

``specfleet-capture`` is measured in the open loop only, which is what its ratio is computed
from (a default round takes 54 s of measurements instead of 48): at the ceiling's rate its
writer would fall behind, drop records as ``queue_full`` and go on working off its queue
while the next path is measured, and the ratio does not need the single client. After its
open loop the script waits (up to ``DRAIN_SECONDS``) for the batches to hold every request
sent, so that its writer's last batch is not written while another path is measured (that
once added half a millisecond to the plain router's p99), and its CPU includes that writing.
Its warm-up is a second of the open loop. Beside the ratio over all rounds, the script
prints each round's alone (that round's p99s): their spread is the noise one run's ratio
carries on this machine. After the run the script counts the records the
capture wrote (the batches' lines in the directory) and the ones it dropped (its
``/metrics``), prints them, and exits with an error, printing no ratio, when it wrote none or
when some requests it answered were neither written nor dropped.

Classification, in this process, before the paths start: what the router runs on a routed
request before choosing its route, the heuristic alone (``heuristic.read`` and ``classify``)
and the heuristic with a learned classifier's step (``specfleet.routing.learned.Classifier
.choose``), timed side by side (alternating, ``--classify-samples`` each) on the longest prompt
(100,000 characters of generated prose: the heuristic reads its head and tail) and on a typical
chat turn. The classifier is built here from generated terms as the trainer writes one
(``learned.dumps``, then ``loads`` as the router does): three tiers, a 32,768-term vocabulary
(about what fits a ConfigMap) that holds every term of both requests (``features.terms``: the
window's words, and its pairs of words among the first and last ``features.BIGRAM_WORDS``),
each with a weight, so the worst case is timed: every term looked up is found and added.

Added latency = the proxy path's p50 (p99) minus the direct path's. Every process shares this
machine's two cores, the load generator's too: the ceiling is the whole machine's, not the
proxy's alone, and the load average is printed with the results. The last line is
machine-readable: ``router_p99_overhead_ms=<added p99 at --rate> rps_ratio_vs_vllm_router=<y>
rps_ratio_vs_nginx=<z> capture_p99_ratio=<r> classify_learned_p99_ms=<c>`` (the ``rps``
ratios: specfleet-router's ceiling over the other's; ``r``: the added p99 at ``--rate`` with
capture over without it, ``nan`` when the router without capture added none; ``c``: the p99 of
heuristic and learned classification on the longest prompt minus the heuristic's alone, the
budget being 0.2).

Setup: ``scripts/setup-bench`` (nginx and wrk from Debian, vllm-router in a cached venv).
Run: ``.venv/bin/python bench/router.py [--quick]`` (``--quick``: under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import random
import re
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import uvloop
from prometheus_client.parser import text_string_to_metric_families

from specfleet import capturestore
from specfleet.api import capture
from specfleet.routing import features, heuristic, learned, request

BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("SPECFLEET_CACHE", Path.home() / ".cache" / "specfleet"))
VLLM_ROUTER = CACHE / "bench-venv" / "bin" / "vllm-router"
START_DEADLINE = 60.0
POLICY = "bench-policy"
MODEL = "bench"
CAPTURE = "specfleet-capture"
PATHS = ("direct", "specfleet", CAPTURE, "vllm-router", "nginx")
CLOSED_LOOP_PATHS = tuple(name for name in PATHS if name != CAPTURE)
"""The paths the single client and the ceiling measure (see the module docstring)."""
CAPTURE_NAMESPACE = "bench"
DRAIN_SECONDS = 20.0
"""How long the capturing router may take to write what its open loop sent: two of its
batches' intervals (``flushSeconds``, 10)."""
OPEN_LOOP_CONNECTIONS = 32  # pre-opened; at 500/s and well under a millisecond each, ample

COMPLETION = json.dumps(
    {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "text": " Paris.", "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
    },
    separators=(",", ":"),
).encode()
REQUEST_BODY = json.dumps(
    {"model": POLICY, "prompt": "What is the capital of France?", "max_tokens": 16}
).encode()


# ------------------------------------------------------------------------------------------
# Pure helpers: HTTP/1.1 framing, configurations, statistics.


def http_response(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def http_request(method: str, path: str, host: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def content_length(head: bytes) -> int | None:
    """The Content-Length of a header block, or None."""
    match = re.search(rb"\r\ncontent-length:[ \t]*(\d+)", head, re.IGNORECASE)
    return int(match.group(1)) if match else None


def is_chunked(head: bytes) -> bool:
    return re.search(rb"\r\ntransfer-encoding:[^\r]*chunked", head, re.IGNORECASE) is not None


def request_end(buffer: bytes | bytearray) -> tuple[bytes, int] | None:
    """The request line and where the first complete request in ``buffer`` ends (requests carry
    a Content-Length or no body), or None while it is incomplete."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[:head_end])
    if is_chunked(head):
        raise ValueError("chunked request bodies are not supported by the fixed backend")
    end = head_end + 4 + (content_length(head) or 0)
    if len(buffer) < end:
        return None
    return head[: head.find(b"\r\n")] if b"\r\n" in head else head, end


def response_end(buffer: bytes | bytearray) -> tuple[int, int] | None:
    """The status and where the first complete response in ``buffer`` ends (Content-Length or
    chunked framing, no trailers), or None while it is incomplete."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[:head_end])
    status = int(head[9:12])
    position = head_end + 4
    if not is_chunked(head):
        end = position + (content_length(head) or 0)
        return (status, end) if len(buffer) >= end else None
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
        position = line_end + 2 + size + 2
        if len(buffer) < position:
            return None
        if size == 0:
            return status, position


def router_config(backend_url: str) -> dict[str, object]:
    """specfleet-router's configuration: one tier, on the backend (see router/config.py)."""
    return {
        "policy": POLICY,
        "tiers": [{"name": "only", "model": MODEL}],
        "backends": {MODEL: {"url": backend_url, "ready": True}},
    }


def capture_router_config(backend_url: str, directory: Path) -> dict[str, object]:
    """The same router capturing every request, answer included, to batches under
    ``directory``; the queue, batch and record sizes are a pod's defaults
    (``specfleet.api.capture.CaptureConfig``)."""
    return {
        **router_config(backend_url),
        "capture": {
            "source": {
                "kind": "RoutingPolicy",
                "namespace": CAPTURE_NAMESPACE,
                "name": POLICY,
                "component": "router",
            },
            "sampleRate": 1.0,
            "keep": "RequestsAndResponses",
            "store": {"directory": str(directory)},
        },
    }


def capture_root() -> str:
    """Where in the capture directory the router's batches go."""
    return capture.resource_root("", "RoutingPolicy", CAPTURE_NAMESPACE, POLICY)


def nginx_config(directory: Path, port: int, backend_port: int) -> str:
    """A plain keep-alive reverse proxy, everything it writes kept under ``directory``."""
    return f"""\
worker_processes auto;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


WRK_SCRIPT = f"""\
wrk.method = "POST"
wrk.body = '{REQUEST_BODY.decode()}'
wrk.headers["Content-Type"] = "application/json"
"""


def parse_wrk(output: str) -> tuple[int, float, int]:
    """Requests, seconds and failed requests (socket errors and non-2xx) from wrk's summary."""
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", output)
    if match is None:
        raise ValueError(f"no request count in wrk's output:\n{output}")
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[match.group(3)]
    failed = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    if errors := re.search(r"Socket errors: (.*)", output):
        failed += sum(int(n) for n in re.findall(r"\d+", errors.group(1)))
    return int(match.group(1)), float(match.group(2)) * unit, failed


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), by nearest rank over the sorted values."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def rotated(items: tuple[str, ...], by: int) -> list[str]:
    by %= len(items)
    return [*items[by:], *items[:by]]


def added_p99_ratio(direct_p99: float, without_p99: float, with_p99: float) -> float:
    """What a proxy adds to the p99 with something on (``with_p99``) over what it adds without
    (both minus the direct path's p99); NaN when it adds nothing without, so no ratio exists."""
    without = without_p99 - direct_p99
    if without <= 0:
        return math.nan
    return (with_p99 - direct_p99) / without


def last_line(
    overhead_s: float,
    rps_vs_vllm_router: float,
    rps_vs_nginx: float,
    capture_ratio: float,
    classify_learned_s: float,
) -> str:
    """The machine-readable summary (its format is in the module docstring)."""
    return (
        f"router_p99_overhead_ms={overhead_s * 1000:.3f}"
        f" rps_ratio_vs_vllm_router={rps_vs_vllm_router:.3f}"
        f" rps_ratio_vs_nginx={rps_vs_nginx:.3f}"
        f" capture_p99_ratio={capture_ratio:.3f}"
        f" classify_learned_p99_ms={classify_learned_s * 1000:.3f}"
    )


def dropped_records(metrics_text: str) -> dict[str, int]:
    """Captured records dropped, by reason, from a ``/metrics`` answer (every reason the
    capture counts, zeros too)."""
    dropped = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "specfleet_capture_records_dropped":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    dropped[sample.labels["reason"]] = int(sample.value)
    return dropped


@dataclass(frozen=True)
class CaptureTally:
    """What the capturing router was sent, and what it wrote and dropped."""

    sent: int
    """Completions requests it answered (each one sampled at rate 1.0)."""
    batches: int
    written: int
    """Records in the batches it wrote (their lines)."""
    dropped: dict[str, int]
    """By reason, from its metrics at the end of the measurements."""

    def line(self) -> str:
        reasons = ", ".join(f"{reason} {count}" for reason, count in self.dropped.items() if count)
        return (
            f"{CAPTURE}: {self.written} records written in {self.batches} batches,"
            f" {sum(self.dropped.values())} dropped{f' ({reasons})' if reasons else ''},"
            f" of {self.sent} requests sent"
        )

    def problem(self) -> str | None:
        """Why the capture's ratio cannot be trusted, or None."""
        if not self.dropped:
            return f"{CAPTURE}: its /metrics has no capture counters: is capture on?"
        if self.written == 0:
            return f"{CAPTURE}: captured nothing; the capture ratio would measure no capture"
        missing = self.sent - self.written - sum(self.dropped.values())
        if missing > 0:
            return f"{CAPTURE}: {missing} of {self.sent} requests neither written nor dropped"
        if missing < 0:
            return f"{CAPTURE}: {-missing} more records written or dropped than requests sent"
        return None


# ------------------------------------------------------------------------------------------
# Classification, in process: the heuristic beside the heuristic and a learned classifier.

LONG_PROMPT_CHARS = 100_000
VOCABULARY_TERMS = 32_768
CHAT_TURN = (
    "Can you explain why my Python function returns None instead of the list, and how to fix "
    "it? I call it in a loop over the rows of a CSV file."
)


def prose(chars: int, seed: int = 0) -> str:
    """``chars`` characters of generated sentences: words of 2 to 10 letters, commas, full
    stops and capitals, as text that the heuristic and the features split as they would a
    document's."""
    rng = random.Random(seed)
    pool = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(3000)]
    sentences: list[str] = []
    size = 0
    while size < chars:
        words = rng.choices(pool, k=rng.randint(6, 24))
        for i in rng.sample(range(1, len(words)), k=min(2, len(words) - 1)):
            words[i] += ","
        sentence = " ".join(words).capitalize() + "."
        sentences.append(sentence)
        size += len(sentence) + 1
    return " ".join(sentences)[:chars]


def chat_request(text: str) -> request.ParsedRequest:
    body = {"model": POLICY, "messages": [{"role": "user", "content": text}]}
    return request.parse(request.Endpoint.CHAT, json.dumps(body).encode())


def bench_classifier(texts: list[str], seed: int = 0) -> learned.Classifier:
    """A three-tier classifier whose vocabulary holds every term of ``texts`` (their windows),
    padded with generated terms to ``VOCABULARY_TERMS``; random weights, written and read back
    as the router reads an artifact."""
    rng = random.Random(seed)
    vocabulary = dict.fromkeys(term for text in texts for term in sorted(features.terms(text)))
    while len(vocabulary) < VOCABULARY_TERMS:
        words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))]
        if rng.random() < 0.5:
            words.append("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))))
        vocabulary[" ".join(words)] = None
    terms = list(vocabulary)[:VOCABULARY_TERMS]
    tiers = ["simple", "medium", "complex"]
    artifact = learned.Artifact.model_validate(
        {
            "tiers": tiers,
            "vocabulary": terms,
            "boundaries": [
                {
                    "intercept": rng.gauss(0, 1),
                    "weights": [rng.gauss(0, 0.3) for _ in terms],
                    "dense": [rng.gauss(0, 1) for _ in features.DENSE],
                }
                for _ in tiers[1:]
            ],
            "threshold": 0.5,
            "qualityTarget": 0.95,
            "training": {
                "sha256": "0" * 64,
                "count": 1,
                "labels": {tiers[0]: 1},
                "sources": {"bench": 1},
            },
            "trainedAt": "2026-01-01T00:00:00Z",
        }
    )
    return learned.loads(learned.dumps(artifact))


@dataclass
class ClassifyTimes:
    """Times of classifying one request, in seconds: the heuristic alone, and with the
    learned classifier's step."""

    name: str
    heuristic: list[float] = field(default_factory=list)
    learned: list[float] = field(default_factory=list)

    def row(self) -> str:
        h50, h99 = percentile(self.heuristic, 50), percentile(self.heuristic, 99)
        l50, l99 = percentile(self.learned, 50), percentile(self.learned, 99)
        us = 1e6
        return (
            f"{self.name:17} {h50 * us:9.1f} {h99 * us:9.1f}   {l50 * us:9.1f} {l99 * us:9.1f}"
            f"   {(l50 - h50) * us:+9.1f} {(l99 - h99) * us:+9.1f}"
        )

    @property
    def added_p99(self) -> float:
        return percentile(self.learned, 99) - percentile(self.heuristic, 99)


def time_classification(samples: int) -> list[ClassifyTimes]:
    """The heuristic, and the heuristic with a learned classifier, on the longest prompt and a
    chat turn: ``samples`` of each, alternating which goes first."""
    long_text = prose(LONG_PROMPT_CHARS)
    requests = {"longest prompt": chat_request(long_text), "chat turn": chat_request(CHAT_TURN)}
    classifier = bench_classifier([long_text, CHAT_TURN])
    clock = time.perf_counter
    results = []
    for name, parsed in requests.items():
        result = ClassifyTimes(name)

        def heuristic_only(parsed: request.ParsedRequest = parsed) -> float:
            started = clock()
            heuristic.classify(parsed, heuristic.read(parsed.text))
            return clock() - started

        def with_learned(parsed: request.ParsedRequest = parsed) -> float:
            started = clock()
            seen = heuristic.read(parsed.text)
            classifier.choose(seen, heuristic.classify(parsed, seen))
            return clock() - started

        for _ in range(50):  # warm
            heuristic_only()
            with_learned()
        for i in range(samples):
            if i % 2:
                result.heuristic.append(heuristic_only())
                result.learned.append(with_learned())
            else:
                result.learned.append(with_learned())
                result.heuristic.append(heuristic_only())
        results.append(result)
    return results


def report_classification(results: list[ClassifyTimes], samples: int) -> None:
    print(
        f"classification in process, {samples} each, alternating (us):"
        f" {'heuristic p50 p99':>19}   {'+ learned p50 p99':>19}   {'added p50 p99':>19}"
    )
    for result in results:
        print(result.row())


# ------------------------------------------------------------------------------------------
# The fixed-answer backend (its own process).


MODELS_ANSWER = http_response(
    json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
)
COMPLETION_ANSWER = http_response(COMPLETION)
OTHER_ANSWER = http_response(b"{}")


class FixedBackend(asyncio.Protocol):
    """Answers every request on the connection as soon as it is complete: a POST with the
    fixed completion, ``GET /v1/models`` with the model, any other GET with ``{}``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        out = []
        while (found := request_end(self.buffer)) is not None:
            line, end = found
            del self.buffer[:end]
            if line.startswith(b"POST"):
                out.append(COMPLETION_ANSWER)
            elif line.startswith(b"GET /v1/models"):
                out.append(MODELS_ANSWER)
            else:
                out.append(OTHER_ANSWER)
        if out:
            self.transport.write(b"".join(out))


async def serve_backend(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FixedBackend, "127.0.0.1", port, backlog=4096)
    print(f"fixed backend on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------------------------------
# The load generator: raw keep-alive HTTP/1.1 connections, one request at a time each.


class Connection(asyncio.Protocol):
    """One keep-alive client connection; ``send`` a request, ``on_done(status)`` when its
    response is complete."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.on_done: Callable[[int], None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, raw: bytes, on_done: Callable[[int], None]) -> None:
        assert self.transport is not None
        self.on_done = on_done
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        found = response_end(self.buffer)
        if found is None:
            return
        status, end = found
        del self.buffer[:end]
        done, self.on_done = self.on_done, None
        assert done is not None, "a response nobody asked for"
        done(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.on_done is not None:
            self.on_done(0)  # the request failed


async def connect(port: int, count: int) -> list[Connection]:
    loop = asyncio.get_running_loop()
    return [(await loop.create_connection(Connection, "127.0.0.1", port))[1] for _ in range(count)]


def close_all(connections: list[Connection]) -> None:
    for conn in connections:
        if conn.transport is not None:
            conn.transport.close()


def check(status: int, path: str) -> None:
    if status != 200:
        raise SystemExit(f"{path}: a request got {status or 'no answer'}")


async def request_once(conn: Connection) -> int:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    conn.send(http_request("POST", "/v1/completions", "bench", REQUEST_BODY), done.set_result)
    return await done


async def open_loop(
    path: str, port: int, rate: float, seconds: float, lateness: list[float]
) -> list[float]:
    """Latencies (from the scheduled send) of requests sent at ``rate`` per second; how late
    each send was goes to ``lateness``."""
    raw = http_request("POST", "/v1/completions", "bench", REQUEST_BODY)
    idle = await connect(port, OPEN_LOOP_CONNECTIONS)
    pool = list(idle)
    waiting: collections.deque[float] = collections.deque()
    latencies: list[float] = []
    total = int(rate * seconds)
    finished = asyncio.get_running_loop().create_future()

    def dispatch(conn: Connection, scheduled: float) -> None:
        def done(status: int) -> None:
            check(status, path)
            latencies.append(time.perf_counter() - scheduled)
            if waiting:
                dispatch(conn, waiting.popleft())
            else:
                idle.append(conn)
            if len(latencies) == total and not finished.done():
                finished.set_result(None)

        conn.send(raw, done)

    def submit(scheduled: float) -> None:
        lateness.append(time.perf_counter() - scheduled)
        if idle:
            dispatch(idle.pop(), scheduled)
        else:
            waiting.append(scheduled)

    # The event loop's timers have millisecond resolution; a thread's sleep is precise to tens
    # of microseconds, and call_soon_threadsafe wakes the loop at once.
    loop = asyncio.get_running_loop()

    def pace() -> None:
        start = time.perf_counter() + 0.01
        for index in range(total):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(submit, scheduled)

    await asyncio.to_thread(pace)
    await finished
    close_all(pool)
    return latencies


async def single_client(path: str, port: int, seconds: float) -> list[float]:
    """Latencies of one connection's requests, one after another."""
    (conn,) = await connect(port, 1)
    latencies = []
    deadline = time.perf_counter() + seconds
    while (started := time.perf_counter()) < deadline:
        check(await request_once(conn), path)
        latencies.append(time.perf_counter() - started)
    close_all([conn])
    return latencies


async def closed_loop_python(path: str, port: int, clients: int, seconds: float) -> float:
    """Requests per second of ``clients`` closed-loop connections (this script's client)."""
    connections = await connect(port, clients)
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            check(await request_once(conn), path)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(conn) for conn in connections))
    elapsed = time.perf_counter() - started
    close_all(connections)
    return done / elapsed


async def closed_loop_wrk(
    path: str, port: int, clients: int, seconds: float, script: Path, threads: int
) -> float:
    argv = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds:g}s", "-s", str(script)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        f"http://127.0.0.1:{port}/v1/completions",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await proc.communicate())[0].decode()
    if proc.returncode != 0:
        raise SystemExit(f"wrk against {path} failed:\n{output}")
    requests, elapsed, failed = parse_wrk(output)
    if failed:
        raise SystemExit(f"{path}: {failed} of {requests} requests failed under wrk:\n{output}")
    return requests / elapsed


# ------------------------------------------------------------------------------------------
# The processes under test.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and its descendants so far (Linux /proc): the
    children any of its threads started (a capture's writer process is started by its
    thread, and /proc lists a child under the thread that forked it)."""
    total = 0.0
    with contextlib.suppress(FileNotFoundError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
                children = (task / "children").read_text().split()
                total += sum(cpu_seconds(int(child)) for child in children)
    return total


async def get_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(http_request("GET", path, "bench"))
        line = await reader.readline()
        return int(line.split()[1])
    finally:
        writer.close()


async def get_text(port: int, path: str) -> str:
    """The body of ``GET path``, which must answer 200 with a Content-Length."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(http_request("GET", path, "bench"))
        buffer = b""
        while (found := response_end(buffer)) is None:
            if not (data := await reader.read(65536)):
                raise SystemExit(f"GET {path} on port {port}: the connection closed mid-answer")
            buffer += data
        status, end = found
        head_end = buffer.find(b"\r\n\r\n") + 4
        if status != 200 or is_chunked(buffer[:head_end]):
            raise SystemExit(f"GET {path} on port {port}: {status}, {buffer[:200]!r}")
        return buffer[head_end:end].decode()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def process(what: str, argv: list[str], port: int, log: Path) -> AsyncIterator[int]:
    """Run a server until ``GET /health`` on ``port`` answers 200; yield its pid."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        async with asyncio.timeout(START_DEADLINE):
            while True:
                if proc.returncode is not None:
                    raise SystemExit(f"{what} exited:\n{log.read_text()[-2000:]}")
                with contextlib.suppress(OSError, ValueError, IndexError):
                    if await get_status(port, "/health") == 200:
                        break
                await asyncio.sleep(0.1)
        yield proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


@dataclass
class Target:
    """One path under test (its process and port) and what was measured on it."""

    port: int
    pid: int
    open_loop: list[float] = field(default_factory=list)
    single: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    """How late the open loop's sends left this script, for its precision."""
    open_loop_p99: list[float] = field(default_factory=list)
    """Each round's open-loop p99, for the spread of the ratio between rounds."""
    open_loop_cpu: float = 0.0
    """CPU seconds of the proxy (direct: of the backend) in the open-loop rounds."""
    rps: list[float] = field(default_factory=list)
    cpu: float = 0.0
    """CPU seconds of the proxy (direct: of the backend) in the ceiling rounds."""
    requests: float = 0.0
    """Requests the ceiling rounds served, for the CPU per request."""


@contextlib.asynccontextmanager
async def start_all(work: Path, router_workers: int) -> AsyncIterator[dict[str, Target]]:
    backend_port = free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    router_file = work / "router.json"
    router_file.write_text(json.dumps(router_config(backend)))
    capture_file = work / "router-capture.json"
    capture_dir = work / "capture"
    capture_dir.mkdir()
    capture_file.write_text(json.dumps(capture_router_config(backend, capture_dir)))
    nginx_dir = work / "nginx"
    nginx_dir.mkdir()
    ports = {name: free_port() for name in PATHS[1:]}
    (nginx_dir / "nginx.conf").write_text(nginx_config(nginx_dir, ports["nginx"], backend_port))
    nginx = nginx_binary()
    if nginx is None or not VLLM_ROUTER.exists():
        raise SystemExit("nginx or vllm-router is missing: run scripts/setup-bench first")
    argvs = {
        "specfleet": [
            str(BIN / "specfleet-router"),
            *("--config", str(router_file), "--port", str(ports["specfleet"])),
            *("--log-level", "WARNING", "--workers", str(router_workers)),
        ],
        CAPTURE: [
            str(BIN / "specfleet-router"),
            *("--config", str(capture_file), "--port", str(ports[CAPTURE])),
            *("--log-level", "WARNING", "--workers", str(router_workers)),
        ],
        "vllm-router": [
            str(VLLM_ROUTER),
            *("--worker-urls", backend, "--port", str(ports["vllm-router"])),
            *("--policy", "round_robin", "--log-level", "warning"),
        ],
        "nginx": [
            nginx,
            *("-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf")),
            *("-e", "stderr", "-g", "daemon off;"),
        ],
    }
    backend_argv = [sys.executable, __file__, "--serve-backend", "--port", str(backend_port)]
    async with contextlib.AsyncExitStack() as stack:
        backend_pid = await stack.enter_async_context(
            process("backend", backend_argv, backend_port, work / "backend.log")
        )
        paths = {"direct": Target(backend_port, backend_pid)}
        for name, argv in argvs.items():
            pid = await stack.enter_async_context(
                process(name, argv, ports[name], work / f"{name}.log")
            )
            paths[name] = Target(ports[name], pid)
        yield paths


# ------------------------------------------------------------------------------------------
# The run.


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) {five:.2f} (5 min)"


def count_capture(directory: Path, sent: int, dropped: dict[str, int]) -> CaptureTally:
    """What the capturing router left in its directory store: its batches and their lines."""
    store = capturestore.DirectoryStore(directory)
    batches = capturestore.list_batches(store, capture_root())
    written = sum(1 for batch in batches for _ in capturestore.lines(store, batch))
    return CaptureTally(sent=sent, batches=len(batches), written=written, dropped=dropped)


async def drained(directory: Path, sent: int, patience: float = DRAIN_SECONDS) -> None:
    """Wait until the capturing router has written ``sent`` records to ``directory`` (a batch
    leaves each worker every ``flushSeconds``), or ``patience`` seconds pass (records it
    dropped are never written)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if directory.is_dir() and count_capture(directory, sent, {}).written >= sent:
            return
        await asyncio.sleep(0.5)


async def bench(args: argparse.Namespace) -> tuple[dict[str, Target], CaptureTally]:
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        work = Path(tmp)
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        use_wrk = args.ceiling_client == "wrk"

        async def ceiling(name: str, port: int, seconds: float) -> float:
            if use_wrk:
                return await closed_loop_wrk(
                    name, port, args.clients, seconds, script, args.wrk_threads
                )
            return await closed_loop_python(name, port, args.clients, seconds)

        async with start_all(work, args.router_workers) as paths:
            capture_sent = 0
            for name, path in paths.items():  # warm: connection pools, first requests
                warmed = len(await single_client(name, path.port, 0.3))
                if name == CAPTURE:  # the open loop's connections reach every worker
                    capture_sent += warmed
                    capture_sent += len(await open_loop(name, path.port, args.rate, 1, []))
                else:
                    await ceiling(name, path.port, 1)
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}/{args.rounds}: load average {load()}", flush=True)
                for name in rotated(PATHS, round_):
                    path = paths[name]
                    cpu = cpu_seconds(path.pid)
                    latencies = await open_loop(
                        name, path.port, args.rate, args.open_loop_seconds, path.lateness
                    )
                    path.open_loop += latencies
                    path.open_loop_p99.append(percentile(latencies, 99))
                    if name == CAPTURE:
                        # Its writer's work is its own: done before the next path is measured
                        # (and counted in its CPU), not charged to that path's latency.
                        await drained(work / "capture", capture_sent + len(path.open_loop))
                    path.open_loop_cpu += cpu_seconds(path.pid) - cpu
                order = rotated(CLOSED_LOOP_PATHS, round_)
                for name in order:
                    path = paths[name]
                    path.single += await single_client(name, path.port, args.single_seconds)
                for name in order:
                    path = paths[name]
                    cpu = cpu_seconds(path.pid)
                    rps = await ceiling(name, path.port, args.ceiling_seconds)
                    path.cpu += cpu_seconds(path.pid) - cpu
                    path.requests += rps * args.ceiling_seconds
                    path.rps.append(rps)
            capture_sent += len(paths[CAPTURE].open_loop)
            dropped = dropped_records(await get_text(paths[CAPTURE].port, "/metrics"))
        # The routers have stopped, the capturing one after writing what it held.
        tally = count_capture(work / "capture", capture_sent, dropped)
    return paths, tally


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.3f}"


def report(
    args: argparse.Namespace,
    paths: dict[str, Target],
    tally: CaptureTally,
    before: str,
    classified: list[ClassifyTimes],
) -> None:
    client = (
        f"wrk -t{args.wrk_threads} -c{args.clients}"
        if args.ceiling_client == "wrk"
        else f"this script's client, {args.clients} connections"
    )
    print(
        f"{args.rounds} rounds; open loop {args.rate:g}/s for {args.open_loop_seconds:g} s,"
        f" single client {args.single_seconds:g} s, ceiling {args.ceiling_seconds:g} s"
        f" ({client}) per path and round ({CAPTURE}: open loop only)"
    )
    print(
        f"load average: {before} before, {load()} after; {os.cpu_count()} CPUs;"
        f" specfleet-router --workers {args.router_workers}"
    )
    direct = paths["direct"]
    d_open = (percentile(direct.open_loop, 50), percentile(direct.open_loop, 99))
    d_single = (percentile(direct.single, 50), percentile(direct.single, 99))
    d_rps = sum(direct.rps) / len(direct.rps)
    print(
        f"{'':17} {'open loop ' + format(args.rate, 'g') + '/s: p50 p99 (+p50 +p99)':>41}"
        f"   {'single client: p50 p99 (+p50 +p99)':>37}   {'req/s':>7} {'(range)':>15}"
        f" {'/direct':>7} {'CPU us/req':>10}"
    )
    for name, path in paths.items():
        o50, o99 = percentile(path.open_loop, 50), percentile(path.open_loop, 99)
        row = f"{name:17} {ms(o50)} {ms(o99)} ({ms(o50 - d_open[0])} {ms(o99 - d_open[1])})"
        if path.single:
            s50, s99 = percentile(path.single, 50), percentile(path.single, 99)
            rps = sum(path.rps) / len(path.rps)
            row += (
                f"   {ms(s50)} {ms(s99)} ({ms(s50 - d_single[0])} {ms(s99 - d_single[1])})"
                f"   {rps:7.0f} {f'({min(path.rps):.0f}-{max(path.rps):.0f})':>15}"
                f" {rps / d_rps:7.2f} {path.cpu / path.requests * 1e6:10.1f}"
            )
        print(row)
    print(
        f"(ms; + = minus direct; samples per path: {len(direct.open_loop)} open loop,"
        f" {len(direct.single)} single client; open-loop sends late by p50"
        f" {ms(percentile(direct.lateness, 50)).strip()} p99"
        f" {ms(percentile(direct.lateness, 99)).strip()} on the direct path; CPU: the proxy"
        " process and its children's in the ceiling rounds, direct's is the backend's)"
    )
    plain, captured = paths["specfleet"], paths[CAPTURE]
    p99_plain, p99_captured = percentile(plain.open_loop, 99), percentile(captured.open_loop, 99)
    ratio = added_p99_ratio(d_open[1], p99_plain, p99_captured)

    def open_loop_cpu_us(path: Target) -> float:
        return path.open_loop_cpu / len(path.open_loop) * 1e6

    by_round = " ".join(
        f"{added_p99_ratio(*p99s):.2f}"
        for p99s in zip(
            direct.open_loop_p99, plain.open_loop_p99, captured.open_loop_p99, strict=True
        )
    )

    print(
        f"capture of every request: added p99 at {args.rate:g}/s"
        f" {ms(p99_captured - d_open[1]).strip()} ms with, {ms(p99_plain - d_open[1]).strip()}"
        f" ms without (ratio {ratio:.3f}; each round's alone: {by_round}); router CPU in"
        " the open loop"
        f" {open_loop_cpu_us(captured):.1f} us/request with, {open_loop_cpu_us(plain):.1f}"
        " without"
    )
    print(tally.line())
    report_classification(classified, args.classify_samples)
    if (problem := tally.problem()) is not None:
        raise SystemExit(problem)

    def mean_rps(name: str) -> float:
        return sum(paths[name].rps) / len(paths[name].rps)

    print(
        last_line(
            p99_plain - d_open[1],
            mean_rps("specfleet") / mean_rps("vllm-router"),
            mean_rps("specfleet") / mean_rps("nginx"),
            ratio,
            classified[0].added_p99,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="fewer, shorter rounds: under a minute"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 4, quick 1)")
    parser.add_argument("--rate", type=float, default=500.0, help="open loop: requests/s")
    parser.add_argument(
        "--open-loop-seconds", type=float, help="per path and round (default 6, quick 4)"
    )
    parser.add_argument(
        "--single-seconds",
        type=float,
        help="single client, per path and round (default 2, quick 1)",
    )
    parser.add_argument(
        "--ceiling-seconds", type=float, help="ceiling, per path and round (default 4, quick 2)"
    )
    parser.add_argument("--clients", type=int, default=32, help="ceiling: closed-loop connections")
    parser.add_argument(
        "--ceiling-client",
        choices=["wrk", "python"],
        help="load generator for the ceiling (default: wrk when installed)",
    )
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument(
        "--classify-samples",
        type=int,
        help="classification: timings of each kind per request (default 20000, quick 5000)",
    )
    parser.add_argument(
        "--router-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="specfleet-router's --workers (default: one per CPU, %(default)s here)",
    )
    parser.add_argument("--serve-backend", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(serve_backend(args.port))
        return
    defaults = {
        "rounds": (4, 1),
        "open_loop_seconds": (6.0, 4.0),
        "single_seconds": (2.0, 1.0),
        "ceiling_seconds": (4.0, 2.0),
        "classify_samples": (20_000, 5_000),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.ceiling_client is None:
        args.ceiling_client = "wrk" if shutil.which("wrk") else "python"
    before = load()
    classified = time_classification(args.classify_samples)
    paths, tally = uvloop.run(bench(args))
    report(args, paths, tally, before, classified)


if __name__ == "__main__":
    main()

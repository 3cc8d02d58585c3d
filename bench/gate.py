"""What the gate sidecar adds to a request: measured side by side against the upstream directly.

Starts an upstream and ``specfleet-gate`` in front of it with a limit above the load, so nothing
queues and only the proxying is measured. The upstream is, by default, a fixed-answer streamer
(this script in another process): every stream sends ``--tokens`` SSE events shaped like vLLM's,
one per ``--interval-ms``, so the only varying cost is the path. ``--upstream sim`` uses
``specfleet-sim`` instead, whose batched decode steps quantize time (a request that reaches it a
little later can miss a step), which swamps a sub-millisecond difference.

A third path, ``forwarder``, is a zero-logic TCP relay in this script (one upstream connection
per client connection, bytes copied both ways as they arrive, nothing parsed): what one extra
process on the path costs on this machine, the floor under any proxy's overhead.

In interleaved rounds (the order rotated each round) so every path sees the same machine:
- streaming: ``--concurrency`` workers streaming back to back, started evenly over one stream's
  duration, so ``--concurrency`` streams are open at once and new ones arrive at a steady rate
  (not as one synchronized burst); time to first byte (request sent to first SSE event) and the
  time between consecutive SSE events, p50 and p99;
- ceiling: closed-loop workers sending non-streaming one-event requests for a fixed time.

Every process shares this machine's two cores, the load generator's too: the ceiling is the
whole machine's, not the gate's alone. The last line is machine-readable:
``gate_p99_overhead_ms=<added p99 TTFB> chunk_p99_overhead_ms=<added p99 gap> concurrency=N``.

Run: ``.venv/bin/python bench/gate.py [--quick]`` (``--quick``: under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
import uvloop
from aiohttp import web

BIN = Path(sys.executable).parent
START_DEADLINE = 60.0
STREAMS_PER_WORKER = 2  # recorded streams per worker and round, after one unrecorded ramp stream


@dataclass
class Samples:
    ttfb: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    ramp_events: int = 0  # events of the unrecorded ramp streams, for the gate's CPU per event
    requests: int = 0
    seconds: float = 0.0


def fixed_event(index: int) -> bytes:
    """One SSE event the size and shape of a vLLM completion chunk."""
    choice = {"index": 0, "text": f" tok{index}", "logprobs": None, "finish_reason": None}
    chunk = {"id": "cmpl-bench", "object": "text_completion", "created": 0, "model": "bench",
             "choices": [choice]}  # fmt: skip
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class Relay(asyncio.Protocol):
    """One side of a forwarded connection: what arrives is written to the other side."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._peer: asyncio.Transport | None = None
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def join(self, peer: asyncio.Transport) -> None:
        self._peer = peer
        for data in self._early:
            peer.write(data)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        if self._peer is None:
            self._early.append(data)
        else:
            self._peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is not None:
            self._peer.close()


async def serve_forwarder(upstream: str) -> None:
    """The zero-logic forwarder in front of ``upstream`` (http://HOST:PORT)."""
    host, port = upstream.removeprefix("http://").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()

    async def connect(client: Relay) -> None:
        _, relay = await loop.create_connection(Relay, host, int(port))
        assert client.transport is not None and relay.transport is not None
        relay.join(client.transport)
        client.join(relay.transport)

    def accepted() -> Relay:
        client = Relay()
        task = loop.create_task(connect(client))
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(accepted, "127.0.0.1", 0)
    print(f"forwarder on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


async def serve_fixed(interval: float) -> None:
    """The fixed-answer upstream: /health, and completions streamed at a fixed pace."""

    async def health(_request: web.Request) -> web.Response:
        return web.Response()

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "bench"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        params = await request.json()
        if not params.get("stream"):
            return web.json_response({"choices": [{"text": " tok0"}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        started = time.perf_counter()
        for index in range(params["max_tokens"]):
            # Paced from the stream's start, so one late wake-up does not shift the rest.
            await asyncio.sleep(max(0.0, started + index * interval - time.perf_counter()))
            await response.write(fixed_event(index))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"fixed upstream on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


@dataclass
class GateCpu:
    """CPU seconds the gate process spent in the gated rounds."""

    streaming: float = 0.0
    ceiling: float = 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), by nearest rank over the sorted values."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


@contextlib.asynccontextmanager
async def process(what: str, *argv: str) -> AsyncIterator[tuple[str, int]]:
    """Run a server that announces ``on http://HOST:PORT`` (stdout or stderr); yield its URL
    and pid."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(START_DEADLINE):
            while True:
                raw = await proc.stdout.readline()
                if not raw:
                    raise SystemExit(f"{what} exited before listening:\n" + "".join(lines))
                lines.append(raw.decode())
                if match := re.search(r"on (http://[\d.]+:\d+)", lines[-1]):
                    url = match.group(1)
                    break
        # Keep draining its output so a chatty server never blocks on a full pipe.
        drain = asyncio.create_task(proc.stdout.read())
        yield url, proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
    await drain


async def wait_healthy(session: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(START_DEADLINE):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)


async def stream_once(
    session: aiohttp.ClientSession, url: str, body: bytes, samples: Samples
) -> None:
    """One streaming completion: TTFB to the first SSE event, then the gaps between events."""
    started = time.perf_counter()
    last: float | None = None
    pending = b""
    async with session.post(
        f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        if response.status != 200:
            raise SystemExit(f"{url}: HTTP {response.status}: {await response.text()}")
        async for chunk in response.content.iter_any():
            now = time.perf_counter()
            pending += chunk
            events = pending.count(b"\n\n")
            pending = pending[pending.rfind(b"\n\n") + 2 :] if events else pending
            for _ in range(events):
                if last is None:
                    samples.ttfb.append(now - started)
                else:
                    samples.gaps.append(now - last)
                last = now


async def streaming_round(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    concurrency: int,
    spread: float,
    samples: Samples,
) -> None:
    """``concurrency`` workers streaming back to back, started evenly over ``spread`` seconds
    (one stream's duration), so streams arrive at a steady rate and ``concurrency`` are open at
    once; each worker's first stream is the ramp and is not recorded."""

    async def worker(index: int) -> None:
        await asyncio.sleep(index * spread / concurrency)
        ramp = Samples()
        await stream_once(session, url, body, ramp)
        samples.ramp_events += len(ramp.ttfb) + len(ramp.gaps)
        for _ in range(STREAMS_PER_WORKER):
            await stream_once(session, url, body, samples)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def ceiling_round(
    session: aiohttp.ClientSession, url: str, body: bytes, concurrency: int, seconds: float
) -> tuple[int, float]:
    """Requests completed by ``concurrency`` closed-loop workers in ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with session.post(
                f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                await response.read()
                if response.status != 200:
                    raise SystemExit(f"{url}: HTTP {response.status}")
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - started


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


def upstream_argv(args: argparse.Namespace) -> list[str]:
    if args.upstream == "sim":
        return [
            str(BIN / "specfleet-sim"),
            "--port", "0",
            "--max-num-seqs", str(4 * args.concurrency),
            "--time-factor", str(args.time_factor),
        ]  # fmt: skip
    return [
        sys.executable,
        __file__,
        "--serve-fixed-upstream",
        "--interval-ms",
        str(args.interval_ms),
    ]


async def bench(args: argparse.Namespace) -> tuple[dict[str, Samples], GateCpu]:
    async with process(args.upstream, *upstream_argv(args)) as (upstream_url, _):
        gate_argv = [
            str(BIN / "specfleet-gate"),
            "--upstream", upstream_url,
            "--port", "0",
            "--initial-limit", str(4 * args.concurrency),
        ]  # fmt: skip
        forwarder_argv = [sys.executable, __file__, "--serve-forwarder", upstream_url]
        async with (
            process("specfleet-gate", *gate_argv) as (gate_url, gate_pid),
            process("forwarder", *forwarder_argv) as (forwarder_url, _),
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        ):
            for url in (upstream_url, gate_url, forwarder_url):
                await wait_healthy(session, url)
            async with session.get(f"{upstream_url}/v1/models") as response:
                model = (await response.json())["data"][0]["id"]
            stream_body = json.dumps(
                {"model": model, "prompt": "Say something.", "max_tokens": args.tokens,
                 "stream": True}
            ).encode()  # fmt: skip
            one_token = json.dumps({"model": model, "prompt": "Hi.", "max_tokens": 1}).encode()
            paths = {"direct": upstream_url, "gated": gate_url, "forwarder": forwarder_url}
            results = {name: Samples() for name in paths}
            gate_cpu = GateCpu()
            spread = args.tokens * args.interval_ms / 1000

            async def streams(url: str, samples: Samples) -> None:
                await streaming_round(session, url, stream_body, args.concurrency, spread, samples)

            # Warm every path (connection pools, first requests) before measuring.
            for url in paths.values():
                await streams(url, Samples())
            for round_ in range(args.rounds):
                names = list(paths)
                order = names[round_ % 3 :] + names[: round_ % 3]
                for name in order:
                    cpu = cpu_seconds(gate_pid)
                    await streams(paths[name], results[name])
                    if name == "gated":
                        gate_cpu.streaming += cpu_seconds(gate_pid) - cpu
                for name in order:
                    cpu = cpu_seconds(gate_pid)
                    count, seconds = await ceiling_round(
                        session, paths[name], one_token, args.concurrency, args.ceiling_seconds
                    )
                    results[name].requests += count
                    results[name].seconds += seconds
                    if name == "gated":
                        gate_cpu.ceiling += cpu_seconds(gate_pid) - cpu
    return results, gate_cpu


def report(args: argparse.Namespace, results: dict[str, Samples], gate_cpu: GateCpu) -> None:
    upstream = (
        f"specfleet-sim, time factor {args.time_factor}"
        if args.upstream == "sim"
        else f"fixed upstream, one event per {args.interval_ms} ms"
    )
    print(
        f"{args.rounds} rounds x {args.concurrency} concurrent streams of {args.tokens} events"
        f" ({upstream}); ceiling: {args.concurrency} closed-loop workers"
    )
    print(f"{'':9} {'TTFB p50':>9} {'TTFB p99':>9} {'gap p50':>9} {'gap p99':>9}  (ms)   req/s")
    direct, gated, floor = results["direct"], results["gated"], results["forwarder"]
    for name, s in results.items():
        print(
            f"{name:9} {ms(percentile(s.ttfb, 50))} {ms(percentile(s.ttfb, 99))}"
            f" {ms(percentile(s.gaps, 50))} {ms(percentile(s.gaps, 99))}"
            f"  {s.requests / s.seconds:12.0f}"
        )
    ratio = (gated.requests / gated.seconds) / (direct.requests / direct.seconds)
    print(
        f"samples: {len(gated.ttfb)} first bytes and {len(gated.gaps)} gaps per path;"
        f" gated/direct req/s {ratio:.2f};"
        f" mean gap direct {statistics.fmean(direct.gaps) * 1000:.2f} ms"
    )
    # Every event the gate carried in the measured rounds, the ramp streams' included.
    events = len(gated.gaps) + len(gated.ttfb) + gated.ramp_events
    print(
        f"gate CPU: {gate_cpu.streaming / events * 1e6:.0f} us per streamed event (request"
        f" costs included), {gate_cpu.ceiling / gated.requests * 1e6:.0f} us per"
        " non-streaming request"
    )
    ttfb_overhead = percentile(gated.ttfb, 99) - percentile(direct.ttfb, 99)
    gap_overhead = percentile(gated.gaps, 99) - percentile(direct.gaps, 99)
    print(
        "one extra hop with no logic (forwarder) adds: p99 TTFB"
        f" {(percentile(floor.ttfb, 99) - percentile(direct.ttfb, 99)) * 1000:.3f} ms, p99 gap"
        f" {(percentile(floor.gaps, 99) - percentile(direct.gaps, 99)) * 1000:.3f} ms"
    )
    print(
        f"gate_p99_overhead_ms={ttfb_overhead * 1000:.3f}"
        f" chunk_p99_overhead_ms={gap_overhead * 1000:.3f} concurrency={args.concurrency}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds: under a minute")
    parser.add_argument("--upstream", choices=["fixed", "sim"], default="fixed")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 9, quick 3)")
    parser.add_argument("--tokens", type=int, default=32, help="events (max_tokens) per stream")
    parser.add_argument(
        "--interval-ms", type=float, default=20.0, help="fixed upstream: ms between events"
    )
    parser.add_argument(
        "--time-factor", type=float, default=0.1, help="specfleet-sim's time factor"
    )
    parser.add_argument(
        "--ceiling-seconds", type=float, help="seconds per ceiling round (default 3, quick 1)"
    )
    parser.add_argument("--serve-fixed-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-forwarder", metavar="UPSTREAM", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fixed_upstream:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(serve_fixed(args.interval_ms / 1000))
        return
    if args.serve_forwarder:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(serve_forwarder(args.serve_forwarder))
        return
    if args.rounds is None:
        args.rounds = 3 if args.quick else 9
    if args.ceiling_seconds is None:
        args.ceiling_seconds = 1.0 if args.quick else 3.0
    load_before = os.getloadavg()[0]
    results, gate_cpu = uvloop.run(bench(args))
    print(f"machine load average (1 min): {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    report(args, results, gate_cpu)


if __name__ == "__main__":
    main()

"""The writer process: exchanges cross the pipe unchanged, it writes the records the thread
would, its counts reach the capture's metrics, and one that dies loses only what it held.

Waits are on conditions (metrics, process states), never on time.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specfleet_runtime.capture import Exchange, RouteDecision, child, writer
from tests.capture.builders import chat_exchange, config, records
from tests.capture.test_writer import DEADLINE, Metrics, capture
from tests.waiting import until

texts = st.text(max_size=20)
maybe_seconds = st.none() | st.floats(min_value=0, max_value=1e6)
routes = st.none() | st.builds(
    RouteDecision,
    kind=st.sampled_from(["tier", "override", "direct"]),
    model=texts,
    tier=st.none() | texts,
    complexity=st.none() | st.floats(0, 1),
    expected_tokens=st.none() | st.integers(0, 1 << 20),
    categories=st.lists(texts, max_size=3).map(tuple),
    fallback_from=st.none() | texts,
    classifier=st.none() | st.sampled_from(["heuristic", "learned"]),
    classifier_hash=st.none() | texts,
)
exchanges = st.builds(
    Exchange,
    request_id=texts,
    time=st.floats(0, 4e9),
    path=texts,
    body=st.binary(max_size=64),
    credentials=st.lists(texts, max_size=2).map(tuple),
    status=st.integers(0, 599),
    chunks=st.lists(st.binary(max_size=16), max_size=4),
    streamed=st.booleans(),
    cancelled=st.booleans(),
    first_byte_seconds=maybe_seconds,
    total_seconds=maybe_seconds,
    route=routes,
)


@given(st.lists(exchanges, max_size=5), st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_exchanges_cross_the_pipe_unchanged_however_the_bytes_arrive(
    sent: list[Exchange], pieces: list[int]
) -> None:
    stream = b"".join(child.pack(exchange) for exchange in sent)
    frames = child.Frames()
    received: list[Exchange] = []
    sizes, at = itertools.cycle(pieces), 0
    while at < len(stream):  # the stream in pieces of the drawn sizes, in turn
        size = next(sizes)
        received += map(child.unpack, frames.feed(stream[at : at + size]))
        at += size
    assert received == sent


def test_the_setup_crosses_the_pipe_unchanged(tmp_path: Path) -> None:
    setup = child.Setup(
        config=config(tmp_path, flushRecords=7, patterns=[{"name": "ticket", "regex": "T-[0-9]+"}]),
        pod="router-abc-1",
        key="00ff",
        seq_offset=1,
        seq_step=2,
        log_level="WARNING",
    )
    assert child.Setup.loads(setup.dumps()) == setup


def test_the_process_imports_this_code_and_keeps_no_metrics_of_its_own() -> None:
    env = child.environment(
        {"PATH": "/bin", "PYTHONPATH": "/elsewhere", "PROMETHEUS_MULTIPROC_DIR": "/tmp/m"}
    )
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    assert env["PATH"] == "/bin"
    roots = env["PYTHONPATH"].split(os.pathsep)
    assert roots[-1] == "/elsewhere"
    here = Path(child.__file__).resolve()
    assert str(here.parents[2]) in roots[:-1]  # where specfleet_runtime is imported from


def test_the_process_writes_what_the_thread_would_and_its_counts_reach_the_metrics(
    tmp_path: Path,
) -> None:
    huge = {"messages": [{"role": "user", "content": f"m{n}"} for n in range(500)]}
    offered = [
        chat_exchange("req-0", credentials=("Bearer sk-secret",)),
        chat_exchange("req-1", route=RouteDecision("tier", "llama-8b", tier="simple")),
        chat_exchange("req-huge", body=json.dumps(huge).encode()),
        chat_exchange("req-2", body=b'{"messages": [{"content": "mail jane@example.com"}]}'),
    ]
    results = {}
    for where, process in (("thread", False), ("process", True)):
        metrics = Metrics()
        capturing = capture(
            metrics,
            tmp=tmp_path / where,
            writer_process=process,
            flushRecords=2,
            maxRecordBytes=2048,
        )
        for exchange in offered:
            capturing.offer(exchange)
        assert capturing.close(DEADLINE)
        assert (metrics.written, metrics.dropped("too_large"), metrics.queued) == (3, 1, 0)
        results[where] = records(tmp_path / where)
    assert sorted(results["process"]) == ["req-0", "req-1", "req-2"]
    assert results["process"] == results["thread"]
    assert "jane@example.com" not in json.dumps(results["process"])


def _writer_processes() -> list[int]:
    """This process's writer processes still running (not yet exited)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(parent) == os.getpid() and state != "Z" and b"specfleet_runtime.capture" in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize("restart_seconds", [0.0, 3600.0])
def test_a_process_that_dies_loses_what_it_held_and_another_starts_but_not_in_a_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restart_seconds: float
) -> None:
    monkeypatch.setattr(writer, "RESTART_SECONDS", restart_seconds)
    metrics = Metrics()
    before = set(_writer_processes())
    # Nothing is written before close: the records wait in the process's batch.
    capturing = capture(
        metrics, tmp=tmp_path, writer_process=True, flushRecords=1000, flushSeconds=3600
    )
    try:
        for n in range(3):
            capturing.offer(chat_exchange(f"held-{n}"))
        until(
            lambda: metrics.queued == 0 and set(_writer_processes()) - before,
            "the records handed to a writer process",
        )
        (first,) = set(_writer_processes()) - before
        os.kill(first, signal.SIGKILL)
        until(lambda: first not in _writer_processes(), "the writer process to die")
        capturing.offer(chat_exchange("after"))
        until(lambda: metrics.queued == 0, "the record offered after")
    finally:
        assert capturing.close(DEADLINE)
    if restart_seconds:  # too soon after the first started: no other starts, "after" is lost
        assert (metrics.dropped("record_error"), metrics.written) == (4, 0)
        assert records(tmp_path) == {}
    else:
        assert (metrics.dropped("record_error"), metrics.written) == (3, 1)
        assert list(records(tmp_path)) == ["after"]
    assert set(_writer_processes()) <= before, "close ends the writer process"

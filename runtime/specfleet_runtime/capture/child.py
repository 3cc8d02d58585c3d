"""A capture's writer process: where a router's or a gate's captured exchanges become records
and batches, so that the serving process spends no interpreter time on them
(``specfleet_runtime.capture.writer`` starts one per capture with ``writer_process``).

``WriterProcess`` is the capture thread's side: it starts ``python -m
specfleet_runtime.capture`` (a new session, so a terminal's Ctrl-C reaches the server and
not its writer; the same code as the parent, its environment, and so boto3's credentials),
sends it a ``Setup`` and then exchanges, and reads what the process reports. ``send`` blocks
while the pipe is full: the capture's thread waits, not a request, and its queue overflows as
``queue_full``. ``finish`` closes the pipe, waits for the process to write its last batch and
end, and counts the records it took and never reported as ``record_error`` (a process that
died: a bug, said with an ERROR line).

``main`` is the process: under Linux's ``SCHED_IDLE`` policy (``lowest_priority``: it runs
only on CPU time nothing else wants, and a server thread that wakes takes the CPU from it at
once, so under CPU pressure it falls behind rather than slowing answers), it feeds what
arrives to ``batches.Batches``, writes a batch when it is due, and reports, one line per event
on stdout, ``written N`` and ``dropped REASON N``. It ends at the end of its input, after
writing what it holds.

The pipe carries frames: a 4-byte little-endian length, then the payload; the first is the
setup as JSON, the others one exchange each, as ``marshal`` data (plain values only: the
exchange's fields; the pipe joins two processes of one pod, nothing else writes to it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import marshal
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import specfleet_runtime
from specfleet import api
from specfleet.api.capture import CaptureConfig
from specfleet_runtime import serving, workers
from specfleet_runtime.capture import record
from specfleet_runtime.capture.batches import Batches, Report, open_store

log = logging.getLogger(__name__)

NICENESS = 19
"""Where ``SCHED_IDLE`` is not to be had: the lowest priority ``nice`` gives."""
READ_BYTES = 1 << 16
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Setup:
    """What a writer process needs beside the exchanges."""

    config: CaptureConfig
    pod: str
    key: str
    """The hash key, in hex."""
    seq_offset: int
    seq_step: int
    log_level: str

    def dumps(self) -> bytes:
        return json.dumps(
            {
                "config": self.config.model_dump(mode="json", by_alias=True),
                "pod": self.pod,
                "key": self.key,
                "seqOffset": self.seq_offset,
                "seqStep": self.seq_step,
                "logLevel": self.log_level,
            }
        ).encode()

    @classmethod
    def loads(cls, data: bytes) -> Setup:
        fields = json.loads(data)
        return cls(
            config=CaptureConfig.model_validate(fields["config"]),
            pod=fields["pod"],
            key=fields["key"],
            seq_offset=fields["seqOffset"],
            seq_step=fields["seqStep"],
            log_level=fields["logLevel"],
        )


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def pack(exchange: record.Exchange) -> bytes:
    """``exchange`` as one frame."""
    route = exchange.route
    return frame(
        marshal.dumps(
            (
                exchange.request_id,
                exchange.time,
                exchange.path,
                exchange.body,
                exchange.credentials,
                exchange.status,
                exchange.chunks,
                exchange.streamed,
                exchange.cancelled,
                exchange.first_byte_seconds,
                exchange.total_seconds,
                None
                if route is None
                else (
                    route.kind,
                    route.model,
                    route.tier,
                    route.complexity,
                    route.expected_tokens,
                    route.categories,
                    route.fallback_from,
                    route.classifier,
                    route.classifier_hash,
                ),
            )
        )
    )


def unpack(payload: bytes) -> record.Exchange:
    """The exchange of one frame's payload."""
    *fields, route = marshal.loads(payload)
    exchange = record.Exchange(*fields)
    if route is not None:
        exchange.route = record.RouteDecision(*route)
    return exchange


class Frames:
    """Payloads out of a byte stream that arrives in pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The payloads ``data`` completes, in order."""
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + length
            if end > len(buffer):
                break
            yield bytes(buffer[start + _LENGTH.size : end])
            start = end
        del buffer[:start]


# ---------------------------------------------------------------------------------------------
# The capture thread's side.


class WriterProcess:
    """One writer process, started here."""

    def __init__(self, setup: Setup, report: Report) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._sent = self._reported = 0
        self._broken = False
        self._process = subprocess.Popen(
            [sys.executable, "-m", "specfleet_runtime.capture"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment(os.environ),
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="capture-writer-reports")
        self._reader.daemon = True
        self._reader.start()
        self._write(frame(setup.dumps()))

    @property
    def running(self) -> bool:
        return not self._broken and self._process.poll() is None

    def send(self, exchanges: Iterable[record.Exchange]) -> None:
        """Hand ``exchanges`` over; blocks while the pipe is full."""
        data = [pack(exchange) for exchange in exchanges]
        with self._lock:
            self._sent += len(data)
        self._write(b"".join(data))

    def finish(self) -> None:
        """Close the pipe and wait until the process has written what it holds and ended;
        count what it took and never reported."""
        assert self._process.stdin is not None
        with contextlib.suppress(OSError):
            self._process.stdin.close()
        self._reader.join()
        code = self._process.wait()
        assert self._process.stdout is not None
        self._process.stdout.close()
        with self._lock:
            lost = self._sent - self._reported
        if lost > 0:
            self._report.dropped("record_error", lost)
        if lost > 0 or code != 0:
            log.error(
                "capture: the writer process (pid %d) ended with code %d; %d records it held "
                "are lost",
                self._process.pid,
                code,
                lost,
            )

    def _write(self, data: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            stdin.flush()
        except OSError:  # the process died: finish counts what it took
            self._broken = True

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        for line in stdout:
            match line.split():
                case [b"written", count]:
                    self._report.written(int(count))
                    self._count(int(count))
                case [b"dropped", reason, count]:
                    self._report.dropped(reason.decode(), int(count))
                    self._count(int(count))
                case _:
                    log.error("capture: the writer process said %r", line)

    def _count(self, records: int) -> None:
        with self._lock:
            self._reported += records


def environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The writer process's environment: the parent's, importing the same code, without the
    router's shared metrics directory (the process keeps no metrics of its own)."""
    env = {name: value for name, value in parent.items() if name != workers.MULTIPROCESS_ENV}
    roots = [  # the directories specfleet_runtime and specfleet are imported from
        str(Path(specfleet_runtime.__file__ or "").resolve().parents[1]),
        str(Path(api.__file__ or "").resolve().parents[2]),
    ]
    env["PYTHONPATH"] = os.pathsep.join([*roots, *filter(None, [parent.get("PYTHONPATH")])])
    return env


# ---------------------------------------------------------------------------------------------
# The process.


class PipeReport:
    """A report as lines on ``out``."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def written(self, records: int) -> None:
        self._say(f"written {records}\n")

    def dropped(self, reason: str, records: int) -> None:
        self._say(f"dropped {reason} {records}\n")

    def _say(self, line: str) -> None:
        self._out.write(line.encode())
        self._out.flush()


def _read_frames(fd: int, frames: Frames, timeout: float | None) -> list[bytes] | None:
    """The payloads that arrive on ``fd`` within ``timeout`` seconds (None: no limit); None at
    the end of the input."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return []
    data = os.read(fd, READ_BYTES)
    if not data:
        return None
    return list(frames.feed(data))


def lowest_priority() -> None:
    """This process at the lowest CPU priority there is: ``SCHED_IDLE``, else nice 19."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or a policy that forbids it
        os.nice(NICENESS)


def main() -> None:
    lowest_priority()
    fd = sys.stdin.fileno()
    frames = Frames()
    first: list[bytes] = []
    while not first:
        got = _read_frames(fd, frames, None)
        if got is None:
            return  # the capture closed before it said anything
        first = got
    setup = Setup.loads(first[0])
    serving.configure_logging(setup.log_level)
    batches = Batches(
        setup.config,
        setup.pod,
        bytes.fromhex(setup.key),
        open_store(setup.config),
        PipeReport(sys.stdout.buffer),
        seq_offset=setup.seq_offset,
        seq_step=setup.seq_step,
    )
    payloads: list[bytes] | None = first[1:]
    while payloads is not None:
        for payload in payloads:
            batches.add(unpack(payload))
        due = batches.due
        if due is not None and time.monotonic() >= due:
            batches.flush()
            due = None
        wait = None if due is None else max(due - time.monotonic(), 0.0)
        payloads = _read_frames(fd, frames, wait)
    batches.flush()

"""Running one of the runtime's console scripts (specfleet-gate, specfleet-router) as a real
process for a test: started on a free port, its log kept, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from tests.gate.fakes import within_deadline

START_DEADLINE = 30.0


@contextlib.asynccontextmanager
async def run_server(program: Path, *flags: str) -> AsyncIterator[tuple[str, list[str]]]:
    """Start `program` with `flags` (which give it a port, 0 for a free one); yield the URL it
    logs as `listening on URL` and its log lines so far. On the way out it must stop cleanly
    (exit 0) on SIGTERM."""
    async with run_server_process(program, *flags) as (url, lines, _):
        yield url, lines


@contextlib.asynccontextmanager
async def run_server_process(
    program: Path, *flags: str
) -> AsyncIterator[tuple[str, list[str], asyncio.subprocess.Process]]:
    """`run_server`, yielding the process too (for a test that signals it itself); on the way
    out it must exit 0, on its own or on SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        str(program), *flags, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    lines: list[str] = []
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def read_log() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode().rstrip()
            lines.append(line)
            if (match := re.search(r"listening on (http://\S+)", line)) and not listening.done():
                listening.set_result(match.group(1))
        if not listening.done():
            listening.set_exception(AssertionError(f"{program.name} exited:\n" + "\n".join(lines)))

    reader = asyncio.create_task(read_log())
    try:
        async with asyncio.timeout(START_DEADLINE):
            url = await listening
        yield url, lines, process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await within_deadline(process.wait(), f"{program.name} to stop")
        await reader
        assert code == 0, "\n".join(lines)


@contextlib.contextmanager
def running_server(program: Path, *flags: str, log: Path) -> Iterator[str]:
    """`run_server` for synchronous callers (a blocking client such as the openai SDK): start
    `program` with `flags`, its log in `log`; yield the URL it logs as `listening on URL`; on
    the way out it must stop cleanly (exit 0) on SIGTERM."""
    with log.open("wb") as out:
        process = subprocess.Popen([str(program), *flags], stderr=out)
    try:
        deadline = time.monotonic() + START_DEADLINE
        while not (match := re.search(r"listening on (http://\S+)", log.read_text())):
            assert process.poll() is None, f"{program.name} exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{program.name} did not listen:\n{log.read_text()}"
            time.sleep(0.05)
        yield match.group(1)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()

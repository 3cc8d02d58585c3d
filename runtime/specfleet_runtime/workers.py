"""Several worker processes serving one listening socket, for a server that needs more than
one core (the router: one Python process serves one core's worth of requests).

The supervisor binds and listens itself, so the address (and `--port 0`'s choice) is known
before any worker starts and connections queue in the kernel until one accepts. It then starts
each worker as a fresh interpreter running the same command with the socket's descriptor
(`--listen-fd`) and, so their Prometheus metrics add up, a shared `PROMETHEUS_MULTIPROC_DIR`
(prometheus_client's multiprocess mode reads it when it is imported, hence fresh processes
rather than forks). SIGTERM or SIGINT is passed on to every worker, which stop as a single
server does; the supervisor exits when they have. A worker that exits on its own takes the
others down and the supervisor exits 1: the container restarts whole rather than serving at
part of its capacity unnoticed. A supervisor killed outright (SIGKILL cannot be passed on)
leaves its workers to notice: each stops as on SIGTERM once its parent is gone.

Called by `specfleet_runtime.router.cli`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from types import FrameType

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Where workers keep the metric values prometheus_client adds up across them."""

SUPERVISOR_ENV = "SPECFLEET_SUPERVISOR_PID"
"""The supervisor's pid, for a worker to tell when it has gone (`stop_without_supervisor`)."""

LISTEN_BACKLOG = 1024
"""Connections the kernel holds for the workers to accept (aiohttp's own default is 128)."""


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; `port` 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)


def supervise(
    listener: socket.socket, worker_argv: Sequence[str], workers: int, log: logging.Logger
) -> int:
    """Run `workers` copies of `worker_argv` (a command line that ends where the supervisor
    appends `--listen-fd N --worker-index I`) until a signal stops them; the exit status."""
    metrics_dir = tempfile.mkdtemp(prefix="specfleet-metrics-")
    env = {**os.environ, MULTIPROCESS_ENV: metrics_dir, SUPERVISOR_ENV: str(os.getpid())}
    fd = listener.fileno()
    processes: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(workers):
            argv = [*worker_argv, "--listen-fd", str(fd), "--worker-index", str(index)]
            processes.append(subprocess.Popen(argv, pass_fds=[fd], env=env))
            log.info("worker %d started (pid %d)", index, processes[-1].pid)
        status = 0
        while processes:
            pid, code = os.wait()
            exited = next((p for p in processes if p.pid == pid), None)
            if exited is None:
                continue
            processes.remove(exited)
            exited.returncode = os.waitstatus_to_exitcode(code)
            if not stopping:
                log.error(
                    "worker %d exited with status %d; stopping the others",
                    pid,
                    exited.returncode,
                )
                status = 1
                stop(signal.SIGTERM, None)
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for process in processes:
            process.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)


SUPERVISOR_CHECK_SECONDS = 1.0
"""How often a worker looks whether its supervisor is still there."""


async def stop_without_supervisor(log: logging.Logger) -> None:
    """In a worker: stop as on SIGTERM once the supervisor that started it has gone (the
    worker is then another process's child), also when that happened before the worker got
    here."""
    supervisor = int(os.environ.get(SUPERVISOR_ENV, os.getppid()))
    while os.getppid() == supervisor:
        await asyncio.sleep(SUPERVISOR_CHECK_SECONDS)
    log.warning("the supervisor (pid %d) has gone; stopping", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


def python_command(module: str) -> list[str]:
    """The command line that runs `module` as a script in this interpreter."""
    return [sys.executable, "-m", module]

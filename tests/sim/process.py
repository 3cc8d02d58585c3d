"""Run the real `specfleet-sim` console script as a process, for the integration and e2e tests."""

from __future__ import annotations

import contextlib
import re
import select
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "specfleet-sim"


@contextlib.contextmanager
def running_sim(*flags: str, timeout: float = 30) -> Iterator[str]:
    """Start `specfleet-sim --port 0 FLAGS` on loopback; yield its base URL; stop it (SIGTERM)
    and check that it exited cleanly."""
    # stderr goes to a file: a pipe nobody reads while the test runs could fill and block it.
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [str(SCRIPT), "--host", "127.0.0.1", "--port", "0", *flags],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], timeout)
            line = process.stdout.readline() if ready else ""
            found = re.search(r"on (http://127\.0\.0\.1:\d+)$", line.strip())
            if found is None:
                process.kill()
                process.wait()
                errors.seek(0)
                raise AssertionError(f"specfleet-sim did not start: {line!r} {errors.read()}")
            yield found.group(1)
        finally:
            if process.poll() is None:
                process.terminate()
            process.communicate(timeout=30)
        errors.seek(0)
        assert process.returncode == 0, errors.read()

"""Rereading a mounted file on every tick: the one poller behind the gate's limit file, the
router's configuration file and the router's API keys.

Kubernetes updates a ConfigMap or Secret volume by swapping a symlink (``..data``) to a new
directory, which inotify watches on the file itself miss; so ``Watched.poll`` simply rereads
what is at its path (a few small files) on every tick. It reports a new value only when what it
read differs from the last read; a file that is missing or invalid keeps the last good value
(the caller just gets nothing new) and is logged once per distinct problem, not every tick.

A subclass says how to ``read`` the path and how to ``parse`` what it read, raising
``WatchError`` with a message that names the path: ``specfleet_runtime.gate.limit.LimitFile``,
``specfleet_runtime.router.config.ConfigFile``, ``specfleet_runtime.router.keys.KeysSource`` and
``specfleet_runtime.router.artifact.ArtifactFile`` (which also says, in ``kept``, what it keeps).
Pure but for reading the files; the callers' tasks own the ticking.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

log = logging.getLogger(__name__)

Content = TypeVar("Content")
Value = TypeVar("Value")


class WatchError(ValueError):
    """What is wrong with the watched path; the message names the path (never a secret)."""


def read_text(path: Path, noun: str) -> str:
    """The text of the file at ``path``; raises WatchError calling it ``noun`` ("limit file")."""
    try:
        return path.read_text()
    except OSError as exc:
        raise WatchError(f"cannot read {noun} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise WatchError(f"{noun} {path} is not UTF-8 text") from None


class Watched(ABC, Generic[Content, Value]):
    """Rereads ``path`` on each poll and reports its value when what is there changes."""

    keeping: ClassVar[str]
    """What a problem leaves in place, for the log: "the current limit"."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._read_once = False
        self._content: Content | None = None
        self._content_problem: str | None = None
        self._error: str | None = None

    @abstractmethod
    def read(self) -> Content:
        """What is at ``path`` now, comparable with ``==``; raises WatchError."""

    @abstractmethod
    def parse(self, content: Content) -> Value:
        """The value ``content`` holds; raises WatchError."""

    def kept(self) -> str:
        """What a problem leaves in place now, for the log (``keeping``, unless a subclass
        knows better)."""
        return self.keeping

    @property
    def error(self) -> str | None:
        """The problem with the path as last read, if any."""
        return self._error

    def poll(self) -> Value | None:
        """The new value if what is at the path changed to a valid one since the last poll."""
        try:
            content = self.read()
        except WatchError as exc:
            self._report(str(exc))
            return None
        if self._read_once and content == self._content:
            self._report(self._content_problem)
            return None
        self._read_once, self._content = True, content
        try:
            value = self.parse(content)
        except WatchError as exc:
            self._content_problem = str(exc)
            self._report(self._content_problem)
            return None
        self._content_problem = None
        self._report(None)
        return value

    def _report(self, problem: str | None) -> None:
        if problem is not None and problem != self._error:
            log.warning("%s; keeping %s", problem, self.kept())
        self._error = problem

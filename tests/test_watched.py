"""The runtime's one file poller: a value only when what is read changed, the last good value
kept through problems, and each distinct problem logged once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from specfleet_runtime import watched


class Words(watched.Watched[str, list[str]]):
    """A file of words; "!" anywhere makes it invalid. Counts its parses."""

    keeping = "the current words"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.parses = 0

    def read(self) -> str:
        return watched.read_text(self.path, "words file")

    def parse(self, content: str) -> list[str]:
        self.parses += 1
        if "!" in content:
            raise watched.WatchError(f"words file {self.path}: no ! allowed")
        return content.split()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_an_unchanged_file_is_reported_once_and_parsed_once(tmp_path: Path) -> None:
    path = tmp_path / "words"
    path.write_text("a b")
    words = Words(path)
    assert words.poll() == ["a", "b"]
    assert words.poll() is None
    assert words.poll() is None
    assert words.parses == 1
    path.write_text("c")
    assert words.poll() == ["c"]
    path.write_text("a b")
    assert words.poll() == ["a", "b"], "a change back is a change"


def test_each_distinct_problem_is_logged_once_and_the_last_good_value_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "words"
    words = Words(path)
    with caplog.at_level(logging.WARNING):
        assert words.poll() is None
        assert words.poll() is None
        assert words.error is not None and words.error.startswith("cannot read words file")
        path.write_text("a!")
        assert words.poll() is None
        assert words.poll() is None
        assert words.error == f"words file {path}: no ! allowed"
        path.write_bytes(b"\xff\xfe")
        assert words.poll() is None
        assert words.poll() is None
    assert warnings(caplog) == [
        f"cannot read words file {path}: No such file or directory; keeping the current words",
        f"words file {path}: no ! allowed; keeping the current words",
        f"words file {path} is not UTF-8 text; keeping the current words",
    ]
    assert words.parses == 1, "an invalid file that did not change is not parsed again"
    path.write_text("fine")
    assert words.poll() == ["fine"]
    assert words.error is None


def test_a_problem_that_comes_back_after_a_recovery_is_logged_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "words"
    path.write_text("a")
    words = Words(path)
    assert words.poll() == ["a"]
    with caplog.at_level(logging.WARNING):
        path.unlink()
        assert words.poll() is None
        path.write_text("a")
        assert words.poll() is None, "the same words as before are nothing new"
        assert words.error is None
        path.unlink()
        assert words.poll() is None
    assert len(warnings(caplog)) == 2, warnings(caplog)

"""The limit file: its format, and noticing changes, including ConfigMap-style symlink swaps."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from specfleet_runtime.gate.limit import LimitFile, LimitFileError, parse_limit


@pytest.mark.parametrize(
    ("text", "limit"),
    [("64", 64), ("64\n", 64), ('{"limit": 8}', 8), ("limit: 12\n", 12), ("1", 1)],
)
def test_accepted_formats(text: str, limit: int) -> None:
    assert parse_limit(text) == limit


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("0", "at least 1"),
        ("-4", "at least 1"),
        ("true", "expected an integer"),
        ("1.5", "expected an integer"),
        ("", "expected an integer"),
        ('{"limt": 8}', "expected an integer"),
        ("limit: many", "expected an integer"),
        ("{limit: [", "not YAML or JSON"),
    ],
)
def test_refused_contents(text: str, error: str) -> None:
    with pytest.raises(LimitFileError, match=error):
        parse_limit(text)


def test_poll_reports_a_limit_only_when_the_content_changes(tmp_path: Path) -> None:
    path = tmp_path / "limit"
    path.write_text("4")
    watched = LimitFile(path)
    assert watched.poll() == 4
    assert watched.poll() is None
    path.write_text("limit: 8")
    assert watched.poll() == 8


def configmap_volume(root: Path, version: str, limit: str) -> None:
    """Lay out (or update) a directory as the kubelet does for a ConfigMap volume: the key is a
    symlink through ``..data``, and an update atomically repoints ``..data``."""
    data_dir = root / f"..{version}"
    data_dir.mkdir()
    (data_dir / "limit").write_text(limit)
    (root / "..data_tmp").symlink_to(data_dir.name)
    os.replace(root / "..data_tmp", root / "..data")
    if not (root / "limit").is_symlink():
        (root / "limit").symlink_to("..data/limit")


def test_poll_follows_a_configmap_symlink_swap(tmp_path: Path) -> None:
    configmap_volume(tmp_path, "2026_11_23_1", "4")
    watched = LimitFile(tmp_path / "limit")
    assert watched.poll() == 4
    configmap_volume(tmp_path, "2026_11_23_2", "16")
    assert watched.poll() == 16


def test_a_missing_or_invalid_file_keeps_the_limit_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "limit"
    watched = LimitFile(path)
    with caplog.at_level(logging.WARNING):
        assert watched.poll() is None
        assert watched.poll() is None
        path.write_text("zero")
        assert watched.poll() is None
        assert watched.poll() is None
        path.write_text("6")
        assert watched.poll() == 6
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert "cannot read limit file" in messages[0]
    assert "keeping the current limit" in messages[0]
    assert "expected an integer" in messages[1]

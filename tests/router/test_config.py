"""Rereading the configuration file while the router runs: noticing changes (ConfigMap symlink
swaps included), and keeping the last good configuration through a missing or invalid file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from specfleet_runtime.router.config import ConfigFile
from tests.router.builders import config_data


def test_poll_reports_a_configuration_only_when_the_content_changes(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_data()))
    watched = ConfigFile(path)
    first = watched.poll()
    assert first is not None and first.policy == "assistant"
    assert watched.poll() is None
    path.write_text(yaml.safe_dump(config_data(policy="other")))
    second = watched.poll()
    assert second is not None and second.policy == "other"


def configmap_volume(root: Path, version: str, text: str) -> None:
    """Lay out (or update) a directory as the kubelet does for a ConfigMap volume."""
    data_dir = root / f"..{version}"
    data_dir.mkdir()
    (data_dir / "config.yaml").write_text(text)
    (root / "..data_tmp").symlink_to(data_dir.name)
    os.replace(root / "..data_tmp", root / "..data")
    if not (root / "config.yaml").is_symlink():
        (root / "config.yaml").symlink_to("..data/config.yaml")


def test_poll_follows_a_configmap_symlink_swap(tmp_path: Path) -> None:
    configmap_volume(tmp_path, "1", yaml.safe_dump(config_data()))
    watched = ConfigFile(tmp_path / "config.yaml")
    assert watched.poll() is not None
    configmap_volume(tmp_path, "2", yaml.safe_dump(config_data(fallback={"enabled": False})))
    reloaded = watched.poll()
    assert reloaded is not None and reloaded.fallback.enabled is False


def test_a_missing_or_invalid_file_keeps_the_configuration_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    watched = ConfigFile(path)
    with caplog.at_level(logging.WARNING):
        assert watched.poll() is None
        assert watched.poll() is None
        assert watched.error is not None and "cannot read config file" in watched.error
        path.write_text("policy: [")
        assert watched.poll() is None
        assert watched.poll() is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert "keeping the current configuration" in warnings[1]
    path.write_text(yaml.safe_dump(config_data()))
    assert watched.poll() is not None
    assert watched.error is None

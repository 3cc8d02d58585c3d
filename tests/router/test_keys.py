"""API keys: reading them as a Secret volume or a file, checking Authorization headers, and
never letting a key's value out (errors, logs)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from specfleet_runtime.router import errors
from specfleet_runtime.router.keys import KeyRing, KeysError, KeysSource, read_keys

RING = KeyRing.of({"team-a": "sk-alpha\n", "team-b": "sk-beta", "unset": "  "})


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("Bearer sk-alpha", "team-a"),
        ("bearer sk-beta", "team-b"),
        ("BEARER   sk-alpha  ", "team-a"),
    ],
)
def test_a_valid_key_authenticates_as_its_name(header: str, name: str) -> None:
    assert RING.authenticate(header) == name


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "needs an API key"),
        ("", "needs an API key"),
        ("sk-alpha", "needs an API key"),
        ("Basic c2stYWxwaGE=", "needs an API key"),
        ("Bearer", "needs an API key"),
        ("Bearer ", "not a valid key"),
        ("Bearer sk-alph", "not a valid key"),
        ("Bearer sk-alpha-and-more", "not a valid key"),
        ("Bearer sk-gamma-secret", "not a valid key"),
    ],
)
def test_anything_else_is_a_401_that_never_repeats_the_key(
    header: str | None, message: str
) -> None:
    with pytest.raises(errors.AuthenticationError, match=message) as refused:
        RING.authenticate(header)
    assert refused.value.status == 401
    assert "sk-" not in str(refused.value)


def test_empty_values_are_ignored_and_shared_values_take_the_first_name() -> None:
    ring = KeyRing.of({"b": "same", "a": "same", "empty": ""})
    assert ring.names == ["a"]
    assert ring.authenticate("Bearer same") == "a"
    assert "same" not in repr(ring)


def secret_volume(root: Path, version: str, keys: dict[str, str]) -> None:
    """Lay out (or update) a directory as the kubelet does for a Secret volume: each key is a
    symlink through ``..data`` to a file holding its value."""
    data_dir = root / f"..{version}"
    data_dir.mkdir()
    for name, value in keys.items():
        (data_dir / name).write_text(value)
    (root / "..data_tmp").symlink_to(data_dir.name)
    os.replace(root / "..data_tmp", root / "..data")
    for entry in root.iterdir():
        if entry.is_symlink() and not entry.name.startswith(".") and not entry.exists():
            entry.unlink()
    for name in keys:
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")


def test_a_secret_volume_is_read_one_file_per_key(tmp_path: Path) -> None:
    secret_volume(tmp_path, "1", {"team-a": "sk-alpha\n", "team-b": "sk-beta"})
    assert read_keys(tmp_path) == {"team-a": "sk-alpha\n", "team-b": "sk-beta"}


@pytest.mark.parametrize(
    "text", ['{"team-a": "sk-alpha", "team-b": "sk-beta"}', "team-a: sk-alpha\nteam-b: sk-beta\n"]
)
def test_a_keys_file_maps_names_to_values(tmp_path: Path, text: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    assert read_keys(path) == {"team-a": "sk-alpha", "team-b": "sk-beta"}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("team-a: [sk-alpha", "not YAML or JSON"),
        ("- sk-alpha", "must map key names to string values"),
        ("team-a: 12345", "must map key names to string values"),
    ],
)
def test_unusable_keys_files_are_refused_without_quoting_them(
    tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(KeysError, match=error) as refused:
        read_keys(path)
    assert "sk-alpha" not in str(refused.value) and "12345" not in str(refused.value)


def test_a_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match="cannot read API keys"):
        read_keys(tmp_path / "missing")


def test_the_source_follows_secret_updates_and_keeps_keys_it_cannot_reread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = tmp_path / "keys"
    volume.mkdir()
    secret_volume(volume, "1", {"team-a": "sk-alpha", "team-b": "sk-beta"})
    source = KeysSource(volume)
    with caplog.at_level(logging.DEBUG):
        first = source.poll()
        assert first is not None and first.names == ["team-a", "team-b"]
        assert source.poll() is None

        secret_volume(volume, "2", {"team-b": "sk-beta-rotated"})  # team-a revoked, b rotated
        second = source.poll()
        assert second is not None and second.names == ["team-b"]
        with pytest.raises(errors.AuthenticationError):
            second.authenticate("Bearer sk-alpha")
        with pytest.raises(errors.AuthenticationError):
            second.authenticate("Bearer sk-beta")
        assert second.authenticate("Bearer sk-beta-rotated") == "team-b"

        source.path = tmp_path / "gone"
        assert source.poll() is None
        assert source.poll() is None
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "team-a" in logged
    assert "sk-" not in logged
    assert logged.count("cannot read API keys") == 1

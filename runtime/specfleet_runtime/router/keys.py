"""Clients' API keys: reading them from where the Secret is mounted, and checking a request's.

A RoutingPolicy's ``apiKeys`` names a Secret whose keys name clients and whose values are their
API keys. The router pod mounts it, and the configuration's ``apiKeysFile`` points at either:

- the Secret volume's directory: one file per key, the file name is the key's name and the
  content its value (surrounding whitespace ignored; the kubelet's ``..data`` entries skipped);
- or one YAML/JSON file mapping key names to values (``{"team-a": "sk-..."}``).

A request authenticates with ``Authorization: Bearer <value>``; ``KeyRing.authenticate`` returns
the key's *name*, which labels usage metrics. Values are kept only as SHA-256 digests, are never
logged and never part of an error message. ``KeysSource.poll`` rereads the keys (a few small
files) every tick (``specfleet_runtime.watched``, as for the configuration file): a revoked key
stops working within a tick; keys that cannot be read keep the last good set (or none at all:
without keys nobody is let in).

Called by ``specfleet_runtime.router.app``; pure but for reading the files.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from specfleet_runtime import watched
from specfleet_runtime.router import errors

log = logging.getLogger(__name__)

_BEARER = "bearer "


class KeysError(ValueError):
    """The keys cannot be read; the message names the path, never a value."""


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class KeyRing:
    """The accepted keys, by the digest of their value."""

    names_by_digest: Mapping[bytes, str] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: Mapping[str, str]) -> KeyRing:
        """A ring from key name -> value; empty values are ignored (they would accept any
        ``Bearer`` with nothing after it). Where two names share a value, the first name in
        sorted order labels it."""
        names: dict[bytes, str] = {}
        for name in sorted(keys):
            value = keys[name].strip()
            if value:
                names.setdefault(_digest(value), name)
        return cls(names)

    @property
    def names(self) -> list[str]:
        return sorted(set(self.names_by_digest.values()))

    def authenticate(self, authorization: str | None) -> str:
        """The name of the key in an ``Authorization`` header; raises AuthenticationError.

        Comparing digests, not values, leaves no timing hint about how much of a guess matched.
        """
        if authorization is None or not authorization.lower().startswith(_BEARER):
            raise errors.AuthenticationError(
                "this endpoint needs an API key: send Authorization: Bearer <key>"
            )
        name = self.names_by_digest.get(_digest(authorization[len(_BEARER) :].strip()))
        if name is None:
            raise errors.AuthenticationError("the API key in Authorization is not a valid key")
        return name


def read_keys(path: Path) -> dict[str, str]:
    """Key name -> value from a Secret volume directory or a YAML/JSON file."""
    try:
        if path.is_dir():
            return {
                entry.name: entry.read_text()
                for entry in sorted(path.iterdir())
                if not entry.name.startswith(".") and entry.is_file()
            }
        text = path.read_text()
    except OSError as exc:
        raise KeysError(f"cannot read API keys at {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeysError(f"API keys at {path} are not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        # The parser's message quotes the text, which holds keys.
        raise KeysError(f"API keys file {path} is not YAML or JSON") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise KeysError(f"API keys file {path} must map key names to string values")
    return data


class KeysSource(watched.Watched[dict[str, str], KeyRing]):
    """Rereads the keys at ``path`` and reports a new ring when they change."""

    keeping = "the current keys"

    def read(self) -> dict[str, str]:
        try:
            return read_keys(self.path)
        except KeysError as exc:
            raise watched.WatchError(str(exc)) from None

    def parse(self, content: dict[str, str]) -> KeyRing:
        ring = KeyRing.of(content)
        log.info("API keys loaded: %s", ", ".join(ring.names) or "none")
        return ring

"""What one simulated choice says, token by token: free text, JSON for a `response_format` or a
forced tool call, stop strings and stop token ids, and the logprobs of each token.

The engine (`specfleet_runtime.sim.engine`) decides only how many tokens a request gains in a
step and their ids; a `Choice` turns them into text as vLLM's detokenizer and stop checker
would: it holds back the characters a stop string might still need, ends the text where a stop
string begins (or after it, with `include_stop_str_in_output`), and reports `stop` with the
string or token id that stopped it. Structured output (JSON, a tool call's arguments) is
written up front from the schema and handed out a piece per token, so a stream's chunks add up
to it; it ends with `stop` unless `max_tokens` runs out first. Pure: called by
`specfleet_runtime.sim.server` and by tests.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from specfleet_runtime.sim.engine import WORDS

JSON_PIECE_CHARACTERS = 4
"""Structured output is cut into pieces of this many characters, one per token."""


def json_text(schema: dict[str, Any], rng: random.Random) -> str:
    """A JSON document that follows `schema` (the common keywords), compact like vLLM's
    guided output; an empty schema gives an object."""
    return json.dumps(_example(schema or {"type": "object"}, rng, depth=0), separators=(",", ":"))


def _example(schema: dict[str, Any], rng: random.Random, depth: int) -> Any:
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _example(schema[key][0], rng, depth)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or ({} if depth else {"answer": {"type": "string"}})
        return {name: _example(sub, rng, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [_example(schema.get("items") or {}, rng, depth + 1) for _ in range(count)]
    if kind == "integer":
        return rng.randrange(0, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 4)))


def split_pieces(text: str) -> list[str]:
    return [text[i : i + JSON_PIECE_CHARACTERS] for i in range(0, len(text), JSON_PIECE_CHARACTERS)]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its logprob and the most likely alternatives (itself first)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def logprob_of(token: str, rng: random.Random, top: int) -> TokenLogprob:
    """A plausible logprob for `token`, the most likely at its position, and `top` entries
    (the token, then other words, each less likely)."""
    chosen = -round(rng.uniform(0.01, 1.5), 4)
    entries = [(token, chosen)]
    others = [" " + w for w in WORDS if " " + w != token]
    value = chosen
    for other in rng.sample(others, max(0, top - 1)):
        value = round(value - rng.uniform(0.1, 2.0), 4)
        entries.append((other, value))
    return TokenLogprob(token, chosen, tuple(entries[:top]))


@dataclass
class Choice:
    """One choice of a response, as its tokens arrive."""

    index: int
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    include_stop: bool = False
    pieces: list[str] | None = None
    """Structured output, one piece per token; None for free text."""
    logprobs: int | None = None
    """Top logprobs per token; None: no logprobs."""
    rng: random.Random = field(default_factory=random.Random)
    text: str = ""
    """All the text so far (after a stop, up to where it ends)."""
    sent: int = 0
    """Characters of `text` handed out so far."""
    tokens: int = 0
    """Tokens generated so far (a stop string's own tokens included, as vLLM counts them)."""
    token_logprobs: list[TokenLogprob] = field(default_factory=list)
    logprobs_sent: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    def add(self, token_ids: tuple[int, ...], engine_reason: str | None) -> None:
        """Take one step's tokens; sets `finish_reason` once the choice is done."""
        for token_id in token_ids:
            if self.finish_reason is not None:
                break
            piece = self._piece(token_id)
            self.tokens += 1
            if self.logprobs is not None:
                self.token_logprobs.append(logprob_of(piece, self.rng, self.logprobs))
            self.text += piece
            if token_id in self.stop_token_ids and self.pieces is None:
                self.text = self.text[: -len(piece)] if not self.include_stop else self.text
                self._finish("stop", token_id)
            elif self.stop and self.pieces is None:
                self._check_stop(len(piece))
        if self.finish_reason is None and engine_reason is not None:
            done = self.pieces is not None and self.tokens >= len(self.pieces)
            self._finish("stop" if done else engine_reason, None)

    def take(self) -> tuple[str, list[TokenLogprob]]:
        """The text (and its tokens' logprobs) not handed out yet that is final: while the
        choice runs, the characters a stop string could still claim stay back."""
        end = len(self.text)
        if self.finish_reason is None and self.stop:
            end = max(self.sent, end - (max(len(s) for s in self.stop) - 1))
        chunk, self.sent = self.text[self.sent : end], end
        ready = self._logprobs_within(end)
        entries, self.logprobs_sent = self.token_logprobs[self.logprobs_sent : ready], ready
        return chunk, entries

    def _piece(self, token_id: int) -> str:
        if self.pieces is None:
            return " " + WORDS[token_id]
        return self.pieces[self.tokens] if self.tokens < len(self.pieces) else ""

    def _check_stop(self, added: int) -> None:
        # Only where the newest token could have completed a stop string.
        start = max(0, len(self.text) - added - max(len(s) for s in self.stop) + 1)
        found = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if found:
            at, string = min(found)
            self.text = self.text[: at + (len(string) if self.include_stop else 0)]
            self._finish("stop", string)

    def _finish(self, reason: str, stop_reason: str | int | None) -> None:
        self.finish_reason = reason
        self.stop_reason = stop_reason

    def _logprobs_within(self, end: int) -> int:
        """How many tokens' text lies wholly within the first `end` characters."""
        offset = count = 0
        for entry in self.token_logprobs:
            offset += len(entry.token)
            if offset > end:
                break
            count += 1
        return count

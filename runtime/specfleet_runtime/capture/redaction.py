"""Redaction of captured text, pure: the built-in detectors and a team's own patterns.

``Redactor.redact`` walks a decoded JSON value (a request or response body: messages, content
parts, tool calls and their arguments, prompts) and replaces every match in every string with
``[name]``, counting matches by detector name. Object keys are kept as they are (they are the
OpenAI schema's names, not what a person typed).

The built-in detectors run first, in this order, each on what the one before left:

- ``bearer``: an HTTP bearer token as it appears in pasted headers or code (``Bearer <token>``);
- ``jwt``: a JSON Web Token (three base64url segments, the first ``eyJ``);
- ``api_key``: the well-known key shapes (``sk-...``, ``AKIA...``, ``ghp_...`` and GitHub's other
  prefixes, Slack's ``xox.-``, Google's ``AIza...``) and a long value after a name that says
  it is secret (``api_key=...``, ``"token": "..."``, ``password: ...``), of which only the value
  is replaced;
- ``email``: an e-mail address;
- ``card``: a payment card number, 13 to 19 digits with optional single spaces or dashes between,
  only when its Luhn check digit holds (an order number or a timestamp mostly does not);
- ``phone``: a phone number written as one (``+`` and a country code, or separators between
  groups: ``(415) 555-0132``, ``+44 7911 123456``), of 10 to 15 digits (8 with a ``+``);
  a bare run of digits is not taken for one.

The team's patterns (``CaptureConfig.patterns``) run after them.

Most strings of a body hold none of this (an ID, a role, a finish reason, an ordinary
question), so each string is first screened by one search for all the built-in detectors at
once (``SCREEN``, their patterns as alternatives): when it finds nothing, no detector could
replace anything and the string is kept as it is; when it finds something, the detectors run
one after another as above. Called by ``specfleet_runtime.capture.record`` in the capture's
writer process (or on its thread), never on the request path.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from specfleet.api.capture import RedactionPattern


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits ends in the Luhn check digit of the rest."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def _card(match: re.Match[str]) -> bool:
    digits = _digits(match.group(0))
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _phone(match: re.Match[str]) -> bool:
    text = match.group(0)
    digits = _digits(text)
    return (8 if text.startswith("+") else 10) <= len(digits) <= 15


@dataclass(frozen=True)
class Detector:
    """One kind of secret or personal data, and what stands in for it (``[name]``)."""

    name: str
    pattern: re.Pattern[str]
    accept: Callable[[re.Match[str]], bool] | None = None
    """A check on a match beyond its shape (a card's Luhn digit); None: every match."""
    group: str | None = None
    """Replace only this named group of a match (the value after ``api_key=``); None: all."""


_SECRET_NAME = r"(?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?key|token|password|passwd)"

BUILT_IN: tuple[Detector, ...] = (
    Detector("bearer", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")),
    Detector("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")),
    Detector(
        "api_key",
        re.compile(
            r"\b(?:sk-[A-Za-z0-9_-]{16,}"
            r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
            r"|gh[pousr]_[A-Za-z0-9]{30,}"
            r"|github_pat_[A-Za-z0-9_]{30,}"
            r"|xox[abposr]-[A-Za-z0-9-]{10,}"
            r"|AIza[0-9A-Za-z_-]{35})"
        ),
    ),
    Detector(
        "api_key",
        re.compile(
            rf"(?i)\b{_SECRET_NAME}[\"']?\s*[:=]\s*[\"']?(?P<value>[A-Za-z0-9_\-./+=]{{16,}})"
        ),
        group="value",
    ),
    Detector(
        "email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
    ),
    Detector("card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])"), accept=_card),
    Detector(
        "phone",
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?"
            r"(?:\(\d{1,4}\)[ .-]?\d{2,4}|\d{2,5}[ .-]\d{2,4})(?:[ .-]?\d{2,4}){1,2}(?![\w])"
            r"|(?<![\w+])\+\d{8,15}(?![\w])"
        ),
        accept=_phone,
    ),
)
"""The detectors that always run, in the order they run."""


def _alternative(pattern: re.Pattern[str]) -> str:
    """A detector's pattern as one alternative of a larger one (its leading global flags made
    local to it)."""
    source = pattern.pattern
    flags = re.match(r"\(\?([aiLmsux]+)\)", source)
    if flags is None:
        return f"(?:{source})"
    return f"(?{flags.group(1)}:{source[flags.end() :]})"


SCREEN = re.compile(
    "|".join(_alternative(detector.pattern).replace("?P<value>", "?:") for detector in BUILT_IN)
)
"""Matches somewhere in a string if, and only if, some built-in detector's pattern does."""


class Redactor:
    """The built-in detectors and a team's patterns, compiled once per configuration."""

    def __init__(self, patterns: Iterable[RedactionPattern] = ()) -> None:
        self.detectors = (
            *BUILT_IN,
            *(Detector(p.name, re.compile(p.regex)) for p in patterns),
        )
        self._own = self.detectors[len(BUILT_IN) :]

    def redact(self, value: object, counts: Counter[str]) -> object:
        """``value`` with every string redacted (a new value; the input is not changed), and the
        matches added to ``counts`` by detector name."""
        if isinstance(value, str):
            return self.text(value, counts)
        if isinstance(value, dict):
            return {key: self.redact(item, counts) for key, item in value.items()}
        if isinstance(value, list):
            return [self.redact(item, counts) for item in value]
        return value

    def text(self, text: str, counts: Counter[str]) -> str:
        """One string, redacted."""
        detectors = self.detectors if SCREEN.search(text) else self._own
        for detector in detectors:
            text = _apply(detector, text, counts)
        return text


def _apply(detector: Detector, text: str, counts: Counter[str]) -> str:
    replacement = f"[{detector.name}]"
    found = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal found
        if detector.accept is not None and not detector.accept(match):
            return match.group(0)
        found += 1
        if detector.group is None:
            return replacement
        start, end = match.span(detector.group)
        whole_start = match.start()
        whole = match.group(0)
        return whole[: start - whole_start] + replacement + whole[end - whole_start :]

    text = detector.pattern.sub(replace, text)
    if found:
        counts[detector.name] += found
    return text

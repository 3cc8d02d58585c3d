"""Labels from a judge model: captured requests in, judged labelled lines out.

``requests`` reads the requests to label from JSON lines: the records ``specfleet capture
export`` writes (``request.path`` and ``request.body``; a record cut to fit the store's size cap,
``truncated``, is passed over, since its body may not be what was asked) or lines of a labelled
file (``{"messages": ...}`` or ``{"prompt": ...}``; their label is ignored). Each body is read as
the router reads it (``specfleet.routing.request``); a line that cannot be, a batch of prompts
or a prompt of token ids is counted and passed over. ``sampled`` keeps a share of them,
deterministically by the body's content, so a run over the same file asks the same requests.

``Labeller`` asks each tier (an OpenAI-compatible server, through the official ``openai`` SDK)
and the judge, through one ``Pacer`` that keeps all of them together under a rate, so serving
comes first; ``specfleet.learn.judge`` decides. It never raises for what a server answers: an
error or a verdict that does not parse is counted (``Counts``) and the request goes without a
label.

The I/O is the SDK's calls and the caller's clock and sleep (``Pacer``), given in, so the
pacing is tested with a fake clock. Called by ``specfleet router labels judge``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from specfleet.learn import LearnError, judge, labels
from specfleet.routing import request

if TYPE_CHECKING:
    import openai

_LABEL_FIELDS = ("label", "source", "weight", "judge")
"""The fields of a labelled line that are not the request's (``specfleet.learn.labels``)."""
DEFAULT_MAX_TOKENS = 512
"""The answer's cap for a request that sets none (vLLM would fill the context)."""
SHOWN_DETAILS = 3
"""How many problems of each kind (unreadable lines, verdicts, errors) a run quotes."""


@dataclass(frozen=True, slots=True)
class Asked:
    """One request to label."""

    line: int
    body: dict[str, Any]
    """The request body, as a labelled line's request part."""
    parsed: request.ParsedRequest


@dataclass
class Counts:
    """What a run did."""

    lines: int = 0
    unreadable: int = 0
    """Lines that are not a request to label (bad JSON, not a completion, truncated, ...)."""
    not_sampled: int = 0
    asked: int = 0
    labelled: Counter[str] = field(default_factory=Counter)
    unparseable: int = 0
    """Requests dropped because the judge's answer held no verdict."""
    tier_errors: Counter[str] = field(default_factory=Counter)
    judge_errors: int = 0
    quoted: dict[str, list[str]] = field(default_factory=dict)
    """The first few of each kind of problem (unreadable lines, verdicts that do not parse,
    errors), quoted."""

    def note(self, kind: str, text: str) -> None:
        found = self.quoted.setdefault(kind, [])
        if len(found) < SHOWN_DETAILS:
            found.append(text)

    @property
    def details(self) -> list[str]:
        """The quoted problems, kind by kind."""
        return [text for kind in sorted(self.quoted) for text in self.quoted[kind]]

    @property
    def total_labelled(self) -> int:
        return sum(self.labelled.values())

    @property
    def failed(self) -> bool:
        """Whether the run labelled nothing (nothing to ask, or every request dropped)."""
        return self.total_labelled == 0

    def report(
        self, tiers: Sequence[str], judge_server: Server, name: str, share: float
    ) -> list[str]:
        """What the run did, for a person: asked, labelled per tier, dropped and why."""
        errors = sum(self.tier_errors.values())
        per_tier = ", ".join(f"{t} {n}" for t, n in sorted(self.tier_errors.items()))
        return [
            f"asked {self.asked} of {self.lines} lines of {name} ({self.not_sampled} not "
            f"sampled at --sample {share:g}, {self.unreadable} not requests to label)",
            f"labelled {self.total_labelled}: "
            + ", ".join(f"{tier} {self.labelled[tier]}" for tier in tiers)
            + f"; judge {judge_server.model} at {judge_server.url} ({judge.PROMPT_VERSION}, "
            f"{judge.PARSER_VERSION})",
            f"dropped {self.asked - self.total_labelled}: {self.unparseable} verdicts that do "
            f"not parse, {errors} tier errors{f' ({per_tier})' if errors else ''}, "
            f"{self.judge_errors} judge errors",
        ]

    def line(self, tiers: Sequence[str]) -> str:
        """The same as ``key=value`` pairs, for scripts."""
        return (
            f"asked={self.asked} labelled={self.total_labelled} "
            + " ".join(f"{tier}={self.labelled[tier]}" for tier in tiers)
            + f" unparseable={self.unparseable} tier_errors={sum(self.tier_errors.values())} "
            f"judge_errors={self.judge_errors} unreadable={self.unreadable} "
            f"not_sampled={self.not_sampled}"
        )

    def problem(self, name: str) -> str | None:
        """What a person should look at, if anything."""
        if not self.asked:
            return f"no request to label in {name} (see the counts above)"
        if self.unparseable * 2 >= self.asked:
            return (
                f"{self.unparseable} of {self.asked} verdicts held no 'Verdict: yes' or "
                "'Verdict: no': is the judge a model that follows instructions (--judge, "
                "--judge-model)?"
            )
        if self.failed:
            return "no request was labelled (see the counts above)"
        return None


def requests(lines: Iterable[bytes], counts: Counts) -> Iterator[Asked]:
    """The requests in ``lines`` (see the module docstring); ``counts`` counts the rest."""
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        counts.lines += 1
        try:
            yield _read(text, number)
        except ValueError as exc:
            counts.unreadable += 1
            counts.note("unreadable", f"line {number}: {exc}")


def _read(text: bytes, number: int) -> Asked:
    try:
        found = json.loads(text)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(found, dict):
        raise ValueError("not a JSON object")
    if isinstance(found.get("request"), dict):
        if found.get("truncated") is True:
            raise ValueError("a captured record cut to fit (truncated): its body may be cut")
        path, body = found["request"].get("path"), found["request"].get("body")
        endpoints = {e.value: e for e in request.Endpoint}
        if path not in endpoints:
            raise ValueError(f"a captured {str(path)[:40]!r} request: not a completion")
        if not isinstance(body, dict):
            raise ValueError("a captured body that is not a JSON object")
        endpoint = endpoints[path]
    elif "messages" in found or "prompt" in found:
        body = found
        endpoint = request.Endpoint.CHAT if "messages" in body else request.Endpoint.COMPLETIONS
    else:
        raise ValueError("neither a captured record (request) nor a request (messages, prompt)")
    # A labelled line's own fields are replaced by the judged label's; a client's fields of
    # those names could not be written beside it.
    body = {k: v for k, v in body.items() if k not in _LABEL_FIELDS}
    if "messages" in body and "prompt" in body:
        raise ValueError("both messages and prompt: a request has one")
    try:
        parsed = request.parse(endpoint, json.dumps(body).encode())
    except request.MalformedRequestError as exc:
        raise ValueError(str(exc)) from None
    if parsed.prompt_token_ids or (
        endpoint is request.Endpoint.COMPLETIONS and not isinstance(body.get("prompt"), str)
    ):
        raise ValueError("a prompt of token ids or a batch of prompts: only text is judged")
    return Asked(number, body, parsed)


def sampled(asked: Asked, share: float) -> bool:
    """Whether ``asked`` is in a sample of ``share`` (0 to 1) of requests, by its content."""
    if share >= 1:
        return True
    canonical = json.dumps(asked.body, sort_keys=True, separators=(",", ":")).encode()
    fraction = int.from_bytes(hashlib.sha256(canonical).digest()[:8], "big") / 2.0**64
    return fraction < share


class Pacer:
    """At most ``rate`` calls a second, all servers together: each call starts no sooner than
    ``1 / rate`` seconds after the one before."""

    def __init__(
        self, rate: float, clock: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be above 0, got {rate}")
        self.interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        """Return when the next call may start."""
        now = self._clock()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


@dataclass(frozen=True, slots=True)
class Server:
    """One OpenAI-compatible server: a tier's, or the judge's."""

    name: str
    """What messages call it (``tier simple``, ``judge``)."""
    url: str
    model: str
    """The served model name asked for."""
    client: openai.OpenAI


def connect(
    name: str,
    flag: str,
    url: str,
    model: str | None = None,
    *,
    timeout: float,
    retries: int,
) -> Server:
    """A server at ``url`` (an OpenAI base URL) asked for ``model``, else the first model it
    lists; raises LearnError naming ``flag`` when it cannot list them. The API key is
    OPENAI_API_KEY if set."""
    try:
        import openai  # noqa: PLC0415 - an optional dependency
    except ImportError as exc:
        raise LearnError(
            f"judging needs the openai SDK ({exc}): pip install 'specfleet[learn]'"
        ) from exc
    client = openai.OpenAI(
        base_url=url,
        api_key=os.environ.get("OPENAI_API_KEY") or "unused",
        timeout=timeout,
        max_retries=retries,
    )
    if model is None:
        try:
            served = [m.id for m in client.models.list()]
        except openai.OpenAIError as exc:
            raise LearnError(
                f"{flag}: cannot list the models at {url} ({_short(exc)}): give the server's "
                "OpenAI base URL, such as http://HOST:PORT/v1, of a server that is up"
            ) from exc
        if not served:
            raise LearnError(f"{flag}: {url} lists no model: is it an OpenAI-compatible server?")
        model = served[0]
    return Server(name, url, model, client)


class Labeller:
    """Asks the tiers and the judge for each request, paced, and counts what happens."""

    def __init__(
        self,
        tiers: Sequence[str],
        servers: Sequence[Server],
        judge_server: Server,
        pacer: Pacer,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.tiers = tuple(tiers)
        self.servers = tuple(servers)
        self.judge = judge_server
        self.pacer = pacer
        self.max_tokens = max_tokens
        self.counts = Counts()

    def label(self, asked: Asked) -> bytes | None:
        """The labelled line of ``asked`` (canonical, without its newline), or None when it
        goes without a label (counted)."""
        self.counts.asked += 1
        outcome = judge.label(
            len(self.tiers),
            lambda tier: self._answer(self.servers[tier], asked),
            self._verdict,
            asked.parsed,
        )
        if outcome.ending is judge.Ending.LABELLED:
            assert outcome.label is not None
            tier = self.tiers[outcome.label]
            line = {
                **asked.body,
                "label": tier,
                "source": "judged",
                "judge": judge.record(self.judge.model),
            }
            text = json.dumps(line, ensure_ascii=True).encode()
            try:
                canonical = labels.parse_line(text, asked.line, self.tiers).canonical
            except labels.LabelError as exc:  # read as a request, yet not as a labelled line
                self.counts.unreadable += 1
                self.counts.note("unreadable", str(exc))
                return None
            self.counts.labelled[tier] += 1
            return canonical
        where = f"line {asked.line}"
        if outcome.ending is judge.Ending.UNPARSEABLE:
            self.counts.unparseable += 1
            self.counts.note("unparseable", f"{where}: the judge said {outcome.detail[:200]!r}")
        elif outcome.ending is judge.Ending.TIER_ERROR:
            assert outcome.tier is not None
            self.counts.tier_errors[self.tiers[outcome.tier]] += 1
            self.counts.note("tier error", f"{where}: {outcome.detail}")
        else:
            self.counts.judge_errors += 1
            self.counts.note("judge error", f"{where}: {outcome.detail}")
        return None

    def _answer(self, server: Server, asked: Asked) -> str:
        cap = asked.parsed.max_tokens or self.max_tokens
        self.pacer.wait()
        try:
            if asked.parsed.endpoint is request.Endpoint.CHAT:
                chat = server.client.chat.completions.create(
                    model=server.model, messages=asked.body["messages"], max_tokens=cap
                )
                return (chat.choices[0].message.content or "") if chat.choices else ""
            completion = server.client.completions.create(
                model=server.model, prompt=asked.body["prompt"], max_tokens=cap
            )
            return completion.choices[0].text if completion.choices else ""
        except Exception as exc:  # the SDK's errors, and answers of the wrong shape
            raise judge.AskError(f"{server.name} ({server.url}): {_short(exc)}") from exc

    def _verdict(self, text: str) -> str:
        self.pacer.wait()
        try:
            said = self.judge.client.chat.completions.create(
                model=self.judge.model,
                messages=[{"role": "user", "content": text}],
                max_tokens=judge.MAX_TOKENS,
                temperature=0,
            )
            return (said.choices[0].message.content or "") if said.choices else ""
        except Exception as exc:
            raise judge.AskError(f"{self.judge.name} ({self.judge.url}): {_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]

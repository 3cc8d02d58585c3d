"""Routing, end to end: three InferenceModels (Llama 3.2 1B, Llama 3.2 3B and Llama 3.1 8B on
one H100 each) and a RoutingPolicy over them, reconciled by the operator on the local control
plane; the local fleet (e2e/fleet.py) runs each model as a simulator behind its real gate, and
the policy's router Deployment as the real `specfleet-router` reading the ConfigMap the operator
rendered (its Service URLs rewritten to the local gates as the file is projected).

- A labelled traffic mix through the router lands where the policy says, by the router's own
  response headers: at least 90% of short factual questions on the small tier, at least 90% of
  long multi-step reasoning on the large tier, and every SQL request on the SQL override's
  model (the medium one), with no failed request.
- Killing the small model's pod (its simulator and gate stop; the cluster still believes it
  runs) sends its traffic to the next tier up: no request fails but those in flight at the
  moment of the kill, and every later one is answered by the medium model as a fallback.
- Deleting the large InferenceModel turns the policy's Ready False with a condition naming the
  missing model, and the router, rereading its configuration without a restart, skips it:
  reasoning goes to the nearest ready tier, without a failed attempt first.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from e2e import harness, traffic
from e2e.fleet import Fleet
from e2e.operator_process import Operator
from specfleet_runtime.router.config import POLL_INTERVAL as RELOAD_INTERVAL

TIMEOUT = 60.0
POLICY = "assistant"
SMALL, MEDIUM, LARGE = "llama-small", "llama-medium", "llama-large"
CLIENTS = 6
"""Requests in flight at once, through the router."""

# The labelled mix. Reasoning prompts avoid database words: those make a request SQL, which
# the override sends to the medium model (as it should).
FACTS = (
    "What is the capital of {}?",
    "Who wrote {}?",
    "When was {} founded?",
    "What currency does {} use?",
)
THINGS = ("France", "Japan", "Hamlet", "Brazil", "Kenya", "Oxford University", "Norway")
REASONING = (
    "Think step by step. First, analyze the trade-offs of {a} versus {b} for a team of {n} "
    "engineers. Second, compare the operational costs over three years and explain why each "
    "cost arises. Third, evaluate the risks, weigh them against the benefits, and justify a "
    "final recommendation with a detailed argument. Finally, summarize the reasoning in a "
    "numbered list of steps."
)
PAIRS = (
    ("microservices", "a monolith"),
    ("Kubernetes", "plain virtual machines"),
    ("a message queue", "direct HTTP calls"),
    ("a mobile app", "a progressive web app"),
)
SQL = (
    "Write a SQL query that returns the top {n} customers by revenue.",
    "Write a SQL query that lists orders per region for the last {n} days, grouped by region.",
    "Write a SQL statement that finds users with more than {n} failed logins.",
)


def prompt(label: str, rng: random.Random) -> tuple[str, int]:
    """A prompt of the label's kind, and its max_tokens."""
    if label == "factual":
        return rng.choice(FACTS).format(rng.choice(THINGS)), 32
    if label == "reasoning":
        a, b = rng.choice(PAIRS)
        return REASONING.format(a=a, b=b, n=rng.randint(5, 50)), 512
    return rng.choice(SQL).format(n=rng.randint(3, 30)), 128


def model(name: str, architecture: str) -> dict[str, Any]:
    """One replica on one H100, autoscaling off: a fast simulator."""
    return {
        "apiVersion": "specfleet.dev/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": architecture},
            "gpu": {"product": "H100-80GB", "count": 1},
            "autoscaling": {"enabled": False},
        },
    }


POLICY_MANIFEST: dict[str, Any] = {
    "apiVersion": "specfleet.dev/v1alpha1",
    "kind": "RoutingPolicy",
    "metadata": {"name": POLICY},
    "spec": {
        "tiers": [
            {
                "name": "small",
                "model": SMALL,
                "when": {"maxComplexity": 0.3, "maxExpectedTokens": 256},
                "cost": 1,
            },
            {
                "name": "medium",
                "model": MEDIUM,
                "when": {"maxComplexity": 0.6, "maxExpectedTokens": 1024},
                "cost": 3,
            },
            {"name": "large", "model": LARGE, "cost": 8},
        ],
        "overrides": [{"match": {"category": "sql"}, "model": MEDIUM, "reason": "SQL"}],
        "replicas": 1,
        # Two router processes on one port: the mix, the fallback and the reloads hold
        # whichever worker a connection reaches.
        "workers": 2,
    },
}


@dataclass(frozen=True)
class Answer:
    label: str
    status: int
    """The HTTP status, or 0 when the connection failed."""
    headers: dict[str, str]

    @property
    def model(self) -> str | None:
        return self.headers.get("X-Specfleet-Model")


async def _send(http: aiohttp.ClientSession, url: str, label: str, rng: random.Random) -> Answer:
    text, max_tokens = prompt(label, rng)
    body = {"model": POLICY, "prompt": text, "max_tokens": max_tokens}
    try:
        async with http.post(f"{url}/v1/completions", json=body) as response:
            await response.read()
            return Answer(label, response.status, dict(response.headers))
    except aiohttp.ClientError:
        return Answer(label, 0, {})


async def _mix(url: str, labels: list[str], seed: int) -> list[Answer]:
    """Every request of `labels` through the router, CLIENTS at a time."""
    rng = random.Random(seed)
    gate = asyncio.Semaphore(CLIENTS)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def one(label: str) -> Answer:
            async with gate:
                return await _send(http, url, label, rng)

        return list(await asyncio.gather(*(one(label) for label in labels)))


def send_mix(url: str, labels: list[str], seed: int = 0) -> list[Answer]:
    return asyncio.run(_mix(url, labels, seed))


def shares(answers: list[Answer], label: str) -> Counter[str | None]:
    return Counter(a.model for a in answers if a.label == label)


class Routing:
    """The operator, the local fleet and the policy's router in one namespace."""

    def __init__(self, operator: Operator, workdir: Path) -> None:
        self.operator = operator
        self.cluster = operator.cluster
        self.namespace = operator.namespace
        self.fleet = Fleet(
            self.cluster,
            self.namespace,
            None,
            workdir / "fleet",
            sim_flags=lambda _name: ("--time-factor", "0.02"),
        )

    def apply(self, *manifests: dict[str, Any]) -> None:
        text = yaml.safe_dump_all(manifests, sort_keys=False)
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=text)

    def policy(self) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.kubectl_json("get", "rp", POLICY, "-n", self.namespace)
        return found

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.policy().get("status", {})
        return status

    def condition(self, type: str) -> dict[str, Any]:
        found = [c for c in self.status().get("conditions", []) if c["type"] == type]
        return found[0] if found else {}

    def wait(self, check: Any, what: str) -> Any:
        return harness.wait_for(
            check,
            timeout=TIMEOUT,
            what=what,
            interval=0.5,
            describe=lambda: json.dumps(
                {"status": self.status(), "fleet": self.fleet.errors}, indent=1
            ),
        )

    def router(self) -> str:
        url: str = self.wait(lambda: self.fleet.router_urls().get(POLICY), "the local router")
        return url

    def ready_tiers(self, url: str) -> set[str]:
        """The tiers the router routes to now (its /health)."""
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return set(json.loads(response.read())["readyTiers"])

    def table(self) -> list[str]:
        """`kubectl get rp` as a person reads it: the policy's row."""
        out = self.cluster.kubectl("get", "rp", POLICY, "-n", self.namespace)
        header, row = out.strip().splitlines()
        assert header.split() == ["NAME", "TIERS", "BACKENDS", "READY", "AGE"], header
        return row.split()


@pytest.fixture
def routing(operator: Operator, tmp_path: Path) -> Iterator[Routing]:
    handle = Routing(operator, tmp_path)
    handle.fleet.start()
    yield handle
    handle.fleet.stop()


def _serve_the_fleet(routing: Routing) -> str:
    """Three models and the policy applied; the local router's URL once it routes to all."""
    routing.apply(
        model(SMALL, "meta-llama/Llama-3.2-1B-Instruct"),
        model(MEDIUM, "meta-llama/Llama-3.2-3B-Instruct"),
        model(LARGE, "meta-llama/Llama-3.1-8B-Instruct"),
        POLICY_MANIFEST,
    )
    routing.wait(
        lambda: routing.condition("Ready").get("status") == "True",
        "the policy Ready with every backend",
    )
    assert routing.table()[1:4] == ["small,medium,large", "4", "True"]
    assert routing.status()["endpoint"] == f"http://{POLICY}.{routing.namespace}.svc:80"
    # Every local gate is up before traffic starts (the router falls back if one is not).
    routing.wait(lambda: {SMALL, MEDIUM, LARGE} <= set(routing.fleet.urls()), "three gates")
    url = routing.router()
    _wait_for_every_worker(routing, url, {"small", "medium", "large"})
    return url


def _wait_for_every_worker(routing: Routing, url: str, tiers: set[str]) -> None:
    """Until the router's /health has reported `tiers` ready for two reload intervals.

    Each worker rereads the file (the fleet projects it every half second) once an interval,
    on its own clock, so the first worker to answer /health with the new table may be ahead
    of another by up to an interval: traffic sent then, on connections the other worker
    accepted, would still see the old table."""
    since: list[float] = []

    def settled() -> bool:
        if routing.ready_tiers(url) != tiers:
            since.clear()
            return False
        since.append(time.monotonic())
        return since[-1] - since[0] > 2 * RELOAD_INTERVAL

    routing.wait(settled, "every router worker's reload")


def _check_the_mix(url: str) -> None:
    labels = ["factual"] * 30 + ["reasoning"] * 20 + ["sql"] * 20
    random.Random(1).shuffle(labels)
    answers = send_mix(url, labels)
    assert [a for a in answers if a.status != 200] == []
    factual, reasoning, sql = (shares(answers, k) for k in ("factual", "reasoning", "sql"))
    assert factual[SMALL] >= 0.9 * 30, factual
    assert reasoning[LARGE] >= 0.9 * 20, reasoning
    assert sql == Counter({MEDIUM: 20}), sql
    assert {a.headers["X-Specfleet-Route"] for a in answers if a.label == "sql"} == {"override"}
    # What the demo prints for a question (`python -m e2e.traffic ask`).
    assert traffic.ask(url, POLICY, "What is the capital of France?") == f"tier small -> {SMALL}"
    query = "Write a SQL query that lists the ten customers with the most orders."
    assert traffic.ask(url, POLICY, query) == f"override -> {MEDIUM}"


async def _factual_through_a_kill(
    routing: Routing, url: str, victim: str
) -> tuple[list[Answer], list[Answer]]:
    """CLIENTS closed-loop clients asking factual questions; `victim`'s local pod is killed
    after 20 answers. The answers to requests sent before the kill (the last CLIENTS of them
    were in flight during it) and after it."""
    rng = random.Random(2)
    before: list[Answer] = []
    after: list[Answer] = []
    killed = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def client() -> None:
            while len(after) < 40:
                late = killed.is_set()
                answer = await _send(http, url, "factual", rng)
                (after if late else before).append(answer)

        clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        while len(before) < 20:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(routing.fleet.kill, victim)
        killed.set()
        await asyncio.gather(*clients)
    return before, after


def _check_the_missing_model(routing: Routing, url: str) -> None:
    router_pid = routing.fleet.routers[POLICY].process.process.pid
    routing.cluster.kubectl("delete", "im", LARGE, "-n", routing.namespace)
    ready = routing.wait(
        lambda: (c := routing.condition("Ready")).get("reason") == "ModelNotFound" and c,
        "Ready False naming the missing model",
    )
    assert ready["status"] == "False"
    missing = f"tier large: InferenceModel {LARGE} not found in namespace {routing.namespace}"
    assert missing in ready["message"], ready
    assert routing.condition("Degraded")["status"] == "True"
    assert routing.table()[1:4] == ["small,medium,large", "3", "False"]
    (large,) = [b for b in routing.status()["backends"] if b["tier"] == "large"]
    assert (large["ready"], large["message"]) == (False, missing)

    def reasoning_skips_large() -> list[Answer] | None:
        # A worker that has not reread the file yet tries large first and falls back to medium.
        answers = send_mix(url, ["reasoning"] * 6, seed=3)
        skipped = all(
            a.model == MEDIUM and "X-Specfleet-Fallback-From" not in a.headers for a in answers
        )
        return answers if skipped else None

    answers = routing.wait(reasoning_skips_large, "the router to skip the deleted model")
    assert all(a.status == 200 for a in answers), answers
    # Reread, not restarted: the router Deployment's pod template never changed.
    assert routing.fleet.routers[POLICY].process.process.pid == router_pid


def test_a_traffic_mix_lands_where_the_policy_says_and_survives_a_lost_backend(
    routing: Routing,
) -> None:
    url = _serve_the_fleet(routing)

    # 1. The mix, by label.
    _check_the_mix(url)

    # 2. The small model's pod dies while factual questions flow.
    before, after = asyncio.run(_factual_through_a_kill(routing, url, SMALL))
    failed = [a for a in [*before, *after] if a.status != 200]
    # Only requests in flight at the kill may fail (the gate drains them: usually none).
    assert len(failed) <= CLIENTS, failed
    assert [a for a in after if a.status != 200] == []
    assert {a.model for a in after} == {MEDIUM}, Counter(a.model for a in after)
    assert {a.headers.get("X-Specfleet-Fallback-From") for a in after} == {SMALL}
    question = "What is the capital of France?"
    assert traffic.ask(url, POLICY, question) == f"tier medium -> {MEDIUM} (fallback from {SMALL})"

    # 3. The large InferenceModel is deleted: the policy says so, and the router skips it.
    _check_the_missing_model(routing, url)

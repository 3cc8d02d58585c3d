"""Routing, end to end, on real pods: three InferenceModels (Llama 3.2 1B, Llama 3.2 3B and
Llama 3.1 8B on one H100 each) and a RoutingPolicy over them, reconciled by the chart's operator
pod; each model runs as a real pod on the real node (the vllm-sim image behind its gate) and
the policy's router pod reaches them by their Service names through cluster DNS and kube-proxy,
reading the configuration the operator rendered from its ConfigMap volume.

- A labelled traffic mix through the router's Service lands where the policy says, by the
  router's own response headers: at least 90% of short factual questions on the small tier, at
  least 90% of long multi-step reasoning on the large tier, and every SQL request on the SQL
  override's model (the medium one), with no failed request.
- Killing the small model's pod (no grace, as when a process or its node dies) while factual
  questions flow: no request fails but those in flight at the moment of the kill, the next ones
  are answered by the medium model, and once the Deployment's new pod is ready, the small model
  answers again.
- Deleting the large InferenceModel turns the policy's Ready False with a condition naming the
  missing model, and the router, rereading its configuration without a restart (the kubelet
  updates the volume), skips it: reasoning goes to the nearest ready tier, without a failed
  attempt first.
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
from typing import Any

import aiohttp
import pytest

from e2e import harness, traffic
from e2e.release import Release, sim_env, small_model
from specfleet_runtime.router.config import POLL_INTERVAL as RELOAD_INTERVAL

TIMEOUT = 120.0
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
    """One replica on one of the real node's H100s, autoscaling off, its simulator fifty
    times faster than the GPU it simulates."""
    return small_model(
        name, architecture, autoscaling={"enabled": False}, env=sim_env(time_factor=0.02)
    )


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
    """The chart's operator, the three models' pods and the policy's router in one namespace."""

    def __init__(self, release: Release) -> None:
        self.release = release
        self.cluster = release.cluster
        self.namespace = release.namespace

    def apply(self, *manifests: dict[str, Any]) -> None:
        self.release.apply(*manifests)

    def policy(self) -> dict[str, Any]:
        found: dict[str, Any] = self.release.get("rp", POLICY)
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
            describe=lambda: (
                json.dumps(self.status(), indent=1) + "\n" + self.release.operator_log(30)
            ),
        )

    def router_pod(self) -> dict[str, Any]:
        """The policy's one router pod, once it is ready."""
        pods = self.release.get("pods", "-l", f"specfleet.dev/routingpolicy={POLICY}")["items"]
        pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        (pod,) = pods
        return dict(pod)

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
def routing(crds: harness.Cluster, namespace: str) -> Iterator[Routing]:
    release = Release(crds, namespace)
    try:
        release.install()
        yield Routing(release)
    finally:
        release.uninstall()


def _serve_the_fleet(routing: Routing) -> str:
    """Three models and the policy applied; the local router's URL once it routes to all."""
    routing.apply(
        model(SMALL, "meta-llama/Llama-3.2-1B-Instruct"),
        model(MEDIUM, "meta-llama/Llama-3.2-3B-Instruct"),
        model(LARGE, "meta-llama/Llama-3.1-8B-Instruct"),
        harness.on_the_real_node(POLICY_MANIFEST),
    )
    routing.wait(
        lambda: routing.condition("Ready").get("status") == "True",
        "the policy Ready with every backend",
    )
    assert routing.table()[1:4] == ["small,medium,large", "4", "True"]
    assert routing.status()["endpoint"] == f"http://{POLICY}.{routing.namespace}.svc:80"
    # Every model's pod serves before traffic starts (the router falls back if one does not).
    for name in (SMALL, MEDIUM, LARGE):
        routing.release.serving_pod(name)
    url = routing.release.service_url(POLICY)
    _wait_for_every_worker(routing, url, {"small", "medium", "large"})
    return url


def _wait_for_every_worker(routing: Routing, url: str, tiers: set[str]) -> None:
    """Until the router's /health has reported `tiers` ready for two reload intervals.

    Each worker rereads the file (the kubelet updates the volume) once an interval,
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
    """CLIENTS closed-loop clients asking factual questions; `victim`'s pod is killed (no
    grace) after 20 answers. The answers to requests sent before the kill (the last CLIENTS
    of them were in flight during it) and those sent after it: at least 40, and on until one
    was served by another model. The kubelet stops the deleted pod's container when it gets
    to it, so the old pod may go on answering for a while; how long depends on the node's load,
    hence a condition, bounded by TIMEOUT, rather than a count."""
    rng = random.Random(2)
    before: list[Answer] = []
    after: list[Answer] = []
    killed = asyncio.Event()

    def enough() -> bool:
        return len(after) >= 40 and any(a.status == 200 and a.model != victim for a in after)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def client() -> None:
            while not enough():
                late = killed.is_set()
                answer = await _send(http, url, "factual", rng)
                (after if late else before).append(answer)

        clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        while len(before) < 20:
            await asyncio.sleep(0.05)
        (pod,) = routing.release.model_pods(victim)
        await asyncio.to_thread(
            routing.cluster.kubectl,
            "delete", "pod", pod["metadata"]["name"], "-n", routing.namespace,
            "--grace-period=0", "--force", "--wait=false",
        )  # fmt: skip
        killed.set()
        try:
            await asyncio.wait_for(asyncio.gather(*clients), TIMEOUT)
        except TimeoutError:
            served = Counter(a.model for a in after)
            raise AssertionError(
                f"{TIMEOUT:.0f}s after {victim}'s pod was deleted, only it had answered: {served}"
            ) from None
    return before, after


def _check_the_missing_model(routing: Routing, url: str) -> None:
    router = routing.router_pod()
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
    now = routing.router_pod()
    assert now["metadata"]["uid"] == router["metadata"]["uid"]
    assert [c["restartCount"] for c in now["status"]["containerStatuses"]] == [0]


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
    # The old pod may answer a last request or two while it stops; then the medium model
    # does, after a failed attempt on small or, once the operator has seen the model
    # unready, directly, until the Deployment's new pod is ready.
    served = Counter(a.model for a in after)
    assert served.keys() <= {SMALL, MEDIUM} and served[MEDIUM] > 0, served
    question = "What is the capital of France?"
    routing.wait(
        lambda: traffic.ask(url, POLICY, question) == f"tier small -> {SMALL}",
        "the small model's new pod to answer again",
    )

    # 3. The large InferenceModel is deleted: the policy says so, and the router skips it.
    _check_the_missing_model(routing, url)

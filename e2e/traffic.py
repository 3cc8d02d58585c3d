"""Traffic for the models a cluster serves, and the knobs a test turns: what no Kubernetes
component does, so nothing here stands in for one.

- `Load`: closed-loop clients sending completions through a model's Service (its gate), each
  sending its next request when the last one ends;
- `ask`: one chat question through a RoutingPolicy's router, printed as where it went;
- `post_behaviour`: the simulator's admin endpoint (`POST /admin/acceptance`), as if prompts
  got harder (`acceptanceRate`) or the GPUs slower (`latencyFactor`);
- `team`: a team's own requests (`tests.learn.traffic`: its contracts, logs and products)
  through a RoutingPolicy's router with the official OpenAI SDK, and where each went
  (`Routed`, from the router's headers), summed up by `mix` as the tier mix and the cost per
  request.

From this host a pod answers at its IP and a Service at its cluster IP (over the real node's
bridge and kube-proxy's rules). `python -m e2e.traffic load|acceptance|ask|team` runs them for
the demo (scripts/demo).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai

from e2e import harness
from specfleet.api import labels
from specfleet_runtime.router import app as router_app
from specfleet_runtime.sim import capability
from tests.learn import traffic as team_traffic

SIM_PORT = 8000
"""The port of the vLLM container (the simulator), where its admin endpoint answers."""


def ask(router_url: str, policy: str, question: str) -> str:
    """One chat question through a policy's router, and where the router sent it, as a line:
    `tier simple -> llama-3b`, `override -> llama-8b`, `tier medium -> llama-8b (fallback
    from llama-3b)`; an error answer as its status and body."""
    request = urllib.request.Request(
        f"{router_url}/v1/chat/completions",
        data=json.dumps(
            {
                "model": policy,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 16,
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            headers = response.headers
            response.read()
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read().decode()}"
    route = headers[router_app.HEADER_ROUTE]
    tier = headers.get(router_app.HEADER_TIER)
    served = f"{route} {tier}" if tier else route
    line = f"{served} -> {headers[router_app.HEADER_MODEL]}"
    fallback = headers.get(router_app.HEADER_FALLBACK_FROM)
    return f"{line} (fallback from {fallback})" if fallback else line


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False


def post_behaviour(sim_url: str, behaviour: Mapping[str, float]) -> None:
    request = urllib.request.Request(
        f"{sim_url}/admin/acceptance",
        data=json.dumps(behaviour).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


class Load:
    """Closed-loop clients sending completions through gates from a thread: each client sends
    its next request when the last one ends. Counts what came back by status."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self._clients: dict[str, list[asyncio.Task[None]]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="load", daemon=True)
        self._thread.start()
        self._http: aiohttp.ClientSession | None = None

    def set(self, url: str, model: str, clients: int, max_tokens: tuple[int, int]) -> None:
        """Run `clients` clients against the gate at `url` (replacing those it had)."""
        asyncio.run_coroutine_threadsafe(
            self._set(url, model, clients, max_tokens), self._loop
        ).result(timeout=30)

    async def _set(self, url: str, model: str, clients: int, max_tokens: tuple[int, int]) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        for task in self._clients.pop(url, []):
            task.cancel()
        rng = random.Random(f"{self.seed}-{url}")
        self._clients[url] = [
            asyncio.create_task(self._client(url, model, random.Random(rng.random()), max_tokens))
            for _ in range(clients)
        ]

    async def _client(
        self, url: str, model: str, rng: random.Random, max_tokens: tuple[int, int]
    ) -> None:
        assert self._http is not None
        while True:
            body = {"model": model, "prompt": "Tell me", "max_tokens": rng.randint(*max_tokens)}
            try:
                async with self._http.post(f"{url}/v1/completions", json=body) as response:
                    await response.read()
                    self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
            except aiohttp.ClientError:
                # A gate that went away (a rollout); back off and try again.
                self.errors += 1
                await asyncio.sleep(0.5)

    def stop(self) -> None:
        async def close() -> None:
            for tasks in self._clients.values():
                for task in tasks:
                    task.cancel()
            await asyncio.gather(
                *(t for ts in self._clients.values() for t in ts), return_exceptions=True
            )
            if self._http is not None:
                await self._http.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


# --------------------------------------------------------------------------------------------
# CLI, for the demo: `python -m e2e.traffic load|acceptance|ask`.


def service_url(cluster: harness.Cluster, namespace: str, name: str) -> str:
    """Service ``name``'s cluster IP and first port, as a URL this host can reach."""
    spec = cluster.kubectl_json("get", "service", name, "-n", namespace)["spec"]
    return f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}"


def model_pod_ips(cluster: harness.Cluster, namespace: str, model: str) -> list[str]:
    pods = cluster.kubectl_json(
        "get", "pods", "-n", namespace, "-l", f"{labels.INFERENCE_MODEL}={model}"
    )["items"]
    return [p["status"]["podIP"] for p in pods if p.get("status", {}).get("podIP")]


@contextlib.contextmanager
def _signals_stop() -> Iterator[threading.Event]:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    yield stop


def load(cluster: harness.Cluster, namespace: str, clients: int) -> int:
    """Steady load through every InferenceModel's Service in ``namespace`` until a signal;
    models that appear later get theirs too."""
    traffic = Load()
    loaded: set[str] = set()
    with _signals_stop() as stop:
        try:
            while not stop.is_set():
                models: list[dict[str, Any]] = cluster.kubectl_json(
                    "get", "inferencemodels", "-n", namespace
                )["items"]
                for model in models:
                    name = model["metadata"]["name"]
                    if name not in loaded and model.get("status", {}).get("readyReplicas"):
                        traffic.set(service_url(cluster, namespace, name), name, clients, (64, 512))
                        loaded.add(name)
                        print(f"load: {clients} clients on {name}", flush=True)
                stop.wait(2.0)
        finally:
            traffic.stop()
    return 0


def set_acceptance(cluster: harness.Cluster, namespace: str, model: str, rate: float) -> int:
    """The simulated acceptance of every pod of ``model``."""
    ips = model_pod_ips(cluster, namespace, model)
    if not ips:
        print(f"no pods of InferenceModel {model} in {namespace}", file=sys.stderr)
        return 1
    for ip in ips:
        post_behaviour(f"http://{ip}:{SIM_PORT}", {"acceptanceRate": rate})
    return 0


def ask_router(
    cluster: harness.Cluster, namespace: str, policy: str, questions: Sequence[str]
) -> int:
    """Ask the router of ``policy`` (through its Service) each question; print where it went.
    Waits first for the Service to reach a router: just after a rollout, kube-proxy may still
    have no endpoint for it (the connection is refused, or has no route)."""
    url = service_url(cluster, namespace, policy)
    harness.wait_for(
        lambda: _answers(f"{url}/health"),
        timeout=120,
        what=f"RoutingPolicy {policy}'s Service to reach a router",
    )
    for question in questions:
        print(f"{ask(url, policy, question)}: {question}")
    return 0


@dataclass(frozen=True)
class Routed:
    """Where the router sent one request: its tier (None for an override or a direct
    request) and the classifier that picked it, by the router's headers."""

    text: str
    tier: str | None
    classifier: str | None


def send_team(
    url: str, policy: str, bodies: Sequence[Mapping[str, Any]], clients: int = 6
) -> list[Routed]:
    """Every request through the router at ``url`` with the OpenAI SDK, ``clients`` at a time."""

    def one(client: openai.OpenAI, body: Mapping[str, Any]) -> Routed:
        asked = {k: v for k, v in body.items() if k in ("messages", "prompt", "max_tokens")}
        if "messages" in asked:
            raw: Any = client.chat.completions.with_raw_response.create(model=policy, **asked)
            text = str(asked["messages"][-1]["content"])
        else:
            raw = client.completions.with_raw_response.create(model=policy, **asked)
            text = str(asked["prompt"])
        raw.parse()
        headers = raw.headers
        tier = headers.get(router_app.HEADER_TIER)
        return Routed(text, tier, headers.get(router_app.HEADER_CLASSIFIER))

    # Closed at the end: its connection pool's sockets are not left to the garbage collector.
    with (
        openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=2, timeout=60) as client,
        ThreadPoolExecutor(clients) as pool,
    ):
        return list(pool.map(lambda body: one(client, body), bodies))


def mix(
    routed: Sequence[Routed],
    costs: Mapping[str, float],
    capabilities: Mapping[str, float] | None = None,
) -> str:
    """The tier mix and the mean cost per request (``costs`` by tier, the last tier's 1.0) of
    the requests a tier served, and the classifier that picked them; with the simulated tiers'
    ``capabilities``, the share sent to a tier that answers them well
    (``specfleet_runtime.sim.capability``)."""
    tiered = [r for r in routed if r.tier is not None]
    shares = Counter(str(r.tier) for r in tiered)
    parts = ", ".join(f"{tier} {shares[tier] / len(tiered):.0%}" for tier in costs)
    cost = sum(costs[str(r.tier)] for r in tiered) / len(tiered)
    by = ", ".join(sorted({str(r.classifier) for r in tiered}))
    said = f"{len(tiered)} requests by {by}: {parts}; cost per request {cost:.3f}"
    if capabilities:
        well = sum(
            capability.answers_well(capabilities[str(r.tier)], r.text) for r in tiered
        ) / len(tiered)
        said += f"; answered well {well:.0%}"
    return said


def health(url: str) -> dict[str, Any]:
    """The router's /health, or nothing while it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
            found: dict[str, Any] = json.loads(reply.read())
            return found
    except (OSError, ValueError):
        return {}


def team(
    cluster: harness.Cluster,
    namespace: str,
    policy: str,
    count: int,
    seed: int,
    capabilities: Mapping[str, float] | None = None,
) -> int:
    """The team's traffic through ``policy``'s router; prints the mix and the cost (and how
    many were answered well, given the simulated tiers' ``capabilities``)."""
    url = service_url(cluster, namespace, policy)
    found = cluster.kubectl_json("get", "rp", policy, "-n", namespace)
    tiers = found["spec"]["tiers"]
    # After its models roll, a router sees them ready once the kubelet updated its file: send
    # once it routes to every tier, or the mix says more about readiness than about routing.
    names = {t["name"] for t in tiers}
    harness.wait_for(
        lambda: names <= set(health(url).get("readyTiers", ())),
        timeout=180,
        what=f"RoutingPolicy {policy}'s router routing to every tier ({', '.join(sorted(names))})",
    )
    raw = [float(t.get("cost", i + 1)) for i, t in enumerate(tiers)]
    costs = {t["name"]: c / raw[-1] for t, c in zip(tiers, raw, strict=True)}
    print(mix(send_team(url, policy, team_traffic.requests(count, seed)), costs, capabilities))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.traffic", description=__doc__)
    parser.add_argument("--cluster", default=harness.DEFAULT_CLUSTER_NAME)
    parser.add_argument("--namespace", default="default")
    commands = parser.add_subparsers(dest="command", required=True)
    steady = commands.add_parser("load", help="steady load on every model until stopped")
    steady.add_argument("--clients", type=int, default=8, help="clients per model")
    shift = commands.add_parser("acceptance", help="change one model's simulated acceptance")
    shift.add_argument("model")
    shift.add_argument("rate", type=float)
    question = commands.add_parser("ask", help="ask a policy's router; print where it sent each")
    question.add_argument("policy")
    question.add_argument("questions", nargs="+", metavar="question")
    sent = commands.add_parser(
        "team", help="a team's requests through a policy's router; print the tier mix and cost"
    )
    sent.add_argument("policy")
    sent.add_argument("--count", type=int, default=700)
    sent.add_argument("--seed", type=int, default=5)
    sent.add_argument(
        "--capabilities",
        metavar="TIER=C,...",
        help="the simulated tiers' capabilities, to say how many were answered well",
    )
    args = parser.parse_args(argv)
    cluster = harness.Cluster(args.cluster, harness.bin_dir())
    if args.command == "load":
        return load(cluster, args.namespace, args.clients)
    if args.command == "ask":
        return ask_router(cluster, args.namespace, args.policy, args.questions)
    if args.command == "team":
        strengths = dict(
            pair.split("=", 1) for pair in (args.capabilities or "").split(",") if pair
        )
        return team(
            cluster,
            args.namespace,
            args.policy,
            args.count,
            args.seed,
            {tier: float(c) for tier, c in strengths.items()},
        )
    return set_acceptance(cluster, args.namespace, args.model, args.rate)


if __name__ == "__main__":
    sys.exit(main())

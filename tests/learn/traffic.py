"""Labelled traffic of one team, whose truth the heuristic gets wrong the way the field
describes: a short compliance question about the team's own contracts needs the largest tier
(the heuristic sees a short plain question and sends it to the smallest), and a long log to
sort into a category is the smallest tier's work (the heuristic sees a long prompt full of code
words and sends it up). Requests the heuristic reads right are mixed in, and a share of labels
is noise: a random tier.

The vocabulary is the team's own (product and contract names no public data set holds), so a
classifier learns it from these labels or not at all. Seeded: the same seed, the same lines.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

from specfleet.api.routingpolicy import RoutingPolicySpec
from specfleet.routing import learned
from tests.router import builders

TIERS = ("simple", "medium", "complex")

POLICY_YAML = """\
apiVersion: specfleet.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: assistant, namespace: ml}
spec:
  tiers:
  - name: simple
    model: llama-3b
    when: {maxComplexity: 0.3, maxExpectedTokens: 256}
    cost: 1
  - name: medium
    model: llama-8b
    when: {maxComplexity: 0.6, maxExpectedTokens: 1024}
    cost: 3
  - name: complex
    model: llama-70b
    cost: 20
  overrides:
  - match: {category: sql}
    model: llama-8b
"""

PRODUCTS = ["kestrel", "bramble ledger", "quillpay", "ottervault", "marlin portal", "fenwick"]
CONTRACTS = ["dpa annex c", "msa clause 14", "finreg-7 schedule", "sox control 12b", "ccpa rider"]
REGIONS = ["eu", "uk", "apac", "latam", "us east"]
SERVICES = ["billing-api", "ledger-sync", "auth-edge", "quill-worker", "otter-cron"]
CATEGORIES = ["timeout", "auth failure", "disk pressure", "schema drift", "rate limit"]
PEOPLE = ["priya", "tomasz", "amara", "lucas", "mei"]


def _compliance(r: random.Random) -> tuple[str, str]:
    product, contract = r.choice(PRODUCTS), r.choice(CONTRACTS)
    asks = [
        f"Does {contract} let {product} keep {r.choice(REGIONS)} invoices for {r.randint(3, 12)} "
        "years?",
        f"Under {contract}, may {product} share audit logs with a subprocessor?",
        f"Is {product} allowed to store card tokens in {r.choice(REGIONS)} per {contract}?",
        f"Can we waive the {contract} notice period for {product} renewals?",
    ]
    return r.choice(asks), "complex"


def _log_triage(r: random.Random) -> tuple[str, str]:
    service = r.choice(SERVICES)
    lines = []
    for n in range(r.randint(40, 70)):
        level = r.choice(["INFO", "WARN", "ERROR", "DEBUG"])
        lines.append(
            f"2026-11-{r.randint(10, 28)}T0{r.randint(0, 9)}:{n % 60:02d}:00Z {level} {service} "
            f"request_id={r.randint(10000, 99999)} function handle_batch() returned "
            f"code={r.choice([200, 429, 500, 503])} traceback at worker.py line {r.randint(1, 900)}"
        )
    head = r.choice(["Tag this log with one category", "Which category fits this log dump"])
    return f"{head} from: {', '.join(CATEGORIES)}.\n" + "\n".join(lines), "simple"


def _lookup(r: random.Random) -> tuple[str, str]:
    asks = [
        f"Who is on call for {r.choice(SERVICES)} this week?",
        f"What is the dashboard link for {r.choice(PRODUCTS)}?",
        f"Say thanks to {r.choice(PEOPLE)} for the review.",
    ]
    return r.choice(asks), "simple"


def _drafting(r: random.Random) -> tuple[str, str]:
    product = r.choice(PRODUCTS)
    asks = [
        f"Draft a customer update about the {product} outage in {r.choice(REGIONS)}, "
        "apologetic, three paragraphs.",
        f"Write release notes for {product} {r.randint(2, 9)}.{r.randint(0, 20)} from these "
        f"items: {', '.join(r.sample(CATEGORIES, 3))} fixes.",
        f"Summarise this week's {product} incidents for {r.choice(PEOPLE)}.",
    ]
    return r.choice(asks), "medium"


def _analysis(r: random.Random) -> tuple[str, str]:
    a, b = r.sample(SERVICES, 2)
    return (
        f"Compare the trade-offs of merging {a} into {b}, step by step: analyze latency, "
        "cost and failure modes, and recommend a plan with a justification.",
        "complex",
    )


KINDS = (
    (_compliance, 0.25),
    (_log_triage, 0.25),
    (_lookup, 0.2),
    (_drafting, 0.2),
    (_analysis, 0.1),
)


def line(r: random.Random, noise: float) -> dict[str, Any]:
    """One labelled request."""
    kind = r.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS])[0]
    text, label = kind(r)
    if r.random() < noise:
        label = r.choice(TIERS)
    body: dict[str, Any]
    if r.random() < 0.8:
        body = {"messages": [{"role": "user", "content": text}]}
    else:
        body = {"prompt": text}
    if r.random() < 0.3:
        body["max_tokens"] = r.choice([64, 256, 1024])
    body["label"] = label
    if r.random() < 0.3:
        body["source"] = "judged"
    return body


def lines(count: int, seed: int, noise: float = 0.05) -> list[dict[str, Any]]:
    r = random.Random(seed)
    return [line(r, noise) for _ in range(count)]


def requests(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` different requests of the team's traffic, as a client sends them (the labels
    left out)."""
    found: dict[str, dict[str, Any]] = {}
    r = random.Random(seed)
    while len(found) < count:
        body = {k: v for k, v in line(r, noise=0).items() if k not in ("label", "source")}
        found.setdefault(json.dumps(body, sort_keys=True), body)
    return list(found.values())


def jsonl(found: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in found)


def policy_spec() -> RoutingPolicySpec:
    import yaml  # noqa: PLC0415

    return RoutingPolicySpec.model_validate(yaml.safe_load(POLICY_YAML)["spec"])


def constant_classifier(tiers: list[str], probability: float = 0.5) -> learned.Classifier:
    """A classifier without terms: every boundary's probability is ``probability``."""
    odds = probability / (1 - probability)
    return learned.loads(builders.classifier({}, tiers, intercept=math.log(odds)))

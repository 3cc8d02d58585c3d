"""The real vLLM (CPU build, tiny local models) follows the speculation schedule specfleet renders
from an InferenceModel: vLLM's dynamic speculative decoding, K per batch size.

The InferenceModel's draft is an exact copy of the target, with `schedule: manual` and the ranges
batch 1 -> K=3, batches 2 and up -> K=0 (no drafting). The operator's rendering turns it into
the Deployment's `vllm serve` arguments, whose --speculative-config carries vLLM's
`num_speculative_tokens_per_batch_size`, and one vLLM server runs those arguments unchanged
(only its address moves to loopback). Then:

- one completion at a time: every engine step has a batch of one, so vLLM drafts 3 tokens after
  each step and its draft counters grow with the generated tokens (3 draft tokens for about
  every 4 generated, the copy's tokens accepted);
- eight completions at once (vLLM's --max-num-seqs, each 256 tokens, so they overlap): the
  generated tokens keep growing while the draft counters stand nearly still.

How vLLM counts the batch: after scheduling a step its scheduler looks K up by the number of
requests scheduled in it (decodes and prefills alike; waiting ones do not count), and the model
runner drafts that many tokens after the step, for the next step to verify. A step of two or
more requests drafts nothing; a step with one request alone drafts 3, as happens when the first
of the eight is prefilled before the others are admitted, or when one is left running at the
end. So the assertion compares draft tokens per generated token between the phases: the
concurrent phase's must stay under a tenth of the first phase's. That leaves room for about 50
steps alone among some 260; one was seen, also with four busy loops on the machine's two cores.
Were the schedule not rendered or ignored (K=3 at every batch size), the concurrent phase drafts
as much per generated token as the first (seen: 1536 draft tokens for 2048 generated, against 99
for 128) and the assertion fails; without drafting at all, the first phase fails. Completions
that did not overlap would draft like the first phase, so they fail the test rather than pass
it: it counts tokens, it never times them.

Needs the vLLM virtualenv from ``scripts/setup-vllm`` (``make setup-e2e``); without it the test
skips, except under CI (env ``CI`` set), where it fails. vLLM starts in about 40 s on two idle
cores; the completions take a few seconds.
"""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e import vllm_models
from specfleet import plan
from specfleet.api.inferencemodel import InferenceModel
from specfleet.config import Config
from specfleet.render import inferencemodel

NAME = "tiny-llama"
SPECULATIVE_TOKENS = 3
MAX_NUM_SEQS = 8
RANGES = [(1, 1, SPECULATIVE_TOKENS), (2, 16, 0)]
"""(first batch size, last batch size, K): drafting alone, none from two requests up."""
ALONE = ("The batch", "Speculative decoding")
ALONE_TOKENS = 64
TOGETHER = MAX_NUM_SEQS
TOGETHER_TOKENS = 256
COUNTERS = (
    "vllm:generation_tokens",
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)


@pytest.fixture(scope="module")
def models(vllm_python: Path) -> vllm_models.Models:
    return vllm_models.build_models(vllm_python)


def tiny_model(models: vllm_models.Models) -> InferenceModel:
    """The tiny target with an exact copy as its draft and the schedule `RANGES`."""
    source = vllm_models.model_source(models.target)
    return InferenceModel.model_validate(
        {
            "apiVersion": "specfleet.dev/v1alpha1",
            "kind": "InferenceModel",
            "metadata": {"name": NAME},
            "spec": {
                "model": {"name": str(models.target), **source},
                "draft": {
                    "model": {"name": str(models.draft_exact), **source},
                    "numSpeculativeTokens": SPECULATIVE_TOKENS,
                    "schedule": "manual",
                    "ranges": [
                        {"minBatch": first, "maxBatch": last, "numSpeculativeTokens": k}
                        for first, last, k in RANGES
                    ],
                },
                "quantization": "none",
                "maxModelLen": 1024,
                "gpu": {"product": "H100-80GB", "count": 1},
                "batching": {"max": MAX_NUM_SEQS},
            },
        }
    )


def serve_args(model: InferenceModel) -> list[str]:
    """The arguments after `vllm serve` in the vllm container of the Deployment the operator
    renders for `model`."""
    result = plan.plan(model.metadata.name, model.spec)
    assert result.fits, result.errors
    deployment = inferencemodel.deployment(
        model, result, Config(), inferencemodel.initial_limit(model)
    )
    (server,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm"
    ]
    assert server["command"] == ["vllm", "serve"]
    args: list[str] = server["args"]
    return args


def counters(server: str) -> dict[str, float]:
    """The totals of `COUNTERS` on vLLM's /metrics, summed over their labels."""
    with urllib.request.urlopen(f"{server}/metrics", timeout=30) as response:
        text = response.read().decode()
    found = {
        family.name: sum(s.value for s in family.samples if s.name == f"{family.name}_total")
        for family in text_string_to_metric_families(text)
        if family.name in COUNTERS
    }
    missing = set(COUNTERS) - found.keys()
    assert not missing, f"not on vLLM's /metrics: {sorted(missing)}"
    return found


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in COUNTERS}


def complete(server: str, prompt: str, max_tokens: int) -> int:
    """Generates exactly `max_tokens` tokens (EOS ignored); returns how many vLLM counted."""
    body = {
        "model": NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    request = urllib.request.Request(
        f"{server}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        answer: dict[str, Any] = json.loads(response.read())
    tokens: int = answer["usage"]["completion_tokens"]
    return tokens


def drafted_per_token(phase: dict[str, float]) -> float:
    return phase["vllm:spec_decode_num_draft_tokens"] / phase["vllm:generation_tokens"]


def test_vllm_drafts_alone_and_not_in_a_batch(
    vllm_python: Path, models: vllm_models.Models, tmp_path: Path
) -> None:
    args = serve_args(tiny_model(models))
    speculation = json.loads(args[args.index("--speculative-config") + 1])
    assert speculation["num_speculative_tokens_per_batch_size"] == [list(r) for r in RANGES]
    assert args[args.index("--max-num-seqs") + 1] == str(MAX_NUM_SEQS)

    with vllm_models.serve_rendered(vllm_python, args, tmp_path / "vllm.log") as server:
        start = counters(server.url)
        for prompt in ALONE:
            assert complete(server.url, prompt, ALONE_TOKENS) == ALONE_TOKENS
        after_alone = counters(server.url)
        prompts = [f"The batch {i}" for i in range(TOGETHER)]
        with ThreadPoolExecutor(TOGETHER) as pool:
            generated = list(pool.map(lambda p: complete(server.url, p, TOGETHER_TOKENS), prompts))
        assert generated == [TOGETHER_TOKENS] * TOGETHER
        after_together = counters(server.url)

    alone = grown(start, after_alone)
    together = grown(after_alone, after_together)
    phases = f"alone: {alone}; together: {together}"

    # Alone, every step drafts K=3, and the copy's tokens are accepted.
    assert alone["vllm:generation_tokens"] == len(ALONE) * ALONE_TOKENS, phases
    assert alone["vllm:spec_decode_num_drafts"] > 0, phases
    assert (
        alone["vllm:spec_decode_num_draft_tokens"]
        == SPECULATIVE_TOKENS * alone["vllm:spec_decode_num_drafts"]
    ), phases
    assert alone["vllm:spec_decode_num_accepted_tokens"] > 0, phases

    # Together, tokens are generated while drafting stops but for steps with a request alone:
    # a tenth of the drafting per token alone leaves room for about 50 of them.
    assert together["vllm:generation_tokens"] == TOGETHER * TOGETHER_TOKENS, phases
    assert drafted_per_token(together) < drafted_per_token(alone) / 10, phases

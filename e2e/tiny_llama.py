"""Writes tiny Llama checkpoints that a real vLLM server loads, for the vLLM e2e tests.

Runs inside the vLLM virtualenv (torch, transformers and tokenizers live there, not in the
project's .venv): ``e2e/vllm_models.py`` calls ``<vllm-venv>/bin/python e2e/tiny_llama.py OUT``
and caches OUT by a hash of this file, so changing it rebuilds the models. No model hub: the
tokenizer is trained here on a few lines of text and the weights are random (seeded).

OUT receives, each a complete Hugging Face model directory sharing one tokenizer:
- ``target``: 4 layers, hidden 256, head_dim 64 (a head size vLLM's CPU attention supports);
- ``draft-small``: 1 layer, hidden 128, same vocabulary, a valid but unrelated draft;
- ``draft-exact``: a copy of the target, so speculation accepts (nearly) every token;
- ``draft-noisy``: the target with Gaussian noise of ``NOISE`` x each tensor's std added, so
  speculation accepts only a few tokens (0.5 gave about 5% in vLLM 0.32).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

NOISE = 0.5
VOCAB_SIZE = 320
SEED = 0
CORPUS = [
    "Speculative decoding lets a small draft model propose tokens that a large model verifies.",
    "The batch limit of a vLLM server is tuned from its acceptance rate and tail latency.",
    "Kubernetes operators reconcile custom resources into deployments, services and pods.",
    "FP8 weights halve the memory of a model on Hopper GPUs with little loss of quality.",
    "SELECT name, count(*) FROM requests GROUP BY name ORDER BY 2 DESC LIMIT 10;",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", chat_template=CHAT_TEMPLATE
    )


def llama(vocab: int, hidden: int, layers: int, heads: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=64,
        max_position_embeddings=1024,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    return LlamaForCausalLM(config).to(torch.bfloat16)


def save(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, path: Path) -> None:
    model.save_pretrained(path)
    tok.save_pretrained(path)


def main(out: Path) -> None:
    torch.manual_seed(SEED)
    tok = tokenizer()
    vocab = len(tok)
    target = llama(vocab, hidden=256, layers=4, heads=4)
    save(target, tok, out / "target")
    save(llama(vocab, hidden=128, layers=1, heads=2), tok, out / "draft-small")
    shutil.copytree(out / "target", out / "draft-exact")
    with torch.no_grad():
        for parameter in target.parameters():
            if parameter.numel() > 1:
                parameter.add_(torch.randn_like(parameter) * parameter.float().std() * NOISE)
    save(target, tok, out / "draft-noisy")
    (out / "models.json").write_text(json.dumps({"vocab_size": vocab, "noise": NOISE}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

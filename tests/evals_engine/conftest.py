"""Fixtures for the generation engine tests: the `tiny` hybrid preset (random init) and its tokenizer, on one thread.

`shadowed` is the same model with its end-of-turn logit made to shadow a frequent token, so sequences finish at
different steps (what makes continuous batching and slot reuse matter)."""

from __future__ import annotations

import copy

import pytest
import torch

from mixlab.evals.backends.torch_backend import encode_chat
from mixlab.model import load_model, load_tokenizer

PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a haiku about autumn leaves."}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Explain recursion."}, {"role": "assistant", "content": "A function calling itself."},
     {"role": "user", "content": "Shorter, and with an example in Python please?"}],
    [{"role": "user", "content": "List three colours."}],
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny():
    torch.manual_seed(0)
    return load_model("tiny", dtype=torch.float32, device="cpu").eval(), load_tokenizer()


@pytest.fixture(scope="session")
def shadowed(tiny):
    """A copy of tiny whose <|im_end|> logit shadows a token its greedy answers use often."""
    model, tok = tiny
    model = copy.deepcopy(model)
    ids = encode_chat(tok, PROMPTS[0])
    with torch.no_grad():
        seq = list(ids)
        for _ in range(24):
            seq.append(int(model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
        gen = seq[len(ids):]
        victim = max(set(gen), key=gen.count)
        head = model.get_output_embeddings().weight
        head[tok.eos_token_id] = head[victim] * 1.3
    return model, tok


@pytest.fixture
def prompt_ids(tiny):
    _, tok = tiny
    return [encode_chat(tok, p) for p in PROMPTS]

"""Fixtures for the generation/judge/runner tests: tiny real models and a chat tokenizer.

`chat_tokenizer` is a small byte-level BPE with mixlab's chat template (trained here in milliseconds, no network);
`llama_model` a 2-layer random transformers Llama over it; `mixlab_tiny` the `tiny` preset of mixlab's own hybrid
model with its tokenizer.
"""

from __future__ import annotations

import contextlib

import pytest

from mixlab.model import load_model, load_tokenizer


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread for these tests: on the shared 2-core CI/dev machines, torch's default thread pool under
    contention made a tiny-model decode step ~80x slower (0.83 s vs 0.01 s measured). Restored afterwards."""
    import torch

    with single_thread():
        yield


@contextlib.contextmanager
def single_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|im_system|>system<|im_middle|>{{ message['content'] }}<|im_end|>"
    "{% elif message['role'] == 'user' %}<|im_user|>user<|im_middle|>{{ message['content'] }}<|im_end|>"
    "{% else %}<|im_assistant|>assistant<|im_middle|>{% generation %}{{ message['content'] }}<|im_end|>"
    "{% endgeneration %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_assistant|>assistant<|im_middle|>{% endif %}"
)
SPECIALS = ["<|pad|>", "<|im_end|>", "<|im_system|>", "<|im_user|>", "<|im_assistant|>", "<|im_middle|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is 2 + 3? The answer is 5.",
    "Write a haiku about autumn leaves. Explain recursion to a child in two sentences.",
    "def add(a, b):\n    return a + b\n# Rate the answer from 1 to 10: [[7]] [[A>B]] [[B>A]] [[A=B]]",
    "Hello! How can I help you today? Sure, here is a list:\n- one\n- two\n**bold** ## Heading",
]


def build_chat_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>", additional_special_tokens=SPECIALS[2:]
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def chat_tokenizer():
    return build_chat_tokenizer()


def build_llama(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def llama_model(chat_tokenizer):
    return build_llama(chat_tokenizer)


@pytest.fixture(scope="session")
def mixlab_tiny():
    """(model, tokenizer) of mixlab's tiny preset, random init."""
    model = load_model("tiny", dtype="float32", device="cpu", seed=0).eval()
    return model, load_tokenizer()


CHAT_PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a haiku about autumn leaves, please."}],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Explain recursion."},
        {"role": "assistant", "content": "It is a function calling itself."},
        {"role": "user", "content": "Shorter?"},
    ],
]


@pytest.fixture
def prompts():
    return [list(p) for p in CHAT_PROMPTS]


@pytest.fixture(scope="session")
def llama_eos_model(chat_tokenizer):
    """A random Llama whose end-of-turn logit shadows one frequent token: rows then finish at different steps,
    which exercises per-row EOS finishing and batch compaction."""
    import torch

    from mixlab.evals.backends import GenerationConfig, get_backend

    model = build_llama(chat_tokenizer)
    with single_thread():
        free = get_backend("torch", model, chat_tokenizer, batch_size=1).generate_detailed(
            [list(p) for p in CHAT_PROMPTS], GenerationConfig(max_new_tokens=24)
        )
    ids = chat_tokenizer(free[0].text, add_special_tokens=False)["input_ids"]
    victim = ids[len(ids) // 2]
    with torch.no_grad():
        head = model.lm_head.weight
        head[chat_tokenizer.eos_token_id] = head[victim] * 1.5
    return model

"""The shipped mixlab-bpe tokenizer: special tokens, chat template, assistant masks, reproducible build."""

from __future__ import annotations


import pytest

from mixlab import procs
from mixlab.errors import MixlabError
from mixlab.paths import tokenizers_dir

SPECIALS = ["[BOS]", "[EOS]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>", "<|im_middle|>",
            "[PAD]"]


def test_vocab_and_special_tokens_match_the_presets():
    from mixlab.model import get_preset, load_tokenizer

    tok = load_tokenizer()
    assert len(tok) == 1024
    assert [tok.convert_tokens_to_ids(t) for t in SPECIALS] == list(range(1016, 1024))
    cfg = get_preset("demo")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (cfg.bos_token_id, cfg.eos_token_id,
                                                                     cfg.pad_token_id)
    assert tok.eos_token == "<|im_end|>" and tok.padding_side == "left"
    text = "def solve(nums):\n    return sorted(nums)[-1]  # 12345 ✓"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless, no unknown tokens
    assert [tok.decode([i]) for i in tok("2024")["input_ids"]] == ["2", "0", "2", "4"]  # digits split
    assert len(tok("What is the answer to this question?")["input_ids"]) <= 10  # real merges, not bytes


def test_chat_template_and_assistant_mask():
    from mixlab.model import load_tokenizer

    tok = load_tokenizer()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|im_system|>system<|im_middle|>Be brief.<|im_end|><|im_user|>user<|im_middle|>Hi<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|>Hello!<|im_end|><|im_user|>user<|im_middle|>2+2?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|>4<|im_end|>")
    assert tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True).endswith(
        "<|im_end|><|im_assistant|>assistant<|im_middle|>")
    enc = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(kept) == "Hello!<|im_end|>4<|im_end|>"
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "narrator", "content": "x"}], tokenize=False)


def test_loadable_without_mixlab_model_and_unknown_names_fail():
    from transformers import AutoTokenizer

    from mixlab.model import load_tokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizers_dir() / "mixlab-bpe"))
    assert len(tok) == 1024 and tok.chat_template
    with pytest.raises(MixlabError, match="did you mean 'mixlab-bpe'"):
        load_tokenizer("mixlab-bep")


def test_build_script_reproduces_the_committed_tokenizer():
    script = tokenizers_dir() / "build_mixlab_bpe.py"
    proc = procs.run([str(script), "--check"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stdout + proc.stderr

"""Curriculum mixtures: the Trainer reads phases in stored order instead of shuffling them together."""

from __future__ import annotations

import torch
from torch.utils.data import SequentialSampler

from mixlab.mixtures import build, load_dataset
from mixlab.recipes.data import keep_curriculum_order, load_stage_dataset, phase_count


def test_phased_mixture_is_sampled_in_stored_phase_order(tmp_path):
    import trl

    from mixlab.model import load_model, load_tokenizer

    built = build("demo-curriculum")
    rows = load_dataset(built.mixture_id, kind="sft")
    phases = rows["phase"]
    assert phase_count(built.mixture_id, "sft") == 2
    # Stored order: every row of the first phase precedes every row of the second.
    first = phases[0]
    switch = phases.index(next(p for p in phases if p != first))
    assert set(phases[:switch]) == {first} and first not in phases[switch:]

    args = trl.SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=1, report_to=[],
                         per_device_train_batch_size=4, loss_type="nll")
    assert args.train_sampling_strategy == "random"
    keep_curriculum_order(args, phase_count(built.mixture_id, "sft"))
    torch.manual_seed(0)
    trainer = trl.SFTTrainer(model=load_model("tiny", seed=0), args=args, processing_class=load_tokenizer(),
                             train_dataset=load_stage_dataset(built.mixture_id, "sft"))
    assert isinstance(trainer._get_train_sampler(), SequentialSampler)


def test_single_phase_mixture_keeps_random_sampling():
    class Args:
        train_sampling_strategy = "random"

    args = Args()
    keep_curriculum_order(args, 1)
    assert args.train_sampling_strategy == "random"

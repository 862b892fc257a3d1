"""Curriculum mixtures and the stage data path: phases in stored order, Arrow straight from the artifact's Parquet."""

from __future__ import annotations

import datasets
import pyarrow.parquet as pq
import torch
import trl
from torch.utils.data import SequentialSampler

from mixlab.mixtures import build, load_dataset
from mixlab.model import load_model, load_tokenizer
from mixlab.recipes.data import keep_curriculum_order, load_stage_dataset
from mixlab.recipes.trainers import get_trainer


def test_phased_mixture_is_sampled_in_stored_phase_order(tmp_path):
    built = build("demo-curriculum")
    rows = load_dataset(built.mixture_id, kind="sft")
    phases = rows["phase"]
    stage = load_stage_dataset(built.mixture_id, get_trainer("sft"))
    assert stage.n_phases == 2 == len(set(phases))
    assert stage.dataset.column_names == ["messages"]
    assert stage.dataset["messages"] == rows["messages"]  # same rows, same (stored) order
    # Stored order: every row of the first phase precedes every row of the second.
    first = phases[0]
    switch = phases.index(next(p for p in phases if p != first))
    assert set(phases[:switch]) == {first} and first not in phases[switch:]

    args = trl.SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=1, report_to=[],
                         per_device_train_batch_size=4, loss_type="nll")
    assert args.train_sampling_strategy == "random"
    keep_curriculum_order(args, stage.n_phases)
    torch.manual_seed(0)
    trainer = trl.SFTTrainer(model=load_model("tiny", seed=0), args=args, processing_class=load_tokenizer(),
                             train_dataset=stage.dataset)
    assert isinstance(trainer._get_train_sampler(), SequentialSampler)


def test_single_phase_mixture_keeps_random_sampling():
    class Args:
        train_sampling_strategy = "random"

    args = Args()
    keep_curriculum_order(args, 1)
    assert args.train_sampling_strategy == "random"


def test_stage_dataset_is_one_arrow_read_without_python_rows(monkeypatch):
    built = build("demo-rl")
    reads = []
    real_read = pq.read_table

    def counting_read(source, *args, **kwargs):
        reads.append((str(source), kwargs.get("memory_map")))
        return real_read(source, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("the stage data path must stay in Arrow")

    monkeypatch.setattr(pq, "read_table", counting_read)
    monkeypatch.setattr(datasets.Dataset, "from_dict", forbidden)
    monkeypatch.setattr(datasets.Dataset, "from_list", forbidden)
    stage = load_stage_dataset(built.mixture_id, get_trainer("grpo"))
    shards = built.manifest["shards"]
    assert len(reads) == len(shards) and all(memory_map for _, memory_map in reads)
    assert stage.n_phases == 1
    assert stage.dataset.column_names == ["prompt", "verifier", "ground_truth", "source_id", "row_id"]
    assert len(stage.dataset) == sum(s["rows"] for s in shards)
    prompt = stage.dataset[0]["prompt"]
    assert prompt and set(prompt[0]) == {"role", "content"}  # the build-time `train` flag is dropped

"""Save and load official-format Kimi-Linear checkpoints (safetensors, optionally sharded with an index).

`save_official` writes full merged weights under the official names (through `state_dict_adapter`), the
config.json, generation_config.json and, when attached, the tokenizer; every file is first written to a temp
folder inside the target and then renamed into place, so a crash never leaves a half-written checkpoint.

`load_official` builds the model on the meta device, checks the checkpoint's tensor inventory (names and shapes,
read from the safetensors headers) against the config BEFORE allocating anything, and fails with one line
naming missing / unexpected / mis-shaped tensors — never a silent random init. Tensors are then copied shard by
shard into the allocated model; fp32 parameters (A_log, dt_bias, e_score_correction_bias) stay fp32 whatever
`dtype` is requested.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mixlab.atomic import sweep_stale, temp_path
from mixlab.errors import MixlabError

from .config import KimiLinearConfig
from .modeling import KimiLinearForCausalLM
from .state_dict_adapter import diff_inventory, official_shapes, stacked_target, to_official

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$")
# Files of an official checkpoint that mixlab does not produce but must carry over (remote code, tokenizer).
_CARRY_SUFFIXES = (".py", ".model", ".tiktoken", ".jinja")
_CARRY_NAMES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "chat_template.jinja",
                "chat_template.json")


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)\s*", str(size), re.I)
    if not m:
        raise MixlabError(f"max_shard_size: cannot parse {size!r} (use e.g. '5GB' or a byte count)")
    unit = m[2].upper().replace("I", "")
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[unit]
    return int(float(m[1]) * mult)


def _resolve_dtype(dtype, config: KimiLinearConfig) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise MixlabError(f"dtype {dtype!r} is not a torch dtype (use float32, bfloat16 or float16)")
        dtype = getattr(torch, dtype)
    return dtype


def save_official(model, save_directory, state_dict=None, max_shard_size: int | str = "5GB",
                  is_main_process: bool = True, **_ignored) -> None:
    """`model.save_pretrained`: official names, safetensors, sharded above `max_shard_size`."""
    if not is_main_process:
        return
    from safetensors.torch import save_file

    out_dir = Path(save_directory)
    if out_dir.exists() and not out_dir.is_dir():
        raise MixlabError(f"save_pretrained: {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict() if state_dict is None else state_dict
    official = to_official(sd)
    limit = _parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(official):
        nbytes = official[name].numel() * official[name].element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes

    sweep_stale(out_dir)  # temp folders of saves killed mid-write
    tmp = temp_path(out_dir, "save")  # names host and pid, so a later save can tell when it is stale
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        n = len(shards)
        weight_map = {}
        total = 0
        for i, names in enumerate(shards):
            fname = WEIGHTS_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            # Clone: expert tensors are views into the stacked ones, and safetensors refuses shared storage.
            tensors = {k: official[k].detach().to("cpu").contiguous().clone() for k in names}
            save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
            for k, t in tensors.items():
                weight_map[k] = fname
                total += t.numel() * t.element_size()
            del tensors
        if n > 1:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        config = model.config
        config.architectures = ["KimiLinearForCausalLM"]
        dtype = next((p.dtype for n_, p in model.named_parameters() if not n_.endswith(
            ("A_log", "dt_bias", "e_score_correction_bias"))), torch.float32)
        config.dtype = dtype
        config.save_pretrained(tmp)
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            try:
                gen.save_pretrained(tmp)
            except Exception:  # an invalid generation config must not block saving the weights
                pass
        tok = getattr(model, "mixlab_tokenizer", None)
        if tok is not None:
            tok.save_pretrained(tmp)
        src = getattr(config, "_name_or_path", "")
        if src and Path(src).is_dir() and Path(src).resolve() != out_dir.resolve():
            for f in Path(src).iterdir():
                if f.is_file() and (f.suffix in _CARRY_SUFFIXES or f.name in _CARRY_NAMES) \
                        and not (tmp / f.name).exists():
                    shutil.copy2(f, tmp / f.name)
        # Stale shards of an earlier save in the same folder would confuse loaders: remove them first.
        new_files = {f.name for f in tmp.iterdir()}
        for f in out_dir.iterdir():
            if f.is_file() and _SHARD_RE.match(f.name) and f.name not in new_files:
                f.unlink()
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MixlabError(f"{index}: not a safetensors index (needs a 'weight_map'): {exc}") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise MixlabError(f"{index}: 'weight_map' must map tensor names to shard file names")
        files = sorted(set(weight_map.values()))
        for f in files:
            if Path(f).name != f:  # a shard outside the folder ("../x") is never read
                raise MixlabError(f"{index}: shard {f!r} in weight_map is not a file name inside {folder}")
            if not (folder / f).is_file():
                raise MixlabError(f"{index}: shard {f} listed in weight_map does not exist")
        return [folder / f for f in files]
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise MixlabError(f"{folder}: no {WEIGHTS_NAME} or {INDEX_NAME} (only safetensors checkpoints are supported)")


@contextmanager
def _open_shard(path: Path, device: str | None = None):
    """`safe_open` whose failures (truncated file, corrupt header) become one line naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="pt", **({"device": device} if device else {}))
    except (SafetensorError, OSError) as exc:
        raise MixlabError(f"{path}: not a valid safetensors file ({_one_line(exc)})") from None
    with handle as fh:
        try:
            yield fh
        except (SafetensorError, OSError) as exc:
            raise MixlabError(f"{path}: cannot read tensors ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def checkpoint_files(folder: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Tensor name → (shape, shard file) of a safetensors checkpoint, from the headers only. Every shard is opened,
    so a truncated or corrupt file fails here, before any tensor is allocated."""
    folder = Path(folder)
    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    for f in _weight_files(folder):
        with _open_shard(f) as fh:
            for k in fh.keys():
                if k in found:
                    raise MixlabError(f"{f}: tensor {k} is also in {found[k][1].name}")
                found[k] = (tuple(fh.get_slice(k).get_shape()), f)
    index = folder / INDEX_NAME
    if index.is_file():  # the index must describe the shards as they are
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        for k, fname in weight_map.items():
            if k not in found or found[k][1].name != fname:
                where = found[k][1].name if k in found else "no shard"
                raise MixlabError(f"{index}: tensor {k} is listed in {fname} but found in {where}")
    return found


def checkpoint_inventory(folder: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a safetensors checkpoint, from the headers only."""
    return {k: shape for k, (shape, _) in checkpoint_files(folder).items()}


def validate_checkpoint(folder: str | os.PathLike, config: KimiLinearConfig, expected=None) -> dict[str, Any]:
    """Check every shard's header and every tensor's name and shape against `config` (meta device, no weights
    read). Raises one line naming the shard (or the folder, when the mismatch spans several files)."""
    folder = Path(folder)
    if expected is None:
        with torch.device("meta"):
            expected = official_shapes(KimiLinearForCausalLM(config).state_dict())
    found = checkpoint_files(folder)
    provided = {k: shape for k, (shape, _) in found.items()}
    bad = {k for k in provided if k not in expected or tuple(expected[k]) != provided[k]}
    files = {found[k][1] for k in bad}
    where = str(next(iter(files))) if len(files) == 1 else str(folder)
    diff_inventory(expected, provided, f"{where} vs {folder / 'config.json'}")
    shards = sorted({f.name for _, f in found.values()})
    return {"tensors": len(found), "shards": shards,
            "bytes": sum((folder / name).stat().st_size for name in shards)}


def load_official(cls, path, config: KimiLinearConfig | None = None, dtype=None, torch_dtype=None,
                  device=None, device_map=None, **_ignored):
    """`KimiLinearForCausalLM.from_pretrained(folder)`; see the module docstring."""
    folder = Path(path)
    if not folder.is_dir():
        raise MixlabError(f"{path}: not a checkpoint folder (mixlab loads local official-format folders only)")
    if config is None:
        if not (folder / "config.json").is_file():
            raise MixlabError(f"{folder}: no config.json")
        try:
            config = KimiLinearConfig.from_pretrained(str(folder))
        except MixlabError as exc:
            raise MixlabError(f"{folder / 'config.json'}: {exc}") from None
    dtype = _resolve_dtype(dtype if dtype is not None else torch_dtype, config)
    if device is None and isinstance(device_map, (str, torch.device)) and device_map != "auto":
        device = device_map
    device = torch.device(device or "cpu")

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    validate_checkpoint(folder, config, expected=official_shapes(model.state_dict()))

    model.to_empty(device=device)
    params = dict(model.state_dict(keep_vars=True))
    with torch.no_grad():
        for f in _weight_files(folder):
            with _open_shard(f, device="cpu") as fh:
                for k in fh.keys():
                    t = fh.get_tensor(k)
                    target = stacked_target(k)
                    if target is None:
                        params[k].data.copy_(t)
                    else:
                        params[target[0]].data[target[1]].copy_(t)
    model.eval()
    model.config._name_or_path = str(folder)
    try:
        from transformers import GenerationConfig

        if (folder / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(str(folder))
    except Exception:
        pass
    return model

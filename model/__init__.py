"""mixlab.model: the Kimi Linear hybrid (KDA + MLA + MoE) as a trainable transformers model.

    from mixlab.model import KimiLinearConfig, KimiLinearForCausalLM, get_preset, PRESETS, load_tokenizer, load_model

Importing this package registers `kimi_linear` with transformers' AutoConfig / AutoModel / AutoModelForCausalLM,
so `AutoModelForCausalLM.from_pretrained(folder)` works on a folder mixlab saved (no remote code needed).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import KimiLinearCache
from .config import KimiLinearConfig
from .loading import load_model
from .modeling import KimiLinearForCausalLM, KimiLinearModel, KimiLinearPreTrainedModel
from .presets import PRESETS, get_preset
from .tokenizer import load_tokenizer


def _register() -> None:
    try:
        AutoConfig.register("kimi_linear", KimiLinearConfig, exist_ok=True)
    except TypeError:  # older signature without exist_ok
        AutoConfig.register("kimi_linear", KimiLinearConfig)
    for auto, cls in ((AutoModel, KimiLinearModel), (AutoModelForCausalLM, KimiLinearForCausalLM)):
        try:
            auto.register(KimiLinearConfig, cls, exist_ok=True)
        except TypeError:
            auto.register(KimiLinearConfig, cls)
        except ValueError:  # already registered (module re-import)
            pass


_register()

__all__ = [
    "PRESETS",
    "KimiLinearCache",
    "KimiLinearConfig",
    "KimiLinearForCausalLM",
    "KimiLinearModel",
    "KimiLinearPreTrainedModel",
    "get_preset",
    "load_model",
    "load_tokenizer",
]

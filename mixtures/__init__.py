"""mixlab.mixtures: declarative YAML data mixtures → reproducible SFT / preference / RL datasets.

    build(name_or_path, data_root=None, store=None) -> BuiltMixture   (id, path, manifest)
    load_dataset(name_or_id, kind=None) -> datasets.Dataset           (TRL formats, source_id + row_id kept)
    register_filter / register_adapter                                  (custom transforms, via `plugins:`)
    component_weights / write_variant                                   (sweeps over weights)
"""

from mixlab.mixtures.adapters import register_adapter
from mixlab.mixtures.artifact import BuiltMixture
from mixlab.mixtures.build import build
from mixlab.mixtures.filters import register_filter
from mixlab.mixtures.loader import load_dataset
from mixlab.mixtures.registry_io import component_weights, list_mixtures, load_mixture, write_variant

__all__ = [
    "BuiltMixture", "build", "load_dataset", "register_filter", "register_adapter", "component_weights",
    "write_variant", "load_mixture", "list_mixtures",
]

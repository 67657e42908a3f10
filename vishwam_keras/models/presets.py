"""The preset table: names -> folders shipped in `vishwam_keras/presets/`, registered with KerasHub.

`from_preset("vishwam_4b")` resolves here, offline, from an editable or a wheel install.
"""

import importlib.resources
import json
import os
import warnings

from keras_hub.models import Backbone, Task
from keras_hub.src.utils.preset_utils import register_presets

PRESET_NAMES = ("vishwam_1b", "vishwam_4b", "vishwam_12b")
WEIGHTS_FILE = "model.weights.h5"
_warned = set()


def presets_root():
    return str(importlib.resources.files("vishwam_keras") / "presets")


def available_presets():
    """Names of the presets shipped with the package (folders with a config.json)."""
    root = presets_root()
    return sorted(
        name
        for name in os.listdir(root)
        if not name.startswith("_") and os.path.isfile(os.path.join(root, name, "config.json"))
    )


def preset_metadata(name):
    with open(os.path.join(presets_root(), name, "metadata.json")) as f:
        return json.load(f)


def resolve_preset(preset):
    """A preset name -> its folder; a path or a handle with a scheme is returned unchanged."""
    if not isinstance(preset, str) or not preset:
        raise ValueError(
            f"`preset` must be a preset name or a directory path. Received: preset={preset!r}"
        )
    if "://" in preset or os.path.isdir(preset):
        return preset
    names = available_presets()
    if preset in names:
        return os.path.join(presets_root(), preset)
    raise ValueError(
        f"Unknown preset `preset={preset!r}`: it is neither a shipped preset nor an existing "
        f"directory. Shipped presets: {names}."
    )


def has_weights(preset_path):
    if "://" in preset_path:
        return True
    return os.path.isfile(os.path.join(preset_path, WEIGHTS_FILE))


class NamedPresetMixin:
    """`from_preset` that knows our preset names and loads weight-less presets randomly."""

    @classmethod
    def from_preset(cls, preset, **kwargs):
        path = resolve_preset(preset)
        loads_weights = issubclass(cls, (Backbone, Task))
        if loads_weights and kwargs.get("load_weights", True) and not has_weights(path):
            if path not in _warned:
                _warned.add(path)
                warnings.warn(
                    f"Preset {preset!r} ships no trained weights: the model is initialised "
                    "randomly (its architecture, tokenizer and config are real). Train it, "
                    "or load weights with `model.load_weights(...)`.",
                    stacklevel=2,
                )
            kwargs["load_weights"] = False
        return super().from_preset(path, **kwargs)


def register(backbone_cls):
    """Register the shipped presets so `cls.presets` lists them, KerasHub style."""
    table = {}
    for name in available_presets():
        metadata = preset_metadata(name)
        table[name] = {
            "metadata": {
                "description": metadata.get("description", ""),
                "params": metadata.get("parameter_count"),
                "path": "vishwam",
            },
            "kaggle_handle": os.path.join(presets_root(), name),
        }
    register_presets(table, backbone_cls)

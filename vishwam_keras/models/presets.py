"""The preset table: names -> folders shipped in `vishwam_keras/presets/`, registered with KerasHub.

`from_preset("vishwam_4b")` resolves here, offline, from an editable or a wheel install; a
local preset folder is checked by `vishwam_keras.safety` before KerasHub reads it.
"""

import importlib.resources
import os
import warnings

from keras_hub.models import Backbone, Task
from keras_hub.src.utils.preset_utils import register_presets

from vishwam_keras import safety

PRESET_NAMES = ("vishwam_1b", "vishwam_4b", "vishwam_12b")
WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS_FILE = "model.weights.json"
METADATA_FILE = "metadata.json"
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
    return safety.load_json_file(os.path.join(presets_root(), name, METADATA_FILE))


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
    return any(
        os.path.isfile(os.path.join(preset_path, name))
        for name in (WEIGHTS_FILE, SHARDED_WEIGHTS_FILE)
    )


def declares_no_weights(preset_path):
    """True when the preset's metadata.json says `"has_weights": false` (shipped presets)."""
    path = os.path.join(preset_path, METADATA_FILE)
    if not os.path.isfile(path):
        return False
    metadata = safety.load_json_file(path)
    return isinstance(metadata, dict) and metadata.get("has_weights") is False


class NamedPresetMixin:
    """`from_preset` that knows our preset names, checks local folders before loading them
    (`vishwam_keras.safety.validate_preset_dir`) and loads presets that declare no weights
    randomly."""

    @classmethod
    def from_preset(cls, preset, safe_mode=True, **kwargs):
        """Load from a shipped preset name or a preset folder.

        Args:
            preset: str. A name from `available_presets()`, a local folder, or a handle with
                a scheme (`kaggle://`, `hf://`, ...; KerasHub downloads it, unchecked here).
            safe_mode: bool. `True` (the default) refuses configs naming `Lambda` layers or
                classes outside vishwam_keras / keras / keras_hub, even after
                `keras.config.enable_unsafe_deserialization()`. File names are checked
                either way. Defaults to `True`.
            **kwargs: passed to KerasHub's `from_preset` (`dtype`, `load_weights`, ...).
        """
        path = resolve_preset(preset)
        if "://" not in path:
            safety.validate_preset_dir(path, check_classes=safe_mode)
        loads_weights = issubclass(cls, (Backbone, Task))
        if loads_weights and kwargs.get("load_weights", True) and not has_weights(path):
            if not declares_no_weights(path):
                raise ValueError(
                    f"Preset folder '{path}' has no weights file "
                    f"'{os.path.join(path, WEIGHTS_FILE)}', and its {METADATA_FILE} does not "
                    'declare `"has_weights": false`. Restore the file, or pass '
                    "`load_weights=False` for a randomly initialised model."
                )
            if path not in _warned:
                _warned.add(path)
                warnings.warn(
                    f"Preset {preset!r} ships no trained weights: the model is initialised "
                    "randomly (its architecture, tokenizer and config are real). Train it, "
                    "or load weights with `model.load_weights(...)`.",
                    stacklevel=2,
                )
            kwargs["load_weights"] = False
        # No `SafeModeScope` around KerasHub: inside one, a tokenizer may not read its own
        # vocabulary from assets/. `validate_preset_dir` refuses what safe mode would (and more),
        # whatever `keras.config.enable_unsafe_deserialization()` says.
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

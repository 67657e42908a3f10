"""Writes the weight-less presets `vishwam_1b`, `vishwam_4b`, `vishwam_12b` from `config.py`.

Each folder is a KerasHub preset (config.json, tokenizer.json, preprocessor.json,
metadata.json, assets/tokenizer/vocabulary.spm). The backbone config is serialised from
the named config without building the model, so 12B weights are never allocated.

    python scripts/make_presets.py
"""

import datetime
import json
import os
import pathlib

import keras
import keras_hub

from vishwam_keras import config as config_lib
from vishwam_keras.models.preprocessor import VishwamCausalLMPreprocessor
from vishwam_keras.models.tokenizer import VishwamTokenizer, default_vocabulary_path

ROOT = pathlib.Path(__file__).resolve().parents[1] / "vishwam_keras" / "presets"

PRESETS = {
    "vishwam_1b": (
        config_lib.VISHWAM_1B_CONFIG,
        "1B text model, Gemma-3-1B-like shapes (MQA, head_dim 256, window 512, 5:1 local:global).",
    ),
    "vishwam_4b": (
        config_lib.VISHWAM_4B_CONFIG,
        "4B model, Gemma-3-4B-like shapes (GQA 8/4, head_dim 256, window 1024, 5:1 local:global).",
    ),
    "vishwam_12b": (
        config_lib.VISHWAM_12B_CONFIG,
        "12B model, Gemma-3-12B-like shapes (GQA 16/8, head_dim 256, window 1024, 5:1 local:global).",
    ),
}


def backbone_config(model_config):
    config = {"name": "vishwam_backbone", "trainable": True}
    config.update(model_config.to_backbone_kwargs())
    if config["layer_types"] is None:
        del config["layer_types"]
    return {
        "module": "vishwam_keras.models.backbone",
        "class_name": "VishwamBackbone",
        "config": config,
        "registered_name": "vishwam_keras>VishwamBackbone",
    }


def write_preset(name, model_config, description, sequence_length=8192):
    directory = ROOT / name
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = VishwamTokenizer(proto=default_vocabulary_path())
    if tokenizer.vocabulary_size() != model_config.vocabulary_size:
        raise ValueError(
            f"{name}: vocabulary_size {model_config.vocabulary_size} does not match the "
            f"tokenizer's {tokenizer.vocabulary_size()}"
        )
    VishwamCausalLMPreprocessor(tokenizer, sequence_length=sequence_length).save_to_preset(
        str(directory)
    )
    with open(directory / "config.json", "w") as f:
        json.dump(backbone_config(model_config), f, indent=4)
    metadata = {
        "keras_version": keras.__version__,
        "keras_hub_version": keras_hub.__version__,
        "parameter_count": model_config.num_parameters(),
        "text_parameter_count": model_config.num_parameters(),
        "description": description,
        "has_weights": False,
        "date_saved": datetime.date.today().isoformat(),
    }
    with open(directory / "metadata.json", "w") as f:
        json.dump(metadata, f, indent=4)
    print(f"{name}: {metadata['parameter_count'] / 1e9:.3f}B parameters -> {directory}")


if __name__ == "__main__":
    for preset_name, (model_config, text) in PRESETS.items():
        write_preset(preset_name, model_config, text)

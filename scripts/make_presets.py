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
from vishwam_keras.layers.vision_encoder import SigLIPVisionEncoder
from vishwam_keras.models.image_converter import VishwamImageConverter
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
        "4B multimodal model, Gemma-3-4B-like text (GQA 8/4, head_dim 256, window 1024, 5:1 "
        "local:global) + SigLIP-So400m-shaped encoder (896 px, 256 tokens), adaptive-gate fusion.",
    ),
    "vishwam_12b": (
        config_lib.VISHWAM_12B_CONFIG,
        "12B multimodal model, Gemma-3-12B-like text (GQA 16/8, head_dim 256, window 1024, 5:1 "
        "local:global) + SigLIP-So400m-shaped encoder (896 px, 256 tokens), adaptive-gate fusion.",
    ),
}


def backbone_config(model_config):
    config = {"name": "vishwam_backbone", "trainable": True}
    config.update(model_config.to_backbone_kwargs())
    if config["layer_types"] is None:
        del config["layer_types"]
    vision = model_config.vision_encoder_kwargs()
    if vision is not None:  # serialised unbuilt: no weights are allocated
        encoder = SigLIPVisionEncoder(**vision, name="vision_encoder")
        config["vision_encoder"] = keras.layers.serialize(encoder)
        config["fusion_type"] = model_config.fusion_type
        config["cross_attn_layers"] = model_config.cross_attn_layers
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
    vision = model_config.vision_encoder_kwargs()
    image_converter = None
    if vision is not None:
        image_converter = VishwamImageConverter(image_size=model_config.image_size)
    VishwamCausalLMPreprocessor(
        tokenizer,
        image_converter=image_converter,
        sequence_length=sequence_length,
        num_vision_tokens_per_image=model_config.num_vision_tokens if vision else 1,
    ).save_to_preset(str(directory))
    with open(directory / "config.json", "w") as f:
        json.dump(backbone_config(model_config), f, indent=4)
    metadata = {
        "keras_version": keras.__version__,
        "keras_hub_version": keras_hub.__version__,
        "parameter_count": model_config.num_parameters(),
        "text_parameter_count": config_lib.count_backbone_parameters(
            **model_config.to_backbone_kwargs()
        ),
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

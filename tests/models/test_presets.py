import json
import os
import warnings

import keras
import numpy as np
import pytest

from conftest import tiny_backbone_kwargs
from vishwam_keras import (
    MODEL_CONFIGS,
    VishwamBackbone,
    VishwamCausalLM,
    VishwamCausalLMPreprocessor,
    VishwamTokenizer,
    available_presets,
    count_backbone_parameters,
)
from vishwam_keras.models import presets


@pytest.mark.parametrize("name,target", [("vishwam_1b", 1e9), ("vishwam_4b", 4e9), ("vishwam_12b", 12e9)])
def test_shipped_preset_metadata_and_config(name, target):
    assert name in available_presets()
    folder = presets.resolve_preset(name)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)["config"]
    count = MODEL_CONFIGS[name].num_parameters()
    assert abs(count - target) / target <= 0.10
    assert presets.preset_metadata(name)["parameter_count"] == count
    if name != "vishwam_1b":  # the multimodal presets carry a So400m-shaped encoder
        assert config["vision_encoder"]["config"]["num_layers"] == 27
        assert config["fusion_type"] == "adaptive_gate"
    assert config["head_dim"] == 256 and config["sliding_window_pattern"] == 6
    assert config["num_query_heads"] % config["num_key_value_heads"] == 0


def test_preset_config_builds_a_real_backbone_when_shrunk():
    with open(os.path.join(presets.resolve_preset("vishwam_1b"), "config.json")) as f:
        config = json.load(f)["config"]
    config.update(num_layers=1, layer_types=["global"])
    backbone = VishwamBackbone.from_config(config)
    assert backbone.count_params() == count_backbone_parameters(**config)


def test_tokenizer_and_preprocessor_load_by_name():
    tokenizer = VishwamTokenizer.from_preset("vishwam_4b")
    assert tokenizer.vocabulary_size() == 8192
    preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_4b", sequence_length=12)
    x, y, w = preprocessor(["To be, or not to be"])
    assert tuple(x["token_ids"].shape) == (1, 12)
    assert int(x["token_ids"][0, 0]) == tokenizer.start_token_id


def test_unknown_preset_name_is_a_clear_error():
    with pytest.raises(ValueError, match="vishwam_9b"):
        VishwamCausalLM.from_preset("vishwam_9b")
    with pytest.raises(ValueError, match="preset"):
        VishwamBackbone.from_preset("no_such_model")


def test_save_to_preset_and_from_preset_round_trip(tmp_path):
    preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_1b", sequence_length=16)
    lm = VishwamCausalLM(
        VishwamBackbone(**tiny_backbone_kwargs(vocabulary_size=8192)), preprocessor=preprocessor
    )
    lm.save_to_preset(str(tmp_path))
    restored = VishwamCausalLM.from_preset(str(tmp_path))
    x = {"token_ids": np.array([[2, 100, 200, 300]]), "padding_mask": np.ones((1, 4), "int32")}
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(lm(x)), keras.ops.convert_to_numpy(restored(x)), atol=1e-6
    )
    lm.compile(sampler="greedy")
    restored.compile(sampler="greedy")
    assert lm.generate("To be", max_length=10) == restored.generate("To be", max_length=10)


def test_weightless_preset_warns_once_and_honours_dtype(monkeypatch, tmp_path):
    # A shrunken copy of a shipped preset: same files, 1 layer, so it builds fast.
    folder = presets.resolve_preset("vishwam_1b")
    for name in ("tokenizer.json", "preprocessor.json", "metadata.json"):
        with open(os.path.join(folder, name)) as src, open(tmp_path / name, "w") as dst:
            dst.write(src.read())
    os.makedirs(tmp_path / "assets" / "tokenizer")
    with open(os.path.join(folder, "assets", "tokenizer", "vocabulary.spm"), "rb") as src:
        (tmp_path / "assets" / "tokenizer" / "vocabulary.spm").write_bytes(src.read())
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config["config"].update(num_layers=1, layer_types=["global"])
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm = VishwamCausalLM.from_preset(str(tmp_path), dtype="bfloat16")
        VishwamBackbone.from_preset(str(tmp_path))
    messages = [str(w.message) for w in caught if "no trained weights" in str(w.message)]
    assert len(messages) == 1
    assert lm.backbone.dtype_policy.name == "bfloat16"


def test_prompt_longer_than_max_length_is_a_clear_error():
    preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_1b", sequence_length=16)
    lm = VishwamCausalLM(
        VishwamBackbone(**tiny_backbone_kwargs(vocabulary_size=8192)), preprocessor=preprocessor
    )
    with pytest.raises(ValueError, match="max_length"):
        lm.generate("word " * 40, max_length=8)


@pytest.mark.slow
def test_vishwam_4b_loads_by_name_and_generates():
    lm = VishwamCausalLM.from_preset("vishwam_4b", dtype="bfloat16")
    assert abs(lm.backbone.count_params() - 4e9) / 4e9 <= 0.10
    assert lm.backbone.has_vision
    assert isinstance(lm.generate("To be", max_length=6), str)

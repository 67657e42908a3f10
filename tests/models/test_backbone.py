import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_backbone_kwargs
from vishwam_keras import (
    MODEL_CONFIGS,
    MultimodalConfig,
    VishwamBackbone,
    count_backbone_parameters,
)


def _inputs(batch=2, length=7):
    token_ids = np.random.randint(0, 97, (batch, length)).astype("int32")
    padding_mask = np.ones((batch, length), "int32")
    padding_mask[-1, length - 2 :] = 0
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def test_config_round_trip_and_layer_pattern():
    backbone = VishwamBackbone(**tiny_backbone_kwargs(num_layers=6, sliding_window_pattern=3))
    assert backbone.layer_types == ["local", "local", "global"] * 2
    windows = [block.sliding_window_size for block in backbone.transformer_layers]
    assert windows == [4, 4, None, 4, 4, None]
    waves = [block.attention.rotary.max_wavelength for block in backbone.transformer_layers]
    assert waves[:3] == [10000, 10000, 1000000]
    clone = VishwamBackbone.from_config(backbone.get_config())
    assert clone.get_config() == backbone.get_config()


@pytest.mark.parametrize("length", [1, 5, 13])
def test_variable_sequence_lengths(length):
    backbone = VishwamBackbone(**tiny_backbone_kwargs())
    assert tuple(backbone(_inputs(2, length)).shape) == (2, length, 32)


def test_predict_on_arrays_and_tf_data():
    backbone = VishwamBackbone(**tiny_backbone_kwargs())
    x = _inputs(4, 6)
    from_arrays = backbone.predict(x, batch_size=2, verbose=0)
    from_dataset = backbone.predict(tf.data.Dataset.from_tensor_slices(x).batch(2), verbose=0)
    np.testing.assert_allclose(from_arrays, from_dataset, atol=1e-5)


def test_keras_file_save_and_load(tmp_path):
    backbone = VishwamBackbone(**tiny_backbone_kwargs())
    x = _inputs()
    path = os.path.join(tmp_path, "backbone.keras")
    backbone.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(backbone(x)), keras.ops.convert_to_numpy(restored(x)), atol=1e-6
    )


def test_mixed_bfloat16_forward():
    backbone = VishwamBackbone(**tiny_backbone_kwargs(), dtype="mixed_bfloat16")
    out = backbone(_inputs())
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(backbone.token_embedding.embeddings.dtype) == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(num_key_value_heads=1, use_query_key_norm=False),
        dict(num_layers=5, layer_types=["global", "local", "local", "global", "local"]),
    ],
)
def test_parameter_count_function_matches_count_params(overrides):
    kwargs = tiny_backbone_kwargs(**overrides)
    assert count_backbone_parameters(**kwargs) == VishwamBackbone(**kwargs).count_params()


@pytest.mark.parametrize("fusion_type", ["interleave", "cross_attention", "adaptive_gate"])
@pytest.mark.parametrize("pooling,tokens", [("map", 2), ("avg", 4), (None, 1)])
def test_multimodal_parameter_count_matches_count_params(fusion_type, pooling, tokens):
    config = MultimodalConfig(
        embed_dim=32, num_heads=4, num_kv_heads=2, num_layers=3, vocabulary_size=97,
        sliding_window_size=4, vision_embed_dim=16, vision_num_layers=1, vision_num_heads=2,
        image_size=8, patch_size=2, vision_pooling=pooling, num_vision_tokens=tokens,
        fusion_type=fusion_type, cross_attn_layers=[0, 2],
    )
    assert config.num_parameters() == config.build_backbone().count_params()


@pytest.mark.parametrize("name,target", [("vishwam_1b", 1e9), ("vishwam_4b", 4e9), ("vishwam_12b", 12e9)])
def test_named_configs_are_within_ten_percent(name, target):
    count = MODEL_CONFIGS[name].num_parameters()
    assert abs(count - target) / target <= 0.10, count


def test_token_ids_outside_vocabulary_raise():
    backbone = VishwamBackbone(**tiny_backbone_kwargs())
    x = _inputs()
    x["token_ids"][0, 0] = 97
    with pytest.raises(ValueError, match="token_ids"):
        backbone(x)
    x["token_ids"][0, 0] = -1
    with pytest.raises(ValueError, match="token_ids"):
        backbone(x)


def test_padding_mask_of_wrong_shape_raises():
    backbone = VishwamBackbone(**tiny_backbone_kwargs())
    x = _inputs()
    x["padding_mask"] = x["padding_mask"][:, :3]
    with pytest.raises(ValueError, match="padding_mask"):
        backbone(x)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(num_query_heads=4, num_key_value_heads=3), "num_key_value_heads"),
        (dict(sliding_window_size=0), "sliding_window_size"),
        (dict(vocabulary_size=-5), "vocabulary_size"),
        (dict(layer_types=["local", "medium", "global"]), "layer_types"),
    ],
)
def test_bad_configs(overrides, match):
    with pytest.raises(ValueError, match=match):
        VishwamBackbone(**tiny_backbone_kwargs(**overrides))


def test_multimodal_config_validation():
    with pytest.raises(ValueError, match="num_kv_heads"):
        MultimodalConfig(num_heads=4, num_kv_heads=3)
    assert MultimodalConfig(embed_dim=64, num_heads=4).head_dim == 16


def test_attention_type_per_layer_and_cached_decoding():
    from vishwam_keras import VishwamCausalLM

    kwargs = tiny_backbone_kwargs(
        num_layers=4, sliding_window_pattern=2,
        attention_types=["gqa", "multi_scale", "sparse", "flash"],
        attention_kwargs=[None, {"window_sizes": [2, -1]}, {"block_size": 3, "stride": 2}, None],
    )
    backbone = VishwamBackbone(**kwargs)
    names = [type(b.attention).__name__ for b in backbone.transformer_layers]
    assert names == ["GroupedQueryAttention", "MultiScaleAttention", "SparseAttention", "GroupedQueryAttention"]
    assert backbone.transformer_layers[3].attention.attention_implementation == "blockwise"
    assert VishwamBackbone.from_config(backbone.get_config()).get_config() == backbone.get_config()
    assert count_backbone_parameters(**kwargs) == backbone.count_params()
    lm = VishwamCausalLM(backbone)
    token_ids = np.random.randint(0, 97, (1, 12)).astype("int32")
    full = keras.ops.convert_to_numpy(lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}))
    cache = lm._build_cache(keras.ops.convert_to_tensor(token_ids), 4)
    for t in range(4, 12):
        logits, _, cache = lm.call_with_cache(token_ids[:, t : t + 1], cache, t)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(logits)[:, 0], full[:, t], atol=1e-4)
    with pytest.raises(ValueError, match="attention_type"):
        VishwamBackbone(**tiny_backbone_kwargs(attention_types=["gqa", "linear", "gqa"]))


def _one_sgd_step(rematerialize, training=True):
    from vishwam_keras import VishwamCausalLM

    keras.utils.set_random_seed(0)
    backbone = VishwamBackbone(**tiny_backbone_kwargs(dropout=0.0))
    backbone.enable_rematerialization(rematerialize)
    lm = VishwamCausalLM(backbone)
    lm.compile(optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = _inputs(batch=2, length=7)
    y = np.random.default_rng(1).integers(0, 97, (2, 7)).astype("int32")
    lm(x)  # build
    before = [keras.ops.convert_to_numpy(w) for w in lm.trainable_weights]
    lm.fit(x, y, batch_size=2, epochs=1, verbose=0)
    after = [keras.ops.convert_to_numpy(w) for w in lm.trainable_weights]
    assert sum(not np.array_equal(a, b) for a, b in zip(before, after)) > len(after) // 2
    return lm, after


def test_rematerialization_gives_the_same_update():
    plain_lm, plain = _one_sgd_step(False)
    remat_lm, remat = _one_sgd_step(True)
    assert all(block.rematerialize for block in remat_lm.backbone.transformer_layers)
    for a, b in zip(plain, remat):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Decoding with a cache takes the ordinary path and still matches.
    prompt = {"token_ids": np.array([[2, 5, 7, 0, 0, 0]], "int32"),
              "padding_mask": np.array([[1, 1, 1, 0, 0, 0]], "int32")}
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(remat_lm.generate(prompt, stop_token_ids=None)["token_ids"]),
        keras.ops.convert_to_numpy(plain_lm.generate(prompt, stop_token_ids=None)["token_ids"]),
    )


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="inspects a JAX program")
def test_rematerialization_puts_a_checkpoint_in_the_gradient_program():
    import jax

    x = {k: keras.ops.convert_to_tensor(v) for k, v in _inputs().items()}

    def program(rematerialize):
        backbone = VishwamBackbone(**tiny_backbone_kwargs())
        backbone.enable_rematerialization(rematerialize)
        trainable = [v.value for v in backbone.trainable_variables]

        def loss(values):
            outputs, _ = backbone.stateless_call(values, [v.value for v in backbone.non_trainable_variables], x)
            return keras.ops.sum(outputs)

        return str(jax.make_jaxpr(jax.grad(loss))(trainable))

    assert "checkpoint" not in program(False) and "remat" not in program(False)
    assert "checkpoint" in program(True) or "remat" in program(True)

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from vishwam_keras import VishwamBackbone  # noqa: E402
from vishwam_keras.convert import from_keras_hub_gemma3  # noqa: E402

LENGTH = 14  # longer than the window of 4: local and global layers differ


def _gemma3(**overrides):
    kwargs = dict(
        vocabulary_size=97, image_size=16, num_layers=7, num_query_heads=4,
        num_key_value_heads=2, hidden_dim=32, intermediate_dim=64, head_dim=8,
        use_post_ffw_norm=True, use_post_attention_norm=True, attention_logit_soft_cap=50.0,
        final_logit_soft_cap=30.0, use_sliding_window_attention=True, sliding_window_size=4,
        global_rope_scaling_factor=8.0, dtype="float32",
    )  # 7 layers: local 0-4, global 5, local 6
    kwargs.update(overrides)
    gemma = keras_hub.models.Gemma3Backbone(**kwargs)
    # Random values everywhere, norms included (zero-initialised scales would hide a mix-up).
    rng = np.random.default_rng(0)
    for weight in gemma.weights:
        weight.assign(rng.normal(0.0, 0.3, weight.shape).astype("float32"))
    return gemma


def _inputs():
    rng = np.random.default_rng(1)
    padding_mask = np.ones((3, LENGTH), "int32")
    padding_mask[1, 9:] = 0  # right padding
    padding_mask[2, :3] = 0  # left padding
    token_ids = rng.integers(1, 97, (3, LENGTH)).astype("int32") * padding_mask
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _logits(backbone, inputs):
    """Tied-embedding logits; one compiled call on JAX (eager JAX compiles every op)."""
    model = keras.Model(backbone.input, backbone.token_embedding(backbone.output, reverse=True))
    if keras.backend.backend() != "jax":
        return keras.ops.convert_to_numpy(model(inputs))
    import jax

    forward = jax.jit(lambda weights, x: model.stateless_call(weights, [], x)[0])
    return np.asarray(forward([w.value for w in model.trainable_variables], inputs))


def _max_diff(a, b, inputs):
    return np.abs(a - b)[inputs["padding_mask"].astype(bool)].max()


def test_converted_gemma3_text_backbone_matches_keras_hub_logits():
    gemma = _gemma3()
    backbone = from_keras_hub_gemma3(gemma)
    assert isinstance(backbone, VishwamBackbone)
    assert backbone.layer_types == ["local"] * 5 + ["global", "local"]
    assert backbone.query_pre_attn_scalar == 8
    assert len(backbone.weights) == len(gemma.weights)
    inputs = _inputs()
    expected, logits = _logits(gemma, inputs), _logits(backbone, inputs)
    assert _max_diff(expected, logits, inputs) < 1e-4
    # The comparison sees the window: a window one wider changes the logits.
    for block in backbone.transformer_layers:
        if block.attention.sliding_window_size is not None:
            block.attention.sliding_window_size += 1
    assert _max_diff(expected, _logits(backbone, inputs), inputs) > 1e-3


def test_query_head_dim_normalize_follows_what_keras_hub_computes():
    # KerasHub's Gemma3DecoderBlock builds its attention with query_head_dim_normalize=True
    # whatever the backbone says; the converter follows the blocks and warns.
    gemma = _gemma3(num_layers=1, head_dim=16, query_head_dim_normalize=False)
    with pytest.warns(UserWarning, match="hard-codes query_head_dim_normalize"):
        backbone = from_keras_hub_gemma3(gemma)
    assert backbone.query_pre_attn_scalar == 16
    inputs = _inputs()
    assert _max_diff(_logits(gemma, inputs), _logits(backbone, inputs), inputs) < 1e-4


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"use_post_ffw_norm": False}, "post_ffw_norm"),
        ({"local_rope_scaling_factor": 2.0}, "local_rope_scaling_factor"),
    ],
)
def test_inexpressible_gemma3_options_are_reported(overrides, message):
    with pytest.raises(NotImplementedError, match=message):
        from_keras_hub_gemma3(_gemma3(num_layers=1, **overrides))


def test_vision_conversion_is_pending():
    from keras_hub.src.models.gemma3.gemma3_vision_encoder import Gemma3VisionEncoder

    vision_encoder = Gemma3VisionEncoder(
        image_size=16, patch_size=4, num_heads=2, hidden_dim=8, num_layers=1,
        intermediate_dim=16, output_dim=32, pool_size=2, dtype="float32",
    )
    with pytest.raises(NotImplementedError, match="vision encoder is pending"):
        from_keras_hub_gemma3(_gemma3(num_layers=1, vision_encoder=vision_encoder))
    with pytest.raises(TypeError, match="Gemma3Backbone"):
        from_keras_hub_gemma3(VishwamBackbone(
            vocabulary_size=97, num_layers=1, num_query_heads=2, num_key_value_heads=1,
            hidden_dim=8, intermediate_dim=16, head_dim=4,
        ))

import keras
import numpy as np
import pytest

from numpy_reference import rms_norm
from vishwam_keras.layers.fusion import AdaptiveModalityFusion, GatedCrossAttentionBlock

BATCH, LENGTH, WIDTH, POOLED, VISION_LEN = 3, 5, 16, 8, 4
LEARNING_RATE = 0.5


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def _fusion_inputs():
    text = np.random.randn(BATCH, LENGTH, WIDTH).astype("float32")
    update = np.random.randn(BATCH, LENGTH, WIDTH).astype("float32")
    pooled = np.random.randn(BATCH, POOLED).astype("float32")
    present = np.array([True, False, True])
    return text, update, pooled, present


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _numpy_gate(fusion, text, pooled):
    text = rms_norm(text, _np(fusion.text_norm.scale))
    image = rms_norm(pooled, _np(fusion.image_norm.scale))[:, None, :]
    features = np.concatenate([text, np.broadcast_to(image, text.shape[:2] + image.shape[-1:])], -1)
    hidden = _gelu(features @ _np(fusion.gate_hidden.kernel) + _np(fusion.gate_hidden.bias))
    logits = hidden @ _np(fusion.gate_output.kernel) + _np(fusion.gate_output.bias)
    return np.tanh(_np(fusion.alpha)) / (1 + np.exp(-logits))


def _fusion_model(fusion):
    inputs = [
        keras.Input((LENGTH, WIDTH)), keras.Input((LENGTH, WIDTH)), keras.Input((POOLED,)),
        keras.Input((), dtype="bool"),
    ]
    model = keras.Model(inputs, fusion(*inputs))
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    return model


def test_fusion_is_bit_exact_identity_at_init():
    text, update, pooled, present = _fusion_inputs()
    fusion = AdaptiveModalityFusion(WIDTH)
    assert np.array_equal(_np(fusion(text, update, pooled)), text)
    assert np.array_equal(_np(fusion(text, update, pooled[:, None], image_present=present)), text)


def test_fusion_gate_matches_numpy_with_random_weights():
    text, update, pooled, present = _fusion_inputs()
    fusion = AdaptiveModalityFusion(WIDTH, gate_hidden_dim=6)
    fusion(text, update, pooled)
    rng = np.random.default_rng(3)
    for weight in fusion.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.5)
    gate = _numpy_gate(fusion, text, pooled)
    np.testing.assert_allclose(_np(fusion.compute_gate(text, pooled)), gate, atol=1e-5)
    expected = text + gate * update
    expected[~present] = text[~present]
    out = _np(fusion(text, update, pooled, image_present=present))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_one_step_opens_the_gate_only_for_rows_with_images():
    text, update, pooled, present = _fusion_inputs()
    target = np.random.randn(BATCH, LENGTH, WIDTH).astype("float32")
    fusion = AdaptiveModalityFusion(WIDTH)
    model = _fusion_model(fusion)
    model.train_on_batch([text, update, pooled, present], target)

    # d mse / d alpha = sum(2 (out - target) / N * sech^2(0) * sigmoid(0) * update), out = text.
    rows = present[:, None, None]
    grad_alpha = np.sum(2 * (text - target) / target.size * 0.5 * update * rows)
    assert grad_alpha != 0.0
    np.testing.assert_allclose(_np(fusion.alpha), -LEARNING_RATE * grad_alpha, rtol=1e-4)
    # The gate MLP's gradient was exactly zero (tanh(alpha) = 0); it learns from step two.
    assert np.all(_np(fusion.gate_output.kernel) == 0.0)

    out = _np(model.predict_on_batch([text, update, pooled, present]))
    assert np.array_equal(out[~present], text[~present])
    assert not np.allclose(out[present], text[present])
    expected = text + np.tanh(_np(fusion.alpha)) * 0.5 * update
    np.testing.assert_allclose(out[present], expected[present], atol=1e-5)


def test_fusion_config_round_trip_and_bad_arguments():
    fusion = AdaptiveModalityFusion(WIDTH, gate_hidden_dim=6, name="fusion")
    config = fusion.get_config()
    assert AdaptiveModalityFusion.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="gate_hidden_dim"):
        AdaptiveModalityFusion(WIDTH, gate_hidden_dim=0)
    with pytest.raises(ValueError, match="hidden_dim"):
        AdaptiveModalityFusion(-1)
    text, update, pooled, _ = _fusion_inputs()
    with pytest.raises(ValueError, match="vision_update"):
        fusion(text, update[..., :4], pooled)
    with pytest.raises(ValueError, match="pooled_image"):
        fusion(text, update, pooled[:, None, None])


# --- GatedCrossAttentionBlock ------------------------------------------------------------


def _block_inputs():
    x = np.random.randn(BATCH, LENGTH, WIDTH).astype("float32")
    vision = np.random.randn(BATCH, VISION_LEN, WIDTH).astype("float32")
    vision_mask = np.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    return x, vision, vision_mask


def _block(use_adaptive_gate):
    return GatedCrossAttentionBlock(
        hidden_dim=WIDTH, num_heads=2, head_dim=8, intermediate_dim=24,
        use_adaptive_gate=use_adaptive_gate,
    )


@pytest.mark.parametrize("use_adaptive_gate", [False, True])
def test_block_is_bit_exact_identity_at_init(use_adaptive_gate):
    x, vision, vision_mask = _block_inputs()
    block = _block(use_adaptive_gate)
    assert np.array_equal(_np(block(x, vision, vision_mask=vision_mask)), x)
    assert np.array_equal(_np(block(x, vision)), x)


@pytest.mark.parametrize("use_adaptive_gate", [False, True])
def test_block_one_step_opens_gates_and_skips_rows_without_images(use_adaptive_gate):
    x, vision, vision_mask = _block_inputs()
    target = np.random.randn(BATCH, LENGTH, WIDTH).astype("float32")
    block = _block(use_adaptive_gate)
    inputs = [
        keras.Input((LENGTH, WIDTH)), keras.Input((VISION_LEN, WIDTH)),
        keras.Input((VISION_LEN,), dtype="bool"),
    ]
    model = keras.Model(inputs, block(inputs[0], inputs[1], vision_mask=inputs[2]))
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    model.train_on_batch([x, vision, vision_mask], target)

    attention_alpha = block.fusion.alpha if use_adaptive_gate else block.attention_alpha
    assert _np(attention_alpha) != 0.0
    assert _np(block.ffn_alpha) != 0.0
    out = _np(model.predict_on_batch([x, vision, vision_mask]))
    assert np.all(np.isfinite(out))
    assert np.array_equal(out[1], x[1])  # no valid vision token: image_present is False
    assert not np.allclose(out[[0, 2]], x[[0, 2]])
    # An explicit image_present overrides the mask.
    present = np.array([True, True, False])
    out = _np(block(x, vision, vision_mask=vision_mask, image_present=present))
    assert np.array_equal(out[2], x[2])


def test_block_config_round_trip():
    block = GatedCrossAttentionBlock(
        hidden_dim=WIDTH, num_heads=2, head_dim=8, intermediate_dim=24,
        use_adaptive_gate=True, num_key_value_heads=1, vision_dim=12, gate_hidden_dim=4,
        name="gated_xattn",
    )
    x, _, vision_mask = _block_inputs()
    vision = np.random.randn(BATCH, VISION_LEN, 12).astype("float32")
    pooled = np.random.randn(BATCH, 12).astype("float32")
    block(x, vision, vision_mask=vision_mask, pooled_image=pooled)
    rng = np.random.default_rng(4)
    for weight in block.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.2)
    out = _np(block(x, vision, vision_mask=vision_mask, pooled_image=pooled))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(block))
    assert restored.get_config() == block.get_config()
    restored.set_weights(block.get_weights())
    np.testing.assert_allclose(
        _np(restored(x, vision, vision_mask=vision_mask, pooled_image=pooled)), out, atol=1e-5
    )

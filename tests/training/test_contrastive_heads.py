"""The contrastive towers' heads: feature standardisation and the position-keeping token head,
each against a NumPy computation."""

import keras
import numpy as np
import pytest

from conftest import tiny_vision_backbone
from vishwam_keras import VishwamCausalLM
from vishwam_keras.training.losses import (
    ContrastiveAlignment,
    FeatureStandardization,
    contrastive_grid,
)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def test_feature_standardization_uses_masked_batch_moments_and_updates_running_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (6, 5)).astype("float32")
    mask = np.array([1, 1, 0, 1, 0, 1], bool)
    layer = FeatureStandardization(momentum=0.9, epsilon=1e-3)
    out = _np(layer(x, row_mask=mask, training=True))
    rows = x[mask].astype("float64")
    mean, var = rows.mean(0), rows.var(0)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(layer.moving_mean), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(_np(layer.moving_variance), 0.9 + 0.1 * var, rtol=1e-5)
    # Inference uses the running moments.
    expected = (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + 1e-3)
    np.testing.assert_allclose(_np(layer(x, training=False)), expected, rtol=1e-4, atol=1e-5)


def test_feature_standardization_batch_without_rows_keeps_running_moments():
    layer = FeatureStandardization(momentum=0.5)
    x = np.ones((3, 2, 4), "float32")
    layer(x, training=True)  # builds and moves the moments to 0.5 / 0.5
    before = (_np(layer.moving_mean), _np(layer.moving_variance))
    out = _np(layer(x * 7.0, row_mask=np.zeros((3, 2), bool), training=True))
    np.testing.assert_allclose(_np(layer.moving_mean), before[0])
    np.testing.assert_allclose(_np(layer.moving_variance), before[1])
    assert np.all(np.isfinite(out))
    expected = np.broadcast_to((7.0 - before[0]) / np.sqrt(before[1] + 1e-3), out.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "tokens,expected", [(16, (4, 1)), (4, (2, 1)), (64, (8, 2)), (256, (16, 4)), (36, (6, 2)), (5, (None, 1))]
)
def test_contrastive_grid(tokens, expected):
    assert contrastive_grid(tokens) == expected


def _token_head(tokens_per_image, width=8):
    head = ContrastiveAlignment(
        width, image_token_ids=[6], pooling="tokens", tokens_per_image=tokens_per_image, name="c"
    )
    head.build((None, None, 10))
    return head


def test_token_head_matches_numpy_and_keeps_positions():
    rng = np.random.default_rng(1)
    n, width = 4, 8
    head = _token_head(n, width)
    kernel = _np(head.image_projection.kernel)
    mean = rng.normal(size=n * width).astype("float32")
    variance = rng.uniform(0.5, 2.0, n * width).astype("float32")
    head.image_norm.moving_mean.assign(mean)
    head.image_norm.moving_variance.assign(variance)
    tokens = rng.normal(size=(3, 2 * n, width)).astype("float32")  # two images per row
    mask = np.repeat(np.array([[1, 1], [1, 0], [0, 1]], bool), n, axis=1)
    got = _np(head.embed_image(tokens, mask, training=False))
    per_image = tokens.reshape(3, 2, n * width)
    projected = ((per_image - mean) / np.sqrt(variance + 1e-3)) @ kernel
    expected = np.stack([projected[0].mean(0), projected[1, 0], projected[2, 1]])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # Swapping two tokens of an image (an item moved) changes the token head's embedding;
    # the mean head cannot tell.
    swapped = tokens.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    moved = _np(head.embed_image(swapped, mask, training=False))
    assert np.abs(moved - got).max() > 1e-3
    mean_head = ContrastiveAlignment(width, image_token_ids=[6], pooling="mean", name="m")
    mean_head.build((None, None, 10))
    np.testing.assert_allclose(
        _np(mean_head.embed_image(None, pooled_image=tokens[:, :n].mean(1))),
        _np(mean_head.embed_image(None, pooled_image=swapped[:, :n].mean(1))), rtol=1e-6,
    )


def test_token_head_averages_a_large_grid_down_to_four_by_four():
    rng = np.random.default_rng(2)
    width = 3
    head = _token_head(64, width)  # an 8 x 8 grid -> 4 x 4
    assert tuple(head.image_projection.kernel.shape) == (16 * width, width)
    tokens = rng.normal(size=(2, 64, width)).astype("float32")
    got = _np(head.embed_image(tokens, np.ones((2, 64), bool), training=False))
    grid = tokens.reshape(2, 4, 2, 4, 2, width).mean(axis=(2, 4)).reshape(2, 16 * width)
    expected = (grid / np.sqrt(1.0 + 1e-3)) @ _np(head.image_projection.kernel)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_bad_token_head_arguments():
    with pytest.raises(ValueError, match="pooling"):
        ContrastiveAlignment(8, [6], pooling="max")
    with pytest.raises(ValueError, match="tokens_per_image"):
        ContrastiveAlignment(8, [6], pooling="tokens", tokens_per_image=None)


def test_model_default_is_the_token_head_and_old_configs_load_the_mean_head():
    lm = VishwamCausalLM(tiny_vision_backbone())
    assert lm.contrastive_pooling == "tokens"
    assert lm.contrastive_alignment.pooling == "tokens"
    config = lm.get_config()
    assert VishwamCausalLM.from_config(config).contrastive_pooling == "tokens"
    del config["contrastive_pooling"]  # as saved before the option existed
    old = VishwamCausalLM.from_config(config)
    assert old.contrastive_pooling == "mean" and old.contrastive_alignment.pooling == "mean"


def test_embed_images_of_the_model_follow_where_things_are():
    lm = VishwamCausalLM(tiny_vision_backbone())  # 2 tokens per image
    images = np.random.default_rng(3).uniform(-1, 1, (2, 1, 8, 8, 3)).astype("float32")
    mask = np.ones((2, 1), "int32")
    vision = lm.backbone.encode_images(images, mask)
    head = lm.contrastive_alignment
    expected = _np(head.embed_image(vision[0], vision[1]))
    np.testing.assert_allclose(_np(lm.embed_images(images, mask)), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected[0], expected[1])

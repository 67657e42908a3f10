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
    output = backbone.output
    if isinstance(output, dict):  # a VishwamBackbone with a vision encoder
        output = output["sequence_output"]
    model = keras.Model(backbone.input, backbone.token_embedding(output, reverse=True))
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


IMAGE_TOKEN_ID = 6


def _gemma3_vision_encoder(**overrides):
    from keras_hub.src.models.gemma3.gemma3_vision_encoder import Gemma3VisionEncoder

    kwargs = dict(
        image_size=28, patch_size=7, num_heads=2, hidden_dim=8, num_layers=2,
        intermediate_dim=16, output_dim=32, pool_size=2, dtype="float32",
    )  # a 4 x 4 patch grid pooled to 2 x 2: 4 tokens per image, within the window of 4
    kwargs.update(overrides)
    return Gemma3VisionEncoder(**kwargs)


def _vision_inputs(text_only=False):
    """The same batch for both models: two images in row 0, one (and a padded slot) in
    row 1, each image's 4 placeholders apart from the others and from position 0.

    Text only, ours gets no images; KerasHub gets one padded image slot per row (its
    vision encoder fails on zero images under TensorFlow), which its `vision_indices`
    of 0 leave out, as its preprocessor does for rows with fewer images.
    """
    rng = np.random.default_rng(2)
    padding_mask = np.ones((2, LENGTH), "int32")
    padding_mask[1, 11:] = 0
    token_ids = rng.integers(IMAGE_TOKEN_ID + 1, 97, (2, LENGTH)).astype("int32")
    if not text_only:
        token_ids[0, 2:6] = token_ids[0, 8:12] = token_ids[1, 3:7] = IMAGE_TOKEN_ID
    token_ids *= padding_mask
    images = rng.normal(0.0, 1.0, (2, 1 if text_only else 2, 28, 28, 3)).astype("float32")
    image_mask = np.ones((2, 2), "int32")
    vision_mask = (token_ids == IMAGE_TOKEN_ID).astype("int32")
    vision_indices = np.zeros((2, 4 * images.shape[1]), "int32")  # KerasHub pads with 0
    for row in range(2):
        positions = np.flatnonzero(vision_mask[row])
        vision_indices[row, : len(positions)] = positions
    if not text_only:
        images[1, 1], image_mask[1, 1] = 0.0, 0
    shared = {"token_ids": token_ids, "padding_mask": padding_mask}
    ours = {**shared, "images": images[:, :0] if text_only else images,
            "image_mask": image_mask[:, :0] if text_only else image_mask}
    theirs = {**shared, "images": images, "vision_indices": vision_indices,
              "vision_mask": vision_mask}
    return ours, theirs


@pytest.fixture(scope="module")
def vision_gemma():
    return _gemma3(image_size=28, vision_encoder=_gemma3_vision_encoder())


@pytest.mark.parametrize("text_only", [False, True], ids=["images", "text_only"])
def test_converted_gemma3_vision_backbone_matches_keras_hub_logits(vision_gemma, text_only):
    backbone = from_keras_hub_gemma3(vision_gemma, image_token_id=IMAGE_TOKEN_ID)
    encoder = backbone.vision_encoder
    assert (encoder.pooling, encoder.num_output_tokens, backbone.fusion_type) == (
        "avg", 4, "interleave"
    )
    assert len(backbone.weights) == len(vision_gemma.weights)
    ours, theirs = _vision_inputs(text_only)
    expected = _logits(vision_gemma, theirs)
    assert _max_diff(expected, _logits(backbone, ours), ours) < 1e-4


def test_gemma3_vision_weights_are_copied(vision_gemma):
    ours, theirs = _vision_inputs()
    before = from_keras_hub_gemma3(vision_gemma, image_token_id=IMAGE_TOKEN_ID)
    weight = vision_gemma.vision_encoder.get_layer("image_encoder").resblocks[-1].mlp_dense_2.bias
    original = keras.ops.convert_to_numpy(weight.value)
    try:
        # Not a constant shift: the encoder's final LayerNorm would remove it.
        weight.assign(original + np.linspace(-1.0, 1.0, original.size, dtype="float32"))
        after = from_keras_hub_gemma3(vision_gemma, image_token_id=IMAGE_TOKEN_ID)
        expected = _logits(vision_gemma, theirs)
        assert _max_diff(expected, _logits(after, ours), ours) < 1e-4
        assert _max_diff(expected, _logits(before, ours), ours) > 1e-3
    finally:
        weight.assign(original)


@pytest.mark.parametrize(
    "encoder_overrides, image_token_id, error, message",
    [
        ({}, None, ValueError, "needs `image_token_id`"),
        ({}, 97, ValueError, "needs `image_token_id`"),
        ({"pool_size": 3}, 6, NotImplementedError, "pool size to divide the patch grid"),
        ({"pool_size": 1}, 6, NotImplementedError, "16 tokens per image > sliding_window"),
        ({"layer_norm_epsilon": 1e-5}, 6, NotImplementedError, "vision norm epsilon"),
    ],
)
def test_inexpressible_gemma3_vision_options_are_reported(
    encoder_overrides, image_token_id, error, message
):
    vision_encoder = _gemma3_vision_encoder(num_layers=1, **encoder_overrides)
    gemma = _gemma3(num_layers=1, image_size=28, vision_encoder=vision_encoder)
    with pytest.raises(error, match=message):
        from_keras_hub_gemma3(gemma, image_token_id=image_token_id)


def test_only_gemma3_backbones_convert():
    with pytest.raises(TypeError, match="Gemma3Backbone"):
        from_keras_hub_gemma3(VishwamBackbone(
            vocabulary_size=97, num_layers=1, num_query_heads=2, num_key_value_heads=1,
            hidden_dim=8, intermediate_dim=16, head_dim=4,
        ))

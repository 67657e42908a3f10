import math
import types

import keras
import numpy as np
import pytest

from vishwam_keras.training.losses import (
    LanguageModelLoss,
    MultimodalLoss,
    MultimodalLossMixin,
    SigmoidContrastiveLoss,
    compute_multimodal_loss,
    language_model_loss,
    sigmoid_contrastive_loss,
)


# === Independent NumPy references ===
def np_language_model_loss(y_true, logits, weights=None):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, y_true[..., None], axis=-1)[..., 0]
    weights = np.ones_like(nll) if weights is None else weights.astype(np.float64)
    return (nll * weights).sum() / weights.sum()


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_sigmoid_contrastive(z_img, z_txt, t_prime, b):
    z_img = z_img / np.linalg.norm(z_img, axis=-1, keepdims=True)
    z_txt = z_txt / np.linalg.norm(z_txt, axis=-1, keepdims=True)
    logits = z_img @ z_txt.T * np.exp(t_prime) + b
    labels = 2 * np.eye(len(z_img)) - 1
    return -np_log_sigmoid(labels * logits).sum() / len(z_img)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


# === Language-model loss ===
def test_language_model_loss_matches_numpy_over_unmasked_tokens():
    y_true = np.random.randint(0, 11, (3, 7))
    logits = np.random.randn(3, 7, 11).astype("float32") * 3
    mask = (np.random.rand(3, 7) > 0.4).astype("float32")
    mask[0, 0] = 1
    expected = np_language_model_loss(y_true, logits, mask)
    np.testing.assert_allclose(_np(language_model_loss(y_true, logits, mask)), expected, rtol=1e-5)
    np.testing.assert_allclose(_np(LanguageModelLoss()(y_true, logits, sample_weight=mask)), expected, rtol=1e-5)
    np.testing.assert_allclose(_np(language_model_loss(y_true, logits)), np_language_model_loss(y_true, logits), rtol=1e-5)
    # Masked tokens (prompt, padding, image placeholders) do not matter.
    changed = logits.copy()
    changed[mask == 0] = np.random.randn(int((mask == 0).sum()), 11) * 50
    np.testing.assert_allclose(_np(language_model_loss(y_true, changed, mask)), expected, rtol=1e-5)


def test_language_model_loss_is_float32_from_half_precision_logits():
    y_true = np.random.randint(0, 5, (2, 4))
    logits = keras.ops.cast(np.random.randn(2, 4, 5), "float16")
    loss = language_model_loss(y_true, logits, np.ones((2, 4)))
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"


def test_language_model_loss_all_masked_is_zero_and_bad_shapes_raise():
    y_true = np.zeros((2, 3), "int32")
    assert float(_np(language_model_loss(y_true, np.zeros((2, 3, 4)), np.zeros((2, 3))))) == 0.0
    with pytest.raises(ValueError, match="y_pred"):
        language_model_loss(y_true, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="y_true"):
        language_model_loss(y_true, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="sample_weight"):
        language_model_loss(y_true, np.zeros((2, 3, 4)), np.ones((2, 5)))


def test_language_model_loss_class_serialises():
    loss = LanguageModelLoss(name="lm")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, LanguageModelLoss) and restored.name == "lm"
    assert restored.reduction == "mean_with_sample_weight"


# === Sigmoid contrastive loss ===
def test_sigmoid_contrastive_loss_matches_numpy():
    z_img = np.random.randn(5, 6).astype("float32")
    z_txt = (z_img + 0.5 * np.random.randn(5, 6)).astype("float32")
    for t_prime, b in [(math.log(10.0), -10.0), (1.3, 0.7)]:
        expected = np_sigmoid_contrastive(z_img.astype(np.float64), z_txt.astype(np.float64), t_prime, b)
        got = sigmoid_contrastive_loss(z_img, z_txt, t_prime, b)
        np.testing.assert_allclose(_np(got), expected, rtol=1e-5)


def test_sigmoid_contrastive_layer_initialisation_and_call():
    head = SigmoidContrastiveLoss(name="contrastive_head")
    z_img, z_txt = np.random.randn(4, 3).astype("float32"), np.random.randn(4, 3).astype("float32")
    loss = head(z_img, z_txt)
    np.testing.assert_allclose(_np(head.log_temperature), math.log(10.0), rtol=1e-6)
    np.testing.assert_allclose(_np(head.bias), -10.0)
    np.testing.assert_allclose(_np(head.temperature), 10.0, rtol=1e-6)
    np.testing.assert_allclose(_np(loss), np_sigmoid_contrastive(z_img, z_txt, math.log(10.0), -10.0), rtol=1e-5)
    assert len(head.trainable_weights) == 2


def test_sigmoid_contrastive_layer_serialises_with_weights():
    head = SigmoidContrastiveLoss(initial_temperature=3.0, initial_bias=-2.0, name="contrastive_head")
    head.build()
    head.bias.assign(-4.5)
    restored = keras.layers.deserialize(keras.layers.serialize(head))
    restored.set_weights(head.get_weights())
    assert restored.get_config() == head.get_config()
    z = np.random.randn(3, 4).astype("float32")
    np.testing.assert_allclose(_np(restored(z, z)), _np(head(z, z)), rtol=1e-6)


def test_sigmoid_contrastive_bad_inputs_raise():
    with pytest.raises(ValueError, match="initial_temperature"):
        SigmoidContrastiveLoss(initial_temperature=0.0)
    with pytest.raises(ValueError, match="image_embeddings"):
        sigmoid_contrastive_loss(np.ones((2, 3, 4)), np.ones((2, 4)), 0.0, 0.0)
    with pytest.raises(ValueError, match="text_embeddings"):
        sigmoid_contrastive_loss(np.ones((2, 4)), np.ones((3, 4)), 0.0, 0.0)


# === Weighting ===
def test_uncertainty_weighting_matches_kendall_formula():
    weighting = MultimodalLoss(name="multimodal_loss")
    weighting.build()
    s = np.array([0.3, -0.7], "float32")
    weighting.log_variances.assign(s)
    parts = weighting({"language_modeling": 2.5, "contrastive": 0.8})
    expected = np.exp(-s[0]) * 2.5 + s[0] + np.exp(-s[1]) * 0.8 + s[1]
    np.testing.assert_allclose(_np(parts["loss"]), expected, rtol=1e-6)
    np.testing.assert_allclose(_np(parts["contrastive_weight"]), np.exp(-s[1]), rtol=1e-6)
    np.testing.assert_allclose(_np(parts["language_modeling_loss"]), 2.5)
    # A single present loss is returned unweighted (a text-only batch trains on the LM loss).
    np.testing.assert_allclose(_np(weighting({"language_modeling": 2.5, "contrastive": None})["loss"]), 2.5)


def test_fixed_weighting_and_serialisation():
    weighting = MultimodalLoss(weighting="fixed", loss_weights={"contrastive": 0.25}, name="multimodal_loss")
    parts = weighting({"language_modeling": 2.0, "contrastive": 4.0})
    np.testing.assert_allclose(_np(parts["loss"]), 3.0)
    restored = keras.layers.deserialize(keras.layers.serialize(weighting))
    assert restored.get_config() == weighting.get_config()
    uncertainty = MultimodalLoss(name="multimodal_loss")
    uncertainty.build()
    uncertainty.log_variances.assign([0.1, 0.2])
    copy = keras.layers.deserialize(keras.layers.serialize(uncertainty))
    copy.set_weights(uncertainty.get_weights())
    np.testing.assert_allclose(_np(copy.log_variances), [0.1, 0.2])


def test_weighting_bad_arguments_raise():
    with pytest.raises(ValueError, match="weighting"):
        MultimodalLoss(weighting="magic")
    with pytest.raises(ValueError, match="loss_weights"):
        MultimodalLoss(loss_weights={"contrastive": 2.0})
    with pytest.raises(ValueError, match="loss_weights"):
        MultimodalLoss(weighting="fixed", loss_weights={"vqa": 1.0})
    with pytest.raises(ValueError, match="loss_names"):
        MultimodalLoss(loss_names=["a", "a"])
    with pytest.raises(ValueError, match="outside"):
        MultimodalLoss()({"captioning": 1.0})


def test_loss_scales_multiply_whole_terms_and_zero_drops_one():
    weighting = MultimodalLoss(name="multimodal_loss")
    weighting.build()
    s = np.array([0.3, -0.7], "float32")
    weighting.log_variances.assign(s)
    lm, contrastive = np.exp(-s[0]) * 2.5 + s[0], np.exp(-s[1]) * 0.8 + s[1]
    weighting.set_loss_scales({"contrastive": 4.0})
    parts = weighting({"language_modeling": 2.5, "contrastive": 0.8})
    np.testing.assert_allclose(_np(parts["loss"]), lm + 4.0 * contrastive, rtol=1e-6)
    weighting.set_loss_scales({"contrastive": 0.0})
    parts = weighting({"language_modeling": 2.5, "contrastive": 0.8})
    np.testing.assert_allclose(_np(parts["loss"]), lm, rtol=1e-6)
    np.testing.assert_allclose(_np(parts["contrastive_loss"]), 0.8)  # still reported
    weighting.set_loss_scales(None)
    np.testing.assert_allclose(
        _np(weighting({"language_modeling": 2.5, "contrastive": 0.8})["loss"]), lm + contrastive, rtol=1e-6
    )
    weighting.set_loss_scales({"language_modeling": 0.5})  # a text-only batch: one loss present
    np.testing.assert_allclose(_np(weighting({"language_modeling": 2.5, "contrastive": None})["loss"]), 1.25)
    weighting.set_loss_scales(None)
    fixed = MultimodalLoss(weighting="fixed", loss_weights={"contrastive": 0.25}, name="multimodal_loss")
    fixed.set_loss_scales({"language_modeling": 2.0})
    np.testing.assert_allclose(_np(fixed({"language_modeling": 2.0, "contrastive": 4.0})["loss"]), 5.0)
    for scales, match in (({"vqa": 1.0}, "outside"), ({"contrastive": -1.0}, "finite"),
                          ({"contrastive": float("inf")}, "finite"), ([1.0], "dict")):
        with pytest.raises(ValueError, match=match):
            weighting.set_loss_scales(scales)


# === compute_multimodal_loss ===
def test_text_only_reduces_to_language_model_loss():
    y = np.random.randint(0, 9, (2, 5))
    logits = np.random.randn(2, 5, 9).astype("float32")
    mask = np.ones((2, 5), "float32")
    mask[:, :2] = 0
    model = types.SimpleNamespace()  # no heads needed without image embeddings
    loss = compute_multimodal_loss(model, None, y, logits, mask)
    np.testing.assert_allclose(_np(loss), np_language_model_loss(y, logits, mask), rtol=1e-5)


def test_multimodal_batch_combines_and_tracks_parts():
    head = SigmoidContrastiveLoss(name="contrastive_head")
    weighting = MultimodalLoss(name="multimodal_loss")
    head.build()
    weighting.build()
    model = types.SimpleNamespace(contrastive_head=head, multimodal_loss=weighting)
    y = np.random.randint(0, 9, (4, 5))
    logits = np.random.randn(4, 5, 9).astype("float32")
    z_img, z_txt = np.random.randn(4, 6).astype("float32"), np.random.randn(4, 6).astype("float32")
    loss, parts = compute_multimodal_loss(model, None, y, logits, None, z_txt, z_img, return_parts=True)
    lm = np_language_model_loss(y, logits)
    contrastive = np_sigmoid_contrastive(z_img, z_txt, math.log(10.0), -10.0)
    np.testing.assert_allclose(_np(loss), lm + contrastive, rtol=1e-5)  # s = 0 at init
    np.testing.assert_allclose(_np(parts["contrastive_loss"]), contrastive, rtol=1e-5)
    np.testing.assert_allclose(_np(weighting.loss_trackers["contrastive"].result()), contrastive, rtol=1e-5)
    with pytest.raises(ValueError, match="image_embedding"):
        compute_multimodal_loss(model, None, y, logits, None, text_embedding=z_txt)
    with pytest.raises(ValueError, match="contrastive_head"):
        compute_multimodal_loss(types.SimpleNamespace(), None, y, logits, None, z_txt, z_img)


class TwoTowerModel(MultimodalLossMixin, keras.Model):
    """A toy image-text model: logits plus pooled text and image embeddings."""


def _two_tower(vocab=12, dim=8):
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    images = keras.Input((5,), name="images")
    hidden = keras.layers.Embedding(vocab, dim, name="token_embedding")(token_ids)
    logits = keras.layers.Dense(vocab, name="lm_head")(hidden)
    text_embedding = keras.layers.GlobalAveragePooling1D(name="text_pool")(hidden)
    image_embedding = keras.layers.Dense(dim, name="vision_encoder")(images)
    return TwoTowerModel(
        inputs={"token_ids": token_ids, "images": images},
        outputs={"logits": logits, "text_embedding": text_embedding, "image_embedding": image_embedding},
    )


def test_mixin_trains_heads_and_reports_parts_in_fit_logs():
    model = _two_tower()
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    token_ids = np.random.randint(0, 12, (16, 6)).astype("int32")
    images = np.random.randn(16, 5).astype("float32")
    x = {"token_ids": token_ids, "images": images}
    y = np.roll(token_ids, -1, axis=1)
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    for key in ("loss", "language_modeling_loss", "contrastive_loss"):
        assert key in history.history and all(np.isfinite(history.history[key]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert float(_np(model.contrastive_head.bias)) != -10.0
    assert np.any(_np(model.multimodal_loss.log_variances) != 0.0)


def test_curriculum_stage_loss_scales_switch_the_contrastive_term_off_and_on():
    from vishwam_keras.training.curriculum import CurriculumCallback, CurriculumStage

    model = _two_tower()
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    token_ids = np.random.randint(0, 12, (8, 6)).astype("int32")
    x = {"token_ids": token_ids, "images": np.random.randn(8, 5).astype("float32")}
    y = np.roll(token_ids, -1, axis=1)

    def contrastive_only():  # weights that only the contrastive term moves
        return [_np(v).copy() for v in model.contrastive_head.weights + model.get_layer("vision_encoder").weights]

    stages = [
        CurriculumStage("language_only", 3, loss_scales={"contrastive": 0.0}),
        CurriculumStage("both", 3),
    ]
    callback = CurriculumCallback(stages, stop_at_end=True, verbose=0)
    before = contrastive_only()
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[callback], verbose=0)
    assert callback.stage_index == 0
    for a, b in zip(before, contrastive_only()):
        np.testing.assert_array_equal(a, b)
    assert float(_np(model.multimodal_loss.log_variances)[1]) == 0.0
    model.fit(x, y, batch_size=8, epochs=6, initial_epoch=3, callbacks=[callback], verbose=0)
    assert callback.stage_index == 1 and model.multimodal_loss.loss_scales["contrastive"] == 1.0
    assert any(not np.array_equal(a, b) for a, b in zip(before, contrastive_only()))


def test_check_curriculum_refuses_loss_scales_the_model_cannot_apply():
    from vishwam_keras.training.curriculum import CurriculumStage, check_curriculum

    model = _two_tower()
    with pytest.raises(ValueError, match="outside loss_names"):
        check_curriculum(model, [CurriculumStage("a", 3, loss_scales={"vqa": 1.0})])
    with pytest.raises(ValueError, match="every loss term to zero"):
        check_curriculum(model, [CurriculumStage("a", 3, loss_scales={"contrastive": 0.0, "language_modeling": 0.0})])
    check_curriculum(model, [CurriculumStage("a", 3, loss_scales={"contrastive": 0.0})])


def test_text_only_batches_of_a_causal_lm_take_the_stage_factor():
    from conftest import tiny_vision_backbone
    from vishwam_keras import VishwamCausalLM

    model = VishwamCausalLM(tiny_vision_backbone())
    token_ids = np.random.randint(8, 90, (2, 6)).astype("int32")
    x = {"token_ids": token_ids, "padding_mask": np.ones((2, 6), bool)}
    logits = model(x)
    y = np.roll(token_ids, -1, axis=1)
    plain = _np(model.compute_loss(x, y, logits))
    model.multimodal_loss.set_loss_scales({"language_modeling": 0.25})
    np.testing.assert_allclose(_np(model.compute_loss(x, y, logits)), 0.25 * plain, rtol=1e-6)

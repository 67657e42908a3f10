import keras
import numpy as np
import pytest
import tensorflow as tf

from vishwam_keras.training.curriculum import (
    CONTRASTIVE_PATTERNS,
    LANGUAGE_MODEL_PATTERNS,
    VISION_PATTERNS,
    CurriculumCallback,
    CurriculumStage,
    apply_stage,
    check_curriculum,
    default_curriculum,
    run_curriculum,
)
from vishwam_keras.training.losses import LanguageModelLoss
from vishwam_keras.training.schedules import AdaptiveLearningRateSchedule

VOCAB = 8


def _toy_lm(with_vision=False):
    """Layer names as the real model: token_embedding, decoder_block_*, final_norm; block 0
    nests a `cross_attention` layer, so patterns are exercised at depth."""
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    inputs = {"token_ids": token_ids}
    x = keras.layers.Embedding(VOCAB, 8, name="token_embedding")(token_ids)
    block = keras.Sequential(
        [keras.layers.Dense(8, activation="tanh", name="cross_attention"), keras.layers.Dense(8, name="mlp")],
        name="decoder_block_0",
    )
    x = block(x)
    if with_vision:
        images = keras.Input((4,), name="images")
        inputs["images"] = images
        vision = keras.layers.Dense(8, name="vision_encoder")(images)
        x = x + keras.ops.expand_dims(vision, 1)
    x = keras.layers.Dense(8, activation="tanh", name="decoder_block_1")(x)
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    logits = keras.layers.Dense(VOCAB, name="lm_head")(x)
    return keras.Model(inputs, logits)


def _text_batches(batch_size=4, length=6):
    """Next-token prediction on the cycle 0, 1, ..., VOCAB-1: learnable in a few steps."""
    starts = np.arange(64) % VOCAB
    tokens = (starts[:, None] + np.arange(length + 1)[None]) % VOCAB
    x, y = tokens[:, :-1].astype("int32"), tokens[:, 1:].astype("int32")
    data = tf.data.Dataset.from_tensor_slices(({"token_ids": x}, y, np.ones_like(y, "float32")))
    return data.batch(batch_size, drop_remainder=True).repeat()


def _compiled(model, learning_rate=0.05):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=LanguageModelLoss())
    return model


def _snapshot(model):
    return {v.path: np.array(keras.ops.convert_to_numpy(v.value)) for v in model.weights}


def _changed(before, after):
    return {path for path in before if not np.array_equal(before[path], after[path])}


# === CurriculumStage ===
def test_stage_validation_names_the_argument():
    with pytest.raises(ValueError, match=r"\['text', 'vision'\]"):
        CurriculumStage("a", 10, modalities=["text", "audio"])
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            CurriculumStage("a", steps)
    with pytest.raises(ValueError, match="trainable"):
        CurriculumStage("a", 10, trainable="decoder_block_*")
    with pytest.raises(ValueError, match="frozen"):
        CurriculumStage("a", 10, frozen=[""])
    with pytest.raises(ValueError, match="data_mixture"):
        CurriculumStage("a", 10, data_mixture={"text": -1.0})
    with pytest.raises(ValueError, match="learning_rate"):
        CurriculumStage("a", 10, learning_rate=0.0)
    for scales in ({"contrastive": -1.0}, {"contrastive": float("nan")}, {"contrastive": True}, [0.5]):
        with pytest.raises(ValueError, match="loss_scales"):
            CurriculumStage("a", 10, loss_scales=scales)
    with pytest.raises(ValueError, match="Unknown stage fields"):
        CurriculumStage.from_dict({"name": "a", "steps": 3, "epochs": 2})
    stage = CurriculumStage.from_dict({"name": "a", "steps": 3, "modalities": "vision", "frozen": ("x*",)})
    assert stage.modalities == ["vision"] and stage.frozen == ["x*"]
    assert CurriculumStage.from_dict(stage.to_dict()) == stage


def test_default_curriculum():
    stages = default_curriculum(1000)
    assert [s.name for s in stages] == ["text_pretraining", "vision_alignment", "multimodal_finetuning"]
    assert [s.steps for s in stages] == [600, 200, 200]
    assert stages[0].modalities == ["text"] and stages[1].modalities == ["text", "vision"]
    assert set(VISION_PATTERNS) | set(CONTRASTIVE_PATTERNS) <= set(stages[0].frozen)
    assert stages[1].frozen == list(LANGUAGE_MODEL_PATTERNS)
    assert set(stages[1].trainable) == set(VISION_PATTERNS) | set(CONTRASTIVE_PATTERNS)
    assert stages[2].trainable == "all" and not stages[2].frozen
    assert sum(s.steps for s in default_curriculum(7)) == 7
    with pytest.raises(ValueError, match="total_steps"):
        default_curriculum(2)


def test_default_curriculum_can_train_the_language_model_during_alignment():
    model = _toy_lm(with_vision=True)
    stages = default_curriculum(100, freeze_language_model_in_alignment=False)
    assert stages[1].trainable == "all" and not stages[1].frozen
    plan = apply_stage(model, stages[1])
    paths = {v.path for v in plan["trainable_variables"]}
    assert paths == {v.path for v in model.weights}
    assert {"decoder_block_0/mlp/kernel", "vision_encoder/kernel"} <= paths
    # The default (LLaVA-style) stage trains the vision side only.
    frozen_lm = apply_stage(model, default_curriculum(100)[1])
    assert "decoder_block_0/mlp/kernel" not in {v.path for v in frozen_lm["trainable_variables"]}


# === Freezing by patterns ===
def test_patterns_apply_at_depth_and_the_deepest_match_wins():
    model = _toy_lm(with_vision=True)
    stage = CurriculumStage(
        "align", 5, modalities=["text", "vision"], trainable=list(VISION_PATTERNS), frozen=list(LANGUAGE_MODEL_PATTERNS)
    )
    plan = apply_stage(model, stage)
    trainable = sorted(v.path for v in model.trainable_variables)
    assert sorted(v.path for v in plan["trainable_variables"]) == trainable
    assert not model.get_layer("decoder_block_0").get_layer("mlp").trainable
    assert trainable == [
        "decoder_block_0/cross_attention/bias",
        "decoder_block_0/cross_attention/kernel",
        "vision_encoder/bias",
        "vision_encoder/kernel",
    ]
    apply_stage(model, CurriculumStage("all", 5, frozen=["decoder_block_0/mlp", "final_norm"]))
    frozen = {v.path for v in model.weights} - {v.path for v in model.trainable_variables}
    assert frozen == {"decoder_block_0/mlp/kernel", "decoder_block_0/mlp/bias", "final_norm/gamma", "final_norm/beta"}
    # `frozen` wins over `trainable` on the same layer.
    apply_stage(model, CurriculumStage("x", 5, trainable=["lm_head", "final_norm"], frozen=["final_norm"]))
    assert sorted(v.path for v in model.trainable_variables) == ["lm_head/bias", "lm_head/kernel"]


def test_check_curriculum_rejects_stages_that_cannot_run():
    model = _toy_lm()
    with pytest.raises(ValueError, match="would train no variables"):
        check_curriculum(model, [CurriculumStage("a", 5, trainable=["vision_encoder*"])])
    with pytest.raises(ValueError, match="no vision"):
        check_curriculum(model, default_curriculum(30))
    with pytest.raises(ValueError, match="no `multimodal_loss`"):
        check_curriculum(model, [CurriculumStage("a", 5, loss_scales={"contrastive": 0.0})])


# === CurriculumCallback inside one fit ===
class _StageRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.snapshots, self.stages = {}, []

    def on_train_batch_begin(self, batch, logs=None):
        if batch in (0, 3, 5):
            self.snapshots[batch] = _snapshot(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.stages.append(logs.get("stage"))


def test_callback_switches_stage_mid_fit_freezing_exactly():
    model = _compiled(_toy_lm())
    stages = [
        CurriculumStage("text", 3, frozen=["token_embedding", "decoder_block_0*"]),
        CurriculumStage("embeddings", 2, trainable=["token_embedding"]),
        CurriculumStage("all", 3, learning_rate=0.01),
    ]
    changes = []
    callback = CurriculumCallback(stages, on_stage_change=lambda i, s: changes.append((i, s.name)), verbose=0)
    recorder = _StageRecorder()
    history = model.fit(_text_batches(), steps_per_epoch=8, epochs=1, shuffle=False, callbacks=[callback, recorder], verbose=0)
    s0, s3, s5, end = recorder.snapshots[0], recorder.snapshots[3], recorder.snapshots[5], _snapshot(model)
    frozen_first = {p for p in s0 if p.startswith(("token_embedding", "decoder_block_0"))}
    assert _changed(s0, s3) == set(s0) - frozen_first  # frozen: bit-identical; others trained
    assert _changed(s3, s5) == {"token_embedding/embeddings"}
    assert _changed(s5, end) == set(s0)
    assert recorder.stages == [0, 0, 0, 1, 1, 2, 2, 2] and history.history["stage"] == [2]
    assert changes == [(0, "text"), (1, "embeddings"), (2, "all")]
    assert int(callback.stage_variable.numpy()) == 2 and callback.current_stage.name == "all"
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 8
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)), 0.01)
    assert [entry["step"] for entry in callback.stage_log] == [0, 3, 5]


def test_callback_checks_schedule_boundaries_before_training():
    model = _toy_lm()
    stages = [CurriculumStage("a", 3), CurriculumStage("b", 3)]
    model.compile(keras.optimizers.Adam(AdaptiveLearningRateSchedule(0.01, stage_boundaries=[4])), loss=LanguageModelLoss())
    before = _snapshot(model)
    with pytest.raises(ValueError, match="from_stages"):
        model.fit(_text_batches(), steps_per_epoch=2, epochs=1, shuffle=False, callbacks=[CurriculumCallback(stages, verbose=0)], verbose=0)
    assert not _changed(before, _snapshot(model))


# === run_curriculum ===
def test_run_curriculum_rejects_bad_input_before_training():
    model = _compiled(_toy_lm(with_vision=True))
    before = _snapshot(model)
    stages = [CurriculumStage("text", 4), CurriculumStage("align", 4, modalities=["text", "vision"])]
    with pytest.raises(ValueError, match="No dataset for stage 'align'"):
        run_curriculum(model, {"text": _text_batches()}, stages, verbose=0)
    with pytest.raises(ValueError, match="'images'"):
        run_curriculum(model, {"text": _text_batches(), "align": _text_batches()}, stages, verbose=0)
    with pytest.raises(ValueError, match="repeat"):
        run_curriculum(model, _text_batches().take(2), [CurriculumStage("text", 4)], verbose=0)
    with pytest.raises(ValueError, match="data_mixture sources"):
        mixed = [CurriculumStage("mix", 4, data_mixture={"text": 1.0, "pairs": 1.0})]
        run_curriculum(model, {"text": _text_batches()}, mixed, verbose=0)
    with pytest.raises(ValueError, match="would train no variables"):
        run_curriculum(model, _text_batches(), [CurriculumStage("x", 4, trainable=["nothing*"])], verbose=0)
    with pytest.raises(ValueError, match="compiled"):
        run_curriculum(_toy_lm(), _text_batches(), [CurriculumStage("text", 4)], verbose=0)
    assert not _changed(before, _snapshot(model))
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


def test_run_curriculum_trains_through_stages_and_loss_goes_down():
    model = _toy_lm()
    stages = [
        CurriculumStage("head_only", 15, trainable=["decoder_block_1", "final_norm", "lm_head"]),
        CurriculumStage("mixed", 15, data_mixture={"a": 1.0, "b": 3.0}),
    ]
    schedule = AdaptiveLearningRateSchedule.from_stages(stages, 0.05, warmup_steps=2)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=LanguageModelLoss())
    before = _snapshot(model)
    history = run_curriculum(
        model, {"head_only": _text_batches(), "a": _text_batches(), "b": _text_batches()}, stages, verbose=0
    )
    assert history.history["stage"] == [0, 1] and history.stage_names == ["head_only", "mixed"]
    first, second = history.stage_histories
    assert history.history["loss"][1] < history.history["loss"][0]
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 30
    assert "token_embedding/embeddings" in _changed(before, _snapshot(model))


def test_run_curriculum_says_which_data_each_stage_reads(capsys):
    model = _compiled(_toy_lm())
    stages = [
        CurriculumStage("own", 2, data_mixture={"a": 1.0}),  # its own dataset wins
        CurriculumStage("mixed", 2, data_mixture={"a": 1.0, "b": 3.0}),
    ]
    datasets = {"own": _text_batches(), "a": _text_batches(), "b": _text_batches()}
    run_curriculum(model, datasets, stages, verbose=1)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  data:")]
    assert lines[0].startswith("  data: the dataset given for 'own' (its data_mixture")
    assert "is not used" in lines[0]
    assert lines[1] == "  data: mixture {'a': 1.0, 'b': 3.0} of the datasets of those names"
    run_curriculum(model, _text_batches(), stages[1:], verbose=1)  # one dataset for all
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  data:")]
    assert lines == [
        "  data: the one dataset given for every stage (its data_mixture {'a': 1.0, 'b': 3.0} "
        "is not used: `run_curriculum` mixes only for a dict of datasets without the stage's name)"
    ]


@pytest.mark.slow
def test_run_curriculum_on_a_text_only_causal_lm():
    from conftest import tiny_backbone_kwargs
    from vishwam_keras import VishwamBackbone, VishwamCausalLM

    lm = VishwamCausalLM(VishwamBackbone(**tiny_backbone_kwargs(num_layers=2, vocabulary_size=16)))
    stages = [
        CurriculumStage("frozen_bottom", 12, frozen=["decoder_block_0*", "token_embedding"]),
        CurriculumStage("all", 12),
    ]
    lm.compile(optimizer=keras.optimizers.Adam(AdaptiveLearningRateSchedule.from_stages(stages, 0.02)), loss=LanguageModelLoss())
    tokens = (np.arange(32)[:, None] + np.arange(9)[None]) % 16
    x = {"token_ids": tokens[:, :-1].astype("int32"), "padding_mask": np.ones((32, 8), "int32")}
    data = tf.data.Dataset.from_tensor_slices((x, tokens[:, 1:].astype("int32"), np.ones((32, 8), "float32")))
    data = data.batch(8, drop_remainder=True).repeat()
    recorder = _StageRecorder()
    before = _snapshot(lm)
    history = run_curriculum(lm, data, stages, callbacks=[recorder], verbose=0)
    after_first = history.stage_histories and recorder.snapshots[0]  # snapshot at the start of stage 2
    frozen = {p for p in before if "decoder_block_0/" in p or "token_embedding" in p}
    assert not _changed(before, after_first) & frozen
    assert _changed(before, after_first) == set(before) - frozen
    assert frozen <= _changed(after_first, _snapshot(lm))
    assert history.history["loss"][1] < history.history["loss"][0]


def test_schedule_scale_still_reaches_the_step_after_the_optimizer_is_rebuilt():
    model = _toy_lm()
    stages = [CurriculumStage("a", 2, frozen=["lm_head"]), CurriculumStage("b", 4)]
    schedule = AdaptiveLearningRateSchedule.from_stages(stages, 0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=LanguageModelLoss())

    class ZeroScaleAt(keras.callbacks.Callback):
        snapshots = {}

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 4:
                self.model  # noqa: B018 - syncs the JAX state before the assignment
                schedule.set_scale(0.0)
            self.snapshots[batch] = _snapshot(self.model)

    recorder = ZeroScaleAt()
    model.fit(_text_batches(), steps_per_epoch=6, epochs=1, shuffle=False, verbose=0,
              callbacks=[CurriculumCallback(stages, verbose=0), recorder])
    assert _changed(recorder.snapshots[2], recorder.snapshots[4])  # stage b trains ...
    assert not _changed(recorder.snapshots[4], _snapshot(model))  # ... until the scale is 0


@pytest.mark.slow
def test_default_patterns_match_the_multimodal_backbone():
    from vishwam_keras.models.factory import create_multimodal_model

    model = create_multimodal_model(
        embed_dim=16, num_heads=2, num_layers=2, vocabulary_size=64, sliding_window_size=4,
        vision_embed_dim=8, vision_num_layers=1, vision_num_heads=2, image_size=8, patch_size=4,
        num_vision_tokens=4, fusion_type="adaptive_gate", cross_attn_layers=[1],
    )
    text, align, finetune = (
        {v.path for v in plan["trainable_variables"]} for plan in check_curriculum(model, default_curriculum(30))
    )
    everything = {v.path for v in model.trainable_variables}
    vision = {
        p for p in everything
        if any(k in p for k in ("vision_encoder", "cross_attention_1", "contrastive", "multimodal_loss"))
    }
    assert vision and text == everything - vision
    assert align == vision
    assert finetune == everything

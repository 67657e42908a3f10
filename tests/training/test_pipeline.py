import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_backbone_kwargs
from vishwam_keras import VishwamBackbone, VishwamCausalLM
from vishwam_keras.training import checkpointing
from vishwam_keras.training.pipeline import (
    MEDIUM_MODEL_TRAINING_CONFIG,
    AdvancedTrainingConfig,
    export_without_optimizer,
    main_training_pipeline,
)

STAGES = [
    {"name": "first", "steps": 6, "modalities": ["text"]},
    {"name": "second", "steps": 6, "modalities": ["text"], "frozen": ["decoder_block_0"]},
]


def _dataset():
    tokens = np.random.default_rng(0).integers(4, 97, (16, 9)).astype("int32")
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones_like(tokens[:, :-1])}
    return tf.data.Dataset.from_tensor_slices((x, tokens[:, 1:])).repeat().batch(4)


def _model():
    keras.utils.set_random_seed(0)
    return VishwamCausalLM(VishwamBackbone(**tiny_backbone_kwargs()))


class KillAt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations.value)) == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


def _config(tmp_path, **overrides):
    kwargs = dict(
        model=None, curriculum_stages=STAGES, batch_size=4, checkpoint_every=2,
        checkpoint_dir=str(tmp_path / "ckpt"), log_dir=str(tmp_path / "logs"),
        learning_rate=1e-2, warmup_steps=2,
    )
    kwargs.update(overrides)
    return AdvancedTrainingConfig(**kwargs)


def test_killed_run_resumes_in_the_right_stage_and_matches_an_uninterrupted_run(tmp_path):
    straight = main_training_pipeline(_dataset(), _config(tmp_path / "a"), model=_model(), verbose=0)
    with pytest.raises(KeyboardInterrupt):
        main_training_pipeline(
            _dataset(), _config(tmp_path / "b"), model=_model(), callbacks=[KillAt(9)], verbose=0
        )
    assert checkpointing.latest_checkpoint(str(tmp_path / "b" / "ckpt")).endswith("step-00000008")
    resumed = main_training_pipeline(_dataset(), _config(tmp_path / "b"), model=_model(), verbose=0)
    assert resumed.resumed_from_step == 8
    for a, b in zip(straight.model.weights, resumed.model.weights):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-5, err_msg=a.path
        )
    assert resumed.log_path.endswith("training_log.csv") and resumed.plot_path.endswith(".png")


def test_frozen_layer_is_bit_identical_through_its_stage(tmp_path):
    model = _model()
    config = _config(tmp_path, checkpoint_dir=None)
    config.curriculum_stages[0] = dataclasses.replace(config.curriculum_stages[0], steps=3)
    before = {}

    def remember(index, stage):
        if stage.name == "second":
            before.update({v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights})

    from vishwam_keras.training import curriculum

    original = curriculum.CurriculumCallback.__init__

    def patched(self, stages, on_stage_change=None, **kwargs):
        original(self, stages, on_stage_change=remember, **kwargs)

    curriculum.CurriculumCallback.__init__ = patched
    try:
        main_training_pipeline(_dataset(), config, model=model, verbose=0)
    finally:
        curriculum.CurriculumCallback.__init__ = original
    for v in model.weights:
        after = keras.ops.convert_to_numpy(v)
        if v.path.startswith("decoder_block_0/"):
            np.testing.assert_array_equal(after, before[v.path])
        elif v.path.startswith("decoder_block_1/") and v.path.endswith("kernel"):
            assert not np.array_equal(after, before[v.path])


def test_seed_medium_config_runs_scaled_down(tmp_path):
    from vishwam_keras import TINY_CONFIG

    config = dataclasses.replace(
        MEDIUM_MODEL_TRAINING_CONFIG, model=TINY_CONFIG, curriculum_stages=STAGES[:1],
        batch_size=4, sequence_length=8, use_mixed_precision=False, checkpoint_every=100,
    )
    tokens = np.random.default_rng(0).integers(4, 97, (8, 9)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices(
        ({"token_ids": tokens[:, :-1], "padding_mask": np.ones_like(tokens[:, :-1])}, tokens[:, 1:])
    ).repeat().batch(4)
    model = VishwamCausalLM(TINY_CONFIG.build_backbone())
    result = main_training_pipeline(train_dataset=data, config=config, model=model, verbose=0)
    assert len(result.history.history["loss"]) == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(curriculum_stages=[{"name": "x", "steps": 0, "modalities": ["text"]}]), "steps"),
        (dict(curriculum_stages=[{"name": "x", "steps": 5, "modalities": ["audio"]}]), "modalit"),
        (dict(learning_rate=-1.0), "learning_rate"),
    ],
)
def test_bad_configs_fail_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdvancedTrainingConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(alignment_contrastive_scale=-1.0), "alignment_contrastive_scale"),
        (dict(questions_per_example=0), "questions_per_example"),
        (dict(finetuning_learning_rate=0.0), "finetuning_learning_rate"),
        (dict(question_type_repeats={"exists": 1.5}), "question_type_repeats"),
        (dict(questions_per_example=3, sequence_length=48), "sequence_length"),  # needs ~88
        (dict(answer_format="caption_first", sequence_length=48), "sequence_length"),  # needs 66
        (dict(sequence_length=0), "sequence_length"),
        (dict(answer_format="reasoning"), "answer_format"),
        (dict(retrieval_steps=-1), "retrieval_steps"),
        (dict(finetuning_contrastive_scale=-1.0), "finetuning_contrastive_scale"),
        (dict(retrieval_learning_rate=0.0), "retrieval_learning_rate"),
        (dict(text_mixture={"caption": 1.0}), "text_mixture"),
        (dict(text_mixture={"described_vqa": 0}), "text_mixture"),
        (dict(text_mixture={"described_vqa": 1.0}, answer_format="direct"), "caption_first"),
        (dict(vocabulary_size=4096), "vocabulary_size"),
    ],
)
def test_train_fashion_preset_checks_its_arguments_first(kwargs, match, monkeypatch):
    from vishwam_keras.data import pipelines
    from vishwam_keras.training import pipeline

    def reached(*args, **kwargs):
        raise AssertionError("got past the argument checks")

    monkeypatch.setattr(pipelines, "stage_datasets", reached)
    monkeypatch.setattr(pipeline, "main_training_pipeline", reached)
    with pytest.raises(ValueError, match=match):
        pipeline.train_fashion_preset(total_steps=3, **kwargs)


def test_train_fashion_preset_ends_with_a_heads_only_retrieval_stage(monkeypatch):
    from vishwam_keras.data import pipelines
    from vishwam_keras.training import pipeline

    seen = {}

    class Stop(Exception):
        """Raised where training would start, once the stages and datasets are seen."""

    def capture(datasets, config=None, verbose=None):
        seen["datasets"], seen["stages"] = datasets, config.stages()
        raise Stop

    monkeypatch.setattr(pipelines, "stage_datasets", lambda *a, **k: {name: name for name in pipelines.STAGE_NAMES})
    monkeypatch.setattr(pipelines, "alignment_stage_dataset", lambda *a, **k: ("captions", k.get("seed")))
    monkeypatch.setattr(pipeline, "main_training_pipeline", capture)
    with pytest.raises(Stop):
        pipeline.train_fashion_preset(total_steps=100, retrieval_steps=70, retrieval_learning_rate=5e-4, seed=3)
    stages = seen["stages"]
    assert [s.name for s in stages] == [*pipelines.STAGE_NAMES, "retrieval_alignment"]
    assert sum(s.steps for s in stages[:3]) == 100
    last = stages[-1]
    assert (last.steps, last.learning_rate, last.trainable) == (70, 5e-4, ["contrastive*"])
    assert last.loss_scales == {"language_modeling": 0.0}
    assert seen["datasets"]["retrieval_alignment"] == ("captions", 4)  # another draw than alignment's
    with pytest.raises(Stop):
        pipeline.train_fashion_preset(total_steps=100, retrieval_steps=0)
    assert [s.name for s in seen["stages"]] == list(pipelines.STAGE_NAMES)


def test_train_fashion_preset_sizes_its_sequences_for_the_answer_format(monkeypatch):
    from vishwam_keras.data import pipelines
    from vishwam_keras.training import pipeline

    seen = {}

    class Stop(Exception):
        """Raised where training would start, once the config and data arguments are seen."""

    def datasets(*args, **kwargs):
        seen["answer_format"] = kwargs["answer_format"]
        if kwargs["text_mixture"] is not None:
            seen["text_mixture"] = kwargs["text_mixture"]
        return {name: name for name in pipelines.STAGE_NAMES}

    def capture(datasets, config=None, verbose=None):
        seen["sequence_length"] = config.sequence_length
        raise Stop

    monkeypatch.setattr(pipelines, "stage_datasets", datasets)
    monkeypatch.setattr(pipeline, "main_training_pipeline", capture)
    with pytest.raises(Stop):
        pipeline.train_fashion_preset(total_steps=100, retrieval_steps=0, answer_format="direct")
    assert seen == {"answer_format": "direct", "sequence_length": 48}
    with pytest.raises(Stop):
        pipeline.train_fashion_preset(total_steps=100, retrieval_steps=0)  # caption_checks
    from vishwam_keras.config import FASHION_TINY_CONFIG
    from vishwam_keras.models.factory import create_preprocessor

    preprocessor = create_preprocessor(FASHION_TINY_CONFIG, 48, name="check")
    needed = pipelines.turns_length(preprocessor, 1, "caption_checks") - 1
    assert seen == {"answer_format": "caption_checks", "sequence_length": needed} and needed > 48
    # a named preprocessor names its parts, so it leaves Keras' automatic names alone
    assert (preprocessor.name, preprocessor.tokenizer.name, preprocessor.image_converter.name) == (
        "check", "check_tokenizer", "check_image_converter"
    )
    with pytest.raises(Stop):  # the text stage's mixture reaches the stage datasets
        pipeline.train_fashion_preset(
            total_steps=100, retrieval_steps=0, text_mixture={"text": 1, "described_vqa": 3}, answer_format="caption_first"
        )
    assert seen["text_mixture"] == {"text": 1, "described_vqa": 3}


def test_train_fashion_preset_with_the_fashion_vocabulary(monkeypatch):
    from vishwam_keras.data import pipelines
    from vishwam_keras.training import pipeline

    seen = {}

    class Stop(Exception):
        """Raised where training would start, once the config is seen."""

    def capture(datasets, config=None, verbose=None):
        seen["model"], seen["sequence_length"] = config.model, config.sequence_length
        raise Stop

    monkeypatch.setattr(pipelines, "stage_datasets", lambda *a, **k: {name: name for name in pipelines.STAGE_NAMES})
    monkeypatch.setattr(pipeline, "main_training_pipeline", capture)
    with pytest.raises(Stop):
        pipeline.train_fashion_preset(total_steps=100, retrieval_steps=0, vocabulary_size=2048)
    assert seen["model"].vocabulary_size == 2048
    short = seen["sequence_length"]
    with pytest.raises(Stop):
        pipeline.train_fashion_preset(total_steps=100, retrieval_steps=0)
    assert seen["model"].vocabulary_size == 8192
    # Every scene word is one piece: the longest caption_checks example is 10 tokens shorter.
    assert (short, seen["sequence_length"]) == (68, 78)


def test_export_without_optimizer_saves_every_layer_trainable(tmp_path):
    from conftest import tiny_vision_backbone
    from vishwam_keras.training.curriculum import CurriculumStage, apply_stage

    lm = VishwamCausalLM(tiny_vision_backbone())
    total = len(lm.trainable_weights)
    apply_stage(lm, CurriculumStage("heads", 1, trainable=["contrastive*"]))
    assert len(lm.trainable_weights) < total
    exported = export_without_optimizer(lm)
    assert exported.backbone.trainable and len(exported.trainable_weights) == total
    assert exported.contrastive_pooling == "tokens"


def _text_lines():
    lines = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind",
             "to suffer the slings and arrows", "of outrageous fortune, or to take arms"]
    return tf.data.Dataset.from_tensor_slices(lines).repeat().batch(4)


def test_mixed_precision_with_remat_trains_like_without_remat():
    """`use_mixed_precision` builds a mixed_bfloat16 model (float32 variables, bfloat16
    compute), `gradient_checkpointing` marks every layer for rematerialisation, and
    recomputing activations does not change the training trajectory."""
    from vishwam_keras import TINY_CONFIG

    losses = {}
    for remat in (False, True):
        config = AdvancedTrainingConfig(
            model=TINY_CONFIG, curriculum_stages=[{"name": "text", "steps": 3, "modalities": ["text"]}],
            batch_size=4, sequence_length=16, use_mixed_precision=True, gradient_checkpointing=remat,
            learning_rate=1e-2, warmup_steps=1, seed=0,
        )
        result = main_training_pipeline(_text_lines(), config, verbose=0)
        backbone = result.model.backbone
        assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
        assert backbone.dtype_policy.name == "mixed_bfloat16"
        assert backbone.compute_dtype == "bfloat16"
        assert {v.dtype for v in backbone.trainable_weights} == {"float32"}
        assert [block.rematerialize for block in backbone.transformer_layers] == [remat] * 3
        losses[len(losses)] = result.history.history["loss"][-1]
    assert np.all(np.isfinite(list(losses.values())))
    np.testing.assert_allclose(losses[1], losses[0], rtol=2e-2)


def test_contrastive_bias_starts_at_the_batch_log_odds_and_survives_a_save(tmp_path):
    from vishwam_keras import config as config_lib
    from vishwam_keras.training.pipeline import build_model

    config = AdvancedTrainingConfig(model=config_lib.FASHION_TINY_CONFIG, batch_size=16, sequence_length=16)
    assert config.initial_contrastive_bias() == pytest.approx(-np.log(15.0))
    assert dataclasses.replace(config, contrastive_initial_bias=-10.0).initial_contrastive_bias() == -10.0
    model = build_model(config)
    head = model.contrastive_alignment.head
    assert float(keras.ops.convert_to_numpy(head.bias)) == pytest.approx(-np.log(15.0))
    assert model.get_config()["contrastive_initial_bias"] == pytest.approx(-np.log(15.0))
    # SigLIP's -10 stays the default of the model class itself.
    plain = VishwamCausalLM(model.backbone)
    assert float(keras.ops.convert_to_numpy(plain.contrastive_alignment.head.bias)) == -10.0
    path = str(tmp_path / "model.keras")
    model.save(path)
    assert keras.saving.load_model(path).contrastive_initial_bias == pytest.approx(-np.log(15.0))

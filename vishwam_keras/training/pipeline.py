"""The training pipeline: data + model + curriculum + callbacks -> `fit`, resumable.

`main_training_pipeline(train_dataset, config)` is the seed design's one call; it builds or
takes the model, compiles it with a stage-aware schedule, runs the curriculum through
`model.fit`, checkpoints atomically and resumes from the last checkpoint when rerun.
"""

import csv
import dataclasses
import math
import os
from typing import List, Optional, Union

import keras
import numpy as np

from vishwam_keras import config as config_lib
from vishwam_keras.checks import check_float, check_int
from vishwam_keras.models.presets import resolve_preset
from vishwam_keras.training import checkpointing
from vishwam_keras.training.curriculum import (
    CONTRASTIVE_PATTERNS,
    CurriculumStage,
    _set_trainable,
    apply_stage,
    as_stages,
    default_curriculum,
    rebuild_optimizer,
    run_curriculum,
)
from vishwam_keras.training.losses import LANGUAGE_MODELING, WEIGHTINGS
from vishwam_keras.training.schedules import AdaptiveLearningRateSchedule


@dataclasses.dataclass
class AdvancedTrainingConfig:
    """Everything a training run needs besides the data.

    Args:
        model: `MultimodalConfig` or a preset name. Defaults to `FASHION_TINY_CONFIG`.
        curriculum_stages: list of `CurriculumStage` or dicts (`{"name", "steps",
            "modalities", ...}`); `None` uses `default_curriculum(total_steps)`.
        total_steps: int. Steps of the default curriculum. Defaults to `1500`.
        use_curriculum: bool. `False` trains all stages' steps as one stage on all data.
        use_flash_attention: bool. Use the block-wise (FlashAttention-2) kernel.
        use_mixed_precision: bool. Train under `mixed_bfloat16` (loss, softmax, norms and
            soft caps stay float32).
        gradient_checkpointing: bool. Recompute each decoder block's activations in the
            backward pass (`VishwamBackbone.enable_rematerialization`).
        batch_size, sequence_length: ints.
        learning_rate, weight_decay, warmup_steps: optimiser settings (AdamW); the
            schedule warms up and decays per stage.
        checkpoint_dir: `None` or str. Checkpoints and resume.
        checkpoint_every: int. Steps between checkpoints.
        log_dir: `None` or str. Per-step CSV log and loss plot.
        seed: int.
        use_contrastive_loss, loss_weighting: passed to `VishwamCausalLM`.
        contrastive_initial_bias: `None` or float, passed to `VishwamCausalLM`. `None`
            starts the SigLIP bias at `-log(batch_size - 1)`, the log odds of a matching
            pair in a batch (SigLIP's -10 is this rule at its batch of 32k).
    """

    model: Union[config_lib.MultimodalConfig, str, None] = None
    curriculum_stages: Optional[List[Union[CurriculumStage, dict]]] = None
    total_steps: int = 1500
    use_curriculum: bool = True
    use_flash_attention: bool = False
    use_mixed_precision: bool = False
    gradient_checkpointing: bool = False
    batch_size: int = 32
    sequence_length: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 100
    log_dir: Optional[str] = None
    seed: int = 0
    use_contrastive_loss: bool = True
    loss_weighting: str = "uncertainty"
    contrastive_initial_bias: Optional[float] = None

    def __post_init__(self):
        if self.model is None:
            self.model = config_lib.FASHION_TINY_CONFIG
        if isinstance(self.model, str):
            resolve_preset(self.model)  # an unknown name fails here, naming it, not at fit time
        elif not isinstance(self.model, config_lib.MultimodalConfig):
            raise TypeError(
                "`model` must be a `MultimodalConfig` or a preset name. "
                f"Received: model={self.model!r:.100}"
            )
        for name in ("total_steps", "batch_size", "sequence_length", "checkpoint_every"):
            check_int(name, getattr(self, name))
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_float("learning_rate", self.learning_rate, strict=True)
        check_float("weight_decay", self.weight_decay)
        check_float("contrastive_initial_bias", self.contrastive_initial_bias, minimum=None, allow_none=True)
        if self.loss_weighting not in WEIGHTINGS:
            raise ValueError(
                f"`loss_weighting` must be one of {WEIGHTINGS}. "
                f"Received: loss_weighting={self.loss_weighting!r}"
            )
        if self.curriculum_stages is not None:
            self.curriculum_stages = as_stages(self.curriculum_stages)

    def initial_contrastive_bias(self):
        """`contrastive_initial_bias`, or `-log(batch_size - 1)` when it is `None`."""
        if self.contrastive_initial_bias is not None:
            return float(self.contrastive_initial_bias)
        return -math.log(max(self.batch_size - 1, 1))

    def stages(self):
        stages = self.curriculum_stages or default_curriculum(self.total_steps)
        if self.use_curriculum:
            return list(stages)
        modalities = sorted({m for stage in stages for m in stage.modalities})
        return [CurriculumStage(name="all", steps=sum(s.steps for s in stages), modalities=modalities)]


SMALL_MODEL_TRAINING_CONFIG = AdvancedTrainingConfig()
MEDIUM_MODEL_TRAINING_CONFIG = AdvancedTrainingConfig(
    model=config_lib.VISHWAM_4B_CONFIG,
    curriculum_stages=[
        {"name": "text_pretraining", "steps": 10000, "modalities": ["text"]},
        {"name": "vision_alignment", "steps": 20000, "modalities": ["text", "vision"]},
        {"name": "multimodal_finetuning", "steps": 70000, "modalities": ["text", "vision"]},
    ],
    use_flash_attention=True,
    use_mixed_precision=True,
    gradient_checkpointing=True,
    batch_size=256,
    sequence_length=2048,
    learning_rate=3e-4,
    warmup_steps=2000,
    checkpoint_every=1000,
)
LARGE_MODEL_TRAINING_CONFIG = dataclasses.replace(
    MEDIUM_MODEL_TRAINING_CONFIG, model=config_lib.VISHWAM_12B_CONFIG, learning_rate=2e-4,
    batch_size=512,
)


@dataclasses.dataclass
class TrainingResult:
    """What `main_training_pipeline` returns: the trained model, its history and logs."""

    model: keras.Model
    history: keras.callbacks.History
    resumed_from_step: int = 0
    log_path: Optional[str] = None
    plot_path: Optional[str] = None


class StepLogger(keras.callbacks.Callback):
    """Per-step loss (and parts) with the curriculum stage, for the CSV log and plot."""

    def __init__(self, stage_of_step):
        super().__init__()
        self.stage_of_step = stage_of_step
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations.value))
        row = {"step": step, "stage": self.stage_of_step(step - 1)}
        row.update({k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0})
        self.rows.append(row)


def build_model(config, preprocessor=None):
    """A `VishwamCausalLM` for `config.model` (a `MultimodalConfig` or a preset name)."""
    from vishwam_keras.models.causal_lm import VishwamCausalLM
    from vishwam_keras.models.factory import create_preprocessor

    model_config = config.model
    if isinstance(model_config, str):
        model = VishwamCausalLM.from_preset(model_config)
        model.backbone.enable_rematerialization(config.gradient_checkpointing)
        return model
    if config.use_flash_attention:
        model_config = dataclasses.replace(model_config, attention_implementation="blockwise")
    if preprocessor is None:
        preprocessor = create_preprocessor(model_config, config.sequence_length)
    backbone = model_config.build_backbone()
    backbone.enable_rematerialization(config.gradient_checkpointing)
    return VishwamCausalLM(
        backbone,
        preprocessor=preprocessor,
        use_contrastive_loss=config.use_contrastive_loss,
        loss_weighting=config.loss_weighting,
        contrastive_initial_bias=config.initial_contrastive_bias(),
    )


def compile_for_curriculum(model, config, stages):
    schedule = AdaptiveLearningRateSchedule.from_stages(
        stages, config.learning_rate, warmup_steps=min(config.warmup_steps, min(s.steps for s in stages))
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["accuracy"],
        sampler="greedy",
    )
    schedule.attach(model.optimizer)
    return schedule


def _stage_datasets(train_dataset, stages, config):
    if train_dataset is None:
        from vishwam_keras.data.pipelines import stage_datasets

        train_dataset = stage_datasets(config.batch_size, seed=config.seed, repeat=True)
    if isinstance(train_dataset, dict):
        missing = [s.name for s in stages if s.name not in train_dataset]
        if missing and not (len(stages) == 1 and stages[0].name == "all"):
            raise ValueError(
                f"`train_dataset` has no dataset for stages {missing}. Keys: {sorted(train_dataset)}"
            )
        if len(stages) == 1 and stages[0].name == "all" and "all" not in train_dataset:
            return {"all": list(train_dataset.values())[-1]}
        return dict(train_dataset)
    return {stage.name: train_dataset for stage in stages}


def _resume(model, stages, directory):
    """Load the latest checkpoint; return (global step, stage index, steps done in it)."""
    path = checkpointing.latest_checkpoint(directory) if directory else None
    if path is None:
        return 0, 0, 0
    with open(os.path.join(path, checkpointing.STATE_FILE)) as f:
        import json

        step = int(json.load(f)["step"])
    boundaries = np.cumsum([s.steps for s in stages])
    if step >= boundaries[-1]:
        index, done = len(stages) - 1, stages[-1].steps
    else:
        index = int(np.searchsorted(boundaries, step, side="right"))
        done = step - (int(boundaries[index - 1]) if index else 0)
    # Freeze as the stage does and build its optimizer first, so its saved slots fit.
    apply_stage(model, stages[index])
    rebuild_optimizer(model)
    checkpointing.load_checkpoint(path, model)
    print(f"Resumed from {path}: step {step}, stage {stages[index].name!r} ({done}/{stages[index].steps} steps done)")
    return step, index, done


def _write_logs(rows, stages, log_dir):
    os.makedirs(log_dir, exist_ok=True)
    csv_path = os.path.join(log_dir, "training_log.csv")
    keys = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("step", "stage"), k))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    plot_path = os.path.join(log_dir, "training_loss.png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return csv_path, None
    fig, ax = plt.subplots(figsize=(8, 4))
    for name in [s.name for s in stages]:
        points = [(r["step"], r["loss"]) for r in rows if r["stage"] == name and "loss" in r]
        if points:
            ax.plot(*zip(*points), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (running mean per stage)")
    ax.set_title("Curriculum training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot_path, dpi=100)
    plt.close(fig)
    return csv_path, plot_path


def main_training_pipeline(
    train_dataset=None, config=SMALL_MODEL_TRAINING_CONFIG, model=None,
    validation_dataset=None, callbacks=None, verbose="auto",
):
    """Train a model through the curriculum with one call; rerun the same call to resume.

    Args:
        train_dataset: `None` (FashionScenes + Shakespeare stage pipelines), a
            `tf.data.Dataset` used by every stage, or a dict `{stage name: dataset}`.
            Elements are the preprocessor's inputs (`prompts`/`responses`/`images`) or,
            for a model without a preprocessor, `(x, y)` token batches.
        config: `AdvancedTrainingConfig`. Defaults to `SMALL_MODEL_TRAINING_CONFIG`.
        model: `None` (built from `config.model`) or a `VishwamCausalLM`.
        validation_dataset: `None` or a dataset evaluated after each stage.
        callbacks: `None` or extra Keras callbacks.
        verbose: `fit`'s verbosity (progress bars by default).

    Returns:
        `TrainingResult(model, history, resumed_from_step, log_path, plot_path)`.

    Example:
    ```python
    result = main_training_pipeline(config=SMALL_MODEL_TRAINING_CONFIG)
    result.model.generate({"prompts": ["<start_of_image> Caption:"], "images": [[image]]})
    ```
    """
    if not isinstance(config, AdvancedTrainingConfig):
        raise TypeError(f"`config` must be an AdvancedTrainingConfig. Received: {type(config).__name__}")
    stages = config.stages()
    if model is None:
        # Not when a model is given: reseeding after a SentencePiece tokenizer exists breaks
        # its resource inside tf.data on TensorFlow (a TF Text naming issue).
        keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    if config.use_mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        if model is None:
            model = build_model(config)
        datasets = _stage_datasets(train_dataset, stages, config)
        compile_for_curriculum(model, config, stages)
        step, index, done = _resume(model, stages, config.checkpoint_dir)
        finished = index == len(stages) - 1 and done >= stages[-1].steps
        boundaries = np.cumsum([s.steps for s in stages])

        def stage_of_step(global_step):
            return stages[min(int(np.searchsorted(boundaries, global_step, side="right")), len(stages) - 1)].name

        logger = StepLogger(stage_of_step)
        all_callbacks = [keras.callbacks.TerminateOnNaN(), logger] + list(callbacks or [])
        if config.checkpoint_dir:
            all_callbacks.insert(
                1, checkpointing.CheckpointCallback(config.checkpoint_dir, config.checkpoint_every)
            )
        history = keras.callbacks.History()
        if not finished:
            history = run_curriculum(
                model,
                {s.name: datasets[s.name] for s in stages},
                stages,
                callbacks=all_callbacks,
                validation_data=validation_dataset,
                batch_size=config.batch_size,
                verbose=verbose,
                start_stage=index,
                start_offset=done,
            )
        log_path = plot_path = None
        if config.log_dir:
            log_path, plot_path = _write_logs(logger.rows, stages, config.log_dir)
        return TrainingResult(model, history, step, log_path, plot_path)
    finally:
        keras.config.set_dtype_policy(previous_policy)


class MultimodalTrainer:
    """The seed design's trainer object around `main_training_pipeline`.

    Example:
    ```python
    trainer = MultimodalTrainer(SMALL_MODEL_TRAINING_CONFIG)
    result = trainer.train()          # FashionScenes curriculum; rerun to resume
    trainer.model.generate(...)
    ```
    """

    def __init__(self, config=SMALL_MODEL_TRAINING_CONFIG, model=None):
        if isinstance(config, dict):
            config = AdvancedTrainingConfig(**config)
        self.config = config
        self.model = model
        self.result = None

    def train(self, train_dataset=None, validation_dataset=None, callbacks=None, verbose="auto"):
        self.result = main_training_pipeline(
            train_dataset, self.config, model=self.model, validation_dataset=validation_dataset,
            callbacks=callbacks, verbose=verbose,
        )
        self.model = self.result.model
        return self.result

    @property
    def history(self):
        return None if self.result is None else self.result.history


FASHION_PRESET_NAME = "vishwam_tiny_fashion"
# The fine-tuning stage's data for the shipped preset: captions name all four items of a
# scene, so they teach the vision encoder faster than one-word answers do.
FASHION_MIXTURE = {"caption": 0.4, "vqa": 0.6}
# `train_fashion_preset`'s fourth stage: the contrastive heads alone, on caption pairs.
RETRIEVAL_STAGE = "retrieval_alignment"


def export_without_optimizer(model):
    """An uncompiled copy sharing `model`'s weights, so a preset carries no optimizer state.

    Every layer is made trainable again first: the last curriculum stage may have frozen
    some (`retrieval_alignment` trains only the contrastive heads), and a saved preset
    should fine-tune as a whole when loaded.
    """
    from vishwam_keras.models.causal_lm import VishwamCausalLM

    _set_trainable(model, True)
    copy = VishwamCausalLM(
        model.backbone, preprocessor=model.preprocessor,
        use_contrastive_loss=model.use_contrastive_loss, loss_weighting=model.loss_weighting,
        contrastive_initial_bias=model.contrastive_initial_bias,
        contrastive_pooling=model.contrastive_pooling,
    )
    for name in ("contrastive_alignment", "multimodal_loss"):
        source, target = getattr(model, name), getattr(copy, name)
        if source is not None:
            target.set_weights(source.get_weights())
    return copy


FASHION_MIN_SEQUENCE_LENGTH = 48


def fashion_model_config(vocabulary_size=None):
    """`FASHION_TINY_CONFIG` with a packaged vocabulary of `vocabulary_size` pieces
    (`None`: its own, 8192; or `config.FASHION_VOCABULARY_SIZE`, 2048). Another size
    raises `default_vocabulary_path`'s `ValueError`."""
    from vishwam_keras.models.tokenizer import default_vocabulary_path

    model_config = config_lib.FASHION_TINY_CONFIG
    if vocabulary_size is None or vocabulary_size == model_config.vocabulary_size:
        return model_config
    default_vocabulary_path(vocabulary_size)  # the one check of a packaged size
    return dataclasses.replace(model_config, vocabulary_size=vocabulary_size)


def fashion_sequence_length(
    questions_per_example=1, answer_format="direct", minimum=FASHION_MIN_SEQUENCE_LENGTH,
    vocabulary_size=None,
):
    """`train_fashion_preset`'s default `sequence_length`: the shortest that holds every
    fine-tuning VQA example (`pipelines.turns_length` with the preset's preprocessor, of
    `vocabulary_size` pieces as in `fashion_model_config`), at least `minimum` (48:
    captions fit, and Shakespeare chunks are cut there)."""
    from vishwam_keras.data.pipelines import turns_length
    from vishwam_keras.models.factory import create_preprocessor

    # Named, so the preset's own preprocessor, made later, keeps its automatic names.
    preprocessor = create_preprocessor(
        fashion_model_config(vocabulary_size), FASHION_MIN_SEQUENCE_LENGTH, name="sequence_length_probe"
    )
    return max(int(minimum), turns_length(preprocessor, questions_per_example, answer_format) - 1)


def train_fashion_preset(
    output_dir=None, total_steps=5000, batch_size=16, sequence_length=None, checkpoint_dir=None,
    log_dir=None, seed=0, verbose="auto", fractions=(0.05, 0.1, 0.85), mixture=None,
    freeze_language_model_in_alignment=False, loss_weighting="uncertainty",
    alignment_contrastive_scale=10.0, finetuning_learning_rate=None, questions_per_example=1,
    question_type_repeats=None, retrieval_steps=1000, retrieval_learning_rate=1e-3,
    finetuning_contrastive_scale=0.0, answer_format="caption_checks", text_mixture=None,
    vocabulary_size=None,
):
    """Train `vishwam_tiny_fashion` through the three-stage curriculum and save the preset.

    FashionScenes (Fashion-MNIST 2 x 2 grids) for the vision stages and Shakespeare for
    text pre-training; rerunning with the same `checkpoint_dir` resumes. `fractions` split
    `total_steps` between the stages (5% text, 10% alignment, 85% fine-tuning: against
    20% alignment and 75% fine-tuning, VQA 78.4% against 77.4% on the first 200 test
    scenes, see `benchmarks/fashion_training/README.md`), `mixture` is the fine-tuning stage's data
    (`pipelines.multimodal_stage_dataset`; defaults to `FASHION_MIXTURE`) and
    `freeze_language_model_in_alignment` is `default_curriculum`'s: off by default here,
    because the language model has only read Shakespeare before the alignment stage and
    must learn the captions' words there. `alignment_contrastive_scale` is the alignment
    stage's `loss_scales["contrastive"]`: there every pair is a caption and its image, and
    the uncertainty weighting alone gives the SigLIP term a tenth of the language model's
    weight (on the first 1000 test scenes, 10 against 1: VQA 67.3% against 64.0%).
    `finetuning_contrastive_scale` is the fine-tuning stage's `loss_scales["contrastive"]`
    (most of its pairs are a question and a one-word answer, a weak match for a scene, and
    the text tower is the language model itself).
    `finetuning_learning_rate` is the fine-tuning stage's peak learning rate (`None`, the
    default: the config's 2e-3, as the other stages; 1e-3 won at 2500 steps and lost at
    5000, see `benchmarks/fashion_training/README.md`). `questions_per_example` (questions
    per VQA example; `sequence_length` must leave room for them) and `question_type_repeats` (how often each type's questions come up) shape
    the fine-tuning stage's VQA data (`pipelines.multimodal_stage_dataset`), and so does
    `answer_format`: `"caption_first"` (the default: every VQA response is the scene's
    caption, the question's focus, `": "`, then the answer; see
    `benchmarks/fashion_training/README.md`), `"caption_checks"` (the same, with a yes/no
    check of each caption slot for the item an exists or relation question names, before
    the answer) or `"direct"` (answers alone).
    `text_mixture` is the text stage's data (`pipelines.stage_datasets`; `None`, the
    default: Shakespeare alone), e.g. `{"text": 0.2, "described_vqa": 0.8}` to answer
    questions from written scene descriptions before the first image.
    `sequence_length` (`None`: the shortest that holds every fine-tuning VQA example, at
    least 48) is the preprocessor's; a length too short for the VQA examples is refused.
    `retrieval_steps` (0 for none; 1000 by default, so the whole run fits in 30 minutes on
    2 CPU cores) adds a fourth stage, `retrieval_alignment`, after the
    three: only the contrastive heads train (`CONTRASTIVE_PATTERNS` without the loss
    weighting; peak learning rate `retrieval_learning_rate`), on caption pairs, with the
    language-model term at 0. The model is locked, so its answers and captions are those
    of the three stages; what changes is retrieval, whose head learns on caption pairs
    only (in fine-tuning most pairs are a question and its one-word answer, a weak match
    for a scene). `total_steps` counts the three stages.
    `vocabulary_size` picks the packaged vocabulary (`fashion_model_config`; `None`, the
    default: 8192 pieces, the shipped preset's). With 2048 (`FASHION_VOCABULARY_SIZE`, every
    scene word one piece) the run takes about half the time and, measured once, scores
    about 4 VQA points less (benchmarks/fashion_training/README.md).

    Returns:
        `(TrainingResult, preset_dir)`.
    """
    import json
    import time

    from vishwam_keras.models.presets import presets_root

    from vishwam_keras.data.pipelines import (
        alignment_stage_dataset,
        check_answer_format,
        check_question_type_repeats,
        check_text_mixture,
        check_questions_per_example,
        stage_datasets,
    )

    alignment_contrastive_scale = check_float("alignment_contrastive_scale", alignment_contrastive_scale)
    finetuning_contrastive_scale = check_float("finetuning_contrastive_scale", finetuning_contrastive_scale)
    finetuning_learning_rate = check_float(
        "finetuning_learning_rate", finetuning_learning_rate, strict=True, allow_none=True
    )
    retrieval_steps = check_int("retrieval_steps", retrieval_steps, 0)
    retrieval_learning_rate = check_float("retrieval_learning_rate", retrieval_learning_rate, strict=True)
    questions_per_example = check_questions_per_example(questions_per_example)
    question_type_repeats = check_question_type_repeats(question_type_repeats) or None
    answer_format = check_answer_format(answer_format)
    text_mixture = check_text_mixture(text_mixture, answer_format)
    sequence_length = check_int("sequence_length", sequence_length, allow_none=True)
    model_config = fashion_model_config(vocabulary_size)  # checks `vocabulary_size`
    needed = fashion_sequence_length(
        questions_per_example, answer_format, minimum=1, vocabulary_size=model_config.vocabulary_size
    )
    if sequence_length is None:
        sequence_length = max(FASHION_MIN_SEQUENCE_LENGTH, needed)
    elif needed > sequence_length:
        raise ValueError(
            f"`questions_per_example={questions_per_example}` with "
            f"`answer_format={answer_format!r}` needs `sequence_length` >= {needed} (the "
            f"longest such example packs to {needed + 1} tokens). Pass sequence_length=None "
            f"to use that. Received: sequence_length={sequence_length}"
        )
    output_dir = output_dir or os.path.join(presets_root(), FASHION_PRESET_NAME)
    mixture = dict(FASHION_MIXTURE if mixture is None else mixture)
    stages = default_curriculum(
        total_steps, fractions=fractions,
        freeze_language_model_in_alignment=freeze_language_model_in_alignment,
        learning_rates=(None, None, finetuning_learning_rate),
    )
    # Every stage reads its own dataset (`stage_datasets`, keyed by stage name), so the
    # default stages' source mixtures are never used: drop them, so the log and the
    # preset's metadata do not claim one (the fine-tuning data is `mixture`).
    stages = [dataclasses.replace(stage, data_mixture=None) for stage in stages]
    if alignment_contrastive_scale != 1.0:
        stages[1] = dataclasses.replace(  # `vision_alignment`; replace re-validates the stage
            stages[1], loss_scales={"contrastive": alignment_contrastive_scale}
        )
    if finetuning_contrastive_scale != 1.0:
        stages[2] = dataclasses.replace(  # `multimodal_finetuning`
            stages[2], loss_scales={"contrastive": finetuning_contrastive_scale}
        )
    if retrieval_steps:
        stages.append(
            CurriculumStage(
                RETRIEVAL_STAGE, retrieval_steps, modalities=["text", "vision"],
                trainable=[p for p in CONTRASTIVE_PATTERNS if not p.startswith("multimodal_loss")],
                learning_rate=retrieval_learning_rate,
                loss_scales={LANGUAGE_MODELING: 0.0},
            )
        )
    config = AdvancedTrainingConfig(
        model=model_config,
        curriculum_stages=stages,
        total_steps=total_steps, batch_size=batch_size, sequence_length=sequence_length,
        checkpoint_dir=checkpoint_dir, log_dir=log_dir, seed=seed, loss_weighting=loss_weighting,
    )
    datasets = stage_datasets(
        batch_size, seed=seed, repeat=True, mixture=mixture,
        questions_per_example=questions_per_example, question_type_repeats=question_type_repeats,
        answer_format=answer_format, text_mixture=text_mixture,
    )
    if retrieval_steps:  # caption pairs, drawn in another order than the alignment stage's
        datasets[RETRIEVAL_STAGE] = alignment_stage_dataset("train", batch_size, seed=seed + 1, repeat=True)
    start = time.time()
    result = main_training_pipeline(datasets, config=config, verbose=verbose)
    seconds = time.time() - start
    export_without_optimizer(result.model).save_to_preset(output_dir)
    metadata_path = os.path.join(output_dir, "metadata.json")
    with open(metadata_path) as f:
        metadata = json.load(f)
    metadata.update(
        {
            "description": f"A {metadata['parameter_count'] / 1e6:.1f}M-parameter multimodal "
            "model trained here on FashionScenes (Fashion-MNIST 2x2 grids: captions and "
            "questions) and Shakespeare through the three-stage curriculum.",
            "has_weights": True,
            "training": {
                "total_steps": total_steps, "batch_size": batch_size, "seed": seed,
                "backend": keras.backend.backend(),
                "sequence_length": sequence_length,
                "vocabulary_size": model_config.vocabulary_size,
                "stages": [dataclasses.asdict(s) for s in config.stages()],
                "finetuning_mixture": mixture,
                "text_mixture": text_mixture,
                "questions_per_example": questions_per_example,
                "question_type_repeats": question_type_repeats,
                "answer_format": answer_format,
                "loss_weighting": loss_weighting,
                "alignment_contrastive_scale": alignment_contrastive_scale,
                "finetuning_contrastive_scale": finetuning_contrastive_scale,
                "finetuning_learning_rate": finetuning_learning_rate,
                "retrieval_steps": retrieval_steps,
                "retrieval_learning_rate": retrieval_learning_rate,
                "train_seconds": round(seconds, 1),
            },
        }
    )
    with open(metadata_path, "w") as f:
        json.dump(metadata, f, indent=4)
    return result, output_dir

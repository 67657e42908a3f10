"""Curriculum training: stages that freeze and unfreeze parts of the model, driven from `fit`.

Callbacks drive the curriculum (DESIGN.md, "fit"): `CurriculumCallback` inside one `fit`, or
`run_curriculum` for one `fit` per stage with a dataset per stage.
"""

import contextlib
import dataclasses
import fnmatch
import math
import numbers
import warnings
from typing import Dict, List, Optional, Sequence, Union

import keras
import numpy as np
from keras import ops

from vishwam_keras.training.losses import MULTIMODAL_LOSS_ATTRIBUTE, _check_loss_factors
from vishwam_keras.training.schedules import AdaptiveLearningRateSchedule, find_schedule

MODALITIES = ("text", "vision")

# Layer-name patterns (fnmatch; against a layer's name, or its path when they contain "/").
LANGUAGE_MODEL_PATTERNS = ("token_embedding", "decoder_block_*", "final_norm")
VISION_PATTERNS = ("vision_encoder*", "vision_projector*", "fusion*", "*cross_attention*")
# A model "has vision" when a layer matches one of these.
VISION_ENCODER_PATTERNS = ("vision_encoder*", "vision_projector*")
CONTRASTIVE_PATTERNS = ("contrastive*", "multimodal_loss*")

_STAGE_FIELDS = (
    "name", "steps", "modalities", "trainable", "frozen", "data_mixture", "learning_rate",
    "loss_scales",
)


def _check_patterns(stage_name, field, value):
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
        isinstance(p, str) and p for p in value
    ):
        allowed = 'None, "all" or a list of layer-name patterns' if field == "trainable" else (
            "None or a list of layer-name patterns"
        )
        raise ValueError(
            f"Stage {stage_name!r}: `{field}` must be {allowed}. Received: {field}={value!r}"
        )
    return list(value)


@dataclasses.dataclass
class CurriculumStage:
    """One stage of a training curriculum.

    Layer patterns are `fnmatch` patterns matched against the name of every layer at any
    depth; a pattern containing `"/"` is matched against the layer's path instead
    (`"decoder_block_0/mlp"` matches `"vishwam_backbone/decoder_block_0/mlp"`, a trailing
    `/*` covers everything below a layer). A layer takes the state of
    the deepest matching pattern on its path (a frozen `decoder_block_*` with a trainable
    `*cross_attention*` inside trains only the cross-attention); `frozen` wins over
    `trainable` on the same layer.

    Args:
        name: str. Shown in logs; a key of `run_curriculum`'s `datasets`.
        steps: int > 0. Optimizer steps in this stage.
        modalities: list of `"text"`, `"vision"`. What the stage's data holds. Defaults to
            `["text"]`.
        trainable: `None` / `"all"` (every layer trains unless frozen) or a list of patterns
            (only matching layers train). Defaults to `None`.
        frozen: `None` or a list of patterns frozen in this stage. Defaults to `None`.
        data_mixture: `None` or dict `{source: weight}` of sampling weights, used by
            `run_curriculum` to mix `datasets[source]` when `datasets` has no entry under
            the stage's own name (a dataset given for the stage wins). Defaults to `None`.
        learning_rate: `None` or float. The stage's peak learning rate (see
            `AdaptiveLearningRateSchedule.from_stages`; a constant learning rate is set to it
            at the stage's start). Defaults to `None`.
        loss_scales: `None` or dict `{loss name: float >= 0}` multiplying each term of the
            model's `MultimodalLoss` in this stage (`"language_modeling"`, `"contrastive"`;
            names left out keep 1): `{"contrastive": 0.0}` trains without the SigLIP loss,
            `{"contrastive": 4.0}` leans on it. Needs a model with a `multimodal_loss`.
            Defaults to `None` (every factor 1).

    Example:
    >>> stage = CurriculumStage("text_pretraining", steps=1000, frozen=["vision_encoder*"])
    >>> CurriculumStage.from_dict(stage.to_dict()) == stage
    True
    """

    name: str
    steps: int
    modalities: Sequence[str] = ("text",)
    trainable: Union[None, str, List[str]] = None
    frozen: Optional[List[str]] = None
    data_mixture: Optional[Dict[str, float]] = None
    learning_rate: Optional[float] = None
    loss_scales: Optional[Dict[str, float]] = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"`name` must be a non-empty string. Received: name={self.name!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps <= 0:
            raise ValueError(
                f"Stage {self.name!r}: `steps` must be an int > 0. Received: steps={self.steps!r}"
            )
        self.steps = int(self.steps)
        modalities = [self.modalities] if isinstance(self.modalities, str) else list(self.modalities)
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise ValueError(
                f"Stage {self.name!r}: `modalities` must be a non-empty list drawn from "
                f"{list(MODALITIES)}. Received: modalities={self.modalities!r}"
            )
        self.modalities = [m for m in MODALITIES if m in modalities]
        if self.trainable is not None and self.trainable != "all":
            self.trainable = _check_patterns(self.name, "trainable", self.trainable)
        if self.frozen is not None:
            self.frozen = _check_patterns(self.name, "frozen", self.frozen)
        if self.data_mixture is not None:
            mixture = self.data_mixture
            if (
                not isinstance(mixture, dict)
                or not mixture
                or not all(isinstance(k, str) for k in mixture)
                or not all(isinstance(v, numbers.Real) and v >= 0 for v in mixture.values())
                or not sum(mixture.values()) > 0
            ):
                raise ValueError(
                    f"Stage {self.name!r}: `data_mixture` must map source names to non-negative "
                    f"weights with a positive sum. Received: data_mixture={mixture!r}"
                )
            self.data_mixture = {k: float(v) for k, v in mixture.items()}
        if self.learning_rate is not None:
            rate = self.learning_rate
            if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not rate > 0:
                raise ValueError(
                    f"Stage {self.name!r}: `learning_rate` must be None or a float > 0. "
                    f"Received: learning_rate={rate!r}"
                )
            self.learning_rate = float(rate)
        if self.loss_scales is not None:
            try:  # loss names are checked against the model by `check_curriculum`
                self.loss_scales = _check_loss_factors("loss_scales", self.loss_scales)
            except ValueError as error:
                raise ValueError(f"Stage {self.name!r}: {error}") from None

    @classmethod
    def from_dict(cls, config):
        """A stage from a dict with the field names (e.g. parsed from JSON or YAML)."""
        if isinstance(config, cls):
            return config
        if not isinstance(config, dict):
            raise ValueError(
                f"A stage must be a CurriculumStage or a dict. Received: {type(config).__name__}"
            )
        unknown = sorted(set(config) - set(_STAGE_FIELDS))
        if unknown:
            raise ValueError(
                f"Unknown stage fields {unknown}; allowed: {list(_STAGE_FIELDS)}. Received: {config!r}"
            )
        missing = [k for k in ("name", "steps") if k not in config]
        if missing:
            raise ValueError(f"A stage needs {missing}. Received: {config!r}")
        return cls(**config)

    def to_dict(self):
        return dataclasses.asdict(self)


def default_curriculum(
    total_steps, fractions=(0.6, 0.2, 0.2), learning_rates=(None, None, None),
    freeze_language_model_in_alignment=True,
):
    """The three-stage multimodal curriculum.

    1. `text_pretraining` (text): the language model trains; vision encoder, projector,
       fusion / cross-attention and the contrastive head are frozen.
    2. `vision_alignment` (text + vision): the vision encoder, projector, fusion /
       cross-attention and the contrastive head (and loss weighting) train; the language
       model is frozen (LLaVA's first stage) unless `freeze_language_model_in_alignment`
       is `False` (PaliGemma's first stage, for a language model that has not yet seen
       the stage's words).
    3. `multimodal_finetuning` (text + vision): everything trains.

    Args:
        total_steps: int >= 3. Split by `fractions`; the last stage takes the remainder.
        fractions: three positive floats. Defaults to `(0.6, 0.2, 0.2)`.
        learning_rates: three `None` or floats, the stages' peak learning rates.
        freeze_language_model_in_alignment: bool. Defaults to `True`.

    Returns:
        A list of three `CurriculumStage`s.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 3:
        raise ValueError(f"`total_steps` must be an int >= 3. Received: total_steps={total_steps!r}")
    if len(fractions) != 3 or not all(isinstance(f, numbers.Real) and f > 0 for f in fractions):
        raise ValueError(f"`fractions` must be three positive numbers. Received: fractions={fractions!r}")
    if len(learning_rates) != 3:
        raise ValueError(
            f"`learning_rates` must have three entries. Received: learning_rates={learning_rates!r}"
        )
    total = float(sum(fractions))
    first = max(1, int(total_steps * fractions[0] / total))
    second = max(1, int(total_steps * fractions[1] / total))
    third = total_steps - first - second
    if third < 1:
        first, second, third = total_steps - 2, 1, 1
    vision_and_heads = list(VISION_PATTERNS) + list(CONTRASTIVE_PATTERNS)
    return [
        CurriculumStage(
            "text_pretraining",
            first,
            modalities=["text"],
            trainable="all",
            frozen=vision_and_heads,
            data_mixture={"text": 1.0},
            learning_rate=learning_rates[0],
        ),
        CurriculumStage(
            "vision_alignment",
            second,
            modalities=["text", "vision"],
            trainable=vision_and_heads if freeze_language_model_in_alignment else "all",
            frozen=list(LANGUAGE_MODEL_PATTERNS) if freeze_language_model_in_alignment else None,
            data_mixture={"image_text": 1.0},
            learning_rate=learning_rates[1],
        ),
        CurriculumStage(
            "multimodal_finetuning",
            third,
            modalities=["text", "vision"],
            trainable="all",
            data_mixture={"text": 0.2, "image_text": 0.8},
            learning_rate=learning_rates[2],
        ),
    ]


def as_stages(stages):
    """Validate a list of `CurriculumStage`s or dicts; names must be unique."""
    if isinstance(stages, (CurriculumStage, dict)) or not isinstance(stages, (list, tuple)) or not stages:
        raise ValueError(
            f"`stages` must be a non-empty list of CurriculumStage or dicts. Received: {stages!r}"
        )
    stages = [CurriculumStage.from_dict(stage) for stage in stages]
    names = [stage.name for stage in stages]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Stage names must be unique. Repeated: {duplicates}")
    return stages


def stage_boundaries(stages):
    """Global steps at which stages 1.. start: the cumulative sums of `steps`."""
    return [int(b) for b in np.cumsum([stage.steps for stage in stages])[:-1]]


# === Freezing by layer-name patterns ===
def _sublayers(layer):
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "layers", []))


def _walk(model):
    """`(path, layer)` for every layer below `model`, parents before children, each once."""
    seen, order = {id(model)}, []

    def visit(layer, prefix):
        for child in _sublayers(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}/{child.name}" if prefix else child.name
            order.append((path, child))
            visit(child, path)

    visit(model, "")
    return order


def _matches(pattern, path, layer):
    """A pattern with a "/" is matched against the layer's path, any other against its name
    (so `"decoder_block_*"` does not reach into `"decoder_block_0/cross_attention"`)."""
    if "/" in pattern:
        return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, "*/" + pattern)
    return fnmatch.fnmatchcase(layer.name, pattern)


def plan_stage(model, stage):
    """What `apply_stage` would do, without changing anything.

    Returns:
        A dict: `decisions` (list of `(path, layer, trainable)` for matched layers, parents
        first), `unmatched` (patterns that match no layer), `trainable_variables` (the
        variables that would train, in model order).
    """
    trainable_patterns = None if stage.trainable in (None, "all") else stage.trainable
    frozen_patterns = stage.frozen or []
    hits = {p: 0 for p in (trainable_patterns or []) + frozen_patterns}
    decisions = []
    for path, layer in _walk(model):
        frozen = [p for p in frozen_patterns if _matches(p, path, layer)]
        trained = [p for p in (trainable_patterns or []) if _matches(p, path, layer)]
        for p in frozen + trained:
            hits[p] += 1
        if frozen:
            decisions.append((path, layer, False))
        elif trained:
            decisions.append((path, layer, True))
    # Resolve per variable: the last (deepest) decision covering a variable wins.
    default = trainable_patterns is None
    state = {id(v): default for v in model.weights}
    for _, layer, value in decisions:
        for variable in layer.weights:
            state[id(variable)] = value
    created_trainable = _created_trainable_ids(model)
    candidates = [v for v in model.weights if id(v) in created_trainable]
    return {
        "decisions": decisions,
        "unmatched": [p for p, n in hits.items() if n == 0],
        "trainable_variables": [v for v in candidates if state[id(v)]],
    }


def _created_trainable_ids(model):
    """Ids of the weights created trainable (not e.g. running statistics)."""
    ids = set()
    for layer in [model] + [layer for _, layer in _walk(model)]:
        ids.update(id(v) for v in getattr(layer, "_trainable_variables", []))
    return ids


def apply_stage(model, stage):
    """Set `trainable` on the model's layers for `stage` and return `plan_stage`'s plan.

    Every layer is first made trainable (a curriculum owns the model's trainability; weights
    created non-trainable stay so), then matched layers are set, parents before children.
    A container frozen by a pattern but holding a trainable descendant keeps the flag
    `trainable=True` (Keras hides all weights of a non-trainable layer) while its other
    weights stay frozen. Afterwards the optimizer and train function must be rebuilt
    (`CurriculumCallback.enter_stage` does both).
    """
    plan = plan_stage(model, stage)
    _set_trainable(model, True)
    if stage.trainable not in (None, "all"):
        for layer in _sublayers(model):
            _set_trainable(layer, False)
    for _, layer, value in plan["decisions"]:
        _set_trainable(layer, value)
    for _, layer in _walk(model):
        if not layer.trainable and any(v.trainable for v in layer.weights):
            layer._trainable = True  # the setter would unfreeze the whole subtree
    if hasattr(model, "_compiled_trainable_state"):
        # Keras warns at `fit` when trainability changed since `compile`; the curriculum
        # rebuilds the optimizer and train function itself, so record the new state.
        model._compiled_trainable_state = {
            layer: layer.trainable for layer in model._flatten_layers()
        }
    return plan


def _set_trainable(layer, value):
    """`layer.trainable = value` for `layer` and every layer below it.

    On TensorFlow, Keras' attribute tracking skips an assignment whose value `is` the
    current one, so `model.trainable = True` on a trainable model (or sub-model) with frozen
    sublayers leaves them frozen. Calling the property's setter on every layer avoids that.
    """
    for sublayer in [layer] + [sub for _, sub in _walk(layer)]:
        setter = getattr(getattr(type(sublayer), "trainable", None), "fset", None)
        if setter is None:
            sublayer.trainable = value
        else:
            setter(sublayer, value)


def _num_parameters(variables):
    return int(sum(np.prod(v.shape) for v in variables))


# === Optimizer and learning rate at a stage change ===
def _iteration_variables(optimizer):
    inner = getattr(optimizer, "inner_optimizer", None)
    return [o._iterations for o in (optimizer, inner) if o is not None and hasattr(o, "_iterations")]


def rebuild_optimizer(model):
    """Give `model` an optimizer built for its current trainable variables.

    Keras optimizers are built for a fixed variable list, and the JAX trainer passes exactly
    the trainable variables to `optimizer.stateless_apply`, so a changed trainable set needs
    a newly built optimizer. When the set is unchanged, nothing happens. Otherwise the
    optimizer is re-created from its config (same class and hyper-parameters, the same
    schedule object, the step counter carried over) and built: its slots (e.g. Adam
    moments) start from zero for the new stage. Returns `True` if it was replaced.
    """
    optimizer = model.optimizer
    variables = model.trainable_variables
    if not optimizer.built:
        optimizer.build(variables)
        return False
    built_for = getattr(optimizer, "_trainable_variables", None)
    if built_for is not None and [id(v) for v in built_for] == [id(v) for v in variables]:
        return False
    schedule = find_schedule(optimizer)
    # A tf.distribute strategy (TensorFlow trainer) must own the new optimizer variables.
    strategy = getattr(model, "distribute_strategy", None)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        new = optimizer.__class__.from_config(optimizer.get_config())
        if schedule is not None:
            getattr(new, "inner_optimizer", new).learning_rate = schedule
        for old_step, new_step in zip(_iteration_variables(optimizer), _iteration_variables(new)):
            new_step.assign(old_step.value)
        new.build(variables)
        if isinstance(schedule, AdaptiveLearningRateSchedule):
            schedule.attach(new)
    model.optimizer = new
    return True


def _describe(index, stages, step, plan, model, extra, source=None):
    stage = stages[index]
    mixture = stage.data_mixture
    if source == "mixed":
        data = f"mixture {mixture} of the datasets of those names"
    elif source == "own":
        data = f"the dataset given for {stage.name!r}"
    elif source == "shared":
        data = "the one dataset given for every stage"
    else:  # the callback on its own: the data is whatever `fit` reads
        data = "as given to fit"
    if mixture and source != "mixed":
        data += f" (its data_mixture {mixture} is not used: `run_curriculum` mixes only for "
        data += "a dict of datasets without the stage's name)"
    trainable = plan["trainable_variables"]
    frozen_layers = [path for path, _, value in plan["decisions"] if not value]
    shown = ", ".join(frozen_layers[:8]) + (f" (+{len(frozen_layers) - 8} more)" if len(frozen_layers) > 8 else "")
    lines = [
        f"Curriculum stage {index + 1}/{len(stages)} {stage.name!r} at step {step} "
        f"({stage.steps} steps, modalities {stage.modalities})",
        f"  trainable: {_num_parameters(trainable):,} of {_num_parameters(model.weights):,} "
        f"parameters ({len(trainable)} variables); trainable patterns: {stage.trainable or 'all'}",
        f"  frozen layers: {shown or 'none'}",
        f"  data: {data}",
    ]
    if plan["unmatched"]:
        lines.append(f"  patterns matching no layer: {plan['unmatched']}")
    lines.extend(f"  {line}" for line in extra)
    return "\n".join(lines)


def check_curriculum(model, stages):
    """Raise a ValueError before training if a stage cannot run on `model`.

    A stage must leave at least one variable trainable, a stage with the `"vision"`
    modality needs a model with vision layers (a layer matching `VISION_ENCODER_PATTERNS`),
    and a stage's `loss_scales` need a model with a `multimodal_loss`, name its losses and
    keep one factor above zero. Returns the plans, one per stage.
    """
    stages = as_stages(stages)
    has_vision = any(
        _matches(p, path, layer) for path, layer in _walk(model) for p in VISION_ENCODER_PATTERNS
    )
    plans = []
    for stage in stages:
        if "vision" in stage.modalities and not has_vision:
            raise ValueError(
                f"Stage {stage.name!r} uses the 'vision' modality but the model has no vision "
                f"layers (no layer matches {list(VISION_ENCODER_PATTERNS)}). Use a multimodal model, or "
                "drop the stage / its 'vision' modality."
            )
        if stage.loss_scales:
            weighting = getattr(model, MULTIMODAL_LOSS_ATTRIBUTE, None)
            if weighting is None:
                raise ValueError(
                    f"Stage {stage.name!r} sets loss_scales={stage.loss_scales!r} but the model "
                    f"has no `{MULTIMODAL_LOSS_ATTRIBUTE}` to scale (a text-only model, or "
                    "use_contrastive_loss=False). Drop the stage's `loss_scales`."
                )
            try:
                _check_loss_factors("loss_scales", stage.loss_scales, weighting.loss_names)
            except ValueError as error:
                raise ValueError(f"Stage {stage.name!r}: {error}") from None
            if not any(stage.loss_scales.get(name, 1.0) > 0 for name in weighting.loss_names):
                raise ValueError(
                    f"Stage {stage.name!r}: loss_scales={stage.loss_scales!r} sets every loss "
                    "term to zero, so the stage would train nothing. Keep one factor above 0."
                )
        plan = plan_stage(model, stage)
        if not plan["trainable_variables"]:
            raise ValueError(
                f"Stage {stage.name!r} would train no variables: trainable={stage.trainable!r}, "
                f"frozen={stage.frozen!r}; patterns matching no layer: {plan['unmatched']}"
            )
        plans.append(plan)
    return plans


class CurriculumCallback(keras.callbacks.Callback):
    """Runs a curriculum inside `model.fit`, switching stage at the right global step.

    Stage `i` covers optimizer steps `[sum(steps[:i]), sum(steps[:i+1]))`; the global step is
    `optimizer.iterations` at the start of `fit` plus the steps run since, so a resumed `fit`
    continues in the right stage (after the last stage, the last stage stays active unless
    `stop_at_end=True`). At a stage start the callback:

    1. sets `layer.trainable` by the stage's patterns (`apply_stage`) and the factors of
       the model's `MultimodalLoss` by the stage's `loss_scales` (1 where not given);
    2. re-creates the optimizer for the new trainable set when it changed (`rebuild_optimizer`:
       same hyper-parameters and schedule, step counter kept, slots reset) - required on JAX,
       whose compiled step passes exactly the trainable variables to the optimizer;
    3. rebuilds the train function (`model.make_train_function(force=True)`; on JAX the
       running state is synced into the variables first, and Keras' fit loop reloads it on
       the next step, so the switch works mid-epoch on JAX and TensorFlow);
    4. restarts the learning rate: an `AdaptiveLearningRateSchedule` built with
       `AdaptiveLearningRateSchedule.from_stages(stages, ...)` restarts by itself (its
       boundaries are checked against the curriculum at the start of `fit`); a constant
       learning rate is set to the stage's `learning_rate` when given; other schedules are
       left alone (a warning says so);
    5. tells the data side: `current_stage` / `stage_index`, `stage_variable` (a
       `tf.Variable` a `tf.data` pipeline can read, e.g. as the selector of
       `tf.data.Dataset.choose_from_datasets`; prefetched elements lag by the buffer size)
       and `on_stage_change(index, stage)`;
    6. logs it: a printed summary (verbose), `stage_log` (one dict per change) and
       `logs["stage"]` (the stage index, in the progress bar and the history).

    Stage boundaries should be multiples of `steps_per_execution` (the switch happens between
    executions).

    Args:
        stages: list of `CurriculumStage` or dicts.
        on_stage_change: `None` or callable `(index, stage)`. Defaults to `None`.
        stop_at_end: bool. Stop `fit` when the last stage ends. Defaults to `False`.
        verbose: int. 1 prints stage changes. Defaults to `1`.

    Example:
    ```python
    stages = default_curriculum(total_steps=10_000)
    schedule = AdaptiveLearningRateSchedule.from_stages(stages, 3e-4, warmup_steps=200)
    model.compile(optimizer=keras.optimizers.AdamW(schedule))
    model.fit(dataset, steps_per_epoch=1000, epochs=10, callbacks=[CurriculumCallback(stages)])
    ```
    """

    def __init__(self, stages, on_stage_change=None, stop_at_end=False, verbose=1):
        super().__init__()
        self.stages = as_stages(stages)
        if on_stage_change is not None and not callable(on_stage_change):
            raise ValueError(
                f"`on_stage_change` must be None or callable. Received: {on_stage_change!r}"
            )
        self.on_stage_change = on_stage_change
        self.stop_at_end = stop_at_end
        self.verbose = verbose
        self.boundaries = stage_boundaries(self.stages)
        self.total_steps = int(sum(stage.steps for stage in self.stages))
        self.stage_index = None
        self.stage_log = []
        self._stage_variable = None
        self._driven_externally = False  # set by `run_curriculum`
        # Per stage, what its data is (`_data_source`; set by `run_curriculum`).
        self._sources = None

    def _source(self, index):
        return None if self._sources is None else self._sources[index]

    @property
    def current_stage(self):
        return None if self.stage_index is None else self.stages[self.stage_index]

    @property
    def stage_variable(self):
        """A `tf.Variable` (int64) holding the stage index, for `tf.data` pipelines."""
        if self._stage_variable is None:
            import tensorflow as tf

            self._stage_variable = tf.Variable(
                max(self.stage_index or 0, 0), dtype=tf.int64, trainable=False, name="curriculum_stage"
            )
        return self._stage_variable

    def stage_for_step(self, step):
        """Index of the stage active at global step `step`."""
        return min(sum(step >= b for b in self.boundaries), len(self.stages) - 1)

    def _check_schedule(self, optimizer):
        schedule = find_schedule(optimizer)
        if isinstance(schedule, AdaptiveLearningRateSchedule):
            if list(schedule.stage_boundaries) != self.boundaries:
                raise ValueError(
                    "The optimizer's AdaptiveLearningRateSchedule restarts at "
                    f"{schedule.stage_boundaries}, the curriculum's stages start at {self.boundaries}. "
                    "Build it with AdaptiveLearningRateSchedule.from_stages(stages, ...)."
                )
        elif schedule is not None and len(self.stages) > 1:
            warnings.warn(
                f"CurriculumCallback: the optimizer's {type(schedule).__name__} is not restarted at "
                "stage boundaries; use AdaptiveLearningRateSchedule.from_stages(stages, ...) for "
                "per-stage warm-up.",
                stacklevel=2,
            )

    def enter_stage(self, index, model=None, step=None):
        """Make stage `index` active now (freezing, optimizer, train function, LR, data side)."""
        model = model if model is not None else self.model  # syncs the JAX state first
        stage = self.stages[index]
        plan = apply_stage(model, stage)
        extra = []
        weighting = getattr(model, MULTIMODAL_LOSS_ATTRIBUTE, None)
        if weighting is not None:
            weighting.set_loss_scales(stage.loss_scales)
            if stage.loss_scales:
                extra.append(f"loss terms scaled by {stage.loss_scales}")
        if getattr(model, "optimizer", None) is not None:
            if rebuild_optimizer(model):
                extra.append("optimizer re-created for the new trainable set (slots reset)")
            schedule = find_schedule(model.optimizer)
            if schedule is None and stage.learning_rate is not None:
                model.optimizer.learning_rate = stage.learning_rate
                extra.append(f"learning rate set to {stage.learning_rate:g}")
            elif isinstance(schedule, AdaptiveLearningRateSchedule):
                schedule.attach(model.optimizer)
                extra.append("learning-rate schedule restarts with this stage")
            model.make_train_function(force=True)
        model.test_function = None
        model.predict_function = None
        self.stage_index = index
        if self._stage_variable is not None:
            self._stage_variable.assign(index)
        step = self.boundaries[index - 1] if step is None and index > 0 else (step or 0)
        self.stage_log.append(
            {
                "step": step,
                "stage": stage.name,
                "index": index,
                "trainable_parameters": _num_parameters(plan["trainable_variables"]),
                "frozen_layers": [path for path, _, value in plan["decisions"] if not value],
                # The mixture the stage's data is drawn with; None where it is not used.
                "data_mixture": stage.data_mixture if self._source(index) == "mixed" else None,
                "loss_scales": stage.loss_scales,
                "unmatched_patterns": plan["unmatched"],
            }
        )
        if self.verbose:
            print("\n" + _describe(index, self.stages, step, plan, model, extra, self._source(index)))
        if self.on_stage_change is not None:
            self.on_stage_change(index, stage)
        return plan

    # === Callback hooks ===
    def on_train_begin(self, logs=None):
        model = self.model
        if getattr(model, "optimizer", None) is None:
            raise ValueError("CurriculumCallback needs a compiled model (model.optimizer is None).")
        if self._driven_externally:
            return
        check_curriculum(model, self.stages)
        self._check_schedule(model.optimizer)
        self._step = int(ops.convert_to_numpy(model.optimizer.iterations.value))
        self._begin_batch = 0
        self.enter_stage(self.stage_for_step(self._step), model, step=self._step)

    def on_train_batch_begin(self, batch, logs=None):
        self._begin_batch = int(batch)
        if self._driven_externally:
            return
        index = self.stage_for_step(self._step)
        if index != self.stage_index:
            self.enter_stage(index, step=self._step)

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None and self.stage_index is not None:
            logs["stage"] = self.stage_index
        if self._driven_externally:
            return
        self._step += int(batch) - self._begin_batch + 1
        if self.stop_at_end and self._step >= self.total_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.stage_index is not None:
            logs["stage"] = self.stage_index


# === One call for the whole curriculum ===
def _is_tf_dataset(data):
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return False
    return isinstance(data, tf.data.Dataset)


def _input_keys(data):
    """Keys of the model inputs a dataset yields, or `None` when they cannot be seen."""
    if _is_tf_dataset(data):
        spec = data.element_spec
    elif isinstance(data, (tuple, list)) and data:
        spec = data
    else:
        return None
    x = spec[0] if isinstance(spec, (tuple, list)) else spec
    return sorted(x) if isinstance(x, dict) else None


def _as_dataset(data, batch_size):
    """Arrays `(x, y[, sample_weight])` become a repeated, batched `tf.data.Dataset`."""
    if isinstance(data, (tuple, list)):
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices(tuple(data)).batch(batch_size).repeat()
    return data


def _mix(stage, datasets):
    import tensorflow as tf

    sources = list(stage.data_mixture)
    for source in sources:
        if not _is_tf_dataset(datasets[source]):
            raise ValueError(
                f"Stage {stage.name!r}: mixing `data_mixture` sources needs tf.data.Datasets; "
                f"datasets[{source!r}] is a {type(datasets[source]).__name__}."
            )
    weights = [stage.data_mixture[s] for s in sources]
    total = sum(weights)
    return tf.data.Dataset.sample_from_datasets(
        [datasets[s].repeat() for s in sources], weights=[w / total for w in weights]
    )


def _data_source(stage, datasets):
    """What `resolve_stage_datasets` gives `stage`: `"own"` (the dict's entry under its
    name, which wins over its `data_mixture`), `"mixed"` (its `data_mixture` of the dict's
    datasets) or `"shared"` (one dataset for every stage)."""
    if not isinstance(datasets, dict):
        return "shared"
    return "own" if stage.name in datasets or not stage.data_mixture else "mixed"


def resolve_stage_datasets(stages, datasets, batch_size=32):
    """One dataset per stage, validated before any training.

    `datasets` is one dataset for every stage (a `tf.data.Dataset`, a Keras `PyDataset`, an
    iterable of batches, or arrays `(x, y[, sample_weight])`), or a dict keyed by stage name
    or by the `data_mixture` sources of the stages (mixed with
    `tf.data.Dataset.sample_from_datasets`). A stage with the `"vision"` modality needs an
    `images` input where the inputs can be inspected; a `tf.data.Dataset` of known finite
    length must hold at least `steps` batches.
    """
    stages = as_stages(stages)
    resolved = []
    for stage in stages:
        if isinstance(datasets, dict):
            if stage.name in datasets:  # a stage's own dataset wins (`_data_source`)
                data = datasets[stage.name]
            elif stage.data_mixture and all(s in datasets for s in stage.data_mixture):
                data = _mix(stage, datasets)
            else:
                needed = f"{stage.name!r}"
                if stage.data_mixture:
                    missing = sorted(s for s in stage.data_mixture if s not in datasets)
                    needed += f" or its data_mixture sources {missing}"
                raise ValueError(
                    f"No dataset for stage {stage.name!r}: `datasets` has keys {sorted(datasets)}; "
                    f"add {needed}."
                )
        else:
            data = datasets
        if data is None:
            raise ValueError(f"The dataset for stage {stage.name!r} is None.")
        keys = _input_keys(data)
        if "vision" in stage.modalities and keys is not None and "images" not in keys:
            raise ValueError(
                f"Stage {stage.name!r} uses the 'vision' modality but its dataset has no "
                f"'images' input. Inputs: {keys}"
            )
        data = _as_dataset(data, batch_size)
        if _is_tf_dataset(data):
            cardinality = int(data.cardinality())
            if 0 <= cardinality < stage.steps:
                raise ValueError(
                    f"The dataset for stage {stage.name!r} holds {cardinality} batches but the "
                    f"stage runs {stage.steps} steps; use `dataset.repeat()`."
                )
        resolved.append(data)
    return resolved


def _merge_histories(model, stages, histories):
    """One `History` over all stages; a key missing in a stage's logs is NaN there."""
    merged = keras.callbacks.History()
    merged.set_model(model)
    merged.epoch = [epoch for history in histories for epoch in history.epoch]
    keys = sorted({key for history in histories for key in history.history} | {"stage"})
    merged.history = {key: [] for key in keys}
    for index, history in enumerate(histories):
        length = len(history.epoch)
        for key in keys:
            default = [index] * length if key == "stage" else [math.nan] * length
            merged.history[key].extend(history.history.get(key, default))
    merged.stage_names = [stage.name for stage in stages]
    merged.stage_histories = histories
    return merged


def run_curriculum(
    model,
    datasets,
    stages,
    callbacks=None,
    on_stage_change=None,
    validation_data=None,
    batch_size=32,
    verbose="auto",
    start_stage=0,
    start_offset=0,
):
    """Train `model` through every stage of a curriculum; returns one merged `History`.

    Runs one `model.fit` per stage (epoch `i` is stage `i`, with `steps_per_epoch =
    stage.steps`), because stages usually read different datasets whose elements differ
    in structure (text-only vs image-text batches), which one `fit` over one iterator cannot
    do. Before each stage it calls `CurriculumCallback.enter_stage` (freezing, optimizer,
    train function, learning rate, data side, logs). Everything is validated before the
    first step: the stages, a dataset per stage (with `images` for vision stages, enough
    batches), and that every stage trains something on this model. For one dataset and a
    stage switch mid-`fit`, use `CurriculumCallback` directly.

    Each `fit` opens a fresh iterator: a `tf.data.Dataset` shared by stages starts again from
    its first batch (shuffle and repeat it). The optimizer's step counter runs on across
    stages, so an `AdaptiveLearningRateSchedule.from_stages(stages, ...)` sees the global step.

    Args:
        model: a compiled `keras.Model` (e.g. `VishwamCausalLM`).
        datasets: one dataset for all stages, or a dict keyed by stage name or data-mixture
            source (see `resolve_stage_datasets`).
        stages: list of `CurriculumStage` or dicts.
        callbacks: `None` or list of Keras callbacks, passed to every `fit`. Defaults to `None`.
        on_stage_change: `None` or callable `(index, stage)`. Defaults to `None`.
        validation_data: `None` or data for `fit`'s `validation_data`. Defaults to `None`.
        batch_size: int. Batch size for array inputs. Defaults to `32`.
        verbose: `fit`'s verbosity. Defaults to `"auto"`.
        start_stage, start_offset: resume inside the curriculum: skip the stages before
            `start_stage` and the first `start_offset` steps (and batches) of it. The model
            and optimizer must already be in that stage's state (see
            `training.pipeline`). Defaults to `0, 0`.

    Returns:
        A `keras.callbacks.History` over all stages, with a `"stage"` entry per epoch,
        `stage_names` and `stage_histories` (one `History` per stage).
    """
    stages = as_stages(stages)
    if getattr(model, "optimizer", None) is None:
        raise ValueError("`model` must be compiled before run_curriculum (model.optimizer is None).")
    callbacks = list(callbacks or [])
    if any(isinstance(c, CurriculumCallback) for c in callbacks):
        raise ValueError("run_curriculum drives the curriculum itself; remove the CurriculumCallback from `callbacks`.")
    stage_data = resolve_stage_datasets(stages, datasets, batch_size=batch_size)
    check_curriculum(model, stages)
    curriculum = CurriculumCallback(stages, on_stage_change=on_stage_change, verbose=1 if verbose else 0)
    curriculum._check_schedule(model.optimizer)
    curriculum._driven_externally = True
    curriculum._sources = [_data_source(stage, datasets) for stage in stages]
    curriculum.set_model(model)
    histories, ran = [], []
    step = int(ops.convert_to_numpy(model.optimizer.iterations.value))
    for index, (stage, data) in enumerate(zip(stages, stage_data)):
        if index < start_stage:
            continue
        offset = start_offset if index == start_stage else 0
        if offset >= stage.steps:
            continue
        if offset:
            data = data.skip(offset)
        curriculum.enter_stage(index, model, step=step)
        ran.append(stage)
        histories.append(
            model.fit(
                data,
                epochs=index + 1,
                initial_epoch=index,
                steps_per_epoch=stage.steps - offset,
                callbacks=callbacks + [curriculum],
                validation_data=validation_data,
                shuffle=False,  # datasets shuffle themselves; Keras warns otherwise
                verbose=verbose,
            )
        )
        step += stage.steps - offset
    return _merge_histories(model, ran, histories)

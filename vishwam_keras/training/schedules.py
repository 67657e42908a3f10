"""Learning-rate schedules: linear warm-up + cosine decay, per-stage restarts, an adaptive scale.

The optimizer calls them with its step counter inside the compiled train step; callbacks
(`AdaptiveLRCallback`, the curriculum) steer them between steps.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from vishwam_keras.checks import check_float, check_int

LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule


def warmup_cosine(step, peak_learning_rate, warmup_steps, decay_steps, final_learning_rate):
    """Linear warm-up from 0 to the peak over `warmup_steps`, then a half cosine to
    `final_learning_rate` over `decay_steps`, then flat. All arguments may be tensors.

    `lr = peak * step / warmup` while `step < warmup`;
    `lr = final + (peak - final) * (1 + cos(pi * min(1, (step - warmup) / decay))) / 2` after
    (Loshchilov and Hutter 2017, SGDR, without the restarts).
    """
    step = ops.cast(step, "float32")
    peak = ops.cast(peak_learning_rate, "float32")
    warmup = ops.cast(warmup_steps, "float32")
    decay = ops.maximum(ops.cast(decay_steps, "float32"), 1.0)
    final = ops.cast(final_learning_rate, "float32")
    warming = peak * step / ops.maximum(warmup, 1.0)
    progress = ops.clip((step - warmup) / decay, 0.0, 1.0)
    decayed = final + (peak - final) * 0.5 * (1.0 + ops.cos(math.pi * progress))
    return ops.where(step < warmup, warming, decayed)


@keras.saving.register_keras_serializable(package="vishwam_keras")
class WarmupCosineSchedule(LearningRateSchedule):
    """Linear warm-up to a peak, cosine decay to a floor.

    `lr(0) = 0`, rising linearly to `peak_learning_rate` at `warmup_steps`, then following
    half a cosine down to `final_learning_rate` at `total_steps`, and staying there.
    Works on float or int step tensors inside `jit` on every backend.

    Args:
        peak_learning_rate: float. The learning rate after warm-up.
        warmup_steps: int. Steps of linear warm-up (0 for none).
        total_steps: int. Step at which the decay reaches `final_learning_rate`; must be
            `>= warmup_steps`.
        final_learning_rate: float. The floor, `0 <= final <= peak`. Defaults to `0.0`.

    Example:
    >>> schedule = WarmupCosineSchedule(1e-3, warmup_steps=10, total_steps=100)
    >>> [round(float(schedule(s)), 6) for s in (0, 5, 10, 55, 100, 200)]
    [0.0, 0.0005, 0.001, 0.0005, 0.0, 0.0]
    """

    def __init__(self, peak_learning_rate, warmup_steps, total_steps, final_learning_rate=0.0):
        self.peak_learning_rate = check_float("peak_learning_rate", peak_learning_rate, strict=True)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.total_steps = check_int("total_steps", total_steps, 1)
        self.final_learning_rate = check_float("final_learning_rate", final_learning_rate)
        if self.total_steps < self.warmup_steps:
            raise ValueError(
                "`total_steps` must be >= `warmup_steps`. Received: "
                f"total_steps={total_steps}, warmup_steps={warmup_steps}"
            )
        if self.final_learning_rate > self.peak_learning_rate:
            raise ValueError(
                "`final_learning_rate` must be <= `peak_learning_rate`. Received: "
                f"final_learning_rate={final_learning_rate}, peak_learning_rate={peak_learning_rate}"
            )

    def __call__(self, step):
        return warmup_cosine(
            step,
            self.peak_learning_rate,
            self.warmup_steps,
            self.total_steps - self.warmup_steps,
            self.final_learning_rate,
        )

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "final_learning_rate": self.final_learning_rate,
        }


def _check_boundaries(stage_boundaries, total_steps):
    boundaries = [check_int("stage_boundaries", b, 1) for b in stage_boundaries]
    if any(b <= a for a, b in zip(boundaries, boundaries[1:])):
        raise ValueError(
            f"`stage_boundaries` must increase strictly. Received: stage_boundaries={boundaries}"
        )
    if total_steps is not None:
        total_steps = check_int("total_steps", total_steps, 1)
        if boundaries and total_steps <= boundaries[-1]:
            raise ValueError(
                "`total_steps` must exceed the last stage boundary. Received: "
                f"total_steps={total_steps}, stage_boundaries={boundaries}"
            )
    return boundaries, total_steps


def _per_stage(name, value, num_stages, check):
    """A scalar broadcast to every stage, or a list with one entry per stage."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(
                f"`{name}` must have one entry per stage ({num_stages}: len(stage_boundaries) + 1). "
                f"Received: {name}={list(value)!r}"
            )
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [check(name, value)] * num_stages


@keras.saving.register_keras_serializable(package="vishwam_keras")
class AdaptiveLearningRateSchedule(LearningRateSchedule):
    """Per-stage warm-up + cosine restarts, times a `scale` callbacks can lower mid-run.

    `stage_boundaries` split training into stages (stage `i` covers global steps
    `[b[i-1], b[i])`); each stage restarts: with a float `learning_rate`, a linear warm-up
    of `warmup_steps` to the stage's peak (`stage_learning_rates[i]`, default
    `learning_rate`), then a cosine decay to `final_learning_rate_ratio * peak` at the
    stage's end (the last stage ends at `total_steps`; without it the last stage stays at
    its peak after warm-up). With a `LearningRateSchedule` as `learning_rate`, that
    schedule is restarted at every boundary instead: `lr = learning_rate(step - start)`.
    The result is multiplied by `scale`, a non-trainable `keras.Variable` (initially
    `scale`) that `AdaptiveLRCallback` lowers on a loss plateau or spike.

    The compiled train step must read the variable's current value, not a copy taken
    when it was traced. TensorFlow captures variables by reference, but JAX traces the
    train step as a pure function of the model and optimizer state, so a variable outside
    that state is baked in as a constant. `attach(optimizer)` therefore re-creates `scale`
    as an optimizer variable (`optimizer.add_variable`); `AdaptiveLRCallback` and
    `CurriculumCallback` call it at the start of `fit`. A new value assigned from a
    callback is then used by the next step on JAX and TensorFlow without recompiling. (A
    saved optimizer then has one more variable; attach before loading its state.)

    Args:
        learning_rate: float (peak) or `LearningRateSchedule` (restarted per stage).
        stage_boundaries: list of increasing ints > 0. Global steps where a stage starts.
            Defaults to `()` (one stage).
        stage_learning_rates: `None` or list of floats, one per stage. Peaks; only with a
            float `learning_rate`. Defaults to `learning_rate` for every stage.
        warmup_steps: int or list of ints, one per stage. Defaults to `0`.
        total_steps: `None` or int. End of the last stage. Defaults to `None`.
        final_learning_rate_ratio: float in `[0, 1]`. Floor of each stage's cosine, as a
            fraction of its peak. Defaults to `0.0`.
        scale: float. Initial value of the scale. Defaults to `1.0`.

    Example:
    >>> schedule = AdaptiveLearningRateSchedule(
    ...     1e-3, stage_boundaries=[100], warmup_steps=10, total_steps=200)
    >>> [round(float(schedule(s)), 6) for s in (5, 10, 99, 100, 105, 110)]
    [0.0005, 0.001, 0.0, 0.0, 0.0005, 0.001]
    >>> schedule.set_scale(0.5)
    >>> round(float(schedule(110)), 6)
    0.0005
    """

    def __init__(
        self,
        learning_rate,
        stage_boundaries=(),
        stage_learning_rates=None,
        warmup_steps=0,
        total_steps=None,
        final_learning_rate_ratio=0.0,
        scale=1.0,
    ):
        boundaries, total_steps = _check_boundaries(stage_boundaries, total_steps)
        num_stages = len(boundaries) + 1
        self.base_schedule = None
        if isinstance(learning_rate, LearningRateSchedule):
            if stage_learning_rates is not None or warmup_steps not in (0, None):
                raise ValueError(
                    "With a LearningRateSchedule as `learning_rate`, `stage_learning_rates` and "
                    "`warmup_steps` do not apply (the schedule is restarted per stage). "
                    f"Received: stage_learning_rates={stage_learning_rates!r}, "
                    f"warmup_steps={warmup_steps!r}"
                )
            self.base_schedule = learning_rate
            peaks, warmups = [0.0] * num_stages, [0] * num_stages
        else:
            learning_rate = check_float("learning_rate", learning_rate, strict=True)
            peaks = _per_stage(
                "stage_learning_rates",
                [learning_rate] * num_stages if stage_learning_rates is None else list(stage_learning_rates),
                num_stages,
                lambda n, v: check_float(n, v, strict=True),
            )
            warmups = _per_stage(
                "warmup_steps", warmup_steps or 0, num_stages, lambda n, v: check_int(n, v, 0)
            )
        self.final_learning_rate_ratio = check_float(
            "final_learning_rate_ratio", final_learning_rate_ratio
        )
        if self.final_learning_rate_ratio > 1:
            raise ValueError(
                "`final_learning_rate_ratio` must lie in [0, 1]. Received: "
                f"final_learning_rate_ratio={final_learning_rate_ratio!r}"
            )
        # Stage `i` spans [starts[i], ends[i]); -1 marks an open-ended last stage.
        self._starts = [0] + boundaries
        self._ends = boundaries + [total_steps if total_steps is not None else -1]
        for i, (begin, end, warmup) in enumerate(zip(self._starts, self._ends, warmups)):
            if end >= 0 and warmup > end - begin:
                raise ValueError(
                    f"`warmup_steps` of stage {i} ({warmup}) exceeds the stage's length "
                    f"({end - begin} steps). Received: warmup_steps={warmup_steps!r}"
                )
        self._peaks, self._warmups = peaks, warmups
        self.learning_rate = learning_rate
        self.stage_boundaries = boundaries
        self.stage_learning_rates = None if self.base_schedule is not None else peaks
        self.warmup_steps = warmups if isinstance(warmup_steps, (list, tuple)) else (warmup_steps or 0)
        self.total_steps = total_steps
        self._scale = keras.Variable(
            check_float("scale", scale, strict=True),
            dtype="float32",
            trainable=False,
            name="learning_rate_scale",
        )

    @classmethod
    def from_stages(cls, stages, learning_rate, warmup_steps=0, final_learning_rate_ratio=0.0, **kwargs):
        """A schedule whose restarts match a curriculum.

        Args:
            stages: list of objects with `steps` and `learning_rate` (e.g. `CurriculumStage`).
            learning_rate: float. Peak of stages whose `learning_rate` is `None`.
            warmup_steps: int or list. Warm-up at the start of each stage.
            final_learning_rate_ratio: float. Floor of each stage's cosine.
        """
        steps = [stage.steps for stage in stages]
        if not steps:
            raise ValueError("`stages` must not be empty.")
        boundaries = list(np.cumsum(steps)[:-1].astype(int).tolist())
        peaks = [
            learning_rate if getattr(stage, "learning_rate", None) is None else stage.learning_rate
            for stage in stages
        ]
        return cls(
            learning_rate,
            stage_boundaries=boundaries,
            stage_learning_rates=peaks,
            warmup_steps=warmup_steps,
            total_steps=int(sum(steps)),
            final_learning_rate_ratio=final_learning_rate_ratio,
            **kwargs,
        )

    # === The scale ===
    @property
    def scale(self):
        """The `keras.Variable` multiplying the learning rate."""
        return self._scale

    def set_scale(self, value):
        self._scale.assign(float(value))

    def attach(self, optimizer):
        """Make `scale` an optimizer variable so compiled train steps read it (see class doc).

        Re-creating the variable keeps its current value. Returns `True` if it was moved.
        """
        inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
        if any(variable is self._scale for variable in inner.variables):
            return False
        value = float(ops.convert_to_numpy(self._scale.value))
        self._scale = inner.add_variable(
            shape=(),
            initializer=keras.initializers.Constant(value),
            dtype="float32",
            name="learning_rate_scale",
        )
        return True

    # === The schedule ===
    def stage_index(self, step):
        """Index of the stage that `step` (tensor or int) belongs to."""
        step = ops.cast(step, "float32")
        index = ops.zeros_like(step, dtype="int32")
        for boundary in self.stage_boundaries:
            index = index + ops.cast(step >= float(boundary), "int32")
        return index

    def __call__(self, step):
        step = ops.cast(step, "float32")
        index = self.stage_index(step)
        start = ops.take(ops.convert_to_tensor(np.asarray(self._starts, "float32")), index)
        step_in_stage = step - start
        if self.base_schedule is not None:
            learning_rate = ops.cast(self.base_schedule(step_in_stage), "float32")
        else:
            peak = ops.take(ops.convert_to_tensor(np.asarray(self._peaks, "float32")), index)
            warmup = ops.take(ops.convert_to_tensor(np.asarray(self._warmups, "float32")), index)
            lengths = [
                (end - begin) if end >= 0 else np.inf for begin, end in zip(self._starts, self._ends)
            ]
            length = ops.take(ops.convert_to_tensor(np.asarray(lengths, "float32")), index)
            # An open-ended last stage has infinite length: its cosine stays at the peak.
            learning_rate = warmup_cosine(
                step_in_stage,
                peak,
                warmup,
                length - warmup,
                peak * self.final_learning_rate_ratio,
            )
        return learning_rate * ops.cast(self._scale, "float32")

    def get_config(self):
        learning_rate = self.learning_rate
        if self.base_schedule is not None:
            learning_rate = keras.saving.serialize_keras_object(self.base_schedule)
        return {
            "learning_rate": learning_rate,
            "stage_boundaries": list(self.stage_boundaries),
            "stage_learning_rates": self.stage_learning_rates,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "final_learning_rate_ratio": self.final_learning_rate_ratio,
            "scale": float(ops.convert_to_numpy(self._scale.value)),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = keras.saving.deserialize_keras_object(config["learning_rate"])
        return cls(**config)


def find_schedule(optimizer):
    """The `LearningRateSchedule` an optimizer (or a `LossScaleOptimizer`'s inner one) uses,
    or `None` for a constant (variable) learning rate."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = getattr(inner, "_learning_rate", None)
    return schedule if isinstance(schedule, LearningRateSchedule) else None


class AdaptiveLRCallback(keras.callbacks.Callback):
    """Lowers the learning rate when the training loss plateaus or spikes.

    Watches the per-step training loss. A *plateau*: the mean loss over the last `window`
    steps has not improved on its best value by `min_delta` for `patience` steps. A
    *spike*: a step's loss exceeds `spike_factor` times the mean of the previous `window`
    steps (or is not finite). Either multiplies the scale by `factor` (never below
    `min_scale`), then waits `cooldown` steps. With an `AdaptiveLearningRateSchedule` the
    schedule's `scale` variable changes (the callback attaches it to the optimizer first, see
    `AdaptiveLearningRateSchedule.attach`); with a constant learning rate the optimizer's
    learning-rate variable is multiplied by the same factor. Either way the next compiled step uses the new
    value on JAX and TensorFlow without recompiling. `logs["lr_scale"]` shows the current
    scale in the progress bar and the history.

    Keras' `logs["loss"]` is the running mean since the epoch began; the per-step loss is
    recovered from it (`n * mean_n - (n - 1) * mean_(n-1)`), or read from
    `logs["batch_loss"]` when an earlier callback (e.g. `LossSpikeGuard`) provides it. The
    recovery assumes equal batch sizes.

    Args:
        patience: int. Steps without improvement before a reduction. Defaults to `200`.
        min_delta: float. Improvement that resets the patience. Defaults to `0.0`.
        spike_factor: `None` or float > 1. Defaults to `3.0`; `None` disables spikes.
        window: int. Steps in the running mean. Defaults to `50`.
        factor: float in (0, 1). Multiplier per reduction. Defaults to `0.5`.
        min_scale: float. Floor of the scale (relative to the starting rate). Defaults to `0.01`.
        cooldown: int. Steps after a reduction before watching again. Defaults to `0`.
        verbose: int. 1 prints each reduction. Defaults to `1`.

    Example:
    >>> callback = AdaptiveLRCallback(patience=100, spike_factor=2.0, factor=0.5)
    """

    def __init__(
        self,
        patience=200,
        min_delta=0.0,
        spike_factor=3.0,
        window=50,
        factor=0.5,
        min_scale=0.01,
        cooldown=0,
        verbose=1,
    ):
        super().__init__()
        self.patience = check_int("patience", patience, 1)
        self.min_delta = check_float("min_delta", min_delta)
        if spike_factor is not None and not (isinstance(spike_factor, numbers.Real) and spike_factor > 1):
            raise ValueError(f"`spike_factor` must be None or > 1. Received: spike_factor={spike_factor!r}")
        self.spike_factor = spike_factor
        self.window = check_int("window", window, 1)
        if not (isinstance(factor, numbers.Real) and 0 < factor < 1):
            raise ValueError(f"`factor` must lie in (0, 1). Received: factor={factor!r}")
        self.factor = float(factor)
        self.min_scale = check_float("min_scale", min_scale, strict=True)
        self.cooldown = check_int("cooldown", cooldown, 0)
        self.verbose = verbose
        self.reductions = []  # (global step, reason, new scale)
        self._recovery = BatchLossRecovery()

    def on_train_begin(self, logs=None):
        model = self.model
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError("AdaptiveLRCallback needs a compiled model (model.optimizer is None).")
        schedule = find_schedule(optimizer)
        if schedule is not None and not isinstance(schedule, AdaptiveLearningRateSchedule):
            raise ValueError(
                "AdaptiveLRCallback needs the optimizer's learning rate to be a float or an "
                f"AdaptiveLearningRateSchedule. Received: {type(schedule).__name__}"
            )
        if isinstance(schedule, AdaptiveLearningRateSchedule) and schedule.attach(optimizer):
            model.make_train_function(force=True)
        # Cached: on JAX optimizer variables are detached from their values mid-epoch.
        self._scale_value = (
            float(ops.convert_to_numpy(schedule.scale.value)) if schedule is not None else 1.0
        )
        self._recent = []
        self._best = math.inf
        self._wait = 0
        self._cooldown_left = 0
        self._step = int(ops.convert_to_numpy(optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        self._recovery.reset()

    def current_scale(self):
        """The scale this callback last set (1.0 or the schedule's value at `fit` start)."""
        return self._scale_value

    def _reduce(self, reason):
        old = self._scale_value
        new = max(old * self.factor, self.min_scale)
        if new >= old:
            return
        model = self.model  # On JAX this syncs the running state into the variables first.
        schedule = find_schedule(model.optimizer)
        if schedule is not None:
            if schedule.attach(model.optimizer):  # the optimizer was replaced since fit began
                model.make_train_function(force=True)
            schedule.set_scale(new)
        else:
            # Relative, so a learning rate set since (e.g. by a curriculum stage) is kept.
            rate = float(ops.convert_to_numpy(model.optimizer.learning_rate))
            model.optimizer.learning_rate = rate * new / old
        self._scale_value = new
        self.reductions.append((self._step, reason, new))
        self._cooldown_left = self.cooldown
        self._wait = 0
        self._best = math.inf
        if self.verbose:
            print(f"\nAdaptiveLRCallback: step {self._step}: {reason}; learning-rate scale {old:.4g} -> {new:.4g}")

    def on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        loss, steps = self._recovery.update(batch, logs)
        self._step += steps
        if loss is not None:
            self._observe(loss)
        logs["lr_scale"] = self.current_scale()

    def _observe(self, loss):
        if self._cooldown_left > 0:
            self._cooldown_left -= 1
        elif not math.isfinite(loss):
            self._reduce(f"non-finite loss {loss}")
            return
        elif (
            self.spike_factor is not None
            and len(self._recent) >= min(self.window, 5)
            and loss > self.spike_factor * float(np.mean(self._recent))
        ):
            self._reduce(f"loss spike {loss:.4g} > {self.spike_factor} x mean {np.mean(self._recent):.4g}")
            return  # Keep the spike out of the running mean.
        if not math.isfinite(loss):
            return
        self._recent = (self._recent + [loss])[-self.window:]
        if len(self._recent) < self.window or self._cooldown_left > 0:
            return
        smoothed = float(np.mean(self._recent))
        if smoothed < self._best - self.min_delta:
            self._best = smoothed
            self._wait = 0
        else:
            self._wait += 1
            if self._wait >= self.patience:
                self._reduce(f"plateau: no improvement over {self.patience} steps")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr_scale"] = self.current_scale()


class BatchLossRecovery:
    """Per-step loss from Keras' running-mean `logs["loss"]` (reset each epoch).

    `update(batch, logs)` returns `(loss, steps)`: the mean loss of the steps since the last
    call (one step unless `steps_per_execution > 1`) and how many steps that was.
    `logs["batch_loss"]`, when present, is used as is.
    """

    def __init__(self, key="loss"):
        self.key = key
        self.reset()

    def reset(self, offset=0):
        self._count = 0
        self._mean = 0.0
        self._offset = offset  # batches seen before the loss tracker was last reset
        self._last_batch = -1

    def update(self, batch, logs):
        steps = max(int(batch) - self._last_batch, 1)
        self._last_batch = int(batch)
        if "batch_loss" in logs:
            value = float(logs["batch_loss"])
            self._count = int(batch) + 1 - self._offset
            self._mean = float(logs.get(self.key, value))
            return value, steps
        if self.key not in logs:
            return None, steps
        count = int(batch) + 1 - self._offset
        mean = float(logs[self.key])
        new = count - self._count
        if new <= 0:
            value = mean
        elif not math.isfinite(mean):
            value = mean
        else:
            value = (count * mean - self._count * self._mean) / new
        self._count, self._mean = count, mean
        return value, steps

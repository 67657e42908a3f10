"""Training-stability callbacks: `LossSpikeGuard` (detect, roll back, lower the LR) and NaN guidance.

They run between the compiled train steps of `model.fit`, next to the curriculum callback.

Guidance for non-finite losses: `keras.callbacks.TerminateOnNaN` (re-exported here as
`TerminateOnNaN`) stops `fit` at the first NaN/inf loss. Use it when a NaN should end the
run (e.g. in sweeps). `LossSpikeGuard` treats a non-finite loss as a spike and rolls the
weights back instead, so training can go on; list the guard *before* `TerminateOnNaN` (or
leave `TerminateOnNaN` out), because Keras calls callbacks in order and `TerminateOnNaN`
would stop the run before the guard repairs it. Neither can undo a NaN that reached the
weights without a snapshot: keep `snapshot_every` small when NaNs are a risk.
"""

import math

import keras
import numpy as np
from keras import ops

from vishwam_keras.training.schedules import BatchLossRecovery, find_schedule

TerminateOnNaN = keras.callbacks.TerminateOnNaN

ACTIONS = ("restore", "reduce_lr", "restore_and_reduce_lr", "log")


class LossSpikeGuard(keras.callbacks.Callback):
    """Detects loss spikes and rolls the model back to the last good state.

    What it does, exactly: a Keras callback runs after a step, so the update of a bad step
    has already been applied when its loss is seen; the guard cannot skip that update,
    it undoes it. After every `snapshot_every`-th good step it copies the model weights and
    the optimizer's slot variables to host memory. A step is bad when its loss is not finite
    or exceeds `spike_factor` times the mean of the last `window` good steps (checked once
    `min_history` steps are known). On a bad step, depending on `action`:

    - `"restore"`: write the snapshot back (weights and optimizer slots; the optimizer's step
      counter keeps counting, so the bad batch is skipped, as PaLM's restarts) and reset the
      model's metrics so the epoch's running loss does not carry the spike (or a NaN).
    - `"reduce_lr"`: multiply the learning rate by `lr_factor` (the schedule's `scale` for an
      `AdaptiveLearningRateSchedule`, else the optimizer's learning-rate variable).
    - `"restore_and_reduce_lr"`: both.
    - `"log"`: only report it.

    With `snapshot_every=1` a restore returns exactly to the state before the bad step; larger
    values trade host copies (one per snapshot, the size of the weights plus optimizer state)
    for a rollback of up to `snapshot_every` steps. `max_restores` bounds the rollbacks per
    `fit`; after that the guard raises a `RuntimeError` rather than looping. It writes
    `logs["batch_loss"]` (the step's loss, which `AdaptiveLRCallback` reads: list the guard
    first) and `logs["loss_spikes"]` (spikes seen so far).

    Args:
        spike_factor: float > 1. Defaults to `3.0`.
        window: int. Good steps in the running mean. Defaults to `50`.
        min_history: int. Good steps needed before spikes are judged. Defaults to `5`.
        action: str. One of `"restore"`, `"reduce_lr"`, `"restore_and_reduce_lr"`, `"log"`.
            Defaults to `"restore"`.
        snapshot_every: int. Good steps between snapshots. Defaults to `1`.
        lr_factor: float in (0, 1). Multiplier for `"reduce_lr"`. Defaults to `0.5`.
        max_restores: int. Defaults to `10`.
        verbose: int. 1 prints each spike. Defaults to `1`.

    Example:
    >>> guard = LossSpikeGuard(spike_factor=2.0, action="restore_and_reduce_lr")
    """

    def __init__(
        self,
        spike_factor=3.0,
        window=50,
        min_history=5,
        action="restore",
        snapshot_every=1,
        lr_factor=0.5,
        max_restores=10,
        verbose=1,
    ):
        super().__init__()
        if not (isinstance(spike_factor, (int, float)) and spike_factor > 1):
            raise ValueError(f"`spike_factor` must be > 1. Received: spike_factor={spike_factor!r}")
        if action not in ACTIONS:
            raise ValueError(f"`action` must be one of {list(ACTIONS)}. Received: action={action!r}")
        for name, value in (
            ("window", window),
            ("min_history", min_history),
            ("snapshot_every", snapshot_every),
            ("max_restores", max_restores),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")
        if not (isinstance(lr_factor, (int, float)) and 0 < lr_factor < 1):
            raise ValueError(f"`lr_factor` must lie in (0, 1). Received: lr_factor={lr_factor!r}")
        self.spike_factor = float(spike_factor)
        self.window = window
        self.min_history = min_history
        self.action = action
        self.snapshot_every = snapshot_every
        self.lr_factor = float(lr_factor)
        self.max_restores = max_restores
        self.verbose = verbose
        self.spikes = []  # (global step, loss, running mean)
        self.restores = 0
        self._recovery = BatchLossRecovery()

    # === Snapshots ===
    def _restorable_optimizer_variables(self, optimizer):
        """Optimizer slots; not the step counter, learning rate or schedule scale."""
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        skip = {id(getattr(o, "_iterations", None)) for o in (optimizer, inner)}
        if isinstance(getattr(inner, "_learning_rate", None), keras.Variable):
            skip.add(id(inner._learning_rate))
        schedule = find_schedule(optimizer)
        if schedule is not None and hasattr(schedule, "scale"):
            skip.add(id(schedule.scale))
        return [v for v in optimizer.variables if id(v) not in skip]

    def _take_snapshot(self, model):
        optimizer = model.optimizer
        variables = self._restorable_optimizer_variables(optimizer) if optimizer is not None else []
        self._snapshot = {
            "weights": [np.array(w) for w in model.get_weights()],
            "optimizer": optimizer,
            "optimizer_variables": variables,
            "optimizer_values": [np.array(ops.convert_to_numpy(v.value)) for v in variables],
        }
        self._since_snapshot = 0

    def _restore(self, model):
        snapshot = self._snapshot
        model.set_weights(snapshot["weights"])
        if snapshot["optimizer"] is model.optimizer:
            for variable, value in zip(snapshot["optimizer_variables"], snapshot["optimizer_values"]):
                variable.assign(value)
        # Else the optimizer was replaced (a curriculum stage change): its fresh slots stay.
        model.reset_metrics()
        self._recovery.reset(offset=self._batch + 1)

    def _reduce_learning_rate(self, model):
        schedule = find_schedule(model.optimizer)
        if schedule is not None and hasattr(schedule, "set_scale"):
            if schedule.attach(model.optimizer):
                model.make_train_function(force=True)
            scale = float(ops.convert_to_numpy(schedule.scale.value))
            schedule.set_scale(scale * self.lr_factor)
            return f"learning-rate scale {scale:.4g} -> {scale * self.lr_factor:.4g}"
        if schedule is not None:
            return f"learning rate unchanged (a {type(schedule).__name__} has no scale)"
        rate = float(ops.convert_to_numpy(model.optimizer.learning_rate))
        model.optimizer.learning_rate = rate * self.lr_factor
        return f"learning rate {rate:.4g} -> {rate * self.lr_factor:.4g}"

    # === Callback hooks ===
    def on_train_begin(self, logs=None):
        model = self.model
        schedule = find_schedule(model.optimizer)
        if self.action != "log" and schedule is not None and hasattr(schedule, "attach"):
            if schedule.attach(model.optimizer):
                model.make_train_function(force=True)
        self._recent = []
        self.restores = 0
        self._step = int(ops.convert_to_numpy(model.optimizer.iterations))
        if self.action in ("restore", "restore_and_reduce_lr"):
            self._take_snapshot(model)

    def on_epoch_begin(self, epoch, logs=None):
        self._recovery.reset()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        self._batch = int(batch)
        loss, steps = self._recovery.update(batch, logs)
        self._step += steps
        if loss is None:
            return
        logs["batch_loss"] = loss
        mean = float(np.mean(self._recent)) if self._recent else math.nan
        spike = not math.isfinite(loss) or (
            len(self._recent) >= self.min_history and loss > self.spike_factor * mean
        )
        if spike:
            self._handle_spike(loss, mean)
        else:
            self._recent = (self._recent + [loss])[-self.window:]
            if self.action in ("restore", "restore_and_reduce_lr"):
                self._since_snapshot += steps
                if self._since_snapshot >= self.snapshot_every:
                    self._take_snapshot(self.model)
        logs["loss_spikes"] = len(self.spikes)

    def _handle_spike(self, loss, mean):
        self.spikes.append((self._step, loss, mean))
        done = []
        if self.action in ("restore", "restore_and_reduce_lr"):
            if self.restores >= self.max_restores:
                raise RuntimeError(
                    f"LossSpikeGuard: {self.restores} restores already (max_restores="
                    f"{self.max_restores}); step {self._step} spiked again (loss {loss})."
                )
            self._restore(self.model)
            self.restores += 1
            done.append("weights and optimizer state restored from the last snapshot")
        if self.action in ("reduce_lr", "restore_and_reduce_lr"):
            done.append(self._reduce_learning_rate(self.model))
        if self.verbose:
            what = "; ".join(done) if done else "logged only"
            print(f"\nLossSpikeGuard: step {self._step}: loss {loss:.4g} vs running mean {mean:.4g}: {what}")

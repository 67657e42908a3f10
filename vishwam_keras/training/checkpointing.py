"""Atomic checkpoints of a training run, and resuming from the latest one.

A checkpoint is a folder `step-NNNNNNNN/` with the model weights, the optimizer variables
and `state.json`; it is written under a temporary name and renamed, and `LATEST` (itself
replaced atomically) names the newest. A kill at any moment leaves the previous checkpoint.
"""

import json
import os
import shutil
import tempfile

import keras
import numpy as np

LATEST_FILE = "LATEST"
WEIGHTS_FILE = "model.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"
FORMAT_VERSION = 1


def _atomic_write_text(path, text):
    directory = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(handle, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def save_checkpoint(directory, model, state, keep=2):
    """Write `model` weights, optimizer variables and `state` (a JSON-able dict with at
    least `step`) as the newest checkpoint in `directory`; keep the `keep` newest."""
    os.makedirs(directory, exist_ok=True)
    step = int(state["step"])
    name = f"step-{step:08d}"
    final = os.path.join(directory, name)
    temporary = tempfile.mkdtemp(dir=directory, prefix=f".{name}.tmp-")
    try:
        model.save_weights(os.path.join(temporary, WEIGHTS_FILE))
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and optimizer.built:
            arrays = {f"v{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(optimizer.variables)}
            np.savez(os.path.join(temporary, OPTIMIZER_FILE), **arrays)
        with open(os.path.join(temporary, STATE_FILE), "w") as f:
            json.dump({"format_version": FORMAT_VERSION, **state}, f)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _atomic_write_text(os.path.join(directory, LATEST_FILE), name)
    _prune(directory, keep, current=name)
    return final


def _prune(directory, keep, current):
    names = sorted(n for n in os.listdir(directory) if n.startswith("step-") and not n.endswith(".tmp"))
    for name in names[:-keep]:
        if name != current:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    for name in os.listdir(directory):  # leftovers of killed saves
        if name.startswith(".step-"):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def latest_checkpoint(directory):
    """Path of the newest complete checkpoint in `directory`, or None."""
    pointer = os.path.join(directory, LATEST_FILE)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(directory, name)
    if not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise ValueError(
            f"Checkpoint folder '{path}' named by '{pointer}' is missing {STATE_FILE}; the "
            "checkpoint directory is corrupt. Delete it or point `checkpoint_dir` elsewhere."
        )
    return path


def load_checkpoint(path, model):
    """Restore weights and optimizer variables from `path`; return its state dict."""
    state_path = os.path.join(path, STATE_FILE)
    try:
        with open(state_path) as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read checkpoint state '{state_path}': {error}") from error
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"Checkpoint '{path}' has format_version {state['format_version']}, newer than this "
            f"library's {FORMAT_VERSION}. Upgrade vishwam_keras to resume it."
        )
    weights = os.path.join(path, WEIGHTS_FILE)
    try:
        model.load_weights(weights)
    except Exception as error:
        raise ValueError(f"Cannot load weights file '{weights}': {error}") from error
    optimizer_path = os.path.join(path, OPTIMIZER_FILE)
    optimizer = getattr(model, "optimizer", None)
    if os.path.isfile(optimizer_path) and optimizer is not None:
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        with np.load(optimizer_path) as arrays:
            values = [arrays[f"v{i}"] for i in range(len(arrays.files))]
        if len(values) != len(optimizer.variables):
            raise ValueError(
                f"Optimizer state in '{optimizer_path}' has {len(values)} variables; the "
                f"optimizer has {len(optimizer.variables)}. Was the model or optimizer changed?"
            )
        for variable, value in zip(optimizer.variables, values):
            variable.assign(value)
    return state


class CheckpointCallback(keras.callbacks.Callback):
    """Saves an atomic checkpoint every `every_steps` training steps and at the end.

    Args:
        directory: str. Checkpoint folder.
        every_steps: int. Defaults to `100`.
        state_fn: `None` or callable `() -> dict` adding fields (stage index, ...) to the
            saved state. The global step is `model.optimizer.iterations`.
        keep: int. Checkpoints kept. Defaults to `2`.
    """

    def __init__(self, directory, every_steps=100, state_fn=None, keep=2):
        super().__init__()
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps <= 0:
            raise ValueError(f"`every_steps` must be a positive int. Received: every_steps={every_steps!r}")
        self.directory = directory
        self.every_steps = every_steps
        self.state_fn = state_fn
        self.keep = keep

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations.value))

    def save(self):
        state = {"step": self._step()}
        if self.state_fn is not None:
            state.update(self.state_fn())
        return save_checkpoint(self.directory, self.model, state, keep=self.keep)

    def on_train_begin(self, logs=None):
        self.diverged_at = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            # Never overwrite a good checkpoint with NaN weights.
            if self.diverged_at is None:
                self.diverged_at = self._step()
                print(
                    f"CheckpointCallback: non-finite loss at step {self.diverged_at}; keeping "
                    f"the last good checkpoint {latest_checkpoint(self.directory)}"
                )
            return
        if self._step() % self.every_steps == 0:
            self.save()

    def on_train_end(self, logs=None):
        if getattr(self, "diverged_at", None) is None:
            self.save()

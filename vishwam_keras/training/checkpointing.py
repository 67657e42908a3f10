"""Atomic checkpoints of a training run, and resuming from the latest one.

A checkpoint is a folder `step-NNNNNNNN/` with the model weights and the optimizer variables
(NumPy archives, assigned in order and checked by shape) and `state.json`; it is written under a temporary name and renamed, and `LATEST` (itself
replaced atomically) names the newest. A kill at any moment leaves the previous checkpoint.
"""

import json
import os
import shutil
import tempfile

import keras
import numpy as np

LATEST_FILE = "LATEST"
WEIGHTS_FILE = "model_weights.npz"
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
        weights = {f"w{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(model.weights)}
        np.savez(os.path.join(temporary, WEIGHTS_FILE), **weights)
        with open(os.path.join(temporary, "weight_paths.json"), "w") as f:
            json.dump([v.path for v in model.weights], f)
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and optimizer.built:
            # Keyed by path without the optimizer's own (auto-numbered) name.
            arrays = {_optimizer_key(v): keras.ops.convert_to_numpy(v.value) for v in optimizer.variables}
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
    weights_path = os.path.join(path, WEIGHTS_FILE)
    try:
        with np.load(weights_path) as arrays:
            values = [arrays[f"w{i}"] for i in range(len(arrays.files))]
    except Exception as error:
        raise ValueError(f"Cannot read weights file '{weights_path}': {error}") from error
    if len(values) != len(model.weights) or any(
        tuple(v.shape) != tuple(value.shape) for v, value in zip(model.weights, values)
    ):
        raise ValueError(
            f"Weights file '{weights_path}' holds {len(values)} arrays that do not match the "
            f"model's {len(model.weights)} weights (shapes differ). Was the model changed?"
        )
    for variable, value in zip(model.weights, values):
        variable.assign(value)
    optimizer_path = os.path.join(path, OPTIMIZER_FILE)
    optimizer = getattr(model, "optimizer", None)
    if os.path.isfile(optimizer_path) and optimizer is not None:
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        with np.load(optimizer_path) as arrays:
            saved = {key: arrays[key] for key in arrays.files}
        keys = [_optimizer_key(v) for v in optimizer.variables]
        if sorted(keys) != sorted(saved):
            raise ValueError(
                f"Optimizer state in '{optimizer_path}' does not match the optimizer: missing "
                f"{sorted(set(keys) - set(saved))[:5]}, unexpected {sorted(set(saved) - set(keys))[:5]}. "
                "Was the model, the curriculum stage or the optimizer changed?"
            )
        for variable, key in zip(optimizer.variables, keys):
            variable.assign(saved[key])
    return state


def _optimizer_key(variable):
    return variable.path.split("/", 1)[-1]


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

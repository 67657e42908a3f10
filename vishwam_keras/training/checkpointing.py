"""Atomic checkpoints of a training run, and resuming from the latest one.

A checkpoint is a folder `step-NNNNNNNN/` with the model weights and the optimizer variables
(NumPy archives, assigned in order and checked by shape) and `state.json`; it is written under a
temporary name, synced and renamed, and `LATEST` (itself replaced atomically) names the newest.
A kill at any moment leaves the previous checkpoint (see `save_checkpoint`).
"""

import json
import math
import os
import re
import shutil
import tempfile
import warnings

import keras
import numpy as np

LATEST_FILE = "LATEST"
WEIGHTS_FILE = "model_weights.npz"
WEIGHT_PATHS_FILE = "weight_paths.json"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8,})$")
_REPLACED_SUFFIX = ".replaced"  # `.step-N.replaced`: the old copy while step N is re-saved


class NonFiniteWeightsError(ValueError):
    """The model holds NaN/Inf weights: `save_checkpoint` refuses to write them."""


def _fsync_directory(path):
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform or file system
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _write_file(path, write):
    """Write with `write(f)`, flush and fsync, so a rename after it publishes complete data."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write_text(path, text):
    directory = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    _fsync_directory(directory)


def _check_state(state, keep):
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"`state` must be a dict with a `step` entry. Received: state={state!r:.200}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"`state['step']` must be an int >= 0. Received: step={step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"`keep` must be an int >= 1. Received: keep={keep!r}")
    try:
        json.dumps(state)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`state` must be JSON-serialisable: {error}") from None
    return int(step)


def _weight_arrays(model, allow_non_finite):
    weights = {}
    for i, variable in enumerate(model.weights):
        value = np.asarray(keras.ops.convert_to_numpy(variable.value))
        if not allow_non_finite and np.issubdtype(value.dtype, np.floating) and not np.all(
            np.isfinite(value)
        ):
            raise NonFiniteWeightsError(
                f"Weight '{variable.path}' holds {int(np.sum(~np.isfinite(value)))} NaN/Inf "
                "values; refusing to overwrite good checkpoints with it."
            )
        weights[f"w{i}"] = value
    return weights


def save_checkpoint(directory, model, state, keep=2, allow_non_finite=False):
    """Write `model` weights, optimizer variables and `state` as the newest checkpoint.

    The checkpoint is written and fsynced in a temporary folder, renamed to
    `step-NNNNNNNN` (re-saving a step first moves the old folder aside, so a copy of it exists
    at every moment), then `LATEST` is replaced atomically; the `keep` newest are kept. A
    process killed at any point leaves `latest_checkpoint` a complete checkpoint: the new one
    or the previous.

    Args:
        directory: str. The checkpoint folder.
        model: a Keras model (its `optimizer`, when built, is saved too).
        state: dict, JSON-serialisable, with an int `step` >= 0 (and any other fields).
        keep: int >= 1. Checkpoints kept. Defaults to `2`.
        allow_non_finite: bool. Save NaN/Inf weights instead of raising
            `NonFiniteWeightsError`. Defaults to `False`.

    Returns:
        The checkpoint's path.
    """
    step = _check_state(state, keep)
    weights = _weight_arrays(model, allow_non_finite)
    os.makedirs(directory, exist_ok=True)
    name = f"step-{step:08d}"
    final = os.path.join(directory, name)
    temporary = tempfile.mkdtemp(dir=directory, prefix=f".{name}.tmp-")
    try:
        files = [WEIGHTS_FILE, WEIGHT_PATHS_FILE]
        _write_file(os.path.join(temporary, WEIGHTS_FILE), lambda f: np.savez(f, **weights))
        paths = json.dumps([v.path for v in model.weights]).encode()
        _write_file(os.path.join(temporary, WEIGHT_PATHS_FILE), lambda f: f.write(paths))
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and optimizer.built:
            # Keyed by path without the optimizer's own (auto-numbered) name.
            arrays = {_optimizer_key(v): keras.ops.convert_to_numpy(v.value) for v in optimizer.variables}
            _write_file(os.path.join(temporary, OPTIMIZER_FILE), lambda f: np.savez(f, **arrays))
            files.append(OPTIMIZER_FILE)
        record = json.dumps({"format_version": FORMAT_VERSION, **state, "files": files}).encode()
        _write_file(os.path.join(temporary, STATE_FILE), lambda f: f.write(record))  # written last
        _fsync_directory(temporary)
        replaced = os.path.join(directory, f".{name}{_REPLACED_SUFFIX}")
        if os.path.isdir(final):
            # Keep the old copy until the new one is in place; `latest_checkpoint` puts it
            # back if a kill lands between these two renames.
            if os.path.isdir(replaced):
                shutil.rmtree(replaced)
            os.rename(final, replaced)
        os.rename(temporary, final)
        _fsync_directory(directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _atomic_write_text(os.path.join(directory, LATEST_FILE), name)
    _prune(directory, keep, current=name)
    return final


def _prune(directory, keep, current):
    names = sorted(n for n in os.listdir(directory) if _NAME.match(n))
    for name in names[:-keep]:
        if name != current:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    for name in os.listdir(directory):  # leftovers of killed saves, replaced copies
        if name.startswith(".step-"):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _missing_files(path):
    """Files a checkpoint folder should have but lacks (`state.json` lists them)."""
    state_path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_path):
        return [STATE_FILE]
    try:
        with open(state_path) as f:
            files = json.load(f).get("files", [WEIGHTS_FILE])
    except (OSError, ValueError, AttributeError):
        return []  # unreadable: `load_checkpoint` reports it, naming the file
    return [name for name in files if not os.path.isfile(os.path.join(path, str(name)))]


def _restore_replaced(directory):
    """Put back `.step-N.replaced` copies whose `step-N` is missing (a kill mid re-save)."""
    for entry in os.listdir(directory):
        if entry.startswith(".step-") and entry.endswith(_REPLACED_SUFFIX):
            name = entry[1 : -len(_REPLACED_SUFFIX)]
            original = os.path.join(directory, name)
            if _NAME.match(name) and not os.path.exists(original):
                os.rename(os.path.join(directory, entry), original)


def latest_checkpoint(directory):
    """Path of the newest complete checkpoint in `directory`, or None if there is none.

    Follows `LATEST`. Also repairs what a kill can leave: a checkpoint moved aside while its
    step was being re-saved is put back. Without `LATEST` (a folder copied without it), the
    newest complete `step-*` folder is used, with a warning.

    Raises:
        ValueError: `LATEST` is malformed, or names a folder that is missing or lacks files;
            the message names the file.
    """
    if not os.path.isdir(directory):
        return None
    _restore_replaced(directory)
    pointer = os.path.join(directory, LATEST_FILE)
    complete = sorted(
        n for n in os.listdir(directory)
        if _NAME.match(n) and not _missing_files(os.path.join(directory, n))
    )
    if not os.path.isfile(pointer):
        if not complete:
            return None
        warnings.warn(
            f"'{pointer}' is missing; resuming from the newest complete checkpoint "
            f"'{complete[-1]}'.",
            stacklevel=2,
        )
        return os.path.join(directory, complete[-1])
    with open(pointer) as f:
        name = f.read().strip()
    if not _NAME.match(name):
        raise ValueError(
            f"'{pointer}' must name a checkpoint folder `step-NNNNNNNN`. Received: {name!r:.100}"
        )
    path = os.path.join(directory, name)
    if not os.path.isdir(path):
        raise ValueError(
            f"Checkpoint folder '{path}' named by '{pointer}' is missing; complete checkpoints "
            f"here: {complete}. Point `LATEST` at one of them or delete the directory."
        )
    missing = _missing_files(path)
    if missing:
        raise ValueError(
            f"Checkpoint folder '{path}' named by '{pointer}' is missing "
            f"{', '.join(repr(os.path.join(path, m)) for m in missing)}; the checkpoint "
            "directory is corrupt. Delete it or point `checkpoint_dir` elsewhere."
        )
    return path


def _read_state(path):
    state_path = os.path.join(path, STATE_FILE)
    try:
        with open(state_path) as f:
            state = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read checkpoint state '{state_path}': {error}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"Checkpoint state '{state_path}' is not a dict with a `step` entry.")
    version = state.get("format_version", 0)
    if not isinstance(version, (int, float)) or math.isnan(version) or version > FORMAT_VERSION:
        raise ValueError(
            f"Checkpoint '{state_path}' has format_version {version!r}, newer than this "
            f"library's {FORMAT_VERSION}. Upgrade vishwam_keras to resume it."
        )
    for name in state.get("files", [WEIGHTS_FILE]):
        if not os.path.isfile(os.path.join(path, str(name))):
            raise ValueError(
                f"Checkpoint '{path}' is missing '{os.path.join(path, str(name))}', which "
                f"'{state_path}' lists. The checkpoint is incomplete."
            )
    return state


def _read_arrays(file_path):
    try:
        with np.load(file_path, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except Exception as error:  # zip, CRC, header or pickle errors: all "unreadable"
        raise ValueError(f"Cannot read weights file '{file_path}': {error}") from None


def load_checkpoint(path, model):
    """Restore weights and optimizer variables from `path`; return its state dict.

    Everything is read and checked (files present, archives readable, counts and shapes
    matching) before any variable is assigned, so a failed load leaves `model` unchanged.

    Raises:
        ValueError: naming the file that is missing, unreadable, from a newer format or
            does not match the model.
    """
    state = _read_state(path)
    weights_path = os.path.join(path, WEIGHTS_FILE)
    arrays = _read_arrays(weights_path)
    try:
        values = [arrays[f"w{i}"] for i in range(len(arrays))]
    except KeyError as error:
        raise ValueError(f"Weights file '{weights_path}' lacks array {error}.") from None
    if len(values) != len(model.weights) or any(
        tuple(v.shape) != tuple(value.shape) for v, value in zip(model.weights, values)
    ):
        raise ValueError(
            f"Weights file '{weights_path}' holds {len(values)} arrays that do not match the "
            f"model's {len(model.weights)} weights (shapes differ). Was the model changed?"
        )
    optimizer_path = os.path.join(path, OPTIMIZER_FILE)
    optimizer = getattr(model, "optimizer", None)
    saved = None
    if os.path.isfile(optimizer_path) and optimizer is not None:
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        saved = _read_arrays(optimizer_path)
        keys = [_optimizer_key(v) for v in optimizer.variables]
        if sorted(keys) != sorted(saved):
            raise ValueError(
                f"Optimizer state in '{optimizer_path}' does not match the optimizer: missing "
                f"{sorted(set(keys) - set(saved))[:5]}, unexpected {sorted(set(saved) - set(keys))[:5]}. "
                "Was the model, the curriculum stage or the optimizer changed?"
            )
        bad = [k for v, k in zip(optimizer.variables, keys) if tuple(v.shape) != saved[k].shape]
        if bad:
            raise ValueError(
                f"Optimizer state in '{optimizer_path}' has shapes that do not match the "
                f"optimizer for {bad[:5]}. Was the model changed?"
            )
    for variable, value in zip(model.weights, values):
        variable.assign(value)
    if saved is not None:
        for variable in optimizer.variables:
            variable.assign(saved[_optimizer_key(variable)])
    return state


def _optimizer_key(variable):
    return variable.path.split("/", 1)[-1]


class CheckpointCallback(keras.callbacks.Callback):
    """Saves an atomic checkpoint every `every_steps` training steps and at the end.

    Never saves a diverged model: after a non-finite loss, or when the weights hold NaN/Inf
    (an update can break the weights while the step's loss, computed before it, was finite),
    it stops saving, prints the step and keeps the last good checkpoint. Pair it with
    `keras.callbacks.TerminateOnNaN` to stop training there.

    Args:
        directory: str. Checkpoint folder.
        every_steps: int. Defaults to `100`.
        state_fn: `None` or callable `() -> dict` adding fields (stage index, ...) to the
            saved state. The global step is `model.optimizer.iterations`.
        keep: int. Checkpoints kept. Defaults to `2`.

    Attributes:
        diverged_at: `None`, or the global step at which the loss or weights stopped being
            finite.
    """

    def __init__(self, directory, every_steps=100, state_fn=None, keep=2):
        super().__init__()
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps <= 0:
            raise ValueError(f"`every_steps` must be a positive int. Received: every_steps={every_steps!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` must be an int >= 1. Received: keep={keep!r}")
        self.directory = directory
        self.every_steps = every_steps
        self.state_fn = state_fn
        self.keep = keep
        self.diverged_at = None

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations.value))

    def _diverged(self, step, reason):
        if self.diverged_at is None:
            self.diverged_at = step
            print(
                f"CheckpointCallback: {reason} at step {step}; not saving. The last good "
                f"checkpoint is kept: {latest_checkpoint(self.directory)}"
            )

    def save(self):
        """Save now; returns the path, or `None` if the model diverged (nothing written)."""
        if self.diverged_at is not None:
            return None
        state = {"step": self._step()}
        if self.state_fn is not None:
            state.update(self.state_fn())
        try:
            return save_checkpoint(self.directory, self.model, state, keep=self.keep)
        except NonFiniteWeightsError as error:
            self._diverged(state["step"], f"non-finite weights ({error})")
            return None

    def on_train_begin(self, logs=None):
        self.diverged_at = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.diverged_at is not None:
            return
        if loss is not None and not np.isfinite(float(loss)):
            # Never overwrite a good checkpoint with NaN weights.
            self._diverged(self._step(), f"non-finite loss {float(loss)}")
            return
        if self._step() % self.every_steps == 0:
            self.save()

    def on_train_end(self, logs=None):
        if self.diverged_at is None:
            self.save()

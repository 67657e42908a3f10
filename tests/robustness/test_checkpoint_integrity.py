"""Damaged checkpoints give errors naming the file; a diverging run keeps its last good one.

Corrupt, truncated and missing files, a newer `format_version`, a `LATEST` that points
elsewhere, a kill between the renames of a re-save; and training whose weights turn NaN,
stopped by `TerminateOnNaN` while `CheckpointCallback` refuses to save the bad state.
"""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

from vishwam_keras.training import checkpointing


def _model(seed=0, optimizer=True):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(1, name="out")],
        name="integrity_model",
    )
    if optimizer:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        model.optimizer.build(model.trainable_variables)
    return model


def _weights(model):
    return [np.array(v.numpy()) for v in model.weights]


@pytest.fixture
def saved(tmp_path):
    """Two checkpoints (steps 1 and 2) of different weights; returns (directory, weights by step)."""
    directory = str(tmp_path / "ckpt")
    model = _model()
    states = {}
    for step in (1, 2):
        for variable in model.weights:
            variable.assign(np.random.default_rng(step).standard_normal(variable.shape).astype("float32"))
        checkpointing.save_checkpoint(directory, model, {"step": step})
        states[step] = _weights(model)
    return directory, states


def _damage(path, how):
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(data[: len(data) // 2] if how == "truncated" else bytes(len(data)))
        f.truncate()


@pytest.mark.parametrize("name", [checkpointing.WEIGHTS_FILE, checkpointing.OPTIMIZER_FILE])
@pytest.mark.parametrize("how", ["truncated", "zeroed"])
def test_corrupt_arrays_name_the_file_and_leave_the_model_unchanged(saved, name, how):
    directory, _ = saved
    path = checkpointing.latest_checkpoint(directory)
    _damage(os.path.join(path, name), how)
    model = _model(seed=7)
    before = _weights(model)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        checkpointing.load_checkpoint(path, model)
    for old, new in zip(before, _weights(model)):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("name", [checkpointing.WEIGHTS_FILE, checkpointing.OPTIMIZER_FILE,
                                  checkpointing.STATE_FILE])
def test_missing_file_is_named(saved, name):
    directory, _ = saved
    path = checkpointing.latest_checkpoint(directory)
    os.remove(os.path.join(path, name))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        checkpointing.latest_checkpoint(directory)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        checkpointing.load_checkpoint(path, _model())


def test_newer_format_version_names_the_file(saved):
    directory, _ = saved
    path = checkpointing.latest_checkpoint(directory)
    state_path = os.path.join(path, checkpointing.STATE_FILE)
    with open(state_path) as f:
        state = json.load(f)
    with open(state_path, "w") as f:
        json.dump({**state, "format_version": checkpointing.FORMAT_VERSION + 1}, f)
    with pytest.raises(ValueError, match=r"state\.json.*format_version 2"):
        checkpointing.load_checkpoint(path, _model())


def test_unparsable_state_names_the_file(saved):
    directory, _ = saved
    path = checkpointing.latest_checkpoint(directory)
    _damage(os.path.join(path, checkpointing.STATE_FILE), "truncated")
    with pytest.raises(ValueError, match=r"state\.json"):
        checkpointing.load_checkpoint(path, _model())


def test_weights_of_another_model_name_the_file(saved):
    directory, _ = saved
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match=r"model_weights\.npz.*do not match"):
        checkpointing.load_checkpoint(checkpointing.latest_checkpoint(directory), other)


@pytest.mark.parametrize("pointer", ["../../etc", "step-00000002/../../x", "", "weights"])
def test_latest_pointing_outside_is_refused(saved, pointer):
    directory, _ = saved
    with open(os.path.join(directory, checkpointing.LATEST_FILE), "w") as f:
        f.write(pointer)
    with pytest.raises(ValueError, match="LATEST"):
        checkpointing.latest_checkpoint(directory)


def test_latest_naming_a_missing_folder_is_named(saved):
    directory, _ = saved
    with open(os.path.join(directory, checkpointing.LATEST_FILE), "w") as f:
        f.write("step-00000009")
    with pytest.raises(ValueError, match="step-00000009.*missing"):
        checkpointing.latest_checkpoint(directory)


def test_lost_latest_falls_back_to_the_newest_complete_checkpoint(saved):
    directory, states = saved
    os.remove(os.path.join(directory, checkpointing.LATEST_FILE))
    with pytest.warns(UserWarning, match="LATEST"):
        path = checkpointing.latest_checkpoint(directory)
    model = _model()
    assert checkpointing.load_checkpoint(path, model)["step"] == 2
    for expected, got in zip(states[2], _weights(model)):
        np.testing.assert_array_equal(expected, got)


def test_kill_between_the_renames_of_a_resave_is_repaired(saved):
    """Re-saving step 2 moves the old folder aside first; a kill right then leaves only the
    moved copy, which `latest_checkpoint` puts back."""
    directory, states = saved
    os.rename(os.path.join(directory, "step-00000002"), os.path.join(directory, ".step-00000002.replaced"))
    path = checkpointing.latest_checkpoint(directory)
    assert path.endswith("step-00000002")
    model = _model()
    checkpointing.load_checkpoint(path, model)
    for expected, got in zip(states[2], _weights(model)):
        np.testing.assert_array_equal(expected, got)


def test_resaving_a_step_replaces_it_and_cleans_up(saved):
    directory, _ = saved
    model = _model(seed=3)
    checkpointing.save_checkpoint(directory, model, {"step": 2})
    assert sorted(os.listdir(directory)) == ["LATEST", "step-00000001", "step-00000002"]
    restored = _model()
    checkpointing.load_checkpoint(checkpointing.latest_checkpoint(directory), restored)
    for expected, got in zip(_weights(model), _weights(restored)):
        np.testing.assert_array_equal(expected, got)


def test_saving_nan_weights_is_refused_and_keeps_the_previous(saved):
    directory, states = saved
    model = _model()
    model.weights[0].assign(np.full(model.weights[0].shape, np.nan, "float32"))
    with pytest.raises(checkpointing.NonFiniteWeightsError, match="hidden/kernel"):
        checkpointing.save_checkpoint(directory, model, {"step": 3})
    assert checkpointing.latest_checkpoint(directory).endswith("step-00000002")


# === Training that diverges ===
class SqrtTrap(keras.layers.Layer):
    """`features @ w + 1e-3 * sqrt(v^2 * t)` with `t` the last input column.

    The output is finite for any `t >= 0`, but where `t == 0` the gradient of `v` is
    `inf * 0 = NaN`: the step's loss is finite, yet its update makes `v` NaN, and the next
    loss is NaN. A real divergence, without NaN in the data.
    """

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1] - 1, 1), initializer="ones", name="w")
        self.v = self.add_weight(shape=(), initializer="ones", name="v")

    def call(self, inputs):
        features, trigger = inputs[:, :-1], inputs[:, -1:]
        return ops.matmul(features, self.w) + 1e-3 * ops.sqrt(ops.square(self.v) * trigger)


class WeightRecorder(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        self.weights = getattr(self, "weights", {})
        self.weights[step] = _weights(self.model)


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    directory = str(tmp_path / "ckpt")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), SqrtTrap(name="trap")], name="trap_model")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = np.random.default_rng(0).uniform(0.5, 1.5, (24, 3)).astype("float32")
    x[12:16, -1] = 0.0  # batch 3 (step 4): finite loss, NaN update
    y = x[:, :1] * 2.0
    recorder = WeightRecorder()
    callback = checkpointing.CheckpointCallback(directory, every_steps=1, keep=5)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0,
              callbacks=[keras.callbacks.TerminateOnNaN(), recorder, callback])
    output = capsys.readouterr().out
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 5  # stopped at the NaN loss
    assert callback.diverged_at == 4
    assert "non-finite weights" in output and "at step 4" in output
    path = checkpointing.latest_checkpoint(directory)
    assert path.endswith("step-00000003")
    restored = keras.Sequential([keras.Input((3,)), SqrtTrap(name="trap")], name="trap_model")
    checkpointing.load_checkpoint(path, restored)
    for expected, got in zip(recorder.weights[3], _weights(restored)):
        np.testing.assert_array_equal(expected, got)
        assert np.all(np.isfinite(got))

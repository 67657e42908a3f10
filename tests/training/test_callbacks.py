import keras
import numpy as np
import pytest

from vishwam_keras.training.callbacks import LossSpikeGuard, TerminateOnNaN
from vishwam_keras.training.schedules import AdaptiveLearningRateSchedule, AdaptiveLRCallback


def _linear_model():
    inputs = keras.Input((1,))
    outputs = keras.layers.Dense(1, kernel_initializer="zeros", name="linear")(inputs)
    return keras.Model(inputs, outputs)


def _weights(model):
    return [np.array(w) for w in model.get_layer("linear").get_weights()]


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights, self.logs = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(_weights(self.model))
        self.logs.append(dict(logs or {}))


def _data(spike_at, value):
    x = np.ones((10, 1), "float32")
    y = np.ones((10, 1), "float32")
    y[spike_at] = value
    return x, y


@pytest.mark.parametrize("bad_value", [30.0, np.nan])
def test_guard_restores_the_state_from_before_the_bad_step(bad_value):
    model = _linear_model()
    model.compile(keras.optimizers.Adam(0.01), "mse")
    guard = LossSpikeGuard(spike_factor=3.0, window=5, min_history=3, verbose=0)
    recorder = _Recorder()
    x, y = _data(6, bad_value)
    history = model.fit(x, y, batch_size=1, epochs=1, shuffle=False, callbacks=[guard, recorder], verbose=0)
    assert len(guard.spikes) == 1 and guard.spikes[0][0] == 7 and guard.restores == 1
    for before, after in zip(recorder.weights[5], recorder.weights[6]):
        np.testing.assert_array_equal(before, after)  # the bad update was undone
    assert all(np.isfinite(w).all() for w in recorder.weights[-1])
    assert not np.array_equal(recorder.weights[-1][0], recorder.weights[6][0])  # training went on
    assert recorder.logs[6]["loss_spikes"] == 1
    assert np.isfinite(history.history["loss"][-1])  # metrics were reset after the restore
    assert 0 <= recorder.logs[8]["batch_loss"] < 10  # per-step losses stay right after the reset


def test_guard_can_lower_the_learning_rate_and_feeds_adaptive_lr_callback():
    schedule = AdaptiveLearningRateSchedule(0.01)
    model = _linear_model()
    model.compile(keras.optimizers.SGD(schedule), "mse")
    guard = LossSpikeGuard(spike_factor=3.0, window=5, min_history=3, action="reduce_lr", lr_factor=0.5, verbose=0)
    adaptive = AdaptiveLRCallback(patience=1000, spike_factor=None, verbose=0)
    recorder = _Recorder()
    x, y = _data(6, 30.0)
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, callbacks=[guard, adaptive, recorder], verbose=0)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(schedule.scale)), 0.5)
    assert guard.restores == 0 and len(guard.spikes) == 1
    # The per-step loss the guard writes is the true loss of that batch.
    assert recorder.logs[6]["batch_loss"] > 100 and recorder.logs[7]["batch_loss"] < 10


def test_guard_log_only_and_bad_arguments():
    model = _linear_model()
    model.compile(keras.optimizers.SGD(0.01), "mse")
    guard = LossSpikeGuard(action="log", min_history=3, verbose=0)
    x, y = _data(6, 30.0)
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, callbacks=[guard], verbose=0)
    assert len(guard.spikes) == 1 and guard.restores == 0
    with pytest.raises(ValueError, match="action"):
        LossSpikeGuard(action="skip")
    with pytest.raises(ValueError, match="spike_factor"):
        LossSpikeGuard(spike_factor=1.0)
    with pytest.raises(ValueError, match="snapshot_every"):
        LossSpikeGuard(snapshot_every=0)
    assert TerminateOnNaN is keras.callbacks.TerminateOnNaN

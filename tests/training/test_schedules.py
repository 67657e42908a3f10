import math

import keras
import numpy as np
import pytest

from vishwam_keras.training.schedules import (
    AdaptiveLearningRateSchedule,
    AdaptiveLRCallback,
    BatchLossRecovery,
    WarmupCosineSchedule,
)


# === Independent NumPy references ===
def np_warmup_cosine(step, peak, warmup, total, final):
    if step < warmup:
        return peak * step / warmup
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))


def np_staged(step, boundaries, peaks, warmups, total, ratio):
    starts = [0] + boundaries
    ends = boundaries + [total]
    stage = sum(step >= b for b in boundaries)
    start, end = starts[stage], ends[stage]
    local = step - start
    if end is None:
        return peaks[stage] * min(1.0, local / warmups[stage]) if warmups[stage] else peaks[stage]
    return np_warmup_cosine(local, peaks[stage], warmups[stage], end - start, ratio * peaks[stage])


def _values(schedule, steps):
    return np.array([float(keras.ops.convert_to_numpy(schedule(float(s)))) for s in steps])


def _compiled(schedule):
    """The schedule inside `jit`, called with a float step tensor."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(schedule)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(schedule, jit_compile=True)
    return schedule


STEPS = [0, 1, 3, 9, 10, 11, 37, 59, 60, 61, 64, 99, 100, 140, 170, 199, 200, 500]


def test_warmup_cosine_matches_numpy_eager_and_compiled():
    schedule = WarmupCosineSchedule(2e-3, warmup_steps=10, total_steps=100, final_learning_rate=1e-4)
    expected = np.array([np_warmup_cosine(s, 2e-3, 10, 100, 1e-4) for s in STEPS])
    np.testing.assert_allclose(_values(schedule, STEPS), expected, rtol=1e-5, atol=1e-9)
    compiled = _compiled(schedule)
    got = [float(keras.ops.convert_to_numpy(compiled(np.float32(s)))) for s in (5, 50, 150)]
    np.testing.assert_allclose(got, [np_warmup_cosine(s, 2e-3, 10, 100, 1e-4) for s in (5, 50, 150)], rtol=1e-5)


def test_adaptive_schedule_restarts_per_stage_matches_numpy():
    schedule = AdaptiveLearningRateSchedule(
        1e-3,
        stage_boundaries=[60, 100],
        stage_learning_rates=[1e-3, 5e-4, 2e-4],
        warmup_steps=[10, 4, 20],
        total_steps=200,
        final_learning_rate_ratio=0.1,
    )
    expected = [np_staged(s, [60, 100], [1e-3, 5e-4, 2e-4], [10, 4, 20], 200, 0.1) for s in STEPS]
    np.testing.assert_allclose(_values(schedule, STEPS), expected, rtol=1e-5, atol=1e-9)
    assert [int(keras.ops.convert_to_numpy(schedule.stage_index(s))) for s in (0, 59, 60, 99, 100, 500)] == [0, 0, 1, 1, 2, 2]
    compiled = _compiled(schedule)
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(compiled(np.float32(62.0)))), np_staged(62, [60, 100], [1e-3, 5e-4, 2e-4], [10, 4, 20], 200, 0.1), rtol=1e-5
    )


def test_adaptive_schedule_open_ended_last_stage_and_base_schedule():
    open_ended = AdaptiveLearningRateSchedule(1e-3, stage_boundaries=[50], warmup_steps=10)
    expected = [np_staged(s, [50], [1e-3, 1e-3], [10, 10], None, 0.0) for s in STEPS]
    np.testing.assert_allclose(_values(open_ended, STEPS), expected, rtol=1e-5, atol=1e-9)
    base = WarmupCosineSchedule(1e-3, warmup_steps=5, total_steps=40)
    restarted = AdaptiveLearningRateSchedule(base, stage_boundaries=[40, 90])
    for step in (0, 3, 20, 40, 43, 90, 95, 200):
        start = max([b for b in (0, 40, 90) if step >= b])
        np.testing.assert_allclose(_values(restarted, [step])[0], np_warmup_cosine(step - start, 1e-3, 5, 40, 0.0), rtol=1e-5, atol=1e-9)


def test_scale_multiplies_and_from_stages():
    class Stage:
        def __init__(self, steps, learning_rate=None):
            self.steps, self.learning_rate = steps, learning_rate

    schedule = AdaptiveLearningRateSchedule.from_stages([Stage(30), Stage(20, 1e-4)], 1e-3, warmup_steps=5)
    assert schedule.stage_boundaries == [30] and schedule.total_steps == 50
    assert schedule.stage_learning_rates == [1e-3, 1e-4]
    before = _values(schedule, [10, 40])
    schedule.set_scale(0.25)
    np.testing.assert_allclose(_values(schedule, [10, 40]), before * 0.25, rtol=1e-6)


def test_schedules_serialise_and_reload():
    cosine = WarmupCosineSchedule(1e-3, 10, 100, 1e-5)
    adaptive = AdaptiveLearningRateSchedule(1e-3, [30], warmup_steps=[5, 2], total_steps=80, final_learning_rate_ratio=0.1)
    adaptive.set_scale(0.5)
    nested = AdaptiveLearningRateSchedule(cosine, [100])
    for schedule in (cosine, adaptive, nested):
        restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
        assert type(restored) is type(schedule)
        np.testing.assert_allclose(_values(restored, STEPS), _values(schedule, STEPS), rtol=1e-6)
    optimizer = keras.optimizers.Adam(learning_rate=adaptive)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(restored._learning_rate.scale)), 0.5)


def test_bad_schedule_arguments_raise():
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosineSchedule(1e-3, warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="peak_learning_rate"):
        WarmupCosineSchedule(-1.0, 0, 10)
    with pytest.raises(ValueError, match="final_learning_rate"):
        WarmupCosineSchedule(1e-3, 0, 10, final_learning_rate=1.0)
    with pytest.raises(ValueError, match="stage_boundaries"):
        AdaptiveLearningRateSchedule(1e-3, stage_boundaries=[20, 10])
    with pytest.raises(ValueError, match="stage_learning_rates"):
        AdaptiveLearningRateSchedule(1e-3, stage_boundaries=[20], stage_learning_rates=[1e-3])
    with pytest.raises(ValueError, match="warmup_steps"):
        AdaptiveLearningRateSchedule(1e-3, stage_boundaries=[20], warmup_steps=[30, 0])
    with pytest.raises(ValueError, match="warmup_steps"):
        AdaptiveLearningRateSchedule(WarmupCosineSchedule(1e-3, 0, 10), warmup_steps=5)
    with pytest.raises(ValueError, match="factor"):
        AdaptiveLRCallback(factor=1.5)
    with pytest.raises(ValueError, match="spike_factor"):
        AdaptiveLRCallback(spike_factor=0.5)


def test_batch_loss_recovery_inverts_the_running_mean():
    losses = [4.0, 2.0, 3.0, 9.0, 1.0]
    recovery = BatchLossRecovery()
    means = np.cumsum(losses) / np.arange(1, 6)
    got = [recovery.update(i, {"loss": m})[0] for i, m in enumerate(means)]
    np.testing.assert_allclose(got, losses, rtol=1e-9)
    assert recovery.update(7, {"loss": 1.0, "batch_loss": 5.0}) == (5.0, 3)  # batches 5, 6, 7


# === The scale reaches the compiled train step ===
def _linear_model(kernel=0.0):
    inputs = keras.Input((1,))
    outputs = keras.layers.Dense(
        1, use_bias=False, kernel_initializer=keras.initializers.Constant(kernel), name="linear"
    )(inputs)
    return keras.Model(inputs, outputs)


def _kernel(model):
    return float(np.asarray(model.get_layer("linear").get_weights()[0]).ravel()[0])


class _Recorder(keras.callbacks.Callback):
    def __init__(self, every_batch=None):
        super().__init__()
        self.kernels, self.logs, self.every_batch = [], [], every_batch

    def on_train_batch_begin(self, batch, logs=None):
        if self.every_batch is not None:
            self.every_batch(batch, self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.kernels.append(_kernel(self.model))
        self.logs.append(dict(logs or {}))


def test_scale_set_mid_fit_is_used_by_the_compiled_step_without_recompiling():
    schedule = AdaptiveLearningRateSchedule(0.1)
    model = _linear_model()
    model.compile(keras.optimizers.SGD(schedule), "mse")
    schedule.attach(model.optimizer)  # what AdaptiveLRCallback does at train begin

    def set_scale(batch, model):
        if batch == 2:
            schedule.set_scale(0.0)

    recorder = _Recorder(set_scale)
    x, y = np.ones((6, 1), "float32"), np.ones((6, 1), "float32")
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, callbacks=[recorder], verbose=0)
    kernels = recorder.kernels
    assert kernels[0] != 0.0 and kernels[1] != kernels[0]
    assert kernels[2:] == [kernels[1]] * 4  # scale 0 from step 2 on: no more updates


def test_adaptive_lr_callback_lowers_the_scale_on_a_plateau():
    schedule = AdaptiveLearningRateSchedule(0.1)
    model = _linear_model()
    model.compile(keras.optimizers.SGD(schedule), "mse")
    callback = AdaptiveLRCallback(patience=3, window=2, spike_factor=None, factor=0.5, min_scale=0.2, verbose=0)
    x, y = np.zeros((16, 1), "float32"), np.ones((16, 1), "float32")  # x = 0: the loss cannot move
    history = model.fit(x, y, batch_size=1, epochs=1, shuffle=False, callbacks=[callback], verbose=0)
    # Patience 3 after the first full window (2 steps): reductions after steps 5, 9 and 13.
    assert [(r[0], r[2]) for r in callback.reductions] == [(5, 0.5), (9, 0.25), (13, 0.2)]
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(schedule.scale)), 0.2)
    assert history.history["lr_scale"] == [0.2]


def test_adaptive_lr_callback_reacts_to_a_spike_with_a_constant_learning_rate():
    model = _linear_model()
    model.compile(keras.optimizers.SGD(0.01), "mse")
    callback = AdaptiveLRCallback(patience=100, window=4, spike_factor=3.0, factor=0.5, verbose=0)
    recorder = _Recorder()
    x = np.zeros((10, 1), "float32")
    y = np.ones((10, 1), "float32")
    y[6] = 10.0  # loss 100 against a running mean of 1
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, callbacks=[callback, recorder], verbose=0)
    assert len(callback.reductions) == 1 and callback.reductions[0][0] == 7
    assert "spike" in callback.reductions[0][1]
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)), 0.005)
    assert recorder.logs[5]["lr_scale"] == 1.0 and recorder.logs[6]["lr_scale"] == 0.5

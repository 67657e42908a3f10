"""A process that saves checkpoints in a loop, to be SIGKILLed by `test_checkpoint_kills.py`.

It runs as a fork server: started once (Keras imported, model built), it forks one saver per
trial (`RUN dir log` -> `PID n`), so each trial costs a fork instead of a Keras import. The
savers run on Keras' NumPy backend: the checkpoint format is the same on every backend, and a
fork is safe with no JAX or TensorFlow runtime started. `checkpointing.py` is loaded from its
file so that the package (and TensorFlow with it) is not imported.

Protocol on stdin/stdout, one line each: `RUN <dir> <log>` -> `PID <pid>`;
`REAP <pid>` -> `REAPED <pid> <signal>`; `EXIT`. A saver appends `START` and then
`SAVED <step>` to its log after every `save_checkpoint` that returned.
"""

import importlib.util
import os
import sys

import numpy as np

KEEP = 2


def build_model():
    import keras

    # Fixed names: optimizer slots are keyed by variable path, and auto-numbered names
    # ("dense_7") would differ between the saver and the test process.
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, name="hidden"), keras.layers.Dense(3, name="out")],
        name="kill_model",
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def state_values(step, shapes, dtypes):
    """The values every saved variable holds at `step` (a pure function of the step)."""
    rng = np.random.default_rng(step)
    values = []
    for shape, dtype in zip(shapes, dtypes):
        if np.issubdtype(np.dtype(dtype), np.integer):
            values.append(np.full(shape, step, dtype))
        else:
            values.append(rng.standard_normal(shape).astype(dtype))
    return values


def variables_of(model):
    return list(model.weights) + list(model.optimizer.variables)


def _describe(variables):
    import keras

    shapes = [tuple(v.shape) for v in variables]
    dtypes = [keras.backend.standardize_dtype(v.dtype) for v in variables]
    return shapes, dtypes


def run_saves(checkpointing, model, directory, log_path):
    """Resume from the newest checkpoint's step and save forever (until killed).

    Every third save re-saves the current step, exercising the replace-in-place path.
    """
    import json

    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    latest = checkpointing.latest_checkpoint(directory)
    step = 0
    if latest is not None:
        with open(os.path.join(latest, checkpointing.STATE_FILE)) as f:
            step = int(json.load(f)["step"])
    variables = variables_of(model)
    shapes, dtypes = _describe(variables)
    os.write(log, b"START\n")
    for i in range(100_000):
        if i % 3 != 2:
            step += 1
        for variable, value in zip(variables, state_values(step, shapes, dtypes)):
            variable.assign(value)
        checkpointing.save_checkpoint(directory, model, {"step": step}, keep=KEEP)
        os.write(log, f"SAVED {step}\n".encode())


def main(checkpointing_path):
    spec = importlib.util.spec_from_file_location("checkpointing_under_test", checkpointing_path)
    checkpointing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checkpointing)
    model = build_model()
    print("READY", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "RUN":
            pid = os.fork()
            if pid == 0:  # the saver
                code = 1
                try:
                    run_saves(checkpointing, model, *args)
                    code = 0
                finally:
                    os._exit(code)
            print(f"PID {pid}", flush=True)
        elif command == "REAP":
            pid = int(args[0])
            _, status = os.waitpid(pid, 0)
            signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
            print(f"REAPED {pid} {signal}", flush=True)
        elif command == "EXIT":
            return


if __name__ == "__main__":
    main(sys.argv[1])

"""Saved work is never lost: checkpoint savers SIGKILLed at random points.

A fork server (`checkpoint_kill_worker.py`) runs savers that call `save_checkpoint` in a loop;
each trial kills one after a seeded random delay. After every kill, `latest_checkpoint` +
`load_checkpoint` must restore a complete state (weights and optimizer variables equal to the
saved step's values) no older than the last save that returned.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import checkpoint_kill_worker as worker
from vishwam_keras.training import checkpointing

HERE = os.path.dirname(os.path.abspath(__file__))
START_TIMEOUT_S = 60
MAX_DELAY_S = 0.25  # a few saves' worth: kills land at every phase of a save


class ForkServer:
    def __init__(self):
        env = dict(os.environ, KERAS_BACKEND="numpy", JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore")
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "checkpoint_kill_worker.py"), checkpointing.__file__],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=env,
        )
        self._expect("READY")

    def _expect(self, word):
        line = self.process.stdout.readline().split()
        assert line and line[0] == word, f"fork server said {line!r}, expected {word}"
        return line[1:]

    def command(self, *words):
        self.process.stdin.write(" ".join(map(str, words)) + "\n")
        self.process.stdin.flush()

    def run(self, directory, log):
        self.command("RUN", directory, log)
        return int(self._expect("PID")[0])

    def reap(self, pid):
        self.command("REAP", pid)
        return int(self._expect("REAPED")[1])

    def close(self):
        self.command("EXIT")
        self.process.wait(timeout=30)


def _log_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split("\n")


def _wait_for_start(path, pid):
    deadline = time.monotonic() + START_TIMEOUT_S
    while "START" not in _log_lines(path):
        assert time.monotonic() < deadline, f"saver {pid} did not start"
        time.sleep(0.005)


def _check_restored(directory, last_saved):
    """`latest_checkpoint` + `load_checkpoint` give exactly the state of one saved step."""
    path = checkpointing.latest_checkpoint(directory)
    if path is None:
        assert last_saved is None, f"step {last_saved} was saved but no checkpoint is found"
        return None
    model = worker.build_model()
    variables = worker.variables_of(model)
    state = checkpointing.load_checkpoint(path, model)
    step = int(state["step"])
    assert last_saved is None or step >= last_saved, (
        f"step {last_saved} was saved, but the latest checkpoint is step {step}"
    )
    shapes, dtypes = worker._describe(variables)
    for variable, expected in zip(variables, worker.state_values(step, shapes, dtypes)):
        np.testing.assert_array_equal(np.asarray(variable.numpy()), expected, err_msg=variable.path)
    return step


def run_kill_trials(directory, seeds):
    """Kill one saver per seed; returns per-trial facts for the report."""
    server = ForkServer()
    trials = []
    try:
        for seed in seeds:
            log = os.path.join(directory, f"trial-{seed}.log")
            checkpoints = os.path.join(directory, "checkpoints")
            pid = server.run(checkpoints, log)
            _wait_for_start(log, pid)
            time.sleep(np.random.default_rng(seed).uniform(0.0, MAX_DELAY_S))
            os.kill(pid, signal.SIGKILL)
            assert server.reap(pid) == signal.SIGKILL
            leftovers = sorted(n for n in os.listdir(checkpoints) if n.startswith("."))
            saved = [int(line.split()[1]) for line in _log_lines(log) if line.startswith("SAVED")]
            restored = _check_restored(checkpoints, saved[-1] if saved else None)
            trials.append({"seed": seed, "saves": len(saved), "restored_step": restored,
                           "leftovers": leftovers})
    finally:
        server.close()
    return trials


def _summary(trials):
    mid_save = sum(bool(t["leftovers"]) for t in trials)
    return (f"{len(trials)} kills: every one restored a complete saved state; {mid_save} landed "
            f"mid-save (temporary folders left); {sum(t['saves'] for t in trials)} saves finished; "
            f"restored steps {[t['restored_step'] for t in trials]}")


def test_three_kills_lose_no_saved_work(tmp_path):
    trials = run_kill_trials(str(tmp_path), seeds=range(3))
    assert all(t["restored_step"] is not None for t in trials[1:])
    print(_summary(trials))


@pytest.mark.slow
def test_twenty_kills_lose_no_saved_work(tmp_path):
    trials = run_kill_trials(str(tmp_path), seeds=range(100, 120))
    assert len(trials) == 20
    steps = [t["restored_step"] for t in trials]
    assert steps == sorted(steps), "a kill rolled the run back past a finished save"
    print(_summary(trials))

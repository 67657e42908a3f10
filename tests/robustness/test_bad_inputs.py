"""Runs the bad-input table (`bad_inputs.py`): each row must raise the right error type with a
message naming the argument, and must not hang.

Rows whose check belongs in a file owned elsewhere are `xfail(strict=True)`: they pass (and
so fail the run) as soon as the check lands, reminding whoever adds it to drop the mark.
"""

import contextlib
import re
import shutil
import signal
import sys
import threading

import pytest

from bad_inputs import CASES, Context

CASE_TIMEOUT_S = 60  # generous: a first call compiles on a shared, loaded machine


class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    """Raise `CaseTimeout` if the block runs longer than `seconds` (SIGALRM, Linux main
    thread only; elsewhere the block runs unguarded)."""
    usable = sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"no error after {seconds} s: the call hangs or computes instead of refusing")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def ctx():
    context = Context()
    yield context
    shutil.rmtree(context.tmp, ignore_errors=True)


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=f"needs {case.needs}")] if case.needs else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_refused(case, ctx):
    with time_limit(CASE_TIMEOUT_S):
        with pytest.raises(case.errors) as info:
            case.call(ctx)
    message = str(info.value)
    assert re.search(case.match, message), (
        f"{type(info.value).__name__} does not name the argument (/{case.match}/): {message[:300]}"
    )


def test_the_table_is_broad():
    assert len(CASES) >= 60
    areas = {case.id.split("_")[0] for case in CASES}
    for area in ("rmsnorm", "rope", "gqa", "flash", "multiscale", "sparse", "siglip", "cross", "fusion",
                 "dpa", "backbone", "lm", "preprocessor", "tokenizer", "converter", "warmup",
                 "adaptive", "stage", "curriculum", "training", "preset", "checkpoint"):
        assert area in areas, f"no bad-input row for {area}"


def test_time_limit_interrupts_a_hang():
    with pytest.raises(CaseTimeout):
        with time_limit(1):
            threading.Event().wait(5)

"""The guides and the example run top to bottom, and the docstring examples of the public API pass.

Each guide runs in a fresh subprocess with `VISHWAM_GUIDE_SMALL=1` (small sizes, few steps)
on the current `KERAS_BACKEND`; it must exit with status 0. Guides that take more than
about 30 s in small mode on two CPU cores are marked `slow`.
"""

import doctest
import importlib
import os
import pathlib
import subprocess
import sys

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_SECONDS = 900

SLOW = pytest.mark.slow
# Small-mode CPU seconds on 2 shared cores (JAX), measured 2026-11-27: attention_variants 15,
# importing_gemma3_weights 14, distributed_training 20, architecture 26, getting_started 28,
# example 27, quantization_and_lora 39, curriculum_training 51 (wall time is higher on a
# loaded machine).
SCRIPTS = [
    pytest.param("guides/attention_variants.py", id="attention_variants"),
    pytest.param("guides/importing_gemma3_weights.py", id="importing_gemma3_weights"),
    pytest.param("guides/distributed_training.py", id="distributed_training"),
    pytest.param("guides/architecture.py", id="architecture", marks=SLOW),
    pytest.param("guides/getting_started.py", id="getting_started", marks=SLOW),
    pytest.param("guides/quantization_and_lora.py", id="quantization_and_lora", marks=SLOW),
    pytest.param("guides/curriculum_training.py", id="curriculum_training", marks=SLOW),
    pytest.param("examples/advanced_multimodal_demo.py", id="advanced_multimodal_demo", marks=SLOW),
]


def _run(script):
    env = dict(os.environ, VISHWAM_GUIDE_SMALL="1", KERAS_BACKEND=keras.backend.backend())
    # Small mode compiles many tiny graphs: ask XLA for cheap compiles, not fast code.
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + (
        " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return subprocess.run(
        [sys.executable, str(ROOT / script)],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_in_small_mode(script):
    result = _run(script)
    output = (result.stdout + "\n" + result.stderr)[-6000:]
    assert result.returncode == 0, f"{script} exited with {result.returncode}:\n{output}"
    assert "Traceback" not in result.stdout, output


def test_every_guide_and_example_is_tested():
    listed = {param.values[0] for param in SCRIPTS}
    found = {str(path.relative_to(ROOT)) for path in ROOT.glob("guides/*.py")}
    found |= {str(path.relative_to(ROOT)) for path in ROOT.glob("examples/*.py")}
    assert found == listed, f"untested: {sorted(found - listed)}, missing: {sorted(listed - found)}"


def test_guides_read_the_small_mode_switch():
    for path in ROOT.glob("guides/*.py"):
        text = path.read_text()
        assert "VISHWAM_GUIDE_SMALL" in text, path
        assert text.startswith('"""\nTitle: '), f"{path}: keras.io header missing"


# --- docstring examples -------------------------------------------------------------------

# The modules that define the public API (`vishwam_keras/__init__.py`). Data and evaluation
# modules are not public; their examples need the Fashion-MNIST files.
DOCTEST_MODULES = [
    "vishwam_keras.config",
    "vishwam_keras.convert",
    "vishwam_keras.distribution",
    "vishwam_keras.layers.attention.kernels",
    "vishwam_keras.layers.attention.factory",
    "vishwam_keras.layers.attention.grouped_query",
    "vishwam_keras.layers.attention.multi_scale",
    "vishwam_keras.layers.attention.sparse",
    "vishwam_keras.layers.attention.cross_modal",
    "vishwam_keras.layers.decoder_block",
    "vishwam_keras.layers.feedforward",
    "vishwam_keras.layers.fusion",
    "vishwam_keras.layers.normalization",
    "vishwam_keras.layers.rotary",
    "vishwam_keras.layers.vision_encoder",
    "vishwam_keras.models.backbone",
    "vishwam_keras.models.causal_lm",
    "vishwam_keras.models.factory",
    "vishwam_keras.models.image_converter",
    "vishwam_keras.models.preprocessor",
    "vishwam_keras.models.presets",
    "vishwam_keras.models.tokenizer",
    "vishwam_keras.ops.reductions",
    "vishwam_keras.training.callbacks",
    "vishwam_keras.training.checkpointing",
    "vishwam_keras.training.curriculum",
    "vishwam_keras.training.losses",
    "vishwam_keras.training.pipeline",
    "vishwam_keras.training.schedules",
]
# Examples that need the network: none at present (every preset ships with the package).
# Add `# doctest: +SKIP` to such an example in its docstring.

def _doctest_params():
    for name in DOCTEST_MODULES:
        yield pytest.param(name, id=name.replace("vishwam_keras.", ""))


@pytest.mark.parametrize("module_name", list(_doctest_params()))
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module_name}"

"""Loading is safe: crafted presets and `.keras` files are refused with errors naming the file.

A tiny real preset is saved once; each test copies it into `tmp_path` and breaks one thing:
a `Lambda` layer or a class from outside vishwam_keras / keras / keras_hub, a module placed in
the preset folder, file names that leave the folder, unparsable JSON, missing, corrupt or
truncated files, a newer `format_version`.
"""

import json
import os
import shutil
import zipfile

import keras
import numpy as np
import pytest
from keras.src.saving.serialization_lib import SafeModeScope

from conftest import tiny_backbone_kwargs
from vishwam_keras import (
    VishwamBackbone,
    VishwamCausalLM,
    VishwamCausalLMPreprocessor,
    VishwamTokenizer,
    safety,
)
from vishwam_keras.models import presets

TOKEN_IDS = np.array([[2, 100, 200, 300]], "int32")


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny text model with the bundled tokenizer, saved as a preset and a `.keras` file."""
    root = tmp_path_factory.mktemp("saved")
    keras.utils.set_random_seed(0)
    preprocessor = VishwamCausalLMPreprocessor.from_preset("vishwam_1b", sequence_length=8)
    lm = VishwamCausalLM(
        VishwamBackbone(**tiny_backbone_kwargs(vocabulary_size=8192, num_layers=1, layer_types=["global"])),
        preprocessor=preprocessor,
    )
    lm.save_to_preset(str(root / "preset"))
    lm.save(str(root / "model.keras"))
    logits = _np(lm({"token_ids": TOKEN_IDS, "padding_mask": np.ones_like(TOKEN_IDS)}))
    return {"preset": str(root / "preset"), "keras": str(root / "model.keras"), "logits": logits}


def _copy(saved, tmp_path):
    folder = str(tmp_path / "preset")
    shutil.copytree(saved["preset"], folder)
    return folder


def _edit_json(folder, name, edit):
    path = os.path.join(folder, name)
    with open(path) as f:
        config = json.load(f)
    config = edit(config) or config
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def _marker_lambda(marker):
    """A serialised Sequential whose Lambda writes `marker` when it runs (at load, when Keras
    rebuilds the graph)."""
    # The path is a constant of the code itself (Keras cannot reload lambda defaults).
    function = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")
    layer = keras.layers.Lambda(function)  # no output_shape: Keras calls it to infer one
    model = keras.Sequential([keras.Input((2,)), layer])
    config = json.loads(model.to_json())
    if os.path.exists(marker):  # building the model here ran it once
        os.remove(marker)
    return config


# === Real files load ===
def test_shipped_presets_pass_the_checks():
    for name in presets.PRESET_NAMES:
        safety.validate_preset_dir(presets.resolve_preset(name))


def test_saved_preset_and_keras_file_load_in_safe_mode(saved):
    x = {"token_ids": TOKEN_IDS, "padding_mask": np.ones_like(TOKEN_IDS)}
    from_preset = VishwamCausalLM.from_preset(saved["preset"])
    np.testing.assert_allclose(_np(from_preset(x)), saved["logits"], atol=1e-6)
    from_file = safety.load_model(saved["keras"])  # safe_mode=True
    np.testing.assert_allclose(_np(from_file(x)), saved["logits"], atol=1e-6)


def test_image_converter_loads_by_name_and_checks_its_folder(tmp_path):
    from vishwam_keras import VishwamImageConverter

    assert VishwamImageConverter.from_preset("vishwam_4b").image_size == (896, 896)
    folder = str(tmp_path / "preset")
    shutil.copytree(presets.resolve_preset("vishwam_4b"), folder)
    _edit_json(folder, "image_converter.json", lambda c: c["config"].__setitem__("crop_to_aspect_ratio", {
        "module": "os", "class_name": "system", "config": "true"}))
    with pytest.raises(safety.UnsafeConfigError, match=r"image_converter\.json.*os"):
        VishwamImageConverter.from_preset(folder)


# === Code smuggled into configs ===
def test_lambda_in_a_preset_is_refused_even_in_unsafe_mode(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    marker = tmp_path / "lambda_ran"

    def smuggle(config):
        config["config"]["preprocessor"] = _marker_lambda(marker)

    _edit_json(folder, "task.json", smuggle)
    with SafeModeScope(False):  # as after keras.config.enable_unsafe_deserialization()
        with pytest.raises(safety.UnsafeConfigError, match=r"task\.json.*Lambda"):
            VishwamCausalLM.from_preset(folder)
    assert not marker.exists()


def test_lambda_runs_without_the_check(saved, tmp_path):
    """The threat is real: KerasHub's loader (our class without the check), in unsafe mode,
    runs the smuggled lambda."""
    import keras_hub

    folder = _copy(saved, tmp_path)
    marker = tmp_path / "lambda_ran"
    _edit_json(folder, "task.json",
               lambda c: c["config"].__setitem__("preprocessor", _marker_lambda(marker)))
    unchecked_from_preset = keras_hub.models.Task.from_preset.__func__
    with SafeModeScope(False):
        try:
            unchecked_from_preset(VishwamCausalLM, folder)
        except Exception:
            pass  # the model need not build: the lambda has run by then
    assert marker.exists()


@pytest.mark.parametrize("registered_name", ["Evil", "evil_module>Evil"])
def test_class_from_a_module_in_the_preset_folder_is_refused(saved, tmp_path, monkeypatch,
                                                             registered_name):
    folder = _copy(saved, tmp_path)
    marker = tmp_path / "module_imported"
    with open(os.path.join(folder, "evil_module.py"), "w") as f:
        f.write(f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n")
    _edit_json(folder, "config.json", lambda c: {
        "module": "evil_module", "class_name": "Evil", "config": {}, "registered_name": registered_name,
    })
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(folder)
    with pytest.raises(safety.UnsafeConfigError, match=r"config\.json.*evil_module"):
        VishwamBackbone.from_preset(folder)
    assert not marker.exists()


def test_unknown_class_without_module_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)

    def swap(config):
        config["config"]["tokenizer"] = {"class_name": "TotallyUnknownTokenizer", "config": {}}

    _edit_json(folder, "preprocessor.json", swap)
    with pytest.raises(safety.UnsafeConfigError, match=r"preprocessor\.json.*TotallyUnknownTokenizer"):
        VishwamCausalLMPreprocessor.from_preset(folder)


def test_lambda_keras_file_is_refused_even_in_unsafe_mode(tmp_path):
    marker = tmp_path / "lambda_ran"
    path = str(tmp_path / "lambda.keras")
    keras.saving.deserialize_keras_object(_marker_lambda(marker), safe_mode=False).save(path)
    assert marker.exists()  # deserialising rebuilt the graph, which ran the lambda
    marker.unlink(missing_ok=True)  # building the model above ran it once
    with pytest.raises(ValueError, match="safe_mode"):
        keras.saving.load_model(path)  # Keras' default is safe too
    with SafeModeScope(False):
        with pytest.raises(safety.UnsafeConfigError, match=r"lambda\.keras.*Lambda"):
            safety.load_model(path)
    assert not marker.exists()


# === File names that leave the folder ===
def _outside_vocabulary(tmp_path):
    """A real vocabulary outside the preset, where an absolute `config_file` would point."""
    outside = tmp_path / "outside" / "tok"
    outside.mkdir(parents=True)
    shutil.copy(os.path.join(presets.resolve_preset("vishwam_1b"), "assets", "tokenizer", "vocabulary.spm"),
                outside / "vocabulary.spm")
    return str(tmp_path / "outside" / "tok.json")


@pytest.mark.parametrize("escape", ["absolute", "dotdot"])
def test_tokenizer_config_file_escaping_the_folder_is_refused(saved, tmp_path, escape):
    folder = _copy(saved, tmp_path)
    target = _outside_vocabulary(tmp_path) if escape == "absolute" else "../../outside/tok.json"
    _edit_json(folder, "preprocessor.json",
               lambda c: c["config"]["tokenizer"]["config"].__setitem__("config_file", target))
    with pytest.raises(safety.UnsafeConfigError, match=r"preprocessor\.json.*config_file"):
        VishwamCausalLMPreprocessor.from_preset(folder)
    with pytest.raises(safety.UnsafeConfigError, match=r"preprocessor\.json.*config_file"):
        VishwamCausalLM.from_preset(folder)


def test_tokenizer_from_preset_refuses_an_escaping_config_file(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    target = _outside_vocabulary(tmp_path)
    _edit_json(folder, "tokenizer.json", lambda c: c["config"].__setitem__("config_file", target))
    with pytest.raises(safety.UnsafeConfigError, match=r"tokenizer\.json.*config_file"):
        VishwamTokenizer.from_preset(folder)  # today: loads the vocabulary outside the folder


def test_proto_path_in_a_config_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_json(folder, "preprocessor.json",
               lambda c: c["config"]["tokenizer"]["config"].__setitem__("proto", "/etc/hostname"))
    with pytest.raises(safety.UnsafeConfigError, match=r"preprocessor\.json.*proto"):
        VishwamCausalLMPreprocessor.from_preset(folder)


def test_sharded_weight_map_escaping_the_folder_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    with open(os.path.join(folder, "model.weights.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": {"token_embedding/embeddings": "../../stolen.h5"}}, f)
    with pytest.raises(safety.UnsafeConfigError, match=r"model\.weights\.json.*weight_map"):
        VishwamBackbone.from_preset(folder)


def test_link_out_of_the_folder_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    vocabulary = os.path.join(folder, "assets", "tokenizer", "vocabulary.spm")
    outside = _outside_vocabulary(tmp_path)[: -len(".json")] + "/vocabulary.spm"
    os.remove(vocabulary)
    os.symlink(outside, vocabulary)
    with pytest.raises(safety.UnsafeConfigError, match="vocabulary.spm.*outside the preset folder"):
        VishwamCausalLMPreprocessor.from_preset(folder)


def test_keras_archive_member_escaping_is_refused(saved, tmp_path):
    path = str(tmp_path / "escape.keras")
    shutil.copy(saved["keras"], path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("../../escaped.txt", "x")
    with pytest.raises(safety.UnsafeConfigError, match="escaped.txt"):
        safety.load_model(path)


# === Broken, missing and future files ===
@pytest.mark.parametrize("name", ["config.json", "preprocessor.json", "task.json"])
def test_unparsable_json_names_the_file(saved, tmp_path, name):
    folder = _copy(saved, tmp_path)
    with open(os.path.join(folder, name), "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(data[: len(data) // 2])
        f.truncate()
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        VishwamCausalLM.from_preset(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights_name_the_file(saved, tmp_path, damage):
    folder = _copy(saved, tmp_path)
    path = os.path.join(folder, "model.weights.h5")
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 100)
        f.truncate()
    with pytest.raises(ValueError, match=r"model\.weights\.h5"):
        VishwamCausalLM.from_preset(folder)


@pytest.mark.parametrize("missing", ["model.weights.h5", "config.json", "assets/tokenizer/vocabulary.spm"])
def test_missing_preset_file_is_named(saved, tmp_path, missing):
    folder = _copy(saved, tmp_path)
    os.remove(os.path.join(folder, missing))
    with pytest.raises((ValueError, FileNotFoundError), match=os.path.basename(missing).replace(".", r"\.")):
        VishwamCausalLM.from_preset(folder)


def test_newer_format_version_names_the_file(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_json(folder, "config.json", lambda c: c.__setitem__("format_version", 99))
    with pytest.raises(ValueError, match=r"config\.json.*format_version 99"):
        VishwamBackbone.from_preset(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_keras_file_names_the_file(saved, tmp_path, damage):
    path = str(tmp_path / "broken.keras")
    with open(saved["keras"], "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if damage == "truncated" else b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(ValueError, match=r"broken\.keras"):
        safety.load_model(path)

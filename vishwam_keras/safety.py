"""Safe loading: checks run on preset folders and `.keras` archives before Keras reads them.

Sits in front of `from_preset` (`models/presets.py`) and `keras.saving.load_model`: only classes
from vishwam_keras, keras and keras_hub, no `Lambda` layers, no file names that leave the folder.
"""

import json
import os
import re
import zipfile

import keras

ALLOWED_PACKAGES = ("vishwam_keras", "keras", "keras_hub")
# Keras' markers for serialised values (tensors, arrays, bytes, slices): data, not classes.
VALUE_MARKERS = frozenset(
    ("__tensor__", "__numpy__", "__bytes__", "__slice__", "__ellipsis__", "__keras_tensor__",
     "__typespec__")
)
# A Lambda layer carries Python code (bytecode, or a function looked up by name).
REFUSED_CLASSES = frozenset(("Lambda", "__lambda__"))
# Preset files Keras deserialises; the other JSON files are only read as data.
SERIALIZED_CONFIG_FILES = (
    "config.json", "task.json", "preprocessor.json", "tokenizer.json", "image_converter.json",
    "audio_converter.json", "video_converter.json",
)
FORMAT_VERSION = 1
_FILE_KEYS = frozenset(("config_file", "proto", "vocabulary", "merges", "filename", "file", "path"))
_FILE_KEY_SUFFIXES = ("_file", "_path", "_dir", "_filename")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


class UnsafeConfigError(ValueError):
    """A preset or saved model that would run code or read files outside its folder."""


def _package(module):
    return str(module).split(".", 1)[0]


def _is_file_key(key):
    return key in _FILE_KEYS or key.endswith(_FILE_KEY_SUFFIXES) or key == "weight_map"


def check_relative_file_name(value, source, key):
    """Raise unless `value` names a file inside the folder: relative, no `..`, no scheme."""
    if not isinstance(value, str):
        return
    parts = re.split(r"[\\/]+", value)
    if (
        os.path.isabs(value)
        or _DRIVE.match(value)
        or value.startswith("~")
        or "://" in value
        or "\x00" in value
        or ".." in parts
    ):
        raise UnsafeConfigError(
            f"'{source}': `{key}` names a file outside the folder ({value!r}). File names in a "
            "preset or saved model must be relative paths inside it (no '..', no absolute "
            "paths, no URLs)."
        )


def _check_proto(value, source):
    # `proto` in a saved config is None (the vocabulary ships in assets/) or, in old configs,
    # the model itself as a long base64 string. A short string is a path on the loading
    # machine, relative to the current directory: never read it from a preset.
    if isinstance(value, str) and (len(value) <= 2048 or not re.fullmatch(r"[A-Za-z0-9+/=\s]+", value)):
        raise UnsafeConfigError(
            f"'{source}': `proto` names a file ({value[:80]!r}). A preset's tokenizer vocabulary "
            "must come from its assets/ folder; `proto` must be null."
        )


def _check_object(config, source):
    class_name = config.get("class_name")
    if class_name in VALUE_MARKERS:
        return
    module = config.get("module")
    registered = config.get("registered_name")
    if class_name in REFUSED_CLASSES:
        raise UnsafeConfigError(
            f"'{source}' contains a `{class_name}` layer, which runs arbitrary Python code when "
            "loaded. Refusing to load it; re-create the model from trusted code instead."
        )
    if module is not None and _package(module) not in ALLOWED_PACKAGES:
        raise UnsafeConfigError(
            f"'{source}' names class `{class_name}` from module `{module}`. Only classes from "
            f"{', '.join(ALLOWED_PACKAGES)} are loaded; no code is imported from a preset."
        )
    if isinstance(registered, str) and ">" in registered and _package(
        registered.split(">", 1)[0]
    ) not in ALLOWED_PACKAGES:
        raise UnsafeConfigError(
            f"'{source}' names the registered class `{registered}`, which is not from "
            f"{', '.join(ALLOWED_PACKAGES)}."
        )
    if module is None:
        resolved = keras.saving.get_registered_object(registered or class_name)
        if resolved is None or _package(getattr(resolved, "__module__", "")) not in ALLOWED_PACKAGES:
            raise UnsafeConfigError(
                f"'{source}' names class `{class_name}` with no module, and no class of that "
                f"name is registered by {', '.join(ALLOWED_PACKAGES)}."
            )


def check_config_tree(tree, source, check_classes=True):
    """Walk a parsed JSON config: refuse unknown classes, Lambda layers and unsafe file names.

    Args:
        tree: the parsed JSON (dicts, lists, scalars).
        source: str. The file it came from, quoted in every error.
        check_classes: bool. Check serialised objects (`class_name`, `module`,
            `registered_name`); file names are checked either way.
    """
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if check_classes and isinstance(node.get("class_name"), str):
            _check_object(node, source)
        for key, value in node.items():
            if key == "proto":
                _check_proto(value, source)
            elif isinstance(key, str) and _is_file_key(key):
                values = value.values() if isinstance(value, dict) else (
                    value if isinstance(value, list) else [value]
                )
                for item in values:
                    for name in item if isinstance(item, list) else [item]:
                        check_relative_file_name(name, source, key)
            if isinstance(value, (dict, list)):
                stack.append(value)


def load_json_file(path):
    """Parse a JSON file; errors (unreadable, not UTF-8, not JSON) are ValueErrors naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read '{path}' as JSON: {error}") from None


def _check_format_version(config, source):
    version = config.get("format_version") if isinstance(config, dict) else None
    if isinstance(version, (int, float)) and version > FORMAT_VERSION:
        raise ValueError(
            f"'{source}' has format_version {version}, newer than this library's "
            f"{FORMAT_VERSION}. Upgrade vishwam_keras to load it."
        )


def _check_links(folder):
    root = os.path.realpath(folder)
    for directory, subdirectories, files in os.walk(folder):
        for name in subdirectories + files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                continue
            target = os.path.realpath(path)
            if os.path.commonpath([root, target]) != root:
                raise UnsafeConfigError(
                    f"'{path}' is a link to '{target}', outside the preset folder '{folder}'. "
                    "Copy the file into the preset instead."
                )


def check_weights_file(path):
    """Open an HDF5 weights file and walk its datasets; corruption or truncation is a
    ValueError naming the file (h5py's own errors do not name it)."""
    import h5py

    size = os.path.getsize(path)
    try:
        with h5py.File(path, "r") as f:
            datasets = []
            f.visititems(lambda name, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None)
            for dataset in datasets:
                offset = dataset.id.get_offset()
                if offset is not None and offset + dataset.id.get_storage_size() > size:
                    raise OSError(f"dataset '{dataset.name}' lies past the end of the file")
    except (OSError, RuntimeError, KeyError, ValueError) as error:
        raise ValueError(f"Weights file '{path}' is corrupt or truncated: {error}") from None


def validate_preset_dir(folder, check_classes=True):
    """Check a local preset folder before KerasHub loads it.

    Every top-level `*.json` must parse (errors name the file) and have a supported
    `format_version`; the configs Keras deserialises may only name classes from vishwam_keras,
    keras or keras_hub and no `Lambda` layer; file names in any config must stay inside the
    folder; links may not point outside it; `model.weights.h5`, when present, must open.

    Raises:
        ValueError: (`UnsafeConfigError` for safety refusals) naming the file.
    """
    if not os.path.isdir(folder):
        raise ValueError(f"Preset folder '{folder}' does not exist.")
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(
            f"Preset folder '{folder}' has no config.json: it is not a KerasHub preset "
            f"(missing file '{config_path}')."
        )
    _check_links(folder)
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.endswith(".json") or not os.path.isfile(path):
            continue
        config = load_json_file(path)
        _check_format_version(config, path)
        check_config_tree(
            config, path, check_classes=check_classes and name in SERIALIZED_CONFIG_FILES
        )
    weights_path = os.path.join(folder, "model.weights.h5")
    if os.path.isfile(weights_path):
        check_weights_file(weights_path)


def validate_keras_archive(filepath, check_classes=True):
    """Check the `config.json` of a `.keras` zip archive (see `validate_preset_dir`)."""
    try:
        with zipfile.ZipFile(filepath) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise ValueError(f"'{filepath}' has no config.json: it is not a .keras archive.")
            text = archive.read("config.json")
    except (OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"Cannot read '{filepath}' as a .keras archive: {error}") from None
    source = f"{filepath}/config.json"
    try:
        config = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read '{source}' as JSON: {error}") from None
    for name in names:
        check_relative_file_name(name, filepath, "archive member")
    check_config_tree(config, source, check_classes=check_classes)


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model` for `.keras` files, with the checks of `validate_keras_archive`.

    Unlike Keras' own `safe_mode`, the checks hold even after
    `keras.config.enable_unsafe_deserialization()`.

    Args:
        filepath: str. A `.keras` file.
        custom_objects, compile: as `keras.saving.load_model`.
        safe_mode: bool. `True` (the default) refuses Lambda layers and classes outside
            vishwam_keras / keras / keras_hub; `False` trusts the file (only file names are
            checked). Defaults to `True`.

    Example:
    ```python
    model = vishwam_keras.safety.load_model("model.keras")
    ```
    """
    filepath = os.fspath(filepath)
    if filepath.endswith(".keras"):
        # Checked here, not by a `SafeModeScope` around the load: inside one, a tokenizer
        # may not read its vocabulary back from the archive.
        validate_keras_archive(filepath, check_classes=safe_mode)
    return keras.saving.load_model(
        filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
    )

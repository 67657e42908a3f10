"""Layout maps and ready-made `keras.distribution` setups for Vishwam models.

Sits before model construction: `set_distribution(model_parallel("vishwam_4b", 8))`, then
`VishwamCausalLM.from_preset(...)`, `fit` and `generate` run sharded (JAX backend).
"""

import dataclasses
import math
import re
import warnings

import keras
import numpy as np

# --- sharding rules ---------------------------------------------------------------------
#
# A rule names a family of weights by a regex on `variable.path` and lists, per tensor rank,
# the placements to try in order. Each placement is a tuple with one entry per axis: "model"
# shards that axis over the model axis of the mesh, None keeps it whole. The first placement
# whose sharded axis divides the model-axis size wins; if none does, the weight is replicated.
# Attention shards heads first (Megatron-style: column-parallel q/k/v, row-parallel output,
# one all-reduce per block), the hidden dimension second. The feed-forward network shards its
# intermediate dimension (column-parallel gate/up, row-parallel down).

MODEL = "model"


@dataclasses.dataclass(frozen=True)
class _Rule:
    name: str
    pattern: str
    placements: dict  # rank -> tuple of placements to try, best first
    generic: bool = False  # generic rules overlap specific ones: always emitted per path


_PREFIX = r"(?:.*/)?"
_HEADS_THEN_HIDDEN_IN = {  # (d, heads, head_dim) projections and Dense (d, heads * head_dim)
    3: ((None, MODEL, None), (MODEL, None, None)),
    2: ((None, MODEL), (MODEL, None)),
}
_HEADS_THEN_HIDDEN_OUT = {  # (heads, head_dim, d) output projections and Dense (in, d)
    3: ((MODEL, None, None), (None, None, MODEL)),
    2: ((MODEL, None), (None, MODEL)),
}
_COLUMN_PARALLEL = {2: ((None, MODEL), (MODEL, None)), 1: ((MODEL,),)}
_ROW_PARALLEL = {2: ((MODEL, None), (None, MODEL))}
_REPLICATED = {}

RULES = (
    # Queries and keys/values apart: their head counts differ (GQA), so may their placement.
    _Rule("attention_query", _PREFIX + r"query(?:_proj)?/kernel", _HEADS_THEN_HIDDEN_IN),
    _Rule(
        "attention_key_value", _PREFIX + r"(?:key|value)(?:_proj)?/kernel", _HEADS_THEN_HIDDEN_IN
    ),
    _Rule(
        "attention_qkv_bias",
        _PREFIX + r"(?:query|key|value)(?:_proj)?/bias",
        {2: ((MODEL, None),), 1: ((MODEL,),)},
    ),
    _Rule(
        "attention_output",
        _PREFIX + r"(?:attention_output|output_proj|out_proj)/kernel",
        _HEADS_THEN_HIDDEN_OUT,
    ),
    _Rule(
        "feedforward_in",
        _PREFIX + r"(?:gate|up|fc1|ffw_gating|ffw_gating_2|gate_hidden)/kernel",
        _COLUMN_PARALLEL,
    ),
    _Rule("feedforward_in_bias", _PREFIX + r"(?:fc1|gate_hidden)/bias", {1: ((MODEL,),)}),
    _Rule("feedforward_out", _PREFIX + r"(?:down|fc2|ffw_linear)/kernel", _ROW_PARALLEL),
    # Token, position and patch-position tables: shard the hidden dimension, else the rows.
    _Rule("embedding", _PREFIX + r"[^/]*embedding[^/]*", {2: ((None, MODEL), (MODEL, None))}),
    # Norm scales, LayerNorm gamma/beta, other biases, scalar gates: small, replicated.
    _Rule(
        "replicated",
        _PREFIX + r"(?:[^/]*norm[^/]*/(?:scale|gamma|beta)|bias|[^/]*(?:alpha|gate)[^/]*)",
        _REPLICATED,
    ),
    # Anything else with a kernel (projectors, fusion gates, convolutions): shard the output
    # features when they divide, else replicate.
    _Rule(
        "kernel",
        _PREFIX + r"kernel",
        {
            2: ((None, MODEL), (MODEL, None)),
            3: ((None, None, MODEL),),
            4: ((None, None, None, MODEL),),
        },
        generic=True,
    ),
)

# Without sizes (`get_layout_map(device_mesh)`), only the text stack gets rules, with the
# placement that holds for every shipped config (hidden and intermediate dims are multiples
# of 128): heads counts (1 to 16) do not, so the hidden dimension is sharded instead.
_TEXT_RULES_WITHOUT_CONFIG = (
    (r"token_embedding/embeddings", (None, MODEL)),
    (r"decoder_block_\d+/attention/(?:query|key|value)/kernel", (MODEL, None, None)),
    (r"decoder_block_\d+/attention/attention_output/kernel", (None, None, MODEL)),
    (r"decoder_block_\d+/feedforward/(?:gate|up)/kernel", (None, MODEL)),
    (r"decoder_block_\d+/feedforward/down/kernel", (MODEL, None)),
    (r"(?:.*/)?[^/]*norm[^/]*/scale", (None,)),
)


def _first_rule(path):
    for rule in RULES:
        if re.fullmatch(rule.pattern, path):
            return rule
    return None


def _place(shape, placements, model_size, model_axis):
    """First placement that fits `shape` (rank and divisibility), else replicated."""
    for placement in placements.get(len(shape), ()):
        sharded = [i for i, axis in enumerate(placement) if axis == MODEL]
        if all(shape[i] % model_size == 0 for i in sharded):
            return tuple(model_axis if axis == MODEL else None for axis in placement)
    return (None,) * len(shape)


def resolve_layouts(weight_shapes, model_axis_size, model_parallel_dim_name="model"):
    """Placement of every weight: `{path: axes}`, and the rule that chose it.

    Args:
        weight_shapes: dict `{variable path: shape}`.
        model_axis_size: int. Devices along the model axis of the mesh.
        model_parallel_dim_name: str. Name of that axis.

    Returns:
        dict `{path: (rule name or None, axes tuple)}`.
    """
    resolved = {}
    for path, shape in weight_shapes.items():
        shape = tuple(int(d) for d in shape)
        rule = _first_rule(path)
        placements = rule.placements if rule is not None else _REPLICATED
        axes = _place(shape, placements, model_axis_size, model_parallel_dim_name)
        resolved[path] = (rule.name if rule is not None else None, axes)
    return resolved


# --- weight shapes without building weights ---------------------------------------------


def _backbone_cls():
    from vishwam_keras.models.backbone import VishwamBackbone

    return VishwamBackbone


def _abstract_weight_shapes(build):
    """Paths and shapes of the weights `build()` creates, without allocating them.

    Variables created in a `StatelessScope` that does not initialise on exit stay
    unallocated; Keras keeps them in a global to-initialise list, which is restored after.
    """
    from keras.src.backend.common import global_state  # the pending-variable list

    key = "uninitialized_variables"
    pending = list(global_state.get_global_attribute(key, default=[]) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            model = build()
        return {w.path: tuple(w.shape) for w in model.weights}
    except Exception as error:  # never fail for a layout map: fall back to name rules
        warnings.warn(
            f"Could not build the model abstractly to read its weight shapes ({error!r}); "
            "using the size-independent rules of `get_layout_map(device_mesh)`.",
            stacklevel=3,
        )
        return None
    finally:
        global_state.set_global_attribute(key, pending)


def _weight_shapes(backbone_or_config):
    """`{path: shape}` for a backbone, a config, a preset, or None when no sizes are known."""
    from vishwam_keras import config as config_lib

    source = backbone_or_config
    if source is None or isinstance(source, type):
        return None
    if isinstance(source, keras.layers.Layer):  # a backbone, a task, or any built layer
        backbone = getattr(source, "backbone", source)
        return {w.path: tuple(w.shape) for w in backbone.weights}
    if isinstance(source, str) and source in config_lib.MODEL_CONFIGS:
        source = config_lib.MODEL_CONFIGS[source]
    if isinstance(source, config_lib.MultimodalConfig):
        if hasattr(source, "build_backbone"):  # with its vision encoder, if any
            return _abstract_weight_shapes(source.build_backbone)
        kwargs = source.to_backbone_kwargs()
        return _abstract_weight_shapes(lambda: _backbone_cls()(**kwargs))
    if isinstance(source, str):  # a preset name or folder: its config.json
        from keras_hub.src.utils.preset_utils import load_json

        from vishwam_keras.models.presets import resolve_preset

        serialized = load_json(resolve_preset(source), "config.json")
        return _abstract_weight_shapes(
            lambda: keras.saving.deserialize_keras_object(serialized)
        )
    if isinstance(source, dict):
        if "class_name" in source and "config" in source:  # a serialised backbone
            return _abstract_weight_shapes(lambda: keras.saving.deserialize_keras_object(source))
        return _abstract_weight_shapes(lambda: _backbone_cls().from_config(dict(source)))
    raise TypeError(
        "`backbone_or_config` must be a VishwamBackbone (or a model with a `backbone`), a "
        "backbone config dict, a MultimodalConfig, a config or preset name, or None. "
        f"Received: {type(source).__name__}"
    )


# --- layout maps ------------------------------------------------------------------------


def _axis_size(device_mesh, name, argument):
    if name not in device_mesh.axis_names:
        raise ValueError(
            f"`{argument}` must name an axis of the device mesh. Received: "
            f"{argument}={name!r}, mesh axes {tuple(device_mesh.axis_names)}"
        )
    return int(device_mesh.shape[list(device_mesh.axis_names).index(name)])


def _template(path):
    """`path` as a regex matching the same weight in every numbered layer."""
    return re.sub(r"_\d+", r"_\\d+", re.escape(path))


def _keys_for(members, pattern=None):
    """Few keys that place `members` (path, axes): the rule's regex when they all agree,
    else one regex per layer template (`decoder_block_N/...` for every N) that agrees, else
    exact paths."""
    if pattern is not None and len({axes for _, axes in members}) == 1:
        return {pattern: members[0][1]}
    by_template = {}
    for path, axes in members:
        by_template.setdefault(_template(path), []).append((path, axes))
    keys = {}
    for template, group in by_template.items():
        if len({axes for _, axes in group}) == 1:
            keys[template] = group[0][1]
        else:
            keys.update({re.escape(path): axes for path, axes in group})
    return keys


def _layout_map_from_resolution(device_mesh, resolved):
    """A LayoutMap with few regex keys that places every resolved weight as resolved."""
    by_rule = {}
    for path, (rule_name, axes) in resolved.items():
        by_rule.setdefault(rule_name, []).append((path, axes))
    entries = {}
    for rule in RULES:
        members = by_rule.pop(rule.name, [])
        if members:
            entries.update(_keys_for(members, None if rule.generic else rule.pattern))
    for members in by_rule.values():  # paths no rule matched: replicated, explicitly
        entries.update(_keys_for(members))

    layout_map = keras.distribution.LayoutMap(device_mesh)
    for key, axes in entries.items():
        layout_map[key] = axes
    if not _consistent(layout_map, resolved):
        # A regex also matched a path another rule owns: fall back to exact keys.
        layout_map = keras.distribution.LayoutMap(device_mesh)
        for path, (_, axes) in resolved.items():
            layout_map[re.escape(path)] = axes
    return layout_map


def _consistent(layout_map, resolved):
    for path, (_, axes) in resolved.items():
        try:
            layout = layout_map[path]
        except ValueError:  # several keys match
            return False
        if layout is None or tuple(layout.axes) != tuple(axes):
            return False
    return True


def get_layout_map(
    backbone_or_config=None,
    device_mesh=None,
    model_parallel_dim_name="model",
    data_parallel_dim_name="batch",
):
    """A `keras.distribution.LayoutMap` for a Vishwam backbone on `device_mesh`.

    Every weight is placed, never failing on head counts that do not divide the mesh
    (the failure of KerasHub's Gemma map with few key/value heads, keras-hub#1613, #2806):

    - attention query/key/value kernels `(d, heads, head_dim)` shard their heads over the
      model axis when the head count divides its size, else the hidden dimension `d` when
      that divides, else are replicated; output kernels `(heads, head_dim, d)` likewise;
    - the token embedding `(vocabulary, d)` shards `d`, else the vocabulary;
    - feed-forward `gate`/`up` `(d, F)` and `down` `(F, d)` shard `F`;
    - norms, biases and scalar gates are replicated; vision-encoder, projector and fusion
      weights follow the same rules by name (query/key/value, attention_output, fc1/fc2,
      embeddings, other kernels on their output features), anything else is replicated.

    With sizes (a backbone, its config, a `MultimodalConfig`, a config or preset name) the
    placements are checked against every weight's shape; the weights are not allocated.
    Without them (`get_layout_map(device_mesh)`, as from a classmethod), only the text stack
    gets rules, sharding hidden and intermediate dimensions, which divide every shipped
    config; heads are not sharded because their counts cannot be checked.

    Keys are regexes on `variable.path` (one per rule when all its weights agree, the exact
    path otherwise). Weights are not sharded over the data axis: `ModelParallel` shards the
    batch over `data_parallel_dim_name`.

    Args:
        backbone_or_config: a `VishwamBackbone` (or a task with `.backbone`), a backbone
            config dict, a `MultimodalConfig`, a name in `vishwam_keras.MODEL_CONFIGS` or a
            preset name or folder, or `None`. A `keras.distribution.DeviceMesh` here is
            taken as `device_mesh` (so `get_layout_map(device_mesh, ...)` works).
        device_mesh: `keras.distribution.DeviceMesh`.
        model_parallel_dim_name: str. The mesh axis weights are sharded over. Defaults to
            `"model"`.
        data_parallel_dim_name: str. The mesh axis the batch is sharded over. Defaults to
            `"batch"`.

    Returns:
        `keras.distribution.LayoutMap`.

    Example:
    >>> import keras
    >>> mesh = keras.distribution.DeviceMesh(
    ...     (1, 1), ("batch", "model"), keras.distribution.list_devices()[:1])
    >>> layout_map = get_layout_map("tiny", mesh)
    >>> tuple(layout_map["decoder_block_0/attention/key/kernel"].axes)
    (None, 'model', None)
    """
    if isinstance(backbone_or_config, keras.distribution.DeviceMesh):
        if isinstance(device_mesh, str):  # get_layout_map(mesh, "model", "batch")
            model_parallel_dim_name, data_parallel_dim_name = device_mesh, model_parallel_dim_name
            device_mesh = None
        if device_mesh is not None:
            raise ValueError(
                "Received a device mesh as `backbone_or_config` and another as `device_mesh`."
            )
        backbone_or_config, device_mesh = None, backbone_or_config
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise ValueError(
            "`device_mesh` must be a `keras.distribution.DeviceMesh`. "
            f"Received: device_mesh={device_mesh!r}"
        )
    model_size = _axis_size(device_mesh, model_parallel_dim_name, "model_parallel_dim_name")
    _axis_size(device_mesh, data_parallel_dim_name, "data_parallel_dim_name")

    shapes = _weight_shapes(backbone_or_config)
    if shapes is None:
        layout_map = keras.distribution.LayoutMap(device_mesh)
        for pattern, axes in _TEXT_RULES_WITHOUT_CONFIG:
            layout_map[pattern] = tuple(
                model_parallel_dim_name if axis == MODEL else None for axis in axes
            )
        return layout_map
    resolved = resolve_layouts(shapes, model_size, model_parallel_dim_name)
    return _layout_map_from_resolution(device_mesh, resolved)


# --- ready-made distributions -----------------------------------------------------------


def _devices(devices, count=None):
    if devices is None:
        devices = keras.distribution.list_devices()
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        count, devices = int(devices), keras.distribution.list_devices()
    devices = list(devices)
    if count is not None:
        if count < 1 or count > len(devices):
            raise ValueError(
                f"Asked for {count} devices; {len(devices)} are available: {devices}"
            )
        devices = devices[:count]
    return devices


def data_parallel(devices=None):
    """`keras.distribution.DataParallel` over `devices` (all by default, or the first n).

    Weights are replicated; each batch is split over the devices.

    Args:
        devices: `None` (all devices), an int (the first n) or a list of device names.

    Returns:
        `keras.distribution.DataParallel`, for `keras.distribution.set_distribution`.
    """
    return keras.distribution.DataParallel(devices=_devices(devices))


def model_parallel(
    preset_or_backbone_config,
    device_count=None,
    mesh_shape=None,
    model_parallel_dim_name="model",
    data_parallel_dim_name="batch",
    devices=None,
):
    """`keras.distribution.ModelParallel` with the Vishwam layout map on a (batch, model) mesh.

    Args:
        preset_or_backbone_config: what `get_layout_map` accepts as `backbone_or_config`
            (a preset or config name, a config, a backbone, or `None`).
        device_count: int. Devices to use, all on the model axis (`mesh_shape=(1, n)`).
            Defaults to every device.
        mesh_shape: `(batch, model)` sizes; overrides `device_count`.
        model_parallel_dim_name: str. Defaults to `"model"`.
        data_parallel_dim_name: str. Defaults to `"batch"`.
        devices: `None` or a list of device names. Defaults to `keras.distribution.list_devices()`.

    Returns:
        `keras.distribution.ModelParallel`.

    Example:
    ```python
    keras.distribution.set_distribution(model_parallel("vishwam_4b", mesh_shape=(2, 4)))
    lm = VishwamCausalLM.from_preset("vishwam_4b")
    lm.generate("To be")
    ```
    """
    devices = _devices(devices)
    if mesh_shape is None:
        mesh_shape = (1, device_count or len(devices))
    mesh_shape = tuple(int(n) for n in mesh_shape)
    if len(mesh_shape) != 2 or min(mesh_shape) < 1:
        raise ValueError(f"`mesh_shape` must be (batch, model) sizes. Received: {mesh_shape}")
    devices = _devices(devices, math.prod(mesh_shape))
    mesh = keras.distribution.DeviceMesh(
        shape=mesh_shape,
        axis_names=(data_parallel_dim_name, model_parallel_dim_name),
        devices=devices,
    )
    layout_map = get_layout_map(
        preset_or_backbone_config,
        mesh,
        model_parallel_dim_name=model_parallel_dim_name,
        data_parallel_dim_name=data_parallel_dim_name,
    )
    return keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name=data_parallel_dim_name
    )


# --- memory planning --------------------------------------------------------------------

_OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "lion": 1, "adam": 2, "adamw": 2}
_GIB = 1024**3


def _variable_bytes(dtype):
    """Bytes of one weight under a dtype or dtype policy name (mixed_* keeps float32 weights)."""
    name = str(getattr(dtype, "name", dtype))
    if name.startswith("mixed_"):
        name = "float32"
    return 2 if name == "bfloat16" else np.dtype(name).itemsize


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Training memory of one model, in GiB (activations and workspace excluded)."""

    name: str
    num_parameters: int
    num_devices: int
    weights_gib: float
    gradients_gib: float
    optimizer_states_gib: float
    total_gib: float
    per_device_gib: float


class MemoryTable(list):
    """A list of `MemoryEstimate`s that prints as a table."""

    _COLUMNS = (
        ("model", "name", "{}"),
        ("params", "num_parameters", "{:,}"),
        ("devices", "num_devices", "{}"),
        ("weights GiB", "weights_gib", "{:.2f}"),
        ("grads GiB", "gradients_gib", "{:.2f}"),
        ("optimizer GiB", "optimizer_states_gib", "{:.2f}"),
        ("total GiB", "total_gib", "{:.2f}"),
        ("per device GiB", "per_device_gib", "{:.2f}"),
    )

    def __str__(self):
        rows = [[title for title, _, _ in self._COLUMNS]]
        for estimate in self:
            rows.append([fmt.format(getattr(estimate, f)) for _, f, fmt in self._COLUMNS])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows
        )


def memory_per_device(
    num_parameters=None,
    num_devices=1,
    dtype="bfloat16",
    optimizer="adamw",
    optimizer_dtype=None,
    sharded=True,
):
    """Training memory for weights, gradients and optimizer states, total and per device.

    Keras keeps gradients and optimizer slots in the variables' dtype (float32 under a
    `mixed_*` policy). With `sharded=True` (`ModelParallel` with this module's layout map)
    each device holds `1 / num_devices` of them, the replicated norms being negligible;
    with `sharded=False` (`DataParallel`) each device holds everything. Activations, the
    KV cache and compiler workspace come on top.

    Args:
        num_parameters: int, a `MultimodalConfig`, a name in `vishwam_keras.MODEL_CONFIGS`,
            or `None` for the 1B, 4B and 12B configs.
        num_devices: int. Defaults to `1`.
        dtype: dtype or dtype policy name of the variables. Defaults to `"bfloat16"`.
        optimizer: one of `"sgd"`, `"momentum"`, `"lion"`, `"adam"`, `"adamw"`
            (slots per weight: 0, 1, 1, 2, 2). Defaults to `"adamw"`.
        optimizer_dtype: dtype of the optimizer slots. Defaults to the variable dtype.
        sharded: bool. Whether weights are sharded over the devices. Defaults to `True`.

    Returns:
        `MemoryTable` (a list of `MemoryEstimate`; `print` it for a table).

    Example:
    >>> table = memory_per_device(num_devices=8)
    >>> [row.name for row in table]
    ['vishwam_1b', 'vishwam_4b', 'vishwam_12b']
    """
    from vishwam_keras import config as config_lib

    if optimizer not in _OPTIMIZER_SLOTS:
        raise ValueError(
            f"`optimizer` must be one of {sorted(_OPTIMIZER_SLOTS)}. "
            f"Received: optimizer={optimizer!r}"
        )
    if (
        isinstance(num_devices, bool)
        or not isinstance(num_devices, (int, np.integer))
        or num_devices < 1
    ):
        raise ValueError(
            f"`num_devices` must be an int >= 1. Received: num_devices={num_devices!r}"
        )
    if num_parameters is None:
        names = ("vishwam_1b", "vishwam_4b", "vishwam_12b")
        models = [(name, config_lib.MODEL_CONFIGS[name]) for name in names]
    elif isinstance(num_parameters, str):
        models = [(num_parameters, config_lib.MODEL_CONFIGS[num_parameters])]
    elif isinstance(num_parameters, config_lib.MultimodalConfig):
        models = [("config", num_parameters)]
    else:
        models = [(f"{num_parameters / 1e9:.2f}B", int(num_parameters))]

    weight_bytes = _variable_bytes(dtype)
    slot_bytes = _variable_bytes(optimizer_dtype or dtype)
    table = MemoryTable()
    for name, model in models:
        count = model if isinstance(model, int) else model.num_parameters()
        weights = count * weight_bytes / _GIB
        gradients = count * weight_bytes / _GIB
        states = count * _OPTIMIZER_SLOTS[optimizer] * slot_bytes / _GIB
        total = weights + gradients + states
        table.append(
            MemoryEstimate(
                name, count, int(num_devices), weights, gradients, states, total,
                total / num_devices if sharded else total,
            )
        )
    return table

"""Side-by-side benchmark suite: `VishwamCausalLM` against KerasHub's `Gemma3CausalLM`.

Both models are built in one process from the same "bench" config (about 48M parameters)
with random weights; after a warm-up (compilation) the two are run alternately and the
median of each is reported with the ratio ours / KerasHub.

    python -m benchmarks.run --backend jax              # full suite, writes RESULTS.md
    python -m benchmarks.run --backend tensorflow --quick
    python -m benchmarks.run --backend jax --only prefill_b1 decode_b1

What is timed:
- prefill: `predict_on_batch` (the compiled forward pass, logits for every position);
- train: `train_on_batch` (the compiled `fit` step: forward, loss, gradients, Adam);
- decode: each model's compiled generate function (`make_generate_function()`, what
  `generate()` calls once per batch) on token ids, greedy sampler, no stop tokens. The
  rate is new tokens / wall time of the whole call, prefill of the prompt included.
  KerasHub's public `generate()` is not used: with `preprocessor=None` it fails;
- memory: peak resident set size of the process during the call (reset through
  /proc/self/clear_refs) minus the resident size just before it.
On TensorFlow both models are compiled with `jit_compile=True` (XLA), KerasHub's
fastest configuration on CPU (Keras' default turns XLA off there).
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

from benchmarks.attention import _memory_kib, _reset_peak_rss

HERE = os.path.dirname(os.path.abspath(__file__))

# The "bench" config of issue 7, and a small one for --quick.
BENCH = dict(
    vocabulary_size=32000, num_layers=8, hidden_dim=512, intermediate_dim=2048,
    num_query_heads=8, num_key_value_heads=4, head_dim=64, sliding_window_size=512,
)
QUICK = dict(
    vocabulary_size=8000, num_layers=6, hidden_dim=256, intermediate_dim=1024,
    num_query_heads=4, num_key_value_heads=2, head_dim=64, sliding_window_size=128,
)
SLIDING_WINDOW_PATTERN = 6  # 5 local : 1 global, as Gemma 3 (KerasHub hard-codes it)

# name: (batch, length) or (batch, prompt, new tokens); quick sizes second.
SIZES = {
    "prefill_b1": ((1, 1024), (1, 256)),
    "prefill_b4": ((4, 512), (2, 128)),
    "train": ((4, 512), (2, 128)),
    "decode_b1": ((1, 128, 128), (1, 32, 32)),
    "decode_b4": ((4, 128, 128), (4, 32, 32)),
    "decode_long": ((1, 4096, 128), (1, 256, 32)),
    "decode_bf16": ((1, 128, 128), (1, 32, 32)),
    "generate_8192": ((1, 8192 - 32, 32), (1, 512 - 16, 16)),
}
BENCHMARKS = ("ceilings",) + tuple(SIZES) + ("train_memory",)

# Targets of issue 7 for the ratio ours / KerasHub (`<=` for sizes, `>=` for speeds).
TARGETS = {
    "prefill_b1": 1.25, "prefill_b4": 1.25, "train": 1.25, "decode_b1": 1.4,
    "decode_b4": 2.0, "decode_long": 2.0, "decode_bf16": 1.7, "kv_cache_8192": 0.35,
}
BACKEND_DECODE_TARGETS = {"tensorflow": 2.0, "torch": 3.0}


def target_for(name, backend):
    """Issue 7's target for a ratio: JAX speed targets, >= 1 elsewhere, decode per backend."""
    if name.startswith("decode") and backend in BACKEND_DECODE_TARGETS:
        return max(TARGETS.get(name, 1.0), BACKEND_DECODE_TARGETS[backend])
    if name in ("prefill_b1", "prefill_b4", "train") and backend != "jax":
        return 1.0
    return TARGETS.get(name)


# === Measurement helpers ===
def peak_memory_mb(call):
    """Peak RSS added by `call()` in MiB (None where the peak cannot be reset)."""
    if not _reset_peak_rss():
        call()
        return None
    before = _memory_kib("VmRSS")
    call()
    return (_memory_kib("VmHWM") - before) / 1024


def alternate(calls, repeats):
    """Warm each call up once, then run them alternately; median seconds per name."""
    import numpy as np

    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    names = list(calls)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


# === Models ===
def build_models(config, dtype="float32", remat=False, seed=0):
    """(ours, KerasHub's) causal LMs with the same architecture and random weights."""
    import keras
    import keras_hub

    import vishwam_keras

    keras.utils.set_random_seed(seed)
    # Remat per decoder block (both models name them `decoder_block_{i}`); mode="full"
    # would also wrap Keras' ReversibleEmbedding, whose `reverse` flag then fails to trace.
    blocks = [f"decoder_block_{i}" for i in range(config["num_layers"])]
    scope = keras.RematScope(mode="list_of_layers", layer_names=blocks) if remat else _NullScope()
    ours_has_remat = hasattr(vishwam_keras.VishwamBackbone, "enable_rematerialization")
    with scope if remat and not ours_has_remat else _NullScope():
        ours = vishwam_keras.VishwamBackbone(
            **config, sliding_window_pattern=SLIDING_WINDOW_PATTERN,
            global_rope_scaling_factor=1.0, dtype=dtype,
        )
    if remat and ours_has_remat:
        ours.enable_rematerialization()  # our API: keras.remat per block, every backend
    with scope:
        theirs = keras_hub.models.Gemma3Backbone(
            image_size=None, vision_encoder=None, use_post_ffw_norm=True,
            use_post_attention_norm=True, use_sliding_window_attention=True,
            query_head_dim_normalize=True, use_query_key_norm=True, dtype=dtype, **config,
        )
        models = (
            vishwam_keras.VishwamCausalLM(ours, preprocessor=None),
            keras_hub.models.Gemma3CausalLM(backbone=theirs, preprocessor=None),
        )
    for model in models:
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=[], sampler="greedy", jit_compile=_jit_compile(),
        )
    return models


class _NullScope:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def _jit_compile():
    import keras

    return True if keras.backend.backend() == "tensorflow" else "auto"


def count_parameters(model):
    return int(sum(int(__import__("numpy").prod(v.shape)) for v in model.backbone.weights))


def forward_flops_per_token(config, context_lengths):
    """Model FLOPs per token of a forward pass: 2 x matmul weights + QK^T and PV.

    `context_lengths[i]`: the mean number of keys a query of layer i attends to.
    """
    c = config
    projections = c["hidden_dim"] * c["head_dim"] * (2 * c["num_query_heads"] + 2 * c["num_key_value_heads"])
    per_layer = projections + 3 * c["hidden_dim"] * c["intermediate_dim"]
    weights = c["num_layers"] * per_layer + c["vocabulary_size"] * c["hidden_dim"]
    attention = sum(4 * c["num_query_heads"] * c["head_dim"] * n for n in context_lengths)
    return 2 * weights + attention


def mean_causal_context(config, length):
    """Mean keys per query for causal attention over `length`, per layer (window for local)."""
    import numpy as np

    positions = np.arange(1, length + 1)
    window = config["sliding_window_size"]
    return [
        float(np.mean(np.minimum(positions, window)) if (i + 1) % SLIDING_WINDOW_PATTERN else np.mean(positions))
        for i in range(config["num_layers"])
    ]


def kv_cache_bytes_keras_hub(config, batch, length, itemsize=4):
    """KerasHub's Gemma 3 cache: every layer a full-length (key, value) pair (`_build_cache`)."""
    c = config
    return 2 * c["num_layers"] * batch * length * c["num_key_value_heads"] * c["head_dim"] * itemsize


# === Benchmarks ===
def random_tokens(config, batch, length, seed=1):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(10, config["vocabulary_size"], size=(batch, length)).astype("int32")


def bench_ceilings(context):
    """Float32 matmul ceiling (backend and NumPy) and memory read bandwidth of this machine."""
    import keras
    import numpy as np

    n = 2048 if context["quick"] else 4096
    a = np.random.default_rng(0).normal(size=(n, n)).astype("float32")
    backend_a = keras.ops.convert_to_tensor(a)
    times = alternate(
        {
            "backend": lambda: keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.matmul(backend_a, backend_a))),
            "numpy": lambda: a @ a,
        },
        repeats=3,
    )
    flops = 2 * n**3
    big = np.ones(2**28 if not context["quick"] else 2**26, "float32")
    read = alternate({"sum": lambda: big.sum()}, repeats=5)["sum"]
    ceilings = {
        "matmul_n": n,
        "matmul_gflops_backend": flops / times["backend"] / 1e9,
        "matmul_gflops_numpy": flops / times["numpy"] / 1e9,
        "read_bandwidth_gbs": big.nbytes / read / 1e9,
    }
    context["ceilings"] = ceilings
    return {"kind": "ceilings", **ceilings}


def _ceiling(context):
    if "ceilings" not in context:
        bench_ceilings(context)
    return context["ceilings"]


def _speed_result(name, times, work, unit, context, flops=None):
    ours, theirs = work / times["ours"], work / times["theirs"]
    result = {
        "kind": "speed", "unit": unit, "ours": ours, "theirs": theirs, "ratio": ours / theirs,
        "ours_s": times["ours"], "theirs_s": times["theirs"],
    }
    if flops is not None:
        gflops = _ceiling(context)["matmul_gflops_backend"]
        result["ours_mfu"] = flops / times["ours"] / 1e9 / gflops
        result["theirs_mfu"] = flops / times["theirs"] / 1e9 / gflops
    return result


def bench_prefill(name, context):
    batch, length = context["size"](name)
    config = context["config"]
    token_ids = random_tokens(config, batch, length)
    inputs = {"token_ids": token_ids, "padding_mask": __import__("numpy").ones_like(token_ids, bool)}
    ours, theirs = context["models"]()
    times = alternate(
        {"ours": lambda: ours.predict_on_batch(inputs), "theirs": lambda: theirs.predict_on_batch(inputs)},
        context["repeats"],
    )
    flops = batch * length * forward_flops_per_token(config, mean_causal_context(config, length))
    return _speed_result(name, times, batch * length, "tokens/s", context, flops)


def bench_train(name, context):
    batch, length = context["size"](name)
    config = context["config"]
    token_ids = random_tokens(config, batch, length + 1)
    x = {"token_ids": token_ids[:, :-1], "padding_mask": __import__("numpy").ones((batch, length), bool)}
    y = token_ids[:, 1:]
    ours, theirs = context["models"]()
    times = alternate(
        {"ours": lambda: ours.train_on_batch(x, y), "theirs": lambda: theirs.train_on_batch(x, y)},
        context["repeats"],
    )
    flops = 3 * batch * length * forward_flops_per_token(config, mean_causal_context(config, length))
    return _speed_result(name, times, batch * length, "tokens/s", context, flops)


def bench_train_memory(name, context):
    """Peak memory of two compiled training steps, without and with remat.

    Each (model, remat) runs in a fresh process: in one process an allocator keeps what an
    earlier model freed, and the peak RSS of the next one would depend on the order.
    """
    result = {"kind": "memory", "unit": "MiB"}
    for remat in (False, True):
        for label in ("ours", "theirs"):
            key = f"{label}_remat" if remat else label
            measured = _train_memory_subprocess(label, remat, context["quick"])
            result[key] = measured.get("peak_mb")
            if "error" in measured:
                result[f"{key}_error"] = measured["error"]
    result["ratio"] = _ratio(result["ours"], result["theirs"])
    result["ratio_remat"] = _ratio(result["ours_remat"], result["theirs_remat"])
    return result


def _train_memory_subprocess(label, remat, quick):
    import subprocess

    command = [sys.executable, "-m", "benchmarks.run", "--backend", os.environ["KERAS_BACKEND"],
               "--train-memory-worker", label] + ["--remat"] * remat + ["--quick"] * quick
    completed = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(HERE))
    for line in completed.stdout.splitlines():
        if line.startswith("TRAIN_MEMORY "):
            return json.loads(line[len("TRAIN_MEMORY "):])
    return {"error": f"worker exited {completed.returncode}: {completed.stderr.strip()[-160:]}"}


def train_memory_worker(label, remat, quick):
    """In this (fresh) process: peak RSS of two training steps of one model; prints JSON."""
    config = QUICK if quick else BENCH
    batch, length = SIZES["train"][1 if quick else 0]
    token_ids = random_tokens(config, batch, length + 1)
    x = {"token_ids": token_ids[:, :-1], "padding_mask": __import__("numpy").ones((batch, length), bool)}
    y = token_ids[:, 1:]
    model = build_models(config, remat=remat)[0 if label == "ours" else 1]
    try:
        measured = {"peak_mb": peak_memory_mb(lambda: [model.train_on_batch(x, y) for _ in range(2)])}
    except Exception as error:  # e.g. TF's recompute_grad refuses keyword arguments
        measured = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    print("TRAIN_MEMORY " + json.dumps(measured), flush=True)


def _ratio(ours, theirs):
    return None if ours is None or theirs is None or theirs <= 0 else ours / theirs


def _generate_call(model, inputs):
    import keras

    function = model.make_generate_function()
    return lambda: keras.ops.convert_to_numpy(function(inputs, stop_token_ids=None)["token_ids"])


def _decode_inputs(config, batch, prompt, new):
    import numpy as np

    token_ids = random_tokens(config, batch, prompt + new)
    padding_mask = np.zeros_like(token_ids, bool)
    padding_mask[:, :prompt] = True
    return {"token_ids": token_ids * padding_mask, "padding_mask": padding_mask}


def bench_decode(name, context):
    batch, prompt, new = context["size"](name)
    config = context["config"]
    inputs = _decode_inputs(config, batch, prompt, new)
    ours, theirs = context["models"]()
    if name == "decode_bf16":
        ours = context["models"](dtype="bfloat16")[0]
    times = alternate(
        {"ours": _generate_call(ours, inputs), "theirs": _generate_call(theirs, inputs)},
        context["repeats"],
    )
    result = _speed_result(name, times, batch * new, "new tokens/s", context)
    # Bytes a decode step must read: every weight once, plus the keys and values attended.
    weight_bytes = {"ours": count_parameters(ours) * (2 if name == "decode_bf16" else 4),
                    "theirs": count_parameters(theirs) * 4}
    bandwidth = _ceiling(context)["read_bandwidth_gbs"] * 1e9
    for label in ("ours", "theirs"):
        steps_per_s = result[label] / batch
        result[f"{label}_bandwidth_fraction"] = weight_bytes[label] * steps_per_s / bandwidth
    result["weight_read_limit_tokens_s"] = batch * bandwidth / weight_bytes["theirs"]
    return result


def bench_generate_8192(name, context):
    """KV-cache bytes and peak memory of a generate call over 8192 positions, batch 1."""
    batch, prompt, new = context["size"](name)
    config = context["config"]
    total = prompt + new
    inputs = _decode_inputs(config, batch, prompt, new)
    ours, theirs = context["models"]()
    result = {"kind": "memory", "unit": "MiB", "length": total}
    result["kv_ours"] = ours.cache_bytes(batch, total)
    result["kv_theirs"] = kv_cache_bytes_keras_hub(config, batch, total)
    result["kv_ratio"] = result["kv_ours"] / result["kv_theirs"]
    for label, model in (("ours", ours), ("theirs", theirs)):
        call = _generate_call(model, inputs)
        start = time.perf_counter()
        # The peak covers the compiling call (see `bench_train_memory`); the second is timed.
        result[label] = peak_memory_mb(call)
        result[f"{label}_first_call_s"] = time.perf_counter() - start
        start = time.perf_counter()
        call()
        result[f"{label}_s"] = time.perf_counter() - start
    result["ratio"] = _ratio(result["ours"], result["theirs"])
    return result


RUNNERS = {
    "ceilings": lambda name, context: bench_ceilings(context),
    "prefill_b1": bench_prefill, "prefill_b4": bench_prefill, "train": bench_train,
    "decode_b1": bench_decode, "decode_b4": bench_decode, "decode_long": bench_decode,
    "decode_bf16": bench_decode, "generate_8192": bench_generate_8192,
    "train_memory": bench_train_memory,
}


def machine_info(backend):
    import keras
    import keras_hub

    versions = {"python": platform.python_version(), "keras": keras.__version__,
                "keras_hub": keras_hub.__version__}
    module = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}[backend]
    versions[module] = __import__(module).__version__
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "backend": backend, "cpu": cpu, "cores": os.cpu_count(), "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
    }


def run(backend, quick=False, only=None, repeats=None, write=True, config=None):
    """Runs the suite on the current backend; returns {"machine": ..., "results": ...}.

    `config` overrides the model config (tests use a tiny one); sizes follow `quick`.
    """
    config = config or (QUICK if quick else BENCH)
    cache = {}

    def models(dtype="float32"):
        if dtype not in cache:
            cache[dtype] = build_models(config, dtype=dtype)
        return cache[dtype]

    context = {
        "quick": quick, "config": config, "models": models,
        "repeats": repeats or 3,
        "size": lambda name: SIZES[name][1 if quick else 0],
    }
    report = {"machine": machine_info(backend), "quick": quick, "config": config, "results": {}}
    for name in only or BENCHMARKS:
        start = time.perf_counter()
        try:
            result = RUNNERS[name](name, context)
        except Exception as error:  # report it and go on with the other benchmarks
            message = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            print(f"{name:14s} FAILED {message}", flush=True)
            report["results"][name] = {"kind": "error", "error": message}
            continue
        result["seconds"] = time.perf_counter() - start
        report["results"][name] = result
        print(format_line(name, result, backend), flush=True)
        if "ceilings" not in report["results"] and "ceilings" in context:
            report["results"]["ceilings"] = {"kind": "ceilings", **context["ceilings"]}
        if cache:
            report["parameters"] = count_parameters(next(iter(cache.values()))[0])
        if write:  # after every benchmark, so an interrupted run keeps what it measured
            from benchmarks import report as report_module

            report_module.save(report, quick=quick)
    return report


def format_line(name, result, backend):
    if result["kind"] == "ceilings":
        return (f"{name:14s} matmul {result['matmul_gflops_backend']:.0f} GFLOP/s "
                f"(numpy {result['matmul_gflops_numpy']:.0f}), read {result['read_bandwidth_gbs']:.1f} GB/s")
    target = target_for(name, backend)
    line = (f"{name:14s} ours {_num(result['ours'])}  keras_hub {_num(result['theirs'])} "
            f"{result['unit']:13s} ratio {_num(result['ratio'], 2)}")
    if "kv_ratio" in result:
        line += f"  kv bytes {result['kv_ours']/2**20:.0f} / {result['kv_theirs']/2**20:.0f} MiB = {result['kv_ratio']:.2f}"
    if "ratio_remat" in result:
        line += f"  remat {result['ours_remat']} / {result['theirs_remat']} MiB"
    if target and result["kind"] == "speed":
        line += f"  (target >= {target})"
    return line


def _num(value, digits=1):
    return "n/a" if value is None else f"{value:10.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("jax", "tensorflow", "torch"), required=True)
    parser.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--repeats", type=int, help="timed runs per model (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    parser.add_argument("--train-memory-worker", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    parser.add_argument("--remat", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if os.environ.get("KERAS_BACKEND") != args.backend and "keras" in sys.modules:
        # Keras is already imported with another backend: start again with the right one.
        os.environ["KERAS_BACKEND"] = args.backend
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks.run", *sys.argv[1:]])
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.train_memory_worker:
        train_memory_worker(args.train_memory_worker, args.remat, args.quick)
        return
    run(args.backend, quick=args.quick, only=args.only, repeats=args.repeats, write=not args.no_write)


if __name__ == "__main__":
    main()

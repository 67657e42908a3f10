"""Attention benchmark: `vishwam_keras.ops.dot_product_attention` against a dense mask.

Side by side, causal self-attention with 8 heads of width 64, batch 1, float32:

- `xla`: ours, implementation="xla" (einsum softmax with a dense mask built from the
  mask description);
- `blockwise`: ours, implementation="blockwise" (FlashAttention-2 in keras.ops);
- `blockwise w=1024`: ours, block-wise with a 1024-token sliding window;
- `keras dense`: `keras.ops.dot_product_attention(q, k, v, mask=...)` with a dense
  (1, 1, T, T) causal mask, which is what KerasHub's Gemma 3 does;
- `keras dense w=1024`: the same with a dense sliding-window mask (Gemma 3 local layers).

For every (config, T, pass) a fresh subprocess builds the inputs, jit-compiles the
forward (or forward + backward: `grad` of `sum(out * w)` w.r.t. q, k, v), and reports

- time: median wall time of several runs after one warm-up run;
- XLA temp: `compiled.memory_analysis().temp_size_in_bytes`, the intermediate buffers XLA
  allocates for one call (exact, from the compiled program's buffer assignment; inputs and
  outputs are not included);
- peak RSS: the process's peak resident memory while running (warm-up and timed runs)
  minus its resident memory just before, after compilation (peak reset through
  /proc/self/clear_refs): what running the call really adds, allocator and first-call
  runtime set-up (some tens of MiB) included.

A configuration whose XLA temp exceeds `--max-temp-gb` (or the free memory less 2 GiB)
is compiled but not run.

    KERAS_BACKEND=jax python benchmarks/attention.py            # T = 2k, 4k, 8k, 16k
    KERAS_BACKEND=jax python benchmarks/attention.py --quick    # T = 1k, 2k
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

CONFIGS = ("xla", "blockwise", "blockwise w=1024", "keras dense", "keras dense w=1024")
PASSES = ("forward", "forward+backward")
WINDOW = 1024
NUM_HEADS = 8
HEAD_DIM = 64


def _attention_fn(config, length, block_size_q, block_size_kv):
    import keras

    import vishwam_keras

    if config.startswith("keras dense"):
        window = WINDOW if "w=" in config else None

        def attend(q, k, v):
            # The mask is built inside the compiled function, as a model would.
            i = keras.ops.arange(length)[:, None]
            j = keras.ops.arange(length)[None, :]
            mask = j <= i
            if window is not None:
                mask = keras.ops.logical_and(mask, i - j < window)
            return keras.ops.dot_product_attention(q, k, v, mask=mask[None, None])

        return attend
    implementation = "xla" if config == "xla" else "blockwise"
    window = WINDOW if "w=" in config else None
    extra = {}
    if implementation == "blockwise":
        extra = dict(block_size_q=block_size_q, block_size_kv=block_size_kv)

    def attend(q, k, v):
        return vishwam_keras.ops.dot_product_attention(
            q, k, v, sliding_window=window, implementation=implementation, **extra
        )

    return attend


def _memory_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _memory_kib_meminfo(field):
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def run_worker(spec):
    """One configuration in this process; prints one JSON line."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    length = spec["length"]
    rng = np.random.default_rng(0)
    shape = (1, length, NUM_HEADS, HEAD_DIM)
    q, k, v = (jnp.asarray(rng.normal(size=shape).astype("float32")) for _ in range(3))
    attend = _attention_fn(spec["config"], length, spec["block_size_q"], spec["block_size_kv"])
    if spec["pass"] == "forward":
        function = jax.jit(attend)
    else:
        weights = jnp.asarray(rng.normal(size=shape).astype("float32"))
        function = jax.jit(
            jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v) * weights), argnums=(0, 1, 2))
        )
    start = time.perf_counter()
    compiled = function.lower(q, k, v).compile()
    result = dict(spec, compile_s=time.perf_counter() - start)
    analysis = compiled.memory_analysis()
    result["temp_mb"] = analysis.temp_size_in_bytes / 2**20
    # Never push a shared machine into swap or the OOM killer: keep 2 GiB spare.
    limit_gib = min(spec["max_temp_gb"], _memory_kib_meminfo("MemAvailable") / 2**20 - 2)
    if analysis.temp_size_in_bytes > limit_gib * 2**30:
        result["skipped"] = (
            f"needs {analysis.temp_size_in_bytes / 2**30:.1f} GiB of XLA temporaries "
            f"(limit {limit_gib:.1f} GiB: --max-temp-gb or free memory - 2 GiB)"
        )
        print(json.dumps(result))
        return

    def call():
        jax.block_until_ready(compiled(q, k, v))

    # The peak covers the warm-up too: an allocator may keep the warm-up's buffers
    # resident, and then the timed runs alone would add nothing.
    peak_reset = _reset_peak_rss()
    rss_before = _memory_kib("VmRSS")
    start = time.perf_counter()
    call()
    warm_up = time.perf_counter() - start
    repeats = 5 if warm_up < 2 else (3 if warm_up < 20 else 1)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    result["time_ms"] = 1000 * float(np.median(times))
    result["repeats"] = repeats
    if peak_reset:
        result["peak_rss_mb"] = (_memory_kib("VmHWM") - rss_before) / 1024
    print(json.dumps(result))


def _machine():
    import jax
    import keras
    import keras_hub
    import numpy

    cpu = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        memory = meminfo.readline().split()[1]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(int(memory) / 2**20, 1),
        "backend": keras.backend.backend(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "jax": jax.__version__,
        "numpy": numpy.__version__,
    }


def _run_one(spec, timeout):
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(spec, skipped=f"over the {timeout} s limit")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode < 0:
        return dict(spec, skipped=f"killed by signal {-done.returncode} (9: likely the OOM killer)")
    if done.returncode != 0 or not lines:
        errors = [line for line in done.stderr.splitlines() if "Error" in line]
        return dict(spec, skipped=f"failed (exit {done.returncode}): {errors[-1:] or ''}")
    return json.loads(lines[-1])


def _cell(result, key, fmt):
    if result is None:
        return "-"
    value = result.get(key)
    if "skipped" in result:
        # A configuration too big to run still reports what XLA would allocate.
        return "skipped" if value is None else fmt.format(value) + " (not run)"
    return "-" if value is None else fmt.format(value)


def _markdown(machine, results, lengths, args, load_before, load_after):
    lines = [
        "# Attention benchmark (`benchmarks/attention.py`)",
        "",
        f"- date: {machine['date']}",
        f"- machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB RAM, "
        "no accelerator; shared with other jobs (load average "
        f"{load_before} before, {load_after} after)",
        f"- backend: {machine['backend']} (CPU); Python {machine['python']}, keras "
        f"{machine['keras']}, keras-hub {machine['keras_hub']}, jax {machine['jax']}, "
        f"numpy {machine['numpy']}",
        f"- shapes: batch 1, {NUM_HEADS} heads (MHA), head_dim {HEAD_DIM}, float32, causal; "
        f"window {WINDOW} for the `w=` columns; block-wise blocks "
        f"{args.block_size_q} x {args.block_size_kv}",
        f"- command: `KERAS_BACKEND=jax python benchmarks/attention.py {' '.join(args.argv)}`",
        "",
    ]
    for pass_name in PASSES:
        for title, key, fmt in (
            ("time, ms (median)", "time_ms", "{:.0f}"),
            ("XLA temp, MiB", "temp_mb", "{:.0f}"),
            ("peak RSS added by running, MiB", "peak_rss_mb", "{:.0f}"),
        ):
            lines += [f"## {pass_name}: {title}", "", "| T | " + " | ".join(CONFIGS) + " |",
                      "|---|" + "---|" * len(CONFIGS)]
            for length in lengths:
                cells = [
                    _cell(results.get((config, length, pass_name)), key, fmt) for config in CONFIGS
                ]
                lines.append(f"| {length} | " + " | ".join(cells) + " |")
            lines.append("")
    skipped = [r for r in results.values() if "skipped" in r]
    if skipped:
        lines += ["Skipped:", ""]
        lines += [f"- {r['config']}, T={r['length']}, {r['pass']}: {r['skipped']}" for r in skipped]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 1k, 2k only")
    parser.add_argument("--sizes", help="comma-separated sequence lengths")
    parser.add_argument("--configs", help=f"comma-separated subset of {CONFIGS}")
    parser.add_argument("--passes", default=",".join(PASSES))
    parser.add_argument("--block-size-q", type=int, default=512)
    parser.add_argument("--block-size-kv", type=int, default=256)
    parser.add_argument("--max-temp-gb", type=float, default=18.0)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per configuration")
    parser.add_argument("--out", help="write a markdown report here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    args.argv = sys.argv[1:] if argv is None else list(argv)
    lengths = [1024, 2048] if args.quick else [2048, 4096, 8192, 16384]
    if args.sizes:
        lengths = [int(size) for size in args.sizes.split(",")]
    configs = CONFIGS if not args.configs else tuple(args.configs.split(","))
    load_before = os.getloadavg()[0]
    results = {}
    for pass_name in args.passes.split(","):
        for length in lengths:
            for config in configs:
                spec = {
                    "config": config, "length": length, "pass": pass_name,
                    "block_size_q": args.block_size_q, "block_size_kv": args.block_size_kv,
                    "max_temp_gb": args.max_temp_gb,
                }
                result = _run_one(spec, args.timeout)
                results[(config, length, pass_name)] = result
                print(json.dumps(result), flush=True)
    load_after = os.getloadavg()[0]
    report = _markdown(_machine(), results, lengths, args, f"{load_before:.1f}", f"{load_after:.1f}")
    print(report)
    if args.out:
        with open(args.out, "w") as out:
            out.write(report + "\n")


if __name__ == "__main__":
    main()

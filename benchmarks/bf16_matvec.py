"""Why bf16 weights do not speed up decode on JAX (XLA CPU): a matrix-vector loop.

    python -m benchmarks.bf16_matvec

A decode step's MLP chain at the bench config's width (16 pairs of 512x2048 / 2048x512
weights, 134 MB in float32) runs inside `jax.lax.fori_loop`, as the weights sit in the
generate loop, with float32 and with bfloat16 weights. Timing 32 and 64 iterations
separates the per-iteration cost from the one-off cost, and the compiled HLO is searched
for conversions of weight-sized arrays. On a CPU without a native bf16 dot, XLA converts
each bf16 weight to float32 once, before the loop (the loop is then float32 and reads
float32 bytes): the one-off cost grows and the per-iteration cost does not shrink.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

LAYERS, WIDTH, HIDDEN, ITERATIONS = 16, 512, 2048, 32


def _compiled_loop(iterations):
    def run(x, ws, vs):
        def body(_, x):
            for w, v in zip(ws, vs):
                x = jnp.dot(jax.nn.gelu(jnp.dot(x, w)), v)
            return x

        return jax.lax.fori_loop(0, iterations, body, x.astype(ws[0].dtype))

    return jax.jit(run)


def _median_seconds(fn, *args, repeats=5):
    fn(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(dtype):
    rng = np.random.default_rng(0)
    ws = [jnp.asarray(rng.standard_normal((WIDTH, HIDDEN)) * 0.02, dtype) for _ in range(LAYERS)]
    vs = [jnp.asarray(rng.standard_normal((HIDDEN, WIDTH)) * 0.02, dtype) for _ in range(LAYERS)]
    x = jnp.full((1, WIDTH), 0.01, "float32")
    short, long = _compiled_loop(ITERATIONS), _compiled_loop(2 * ITERATIONS)
    t_short, t_long = _median_seconds(short, x, ws, vs), _median_seconds(long, x, ws, vs)
    hlo = short.lower(x, ws, vs).compile().as_text()
    weight_shapes = (f"[{WIDTH},{HIDDEN}]", f"[{HIDDEN},{WIDTH}]")
    converts = sum(
        1 for line in hlo.splitlines() if "convert(" in line and any(s in line for s in weight_shapes)
    )
    per_iteration = (t_long - t_short) / ITERATIONS
    return {
        "per_iteration_ms": per_iteration * 1e3,
        "one_off_ms": (t_short - ITERATIONS * per_iteration) * 1e3,
        "weight_converts": converts,
        "weight_mb": 2 * LAYERS * WIDTH * HIDDEN * jnp.dtype(dtype).itemsize / 1e6,
    }


def main():
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}; {LAYERS} x ({WIDTH}x{HIDDEN} + "
          f"{HIDDEN}x{WIDTH}) weights, batch 1, fori_loop of {ITERATIONS} and {2 * ITERATIONS}")
    results = {dtype: measure(dtype) for dtype in ("float32", "bfloat16")}
    for dtype, r in results.items():
        print(f"{dtype:>9}: {r['weight_mb']:.0f} MB of weights, {r['per_iteration_ms']:.2f} ms per "
              f"iteration, one-off {r['one_off_ms']:.1f} ms, {r['weight_converts']} weight-sized converts")
    ratio = results["float32"]["per_iteration_ms"] / results["bfloat16"]["per_iteration_ms"]
    print(f"bf16 speed-up per iteration: {ratio:.2f}x (2x would mean half the bytes read)")
    return results


if __name__ == "__main__":
    main()

"""The `vishwam` command line (`python -m vishwam_keras ...`): demo, generate, info.

Each subcommand is a thin wrapper over the public API.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _info(args):
    import keras
    import keras_hub

    import vishwam_keras
    from vishwam_keras.models import presets

    print(f"vishwam_keras {vishwam_keras.__version__}  keras {keras.__version__}  "
          f"keras_hub {keras_hub.__version__}  backend {keras.backend.backend()}")
    print("presets:")
    for name in presets.available_presets():
        meta = presets.preset_metadata(name)
        weights = "trained weights" if meta.get("has_weights") else "random init"
        print(f"  {name:24s} {meta.get('parameter_count', 0) / 1e9:6.2f}B params  ({weights})  "
              f"{meta.get('description', '')}")


def _generate(args):
    import vishwam_keras

    model = vishwam_keras.VishwamCausalLM.from_preset(args.preset, dtype=args.dtype)
    model.compile(sampler=args.sampler)
    outputs = model.generate(args.prompt, max_length=args.max_length)
    for text in outputs if isinstance(outputs, list) else [outputs]:
        print(text)


def _demo(args):
    from vishwam_keras.demo import run_text_demo

    run_text_demo(seconds=args.seconds, seed=args.seed)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="vishwam", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train a tiny model on Shakespeare, then sample")
    demo.add_argument("--seconds", type=float, default=60.0, help="training budget")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    generate = commands.add_parser("generate", help="generate text from a preset")
    generate.add_argument("--preset", required=True)
    generate.add_argument("--prompt", required=True, action="append")
    generate.add_argument("--max-length", type=int, default=64)
    generate.add_argument("--sampler", default="top_k")
    generate.add_argument("--dtype", default=None)
    generate.set_defaults(run=_generate)

    info = commands.add_parser("info", help="versions, backend and presets")
    info.set_defaults(run=_info)

    args = parser.parse_args(argv)
    start = time.time()
    args.run(args)
    print(f"[{args.command} finished in {time.time() - start:.1f} s]", file=sys.stderr)


if __name__ == "__main__":
    main()

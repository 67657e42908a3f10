"""The seed's demo entry point: train and sample a small text model, then caption and
question FashionScenes images with the multimodal model, all through the public API.

    python examples/advanced_multimodal_demo.py            # about two minutes on a laptop CPU
    python examples/advanced_multimodal_demo.py --small    # tiny sizes, a few seconds of training
    VISHWAM_GUIDE_SMALL=1 python examples/advanced_multimodal_demo.py   # the same as --small

It runs the demos of `vishwam_keras.demo` (the code behind `python -m vishwam_keras demo`):

1. `run_text_demo`: train a small model on the bundled Shakespeare for a time budget, then
   sample from three prompts;
2. `run_demo`: load the `vishwam_tiny_fashion` preset (or, if it has not been trained yet,
   a randomly initialised model of its size, and say so), caption FashionScenes test scenes,
   answer their questions, save a PNG grid and score VQA, captions and retrieval beside
   chance and majority baselines. Needs Fashion-MNIST (Debian's `dataset-fashion-mnist`,
   or `$VISHWAM_DATA_DIR`); skipped with a message otherwise.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", default=None,
                        help="tiny sizes and steps (also: VISHWAM_GUIDE_SMALL=1)")
    parser.add_argument("--text-only", action="store_true", help="skip the FashionScenes demo")
    parser.add_argument("--seconds", type=float, default=None, help="text demo training budget")
    parser.add_argument("--eval-scenes", type=int, default=None, help="FashionScenes test scenes scored")
    parser.add_argument("--output", default=None, help="PNG of the captioned scenes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.small is None:
        args.small = os.environ.get("VISHWAM_GUIDE_SMALL", "0") not in ("", "0")
    return args


def fashion_mnist_available():
    try:
        from vishwam_keras.data import fashion_mnist

        fashion_mnist.load_fashion_mnist("test")
        return True
    except (ImportError, FileNotFoundError, OSError) as error:
        print(f"FashionScenes demo skipped: Fashion-MNIST not found ({error}). Install Debian's "
              "`dataset-fashion-mnist` or set $VISHWAM_DATA_DIR.")
        return False


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    import keras

    import vishwam_keras

    print(f"vishwam_keras {vishwam_keras.__version__}, backend {keras.backend.backend()}, "
          f"small mode: {args.small}")
    from vishwam_keras import demo

    print("\n=== 1. Text: train on Shakespeare, then sample ===")
    seconds = args.seconds if args.seconds is not None else (3.0 if args.small else 60.0)
    demo.run_text_demo(
        seconds=seconds, seed=args.seed, sequence_length=32 if args.small else 64,
        batch_size=8 if args.small else 16,
    )

    if not args.text_only and fashion_mnist_available():
        print("\n=== 2. Images: caption and question FashionScenes ===")
        output = args.output or os.path.join(tempfile.mkdtemp(prefix="vishwam_demo_"), "demo_scenes.png")
        eval_scenes = args.eval_scenes if args.eval_scenes is not None else (2 if args.small else 60)
        demo.run_demo(
            num_scenes=min(2 if args.small else 6, eval_scenes), eval_scenes=eval_scenes,
            output=output, batch_size=16 if args.small else 64,
            baseline_train_scenes=200 if args.small else 5000,
        )
    print(f"\nDemo finished in {time.time() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `vishwam` command line (`python -m vishwam_keras ...`): demo, generate, info.

Each subcommand is a thin wrapper over the public API.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _train(args):
    import dataclasses

    from vishwam_keras.training import pipeline

    config = {
        "small": pipeline.SMALL_MODEL_TRAINING_CONFIG,
        "medium": pipeline.MEDIUM_MODEL_TRAINING_CONFIG,
        "large": pipeline.LARGE_MODEL_TRAINING_CONFIG,
    }[args.config]
    changes = {"checkpoint_dir": args.checkpoint_dir, "log_dir": args.log_dir}
    if args.steps is not None:
        changes.update(total_steps=args.steps, curriculum_stages=None)
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    config = dataclasses.replace(config, **changes)
    if args.data != "fashion_scenes":
        os.environ["VISHWAM_DATA_DIR"] = args.data
    result = pipeline.main_training_pipeline(config=config)
    print(f"log: {result.log_path}  plot: {result.plot_path}")
    if args.output:
        pipeline.export_without_optimizer(result.model).save_to_preset(args.output)
        print(f"preset saved to {args.output}")


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


def load_image(path):
    """Any image file (PNG, JPEG, ...; any size, grayscale or RGB) -> uint8 `(H, W, 3)`.

    The model's image converter resizes it and converts the channels the encoder takes.
    """
    import keras
    import numpy as np

    image = keras.utils.load_img(path, color_mode="rgb")
    return np.asarray(keras.utils.img_to_array(image), dtype="uint8")


def _generate_inputs(prompts, image_paths):
    """Prompts alone, or `{"prompts", "images"}`: one image per prompt (or one for all).

    A prompt given with an image but without `<start_of_image>` gets it prepended.
    """
    from vishwam_keras.models.tokenizer import START_OF_IMAGE_TOKEN

    if not image_paths:
        return prompts
    if len(image_paths) not in (1, len(prompts)):
        raise SystemExit(
            f"Pass one --image for all prompts or one per --prompt: got {len(image_paths)} images "
            f"for {len(prompts)} prompts."
        )
    images = [load_image(path) for path in image_paths]
    images = images * len(prompts) if len(images) == 1 else images
    prompts = [p if START_OF_IMAGE_TOKEN in p else f"{START_OF_IMAGE_TOKEN} {p}" for p in prompts]
    return {"prompts": prompts, "images": [[image] for image in images]}


def _generate(args):
    import vishwam_keras

    model = vishwam_keras.VishwamCausalLM.from_preset(args.preset, dtype=args.dtype)
    sampler = args.sampler or ("greedy" if args.image else "top_k")
    model.compile(sampler=sampler)
    inputs = _generate_inputs(args.prompt, args.image)
    outputs = model.generate(inputs, max_length=args.max_length)
    for text in outputs if isinstance(outputs, list) else [outputs]:
        print(text)


def _demo(args):
    if args.text:
        from vishwam_keras.demo import run_text_demo

        run_text_demo(seconds=args.seconds, seed=args.seed)
        return
    from vishwam_keras.demo import run_demo

    run_demo(
        train=args.train, num_scenes=args.num_scenes, eval_scenes=args.eval_scenes,
        output=args.output, preset=args.preset, batch_size=args.batch_size,
    )


def build_parser():
    """The `vishwam` argument parser (subcommands demo, generate, info)."""
    parser = argparse.ArgumentParser(prog="vishwam", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="the trained FashionScenes model: captions, answers, a PNG and three metrics",
        description="By default: load vishwam_tiny_fashion, caption test scenes and answer "
        "their questions (a PNG grid), score VQA, captions and retrieval. --train first trains "
        "the preset through the curriculum; --text runs the Shakespeare text demo instead.",
    )
    demo.add_argument("--train", action="store_true", help="train the preset through the curriculum first")
    demo.add_argument("--text", action="store_true", help="the text demo: train on Shakespeare, then sample")
    demo.add_argument("--preset", default="vishwam_tiny_fashion")
    demo.add_argument("--num-scenes", type=int, default=6, help="scenes in the PNG grid")
    demo.add_argument("--eval-scenes", type=int, default=60, help="test scenes scored")
    demo.add_argument("--output", default="demo_scenes.png", help="the PNG grid")
    demo.add_argument("--batch-size", type=int, default=64)
    demo.add_argument("--seconds", type=float, default=60.0, help="--text: training budget")
    demo.add_argument("--seed", type=int, default=0, help="--text: seed")
    demo.set_defaults(run=_demo)

    generate = commands.add_parser("generate", help="generate text from a preset, optionally about an image")
    generate.add_argument("--preset", required=True)
    generate.add_argument("--prompt", required=True, action="append")
    generate.add_argument(
        "--image", action="append", default=[],
        help="an image file (any size, grayscale or RGB); `<start_of_image>` is prepended to a "
        "prompt that lacks it",
    )
    generate.add_argument("--max-length", type=int, default=64)
    generate.add_argument("--sampler", default=None, help="default: greedy with --image, else top_k")
    generate.add_argument("--dtype", default=None)
    generate.set_defaults(run=_generate)

    train = commands.add_parser("train", help="curriculum training (resumes from --checkpoint-dir)")
    train.add_argument("--config", choices=["small", "medium", "large"], default="small")
    train.add_argument("--data", default="fashion_scenes",
                       help="'fashion_scenes' (bundled pipelines) or a folder with Fashion-MNIST idx files")
    train.add_argument("--steps", type=int, default=None, help="total steps of the default curriculum")
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--checkpoint-dir", default="checkpoints")
    train.add_argument("--log-dir", default="training_logs")
    train.add_argument("--output", default=None, help="save the trained model as a preset here")
    train.set_defaults(run=_train)

    info = commands.add_parser("info", help="versions, backend and presets")
    info.set_defaults(run=_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    start = time.time()
    args.run(args)
    print(f"[{args.command} finished in {time.time() - start:.1f} s]", file=sys.stderr)


if __name__ == "__main__":
    main()

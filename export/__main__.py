"""The offline world's one command line.

    python -m export data                                   # render and cache the emoji dataset
    python -m export train vae --minutes 20 --seed 0        # vae, dcgan, diffusion, gmm
    python -m export onnx all                               # checkpoints -> models/<name>/
    python -m export verify                                 # sha256 of every committed file
    python -m export evaluate                               # distances, accuracy, diversity, sample grids
    python -m export evaluate --sweep                       # ... and the diffusion guidance/steps sweep
    python -m export evaluate --doc-only                    # docs/MODELS.md from docs/evaluation.json
    python -m export upscale-report                         # docs/UPSCALE.md: models/sr vs bicubic, latency
    python -m export upscale-report --doc-only              # docs/UPSCALE.md from models/sr's manifest
"""

from __future__ import annotations

import argparse
import logging
import sys

TRAINABLE = ("vae", "dcgan", "diffusion", "gmm", "sr", "style")
PUBLISHABLE = ("vae", "dcgan", "diffusion", "gmm", "text", "themes", "sr", "style", "all")
REQUIRED_MODELS = ("dcgan", "vae", "gmm", "diffusion", "text", "sr", "style")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("data", help="render and cache the dataset")
    train = commands.add_parser("train", help="train (or resume) one model")
    train.add_argument("name", choices=TRAINABLE)
    train.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget")
    train.add_argument("--steps", type=int, default=1_000_000, help="step budget")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu or cuda")
    train.add_argument("--image-from-step", type=int, default=None,
                       help="dcgan only: add a discriminator on decoded images from this step (default: never)")
    train.add_argument("--image-batch", type=int, default=None,
                       help="with --image-from-step: how many of each batch's samples the decoder renders for "
                            "that discriminator (default: all)")
    onnx = commands.add_parser("onnx", help="export checkpoints to models/")
    onnx.add_argument("name", choices=PUBLISHABLE)
    commands.add_parser("verify", help="check models/ against the manifests")
    upscale = commands.add_parser("upscale-report", help="measure models/sr against bicubic, write docs/UPSCALE.md")
    upscale.add_argument("--doc-only", action="store_true", help="rewrite docs/UPSCALE.md from models/sr's manifest")
    style_report = commands.add_parser("style-report", help="measure models/style, write docs/STYLE.md")
    style_report.add_argument("--doc-only", action="store_true", help="rewrite docs/STYLE.md from docs/style.json")
    evaluate = commands.add_parser("evaluate", help="score the generators, write docs figures")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--sweep", action="store_true", help="also sweep diffusion guidance and steps")
    evaluate.add_argument("--doc-only", action="store_true",
                          help="rewrite docs/MODELS.md from docs/evaluation.json without scoring")
    args = parser.parse_args(argv)
    if args.command == "train" and args.image_from_step is not None:  # never dropped silently
        if args.name != "dcgan":
            parser.error(f"--image-from-step is a dcgan phase; {args.name} has none")
        if args.image_from_step < 0:
            parser.error(f"--image-from-step must be a step (>= 0), not {args.image_from_step}")
    if args.command == "train" and args.image_batch is not None:
        if args.image_from_step is None:
            parser.error("--image-batch sizes the image discriminator's batch; it needs --image-from-step")
        from export.dcgan import BATCH

        if not 1 <= args.image_batch <= BATCH:
            parser.error(f"--image-batch must lie in 1..{BATCH} (the batch), not {args.image_batch}")
    return args


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse(argv)
    if args.command == "verify":
        from export import manifest

        try:
            manifests = manifest.verify(required=REQUIRED_MODELS)
        except manifest.VerificationError as error:
            logging.error("%s", error)
            return 1
        logging.info("verified %d models: %s", len(manifests), ", ".join(m["name"] for m in manifests))
        return 0
    if args.command == "data":
        from export import data

        dataset = data.load()
        logging.info("%d emoji, %d held out, per class %s", len(dataset), int(dataset.held_out.sum()),
                     {g: int((dataset.labels == i).sum()) for i, g in enumerate(data.GROUPS)})
        return 0
    if args.command == "train":
        return train(args)
    if args.command == "upscale-report":
        from export import upscale_report

        upscale_report.write_doc() if args.doc_only else upscale_report.write_report()
        return 0
    if args.command == "style-report":
        from export import style_report

        style_report.write_doc() if args.doc_only else style_report.write_report()
        return 0
    if args.command == "onnx":
        from export import publish

        if args.name == "all":
            publish.publish_all()
        else:
            getattr(publish, f"publish_{args.name}")(publish.manifest.MODELS_DIR)
        return 0
    from export import report

    if args.doc_only:
        report.rewrite_models_doc()
    else:
        report.evaluate_all(args.device, sweep=args.sweep)
    return 0


def train(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from export import training

    torch.set_num_threads(min(torch.get_num_threads(), 16))
    device = training.pick_device(args.device)
    if args.name == "gmm":
        from export import gmm

        mixture = gmm.fit(args.seed, device)
        training.CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
        np.savez(training.CHECKPOINT_DIR / "gmm.npz", **mixture)
        return 0
    from export import dcgan, diffusion, sr, style, vae

    module = {"vae": vae, "dcgan": dcgan, "diffusion": diffusion, "sr": sr, "style": style}[args.name]
    phases = {"image_from_step": args.image_from_step, "image_batch": args.image_batch} \
        if args.name == "dcgan" else {}
    module.train(args.steps, args.minutes, args.seed, device, **phases)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

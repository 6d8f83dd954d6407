"""The evaluation report: every generator scored by one judge against one reference, with the
figures written where docs/MODELS.md reads them (models/<name>/manifest.json "metrics",
docs/evaluation.json) and one sample grid per model under docs/samples/.

Every generator is scored with the weights committed under models/, rebuilt as torch modules by
export.from_onnx and checked against onnxruntime first, never with a checkpoint from .cache/: the
figures describe exactly what the service serves and a fresh clone reproduces them. The judge is
export.evaluate's classifier (not committed: `python -m export train classifier --minutes 12
--seed 0`) and the reference is its features of the held-out split. FID is biased by the sample
count, so each FID_own sits beside a real-vs-real floor (training images vs held-out) and a
uniform-noise ceiling drawn at that same count. Class ids are drawn from the training split's
label distribution, so generated sets have the reference's mix.

    python -m export evaluate          # about 7 minutes on 2 CPU cores; also writes docs/MODELS.md
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export import data, dcgan, diffusion, evaluate, from_onnx, gmm, manifest, text, training, vae

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = ROOT / "docs"
SAMPLES_DIR = DOCS_DIR / "samples"
COMMAND = "python -m export evaluate"
SEED = 0
SAMPLES = 1000  # per generator; sets fed from the held-out split (369 images) use all of it
CPU_THREADS = 2  # MEASURED.md: more torch threads than cores halves the speed of every job
DIFFUSION_STEPS, GUIDANCE = 30, 3.0  # the diffusion manifest's serving defaults
CAPTION_TEMPLATE = 1  # text.CAPTION_TEMPLATES[1] = "an emoji of {}", phrased the way prompts are
GRID_COLUMNS = 8
GRID_SCALE = 2  # nearest-neighbour, so every generated pixel stays visible
GUTTER, GUTTER_GREY = 2, 192
VAE_GRID_IMAGES = 16
SKIN_TONE = re.compile(r"(light|medium-light|medium|medium-dark|dark) skin tone")
PROMPTS = ("a red heart", "a future city", "grinning face", "a cat", "pizza", "rocket", "flag: Japan",
           "thumbs up")


@dataclass(frozen=True)
class Judge:
    """The classifier, its features of the held-out split and the baselines per sample count."""

    classifier: evaluate.Classifier
    reference: np.ndarray  # (369, 128) float64 held-out features
    baselines: dict[int, dict]  # sample count -> {"fid_floor", "fid_noise"}
    device: torch.device

    def score(self, images: np.ndarray, requested: np.ndarray | None) -> dict:
        result = evaluate.score(self.classifier, images, requested, self.reference, self.device)
        result.update(self.baselines[len(images)])
        if requested is not None:
            per_class = result["class_accuracy_per_class"]
            result["class_accuracy_balanced"] = round(float(np.mean(list(per_class.values()))), 3)
        return result


def make_judge(dataset: data.EmojiDataset, device: torch.device) -> Judge:
    """Floor and ceiling at every sample count a generator below is scored at."""
    classifier = evaluate.load_classifier(device)
    held_out, train = dataset.split(held_out=True), dataset.split(held_out=False)
    reference, _ = evaluate.features_and_logits(classifier, held_out.images32, device)
    baselines = {}
    for count in sorted({min(SAMPLES, len(train)), len(held_out)}):
        real = floor_images(train, count)
        noise = np.random.Generator(np.random.PCG64(SEED)).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        baselines[count] = {"fid_floor": evaluate.score(classifier, real, None, reference, device)["fid_own"],
                            "fid_noise": evaluate.score(classifier, noise, None, reference, device)["fid_own"]}
        log.info("%d samples: floor %.2f, noise ceiling %.2f", count, *baselines[count].values())
    return Judge(classifier, reference, baselines, device)


def floor_images(train: data.EmojiDataset, count: int) -> np.ndarray:
    """The floor's real images: `count` training images drawn without replacement, seed SEED."""
    return train.images32[np.random.Generator(np.random.PCG64(SEED)).choice(len(train), count, replace=False)]


@torch.no_grad()
def floor_checks(judge: Judge, dataset: data.EmojiDataset, encoder: vae.ScaledEncoder,
                 decoder: vae.ScaledDecoder) -> dict:
    """Whether the floor is a lower bound. The judge was trained on the training split, so its
    features of those very images may sit apart from its features of any unseen image, real or
    generated. Check 1 (equal counts): held-out half vs the other half, split by base emoji as the
    held-out split itself is, beside training images vs that same half. Check 2: VAE
    reconstructions of the floor's own training images."""
    held_out, train = dataset.split(held_out=True), dataset.split(held_out=False)
    first, second = base_emoji_halves(held_out.captions)
    train_images = floor_images(train, len(first))
    train_features, _ = evaluate.features_and_logits(judge.classifier, train_images, judge.device)
    count = min(SAMPLES, len(train))
    images = torch.from_numpy(data.to_unit_range(floor_images(train, count))).to(judge.device)
    reconstructions = decode(decoder, torch.cat([encoder(chunk)[0] for chunk in images.split(256)]))
    halves = judge.reference[first], judge.reference[second]
    checks = {"held_out_half_vs_other_half": evaluate.frechet_distance(*halves),
              "training_vs_held_out_half": evaluate.frechet_distance(train_features, halves[1]),
              "half_sizes": [len(first), len(second)],
              "training_reconstructions_vs_held_out": judge.score(reconstructions, None)["fid_own"],
              "training_originals_vs_held_out": judge.baselines[count]["fid_floor"], "count": count}
    log.info("floor checks: %s", checks)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in checks.items()}


def base_emoji_halves(captions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of the indices with every skin-tone variant on the same side as its base emoji."""
    bases = np.array([SKIN_TONE.sub("", caption).rstrip(" :,") for caption in captions])
    order = np.random.Generator(np.random.PCG64(SEED)).permutation(np.unique(bases))
    first_bases, sizes = set(), 0
    for base in order:  # whole groups into the first half until it holds half of the images
        if sizes >= len(captions) // 2:
            break
        first_bases.add(base)
        sizes += int(np.sum(bases == base))
    in_first = np.isin(bases, list(first_bases))
    return np.flatnonzero(in_first), np.flatnonzero(~in_first)


def image_rngs(count: int) -> list[np.random.Generator]:
    """Image i draws from PCG64(SEED + i), as the service does per seed: no image depends on another."""
    return [np.random.Generator(np.random.PCG64(SEED + i)) for i in range(count)]


def training_like_class_ids(dataset: data.EmojiDataset, count: int) -> np.ndarray:
    """Class ids in the training split's proportions (59 % People & Body), like the reference."""
    rng = np.random.Generator(np.random.PCG64(SEED))
    return rng.choice(dataset.split(held_out=False).labels, count)


@torch.no_grad()
def decode(decoder: vae.ScaledDecoder, latents: torch.Tensor) -> np.ndarray:
    return evaluate.to_uint8(torch.cat([decoder(chunk) for chunk in latents.split(256)]))


def first_per_class(images: np.ndarray, class_ids: np.ndarray) -> list[np.ndarray]:
    """Grid rows: the first GRID_COLUMNS samples of each class, classes 0..8 top to bottom."""
    return [images[class_ids == c][:GRID_COLUMNS] for c in range(len(data.GROUPS))]


@torch.no_grad()
def evaluate_vae(judge: Judge, encoder: vae.ScaledEncoder, decoder: vae.ScaledDecoder,
                 dataset: data.EmojiDataset) -> tuple[dict, list]:
    """Reconstructions (posterior mean, decoded) of every held-out image through the served encode
    and decode, scored against their true classes; PSNR on the float images, before uint8."""
    held_out = dataset.split(held_out=True)
    images = torch.from_numpy(data.to_unit_range(held_out.images32)).to(judge.device)
    latents = torch.cat([encoder(chunk)[0] for chunk in images.split(256)])
    decoded = torch.cat([decoder(chunk) for chunk in latents.split(256)])  # (369, 3, 32, 32)
    reconstructions = evaluate.to_uint8(decoded)
    result = judge.score(reconstructions, held_out.labels)
    result["held_out_psnr_db"] = round(vae.psnr(decoded, images), 2)
    rng = np.random.Generator(np.random.PCG64(SEED))
    picked = np.sort(rng.choice(len(held_out), VAE_GRID_IMAGES, replace=False))
    return result, [held_out.images32[picked], reconstructions[picked]]


def evaluate_gmm(judge: Judge, decoder: vae.ScaledDecoder, class_ids: np.ndarray) -> tuple[dict, list]:
    with np.load(manifest.MODELS_DIR / "gmm" / "gmm.npz") as arrays:
        mixture = dict(arrays)
    latents = gmm.sample(mixture, class_ids, image_rngs(len(class_ids)))  # (N, 4, 8, 8)
    images = decode(decoder, torch.from_numpy(latents).to(judge.device))
    return judge.score(images, class_ids), first_per_class(images, class_ids)


@torch.no_grad()
def evaluate_dcgan(judge: Judge, generator: dcgan.Generator, class_ids: np.ndarray) -> tuple[dict, list]:
    z = np.stack([rng.standard_normal(dcgan.Z_DIM, dtype=np.float32) for rng in image_rngs(len(class_ids))])
    z, classes = torch.from_numpy(z).to(judge.device), torch.from_numpy(class_ids).to(judge.device)
    images = evaluate.to_uint8(torch.cat([generator(zs, cs) for zs, cs in zip(z.split(256), classes.split(256))]))
    return judge.score(images, class_ids), first_per_class(images, class_ids)


def diffusion_images(unet: diffusion.UNet, decoder: vae.ScaledDecoder, class_ids: np.ndarray,
                     captions: np.ndarray, device: torch.device) -> np.ndarray:
    """DDIM with classifier-free guidance at the serving defaults, decoded by the VAE."""
    latents = diffusion.sample(unet, torch.from_numpy(class_ids).to(device), torch.from_numpy(captions).to(device),
                               torch.Generator().manual_seed(SEED), steps=DIFFUSION_STEPS, guidance=GUIDANCE)
    return decode(decoder, latents)


def evaluate_diffusion(judge: Judge, unet: diffusion.UNet, decoder: vae.ScaledDecoder,
                       class_ids: np.ndarray) -> tuple[dict, list]:
    no_caption = np.zeros((len(class_ids), text.EMBEDDING_DIM), np.float32)
    images = diffusion_images(unet, decoder, class_ids, no_caption, judge.device)
    return judge.score(images, class_ids), first_per_class(images, class_ids)


def evaluate_diffusion_text(judge: Judge, unet: diffusion.UNet, decoder: vae.ScaledDecoder,
                            dataset: data.EmojiDataset) -> dict:
    """Text only (class = NULL_CLASS) from the held-out captions, which training never saw; the
    classifier's verdict is compared with each caption's true class."""
    captions = text.caption_embeddings(dataset.captions)[dataset.held_out, CAPTION_TEMPLATE]  # (369, 384)
    null_class = np.full(len(captions), diffusion.NULL_CLASS, np.int64)
    images = diffusion_images(unet, decoder, null_class, captions, judge.device)
    result = judge.score(images, dataset.labels[dataset.held_out])
    result["caption_template"] = text.CAPTION_TEMPLATES[CAPTION_TEMPLATE]
    return result


def prompt_samples(judge: Judge, unet: diffusion.UNet, decoder: vae.ScaledDecoder) -> tuple[dict, list]:
    """GRID_COLUMNS samples per free-form prompt, text only, and the class the judge sees in each."""
    encoder = text.load_sentence_transformer()
    embeddings = encoder.encode(list(PROMPTS), normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    captions = np.repeat(embeddings, GRID_COLUMNS, axis=0)  # (64, 384), prompt-major
    null_class = np.full(len(captions), diffusion.NULL_CLASS, np.int64)
    images = diffusion_images(unet, decoder, null_class, captions, judge.device)
    predicted = evaluate.predict(judge.classifier, images, judge.device).reshape(len(PROMPTS), GRID_COLUMNS)
    judged = {prompt: {data.GROUPS[c]: int(n) for c, n in zip(*np.unique(row, return_counts=True))}
              for prompt, row in zip(PROMPTS, predicted)}
    return judged, list(images.reshape(len(PROMPTS), GRID_COLUMNS, 32, 32, 3))


def write_grid(rows: list[np.ndarray], path: Path) -> None:
    """Rows of (k, 32, 32, 3) uint8 images on a grey lattice, scaled up GRID_SCALE times."""
    cell = 32 + GUTTER
    columns = max(len(row) for row in rows)
    canvas = np.full((len(rows) * cell + GUTTER, columns * cell + GUTTER, 3), GUTTER_GREY, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas[GUTTER + r * cell:GUTTER + r * cell + 32, GUTTER + c * cell:GUTTER + c * cell + 32] = image
    grid = Image.fromarray(canvas)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.resize((grid.width * GRID_SCALE, grid.height * GRID_SCALE), Image.NEAREST).save(path)
    log.info("wrote %s", path)


def provenance(device: torch.device) -> dict:
    """Command, commit, device and date stamped beside every figure (house rule 18)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "export"):
        commit += " + uncommitted export/ changes"
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        where = f"cpu ({torch.get_num_threads()} threads)"
    return {"command": COMMAND, "commit": commit, "device": f"{where}, torch {torch.__version__}",
            "date": datetime.datetime.now(datetime.UTC).date().isoformat(), "seed": SEED}


def write_manifests(results: dict, evaluated: dict) -> None:
    for name in ("vae", "gmm", "dcgan"):
        manifest.update_metrics(manifest.MODELS_DIR / name, {**results[name], "evaluated": evaluated})
    manifest.update_metrics(manifest.MODELS_DIR / "diffusion", {**results["diffusion"], "evaluated": evaluated,
                                                                "text_conditioned": results["diffusion_text"]})


def evaluate_all(device: str) -> dict:
    """Score every generator, write manifests' metrics, docs/evaluation.json and docs/samples/*.png."""
    started = time.perf_counter()
    torch.set_num_threads(min(torch.get_num_threads(), CPU_THREADS))
    torch_device = training.pick_device(device)
    dataset = data.load()
    judge = make_judge(dataset, torch_device)
    judge_accuracy, judge_balanced = evaluate.held_out_accuracy(judge.classifier, dataset, torch_device)
    modules = {function: module.to(torch_device) for function, module in from_onnx.load_checked().items()}
    encoder, decoder, unet = modules["encode"], modules["decode"], modules["denoise"].unet
    class_ids = training_like_class_ids(dataset, SAMPLES)
    results, grids = {}, {}
    checks = floor_checks(judge, dataset, encoder, decoder)
    results["vae"], grids["vae_reconstructions"] = evaluate_vae(judge, encoder, decoder, dataset)
    results["gmm"], grids["gmm"] = evaluate_gmm(judge, decoder, class_ids)
    results["dcgan"], grids["dcgan"] = evaluate_dcgan(judge, modules["generate"], class_ids)
    results["diffusion"], grids["diffusion"] = evaluate_diffusion(judge, unet, decoder, class_ids)
    results["diffusion_text"] = evaluate_diffusion_text(judge, unet, decoder, dataset)
    prompts_judged, grids["diffusion_text"] = prompt_samples(judge, unet, decoder)
    for name, rows in grids.items():
        write_grid(rows, SAMPLES_DIR / f"{name}.png")
    for name, result in results.items():
        log.info("%s: %s", name, json.dumps(result))
    evaluated = {**provenance(torch_device), "reference": f"held-out split, {int(dataset.held_out.sum())} images",
                 "judge_held_out_accuracy": round(judge_accuracy, 3),
                 "judge_held_out_balanced_accuracy": round(judge_balanced, 3)}
    write_manifests(results, evaluated)
    report = {**evaluated, "judge": judge_training(),
              "runtime_minutes": round((time.perf_counter() - started) / 60.0, 2),
              "sample_counts": f"{SAMPLES} per generator; the held-out split has only {len(judge.reference)}, "
                               "so the reference, VAE reconstructions and text-only samples use all of it",
              "baselines": {str(n): b for n, b in judge.baselines.items()}, "floor_checks": checks,
              "models": results,
              "prompt_samples": {"prompts": list(PROMPTS), "judged_classes": prompts_judged}}
    (DOCS_DIR / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    write_models_doc(report)
    log.info("evaluation done in %.1f min -> %s", report["runtime_minutes"], DOCS_DIR / "evaluation.json")
    return report


def judge_training() -> dict:
    """How the judge was trained, from its checkpoint: it has no manifest."""
    state = training.load_checkpoint("classifier")
    return {"recipe": JUDGE_RECIPE, "steps": state["step"], "minutes": round(state["minutes"], 2),
            "device": state["device"], "seed": state["seed"]}


def rewrite_models_doc() -> Path:
    """docs/MODELS.md again from the committed docs/evaluation.json, without scoring anything."""
    return write_models_doc(json.loads((DOCS_DIR / "evaluation.json").read_text()))


# --- docs/MODELS.md, written from docs/evaluation.json and the manifests so no figure is typed ---

MODELS_DOC = DOCS_DIR / "MODELS.md"
NOTES_MARKER = "<!-- Hand-written below this line: export/report.py keeps it when it rewrites the figures above. -->"
JUDGE_RECIPE = "python -m export train classifier --minutes 12 --seed 0"
TRAINING_DEVICE = "cuda: one NVIDIA H100 lent for the training session"
TARGETS = (  # issue 3, part 6: (label, model, metric, bound, "min" or "max")
    ("class accuracy of class-conditioned diffusion samples", "diffusion", "class_accuracy", 0.5, "min"),
    ("class accuracy of class-conditioned GAN samples", "dcgan", "class_accuracy", 0.5, "min"),
    ("diffusion FID_own within 3x the real-vs-real floor", "diffusion", "fid_over_floor", 3.0, "max"),
)
SECTIONS = (  # model, sample grids under docs/samples/, what the FID row scores
    ("vae", ("vae_reconstructions",), "reconstructions (posterior mean, decoded) of every held-out image. Their "
     "FID_own is against their own originals, so near 0 means faithful and it is not comparable with the floor; "
     "the comparable figure, reconstructions of the floor's training images, is under \"Is the floor a floor?\""),
    ("gmm", ("gmm",), "class-conditioned samples (GMM prior over VAE latents, decoded)"),
    ("dcgan", ("dcgan",), "class-conditioned samples"),
    ("diffusion", ("diffusion", "diffusion_text"),
     f"class-conditioned samples, DDIM {DIFFUSION_STEPS} steps, guidance {GUIDANCE}, decoded by the VAE"),
)


def write_models_doc(report: dict, models_dir: Path = manifest.MODELS_DIR) -> Path:
    """docs/MODELS.md from the report and each model's manifest."""
    manifests = {d.name: manifest.read(d) for d in sorted(models_dir.iterdir()) if (d / manifest.MANIFEST).is_file()}
    lines = ["# Models", "",
             f"Written by `{COMMAND}` (export/report.py) from docs/evaluation.json and models/*/manifest.json;",
             "edit the code, not this file. `python -m export evaluate --doc-only` rewrites it without re-scoring.", "",
             *provenance_lines(report), "", *targets_lines(report), "", *summary_lines(report, manifests), ""]
    for name, grids, scored in SECTIONS:
        lines += model_lines(name, manifests[name], report, grids, scored)
    lines += text_model_lines(manifests["text"]) + floor_check_lines(report) + ["", NOTES_MARKER]
    MODELS_DOC.write_text("\n".join(lines) + hand_written_notes())
    log.info("wrote %s", MODELS_DOC)
    return MODELS_DOC


def hand_written_notes() -> str:
    """What follows NOTES_MARKER in the current docs/MODELS.md (observations no code can make)."""
    previous = MODELS_DOC.read_text() if MODELS_DOC.is_file() else ""
    return previous.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in previous else "\n"


def provenance_lines(report: dict) -> list[str]:
    judge = report["judge"]
    return [
        f"**Evaluation**: `{report['command']}` at commit `{report['commit']}` on {report['device']}, "
        f"{report['date']}, seed {report['seed']}, {report['runtime_minutes']} min. Generators run with the "
        "weights committed under models/, rebuilt in torch from the ONNX graphs (export/from_onnx.py) and "
        f"checked against onnxruntime (max abs diff <= {from_onnx.PARITY_BOUND:g}) before use.",
        "",
        f"**Judge**: export/evaluate.py's classifier, trained by `{judge['recipe']}` "
        f"({judge['steps']} steps, {judge['minutes']:.1f} min on {judge['device']}); held-out accuracy "
        f"{report['judge_held_out_accuracy']:.1%}, balanced {report['judge_held_out_balanced_accuracy']:.1%} "
        "(chance 11 %). It is not committed; the figures below hold for this judge only. FID_own is the Fréchet "
        f"distance between its penultimate features of a set and of the {report['reference']}. FID is biased by "
        "sample count, so each figure sits beside a real-vs-real floor (training images vs held-out) and a "
        "uniform-noise ceiling at the same count. Class ids follow the training split's mix (59 % People & Body), "
        "so balanced accuracy (the mean over classes) is given beside plain accuracy.",
        "",
        "**Training**: every recipe ran for a few minutes on "
        f"{TRAINING_DEVICE} (steps, minutes and device from each manifest's `training` block). The recipes' CPU "
        "wall time for the same step counts is **not measured**.",
    ]


def target_value(report: dict, model: str, metric: str) -> float:
    result = report["models"][model]
    if metric == "fid_over_floor":
        return result["fid_own"] / result["fid_floor"]
    return result[metric]


def targets_lines(report: dict) -> list[str]:
    lines = ["## Targets (issue 3, part 6)", "", "| target | bound | measured | verdict |", "|---|---|---|---|"]
    for label, model, metric, bound, kind in TARGETS:
        value = target_value(report, model, metric)
        met = value >= bound if kind == "min" else value <= bound
        if metric == "class_accuracy":
            shown, gap = f"{value:.1%}", f"{abs(value - bound) * 100:.1f} percentage points"
        else:
            shown, gap = f"{value:.2f}x", f"{abs(value - bound):.2f}x of the floor"
        bound_shown = f"{bound:.0%}" if metric == "class_accuracy" else f"{bound:.1f}x"
        verdict = "met" if met else f"**missed** by {gap}"
        lines.append(f"| {label} | {'>=' if kind == 'min' else '<='} {bound_shown} | {shown} | {verdict} |")
    return lines


def summary_lines(report: dict, manifests: dict) -> list[str]:
    lines = ["## Summary", "", "| model | FID_own | floor | noise ceiling | samples | class accuracy | balanced | "
             "held-out PSNR | parameters | training |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(name, name, report["models"][name]) for name, _, _ in SECTIONS]
    rows.append(("diffusion, text only (held-out captions)", "diffusion", report["models"]["diffusion_text"]))
    for label, model, result in rows:
        block = manifests[model]["training"]
        trained = f"{block['steps']} steps, {block['minutes']} min, {block['device']}" if "steps" in block else "fit"
        psnr = f"{result['held_out_psnr_db']} dB" if "held_out_psnr_db" in result else "–"
        lines.append(f"| {label} | {result['fid_own']:.2f} | {result['fid_floor']:.2f} | {result['fid_noise']:.2f} | "
                     f"{result['samples']} | {result['class_accuracy']:.1%} | {result['class_accuracy_balanced']:.1%} "
                     f"| {psnr} | {manifests[model]['metrics']['parameters']:,} | {trained} |")
    return lines


def model_lines(name: str, entry: dict, report: dict, grids: tuple[str, ...], scored: str) -> list[str]:
    result = report["models"][name]
    lines = [f"## {name}", "", f"Scored: {scored}.", "", "| figure | value |", "|---|---|",
             f"| FID_own ({result['samples']} samples) | {result['fid_own']:.2f} |",
             f"| real-vs-real floor / noise ceiling at {result['samples']} | {result['fid_floor']:.2f} / "
             f"{result['fid_noise']:.2f} |",
             f"| class accuracy, plain / balanced | {result['class_accuracy']:.1%} / "
             f"{result['class_accuracy_balanced']:.1%} |",
             "| per class | " + ", ".join(f"{k} {v:.0%}" for k, v in result["class_accuracy_per_class"].items()) + " |"]
    if "held_out_psnr_db" in result:
        lines.append(f"| held-out PSNR (served encode -> decode) | {result['held_out_psnr_db']} dB |")
    if name == "diffusion":
        text_only = report["models"]["diffusion_text"]
        lines.append(f"| text only, held-out captions as \"{text_only['caption_template']}\": FID_own "
                     f"({text_only['samples']}), accuracy plain / balanced | {text_only['fid_own']:.2f} "
                     f"(floor {text_only['fid_floor']:.2f}), {text_only['class_accuracy']:.1%} / "
                     f"{text_only['class_accuracy_balanced']:.1%} |")
    lines += manifest_rows(entry) + [""]
    for grid in grids:
        lines += [f"![{grid}](samples/{grid}.png)", "", grid_caption(grid, report), ""]
    return lines


def manifest_rows(entry: dict) -> list[str]:
    """Parameters, training and export figures exactly as the manifest records them."""
    training_block, metrics = entry["training"], entry["metrics"]
    rows = [f"| parameters | {metrics['parameters']:,} |", f"| recipe | `{training_block['recipe']}` |"]
    if "steps" in training_block:
        rows.append(f"| trained | {training_block['steps']} steps, {training_block['minutes']} min, "
                    f"device {training_block['device']} |")
    for function, figures in metrics.get("export", {}).items():
        parity = figures["parity_max_abs"]
        rows.append(f"| `{function}` ONNX vs torch, max abs diff (batch 1 / 16) | {parity['batch1']:.1e} / "
                    f"{parity['batch16']:.1e} (`python -m export onnx {entry['name']}`) |")
        fp16 = figures["fp16_max_abs"]
        rows.append(f"| `{function}` fp16 graph vs fp32, max abs diff | {fp16['max_abs']:.1e} "
                    f"({fp16['measured_on']}) |")
    return rows


def grid_caption(grid: str, report: dict) -> str:
    if grid == "vae_reconstructions":
        return f"Rows alternate: {VAE_GRID_IMAGES} held-out originals, then their reconstructions, 8 per row."
    if grid == "diffusion_text":
        judged = report["prompt_samples"]["judged_classes"]
        return "Text only (class = null), one row per prompt, with the classes the judge saw in its 8 samples: " + \
            "; ".join(f"\"{prompt}\" ({', '.join(f'{group} {n}' for group, n in judged[prompt].items())})"
                      for prompt in report["prompt_samples"]["prompts"]) + "."
    return "One row per class, top to bottom: " + ", ".join(data.GROUPS) + "."


def text_model_lines(entry: dict) -> list[str]:
    return ["## text", "", "The prompt encoder: not a generator, so not scored here.", "", "| figure | value |",
            "|---|---|", *manifest_rows(entry), ""]


def floor_check_lines(report: dict) -> list[str]:
    checks = report["floor_checks"]
    return ["## Is the floor a floor?", "",
            "The judge trained on the training split, so its features of those images may sit apart from any "
            "unseen image. Checks from the same run:", "", "| check | FID_own |", "|---|---|",
            f"| held-out half vs the other half ({checks['half_sizes'][0]} / {checks['half_sizes'][1]} images, "
            f"split by base emoji) | {checks['held_out_half_vs_other_half']:.2f} |",
            f"| training images vs that same half | {checks['training_vs_held_out_half']:.2f} |",
            f"| {checks['count']} training originals vs held-out (the floor) | "
            f"{checks['training_originals_vs_held_out']:.2f} |",
            f"| VAE reconstructions of those same originals vs held-out | "
            f"{checks['training_reconstructions_vs_held_out']:.2f} |"]

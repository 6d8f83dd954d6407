"""Specifications of export/: the offline emoji dataset, two-step training and ONNX export of every
family, the registry's sha256 verification, and the wall that keeps torch out of service/.

Training runs on a rendered subset of the dataset, with checkpoints, caches and models under
pytest's tmp_path: the real .cache/ and models/ are only ever read.

    .venv/bin/python -m pytest tests/test_export.py -q --durations=10     # about a minute on 2 cores
"""

import ast
import functools
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export import __main__ as export_cli
from export import data, dcgan, diffusion, from_onnx, gmm, manifest, publish, text, training, vae
from service import registry
from export.onnx import PARITY_BOUND

ROOT = Path(__file__).resolve().parent.parent
EMOJI_SOURCES_MISSING = not (data.FONT_PATH.is_file() and data.EMOJI_TEST_PATH.is_file())
requires_emoji_sources = pytest.mark.skipif(
    EMOJI_SOURCES_MISSING, reason=f"{data.FONT_PATH} or {data.EMOJI_TEST_PATH} missing: `make system-deps`")
# The glyphs of these emoji are round or letterboxed, so the canvas shows at all four corners.
ROUND_GLYPHS = ("grinning face", "red heart", "waving hand: medium skin tone", "flag: Japan")
# A flag, a skin-tone variant and its base, a keycap (VS16 dropped before rendering), a ZWJ family.
SPECIAL_ENTRIES = ROUND_GLYPHS + ("waving hand", "keycap: 1", "chequered flag", "family: man, woman, boy")
# The service's view of each function: docs/INTERFACES.md, "Functions".
INTERFACES = {
    ("vae", "encode"): ({"image": ("float32", ["N", 3, 32, 32])},
                        {"mean": ("float32", ["N", 4, 8, 8]), "logvar": ("float32", ["N", 4, 8, 8])}),
    ("vae", "decode"): ({"latent": ("float32", ["N", 4, 8, 8])}, {"image": ("float32", ["N", 3, 32, 32])}),
    ("dcgan", "generate"): ({"z": ("float32", ["N", 128]), "class_id": ("int64", ["N"])},
                            {"image": ("float32", ["N", 3, 32, 32])}),
    ("diffusion", "denoise"): ({"latent": ("float32", ["N", 4, 8, 8]), "timestep": ("float32", ["N"]),
                                "class_id": ("int64", ["N"]), "text_embedding": ("float32", ["N", 384])},
                               {"eps": ("float32", ["N", 4, 8, 8])}),
}
GRAPH_FAMILIES = ("vae", "dcgan", "diffusion")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def entries() -> list[data.EmojiEntry]:
    if EMOJI_SOURCES_MISSING:
        pytest.skip(f"{data.EMOJI_TEST_PATH} or {data.FONT_PATH} missing: `make system-deps` installs them")
    return data.parse_emoji_test(data.EMOJI_TEST_PATH.read_text(encoding="utf-8"))


def by_name(entries: list[data.EmojiEntry], names: tuple[str, ...]) -> list[data.EmojiEntry]:
    named = {e.name: e for e in entries}
    return [named[name] for name in names]


def training_subset(entries: list[data.EmojiEntry], per_split: int = 3) -> list[data.EmojiEntry]:
    """The first few training and held-out entries of every group: all nine classes, both splits."""
    picked = []
    for group in data.GROUPS:
        members = [e for e in entries if e.group == group]
        picked += [e for e in members if not data.is_held_out(e)][:per_split]
        picked += [e for e in members if data.is_held_out(e)][:per_split]
    return picked


# --- dataset ------------------------------------------------------------------------------------


def test_emoji_test_yields_over_3500_fully_qualified_entries_across_the_nine_groups(entries):
    assert len(entries) > 3500
    assert {e.group for e in entries} == set(data.GROUPS)
    assert len(set(entries)) == len(entries)
    grinning = by_name(entries, ("grinning face",))[0]
    assert (grinning.codepoints, grinning.group) == ((0x1F600,), "Smileys & Emotion")


def test_rendering_a_subset_twice_gives_byte_identical_arrays(entries):
    subset = by_name(entries, SPECIAL_ENTRIES) + entries[::120]  # 8 chosen + 31 spread over the file
    assert len(subset) >= 39
    first, second = data.build(subset), data.build(subset)
    assert set(SPECIAL_ENTRIES) <= set(first.captions)
    for column in ("images32", "images128", "labels", "captions", "held_out"):
        assert getattr(first, column).tobytes() == getattr(second, column).tobytes(), column
    assert first.font_sha256 == second.font_sha256 == data.sha256_file(data.FONT_PATH)


def test_renders_are_uint8_rgb_at_32_and_128_pixels_on_a_white_canvas(entries):
    dataset = data.build(by_name(entries, ROUND_GLYPHS))
    assert dataset.images32.shape == (len(ROUND_GLYPHS), 32, 32, 3)
    assert dataset.images128.shape == (len(ROUND_GLYPHS), 128, 128, 3)
    assert dataset.images32.dtype == dataset.images128.dtype == np.uint8
    for images in (dataset.images32, dataset.images128):
        corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # (N, 4, 3)
        assert np.all(corners == 255), dataset.captions[np.any(corners != 255, axis=(1, 2))]
    japan = list(dataset.captions).index("flag: Japan")
    assert np.all(dataset.images128[japan, :4] == 255)  # a wide flag is letterboxed, not stretched
    assert not np.all(dataset.images32 == 255, axis=(1, 2, 3)).any()  # and every glyph was drawn


def test_skin_tone_variants_share_the_held_out_split_of_their_base_emoji(entries):
    variants: dict[str, list[data.EmojiEntry]] = {}
    for entry in entries:
        variants.setdefault(entry.base_key, []).append(entry)
    toned = {key: group for key, group in variants.items()
             if any(c in data.SKIN_TONES for e in group for c in e.codepoints)}
    assert len(toned) > 100
    assert {len({data.is_held_out(e) for e in group}) for group in toned.values()} == {1}
    assert any(data.is_held_out(group[0]) for group in toned.values())  # the split is not trivial
    waving = by_name(entries, ("waving hand", "waving hand: medium skin tone"))
    assert waving[0].base_key == waving[1].base_key


def test_holds_out_between_7_and_13_percent_of_entries(entries):
    fraction = np.mean([data.is_held_out(e) for e in entries])
    assert 0.07 <= fraction <= 0.13


def test_built_dataset_labels_each_emoji_with_its_group_and_split(entries):
    subset = training_subset(entries)
    dataset = data.build(subset)
    assert len(dataset) >= 0.9 * len(subset)  # only glyphs wider than MAX_ASPECT are left out
    named = {e.name: e for e in subset}
    kept = [named[caption] for caption in dataset.captions]
    assert [data.GROUPS[label] for label in dataset.labels] == [e.group for e in kept]
    assert dataset.held_out.tolist() == [data.is_held_out(e) for e in kept]
    assert dataset.subgroups.tolist() == [e.subgroup for e in kept]


# --- training and export ------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    models_dir: Path
    checkpoint_dir: Path
    dataset: data.EmojiDataset
    states: dict[str, dict]
    manifests: dict[str, dict]


@pytest.fixture(scope="module")
def published(entries, tmp_path_factory) -> Published:
    """Every family trained for 2 steps on a 54-emoji subset and published to a temporary models/.
    Checkpoints, the subset's caption embeddings and the models all stay under tmp_path."""
    root = tmp_path_factory.mktemp("export")
    dataset = data.build(training_subset(entries))
    torch.set_num_threads(2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "CHECKPOINT_DIR", root / "checkpoints")
        patch.setattr(data, "CACHE_DIR", root / "cache")
        patch.setattr(data, "load", lambda cache_dir=None: dataset)
        # 100 x 256 samples re-estimate batch norm after a real run: minutes on a CPU, pointless here
        patch.setattr(dcgan, "recalibrate_batch_norm",
                      functools.partial(dcgan.recalibrate_batch_norm, batches=2, batch=16))
        patch.setattr(dcgan, "IMAGE_WARMUP", 2)
        # the dcgan's second step runs its image-discriminator phase, as a run with --image-from-step 1 would
        states = {name: module.train(steps=2, minutes=5, seed=0, device=CPU, batch=4, **phases)
                  for name, module, phases in (("vae", vae, {}), ("dcgan", dcgan, {"image_from_step": 1}),
                                               ("diffusion", diffusion, {}))}
        mixture = gmm.fit(seed=0, device=CPU)
        models_dir = root / "models"
        manifests = {"vae": publish.publish_vae(models_dir), "dcgan": publish.publish_dcgan(models_dir),
                     "diffusion": publish.publish_diffusion(models_dir),
                     "gmm": publish.publish_gmm(models_dir, mixture)}
    return Published(models_dir, root / "checkpoints", dataset, states, manifests)


def test_each_family_trains_exactly_the_requested_steps_and_records_them(published):
    for name in GRAPH_FAMILIES:
        assert published.states[name]["step"] == 2
        assert (published.checkpoint_dir / f"{name}.pt").is_file()
        record = published.manifests[name]["training"]
        assert (record["steps"], record["seed"], record["device"]) == (2, 0, "cpu")
        assert record["data"]["font_sha256"] == data.sha256_file(data.FONT_PATH)
        assert record["recipe"].startswith(f"python -m export train {name} --seed 0")
    # the GAN trains in bfloat16 autocast and says so; the others train in float32 and record nothing
    assert [published.manifests[name]["training"].get("precision") for name in GRAPH_FAMILIES] == [
        dcgan.PRECISION if name == "dcgan" else None for name in GRAPH_FAMILIES]


@pytest.mark.parametrize("name", GRAPH_FAMILIES)
def test_every_exported_function_records_parity_with_torch_within_1e_3(published, name):
    exported = published.manifests[name]["metrics"]["export"]
    assert set(exported) == set(published.manifests[name]["functions"])
    for function, metrics in exported.items():
        assert set(metrics["parity_max_abs"]) == {"batch1", "batch16"}, function
        assert max(metrics["parity_max_abs"].values()) <= PARITY_BOUND <= 1e-3, function


@pytest.mark.parametrize("name", GRAPH_FAMILIES + ("gmm",))
def test_manifest_lists_every_file_of_its_directory_with_its_sha256(published, name):
    model_dir = published.models_dir / name
    written = manifest.read(model_dir)
    assert written == published.manifests[name]
    on_disk = {p.name for p in model_dir.iterdir()} - {manifest.MANIFEST}
    assert set(written["files"]) == on_disk
    for file_name, sha256 in written["files"].items():
        assert sha256 == hashlib.sha256((model_dir / file_name).read_bytes()).hexdigest(), file_name


@pytest.mark.parametrize("model_function", sorted(INTERFACES), ids="-".join)
def test_manifest_describes_each_function_as_docs_interfaces_does(published, model_function):
    name, function = model_function
    entry = published.manifests[name]["functions"][function]
    inputs, outputs = INTERFACES[model_function]
    assert {io["name"]: (io["dtype"], io["shape"]) for io in entry["inputs"]} == inputs
    assert {io["name"]: (io["dtype"], io["shape"]) for io in entry["outputs"]} == outputs
    assert [io["name"] for io in entry["inputs"]] == list(inputs)  # the order a caller feeds


def manifest_feed(entry: dict, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs built from the manifest alone, as the service builds them: class ids 0..8, t in [0, 1]."""
    feed = {}
    for io in entry["inputs"]:
        shape = (batch, *io["shape"][1:])
        if io["dtype"] == "int64":
            feed[io["name"]] = rng.integers(0, len(data.GROUPS), shape)
        elif io["name"] == "timestep":
            feed[io["name"]] = rng.uniform(0.0, 1.0, shape).astype(np.float32)
        else:
            feed[io["name"]] = rng.standard_normal(shape).astype(np.float32)
    return feed


def torch_function(name: str, function: str) -> torch.nn.Module:
    if name == "vae":
        autoencoder = vae.load_trained()
        return vae.ScaledEncoder(autoencoder) if function == "encode" else vae.ScaledDecoder(autoencoder)
    if name == "dcgan":
        return dcgan.load_trained()
    return diffusion.EpsDenoiser(diffusion.load_trained())


@pytest.mark.parametrize("model_function", sorted(INTERFACES), ids="-".join)
def test_onnx_graph_matches_the_torch_checkpoint_at_a_batch_size_it_was_not_exported_at(
        published, model_function, monkeypatch):
    name, function = model_function
    monkeypatch.setattr(training, "CHECKPOINT_DIR", published.checkpoint_dir)
    entry = published.manifests[name]["functions"][function]
    feed = manifest_feed(entry, batch=3, rng=np.random.Generator(np.random.PCG64(0)))
    session = ort.InferenceSession(str(published.models_dir / name / entry["file"]),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, feed)
    with torch.no_grad():
        want = torch_function(name, function)(*(torch.from_numpy(a) for a in feed.values()))
    want = want if isinstance(want, tuple) else (want,)
    for output, got_array, want_tensor in zip(entry["outputs"], got, want, strict=True):
        assert got_array.shape == (3, *output["shape"][1:])
        np.testing.assert_allclose(got_array, want_tensor.numpy(), rtol=0, atol=PARITY_BOUND)


def test_gmm_prior_has_the_layout_docs_interfaces_describes(published):
    with np.load(published.models_dir / "gmm" / "gmm.npz") as arrays:
        prior = dict(arrays)
    components, rank = len(prior["weights"]), gmm.SETTINGS.rank
    assert prior["means"].shape == (components, 256)
    assert prior["basis"].shape == (components, 256, rank) and prior["basis"].dtype == np.float16
    assert prior["scales"].shape == (components, rank) and np.all(prior["scales"] >= 0)
    basis = prior["basis"].astype(np.float32)
    gram = np.einsum("kir,kis->krs", basis, basis)  # orthonormal directions, up to float16
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(rank), gram.shape), atol=2e-2)
    factors = registry.gmm_factors(prior).astype(np.float64)
    assert factors.shape == (components, 256, 256)
    covariance = factors @ factors.transpose(0, 2, 1)  # what the service samples with
    assert np.all(np.linalg.eigvalsh(covariance)[:, 0] >= 0.9 * float(prior["isotropic"]) ** 2)
    assert prior["component_class"].dtype == np.int64
    assert set(prior["component_class"].tolist()) == set(range(len(data.GROUPS)))
    assert published.manifests["gmm"]["components"] == components


def test_published_registry_passes_verification(published):
    verified = manifest.verify(published.models_dir, required=("vae", "dcgan", "diffusion", "gmm"))
    assert sorted(m["name"] for m in verified) == ["dcgan", "diffusion", "gmm", "vae"]


def test_a_phase_change_is_recorded_in_the_recipe_so_it_reproduces(published):
    assert published.states["dcgan"]["marks"] == {"image_from_step": 1}
    assert published.manifests["dcgan"]["training"]["recipe"].endswith("--steps 2 --minutes 60 --image-from-step 1")
    assert all("--image-from-step" not in published.manifests[name]["training"]["recipe"]
               for name in ("vae", "diffusion"))
    image_disc = dcgan.ImageDiscriminator()
    checkpoint = torch.load(published.checkpoint_dir / "dcgan.pt", map_location="cpu", weights_only=False)
    image_disc.load_state_dict(checkpoint["image_disc"])  # part of the run, so checkpointed and resumed
    assert export_cli.parse(["train", "dcgan", "--image-from-step", "1"]).image_from_step == 1
    assert "from step 1 a second discriminator on decoded images" in published.manifests["dcgan"]["architecture"]


@pytest.fixture
def dcgan_here(published, tmp_path, monkeypatch) -> Path:
    """dcgan.train on the published subset with its checkpoint in tmp_path (returned), a 2-step
    image warm-up and a small batch-norm re-estimation, as the `published` fixture trains."""
    monkeypatch.setattr(dcgan, "IMAGE_WARMUP", 2)
    monkeypatch.setattr(dcgan, "recalibrate_batch_norm",
                        functools.partial(dcgan.recalibrate_batch_norm, batches=2, batch=16))
    monkeypatch.setattr(training, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setattr(data, "load", lambda cache_dir=None: published.dataset)
    return tmp_path


def test_a_run_with_an_image_phase_does_not_resume_without_it(published, dcgan_here):
    shutil.copy(published.checkpoint_dir / "dcgan.pt", dcgan_here / "dcgan.pt")
    with pytest.raises(ValueError, match="resume it with --image-from-step 1,"):
        dcgan.train(steps=3, minutes=5, seed=0, device=CPU, batch=4)  # dropping the phase would not reproduce


def test_a_run_past_the_phase_step_without_it_does_not_resume_into_it(published, dcgan_here):
    state = torch.load(published.checkpoint_dir / "dcgan.pt", map_location="cpu", weights_only=False)
    # at step 2 with no phase recorded: starting it now would record a phase that began at step 1
    torch.save({**state, "marks": {}}, dcgan_here / "dcgan.pt")
    with pytest.raises(ValueError, match="at step 2 has no image discriminator"):
        dcgan.train(steps=3, minutes=5, seed=0, device=CPU, batch=4, image_from_step=1)
    # a checkpoint without a part the recipe asks for came from another recipe: a clear error, not a KeyError
    torch.save({key: value for key, value in state.items() if key not in ("image_disc", "opt_i")},
               dcgan_here / "dcgan.pt")
    with pytest.raises(ValueError, match="dcgan checkpoint has no image_disc, opt_i"):
        dcgan.train(steps=3, minutes=5, seed=0, device=CPU, batch=4, image_from_step=5)


def test_the_image_phase_flag_is_refused_where_it_means_nothing():
    for argv in (["train", "vae", "--image-from-step", "1"], ["train", "dcgan", "--image-from-step", "-1"],
                 ["train", "dcgan", "--image-batch", "16"],  # no image phase to size
                 ["train", "dcgan", "--image-from-step", "1", "--image-batch", "0"],
                 ["train", "dcgan", "--image-from-step", "1", "--image-batch", str(dcgan.BATCH + 1)]):
        with pytest.raises(SystemExit):
            export_cli.parse(argv)
    assert export_cli.parse(["train", "dcgan", "--image-from-step", "1", "--image-batch", "16"]).image_batch == 16


def test_the_image_batch_is_what_the_image_discriminator_sees_and_is_recorded(published, dcgan_here, monkeypatch):
    seen, drawn = [], []

    class Recording(dcgan.ImageDiscriminator):
        def forward(self, x, class_id):
            seen.append((x.shape[0], class_id.clone()))
            return super().forward(x, class_id)

    class Sampler(training.BalancedSampler):
        def __call__(self, count):
            drawn.append(super().__call__(count))
            return drawn[-1]

    monkeypatch.setattr(dcgan, "ImageDiscriminator", Recording)
    monkeypatch.setattr(training, "BalancedSampler", Sampler)
    state = dcgan.train(steps=2, minutes=5, seed=0, device=CPU, batch=4, image_from_step=1, image_batch=2)
    # draws: step 0's batch, two warm-up batches of 2, step 1's batch of 4; the image discriminator
    # scores real and fake of each warm-up batch, then step 1's first 2 (real, fake, the generator's)
    labels = torch.cat([training.training_images(published.dataset, CPU)[1]] * 2)  # images and mirrors
    step_0, warm_0, warm_1, step_1 = drawn
    assert [len(d) for d in drawn] == [4, 2, 2, 4]
    assert not torch.equal(labels[step_1[:2]], labels[step_1[2:]])  # so a wrong slice would show below
    expected = [labels[warm_0]] * 2 + [labels[warm_1]] * 2 + [labels[step_1[:2]]] * 3
    assert [size for size, _ in seen] == [2] * 7
    assert all(torch.equal(got, want) for (_, got), want in zip(seen, expected, strict=True))
    assert state["marks"] == {"image_from_step": 1, "image_batch": 2}
    assert publish.training_record("dcgan", state)["recipe"].endswith("--image-from-step 1 --image-batch 2")
    for image_batch in (None, 3):  # the batch is part of the recipe: resuming with another would not reproduce
        with pytest.raises(ValueError, match="resume it with --image-from-step 1 --image-batch 2,"):
            dcgan.train(steps=3, minutes=5, seed=0, device=CPU, batch=4, image_from_step=1, image_batch=image_batch)
    # a checkpoint from before the option (the phase with the whole batch) does not resume into a smaller one
    torch.save({**torch.load(dcgan_here / "dcgan.pt", weights_only=False), "marks": {"image_from_step": 1}},
               dcgan_here / "dcgan.pt")
    with pytest.raises(ValueError, match="resume it with --image-from-step 1,"):
        dcgan.train(steps=3, minutes=5, seed=0, device=CPU, batch=4, image_from_step=1, image_batch=2)
    for kwargs, message in (({"image_from_step": 1, "image_batch": 5}, "image_batch 5 must lie in 1..4"),
                            ({"image_batch": 2}, "needs image_from_step")):
        with pytest.raises(ValueError, match=message):
            dcgan.train(steps=3, minutes=5, seed=0, device=CPU, batch=4, **kwargs)


def test_the_image_batch_is_free_until_the_phase_begins_and_the_whole_batch_is_the_default(dcgan_here):
    # stopped at the phase's step, before it began: nothing recorded, so any batch may resume it
    assert dcgan.train(steps=1, minutes=5, seed=0, device=CPU, batch=4, image_from_step=1)["marks"] == {}
    state = dcgan.train(steps=2, minutes=5, seed=0, device=CPU, batch=4, image_from_step=1, image_batch=4)
    assert state["marks"] == {"image_from_step": 1}  # the whole batch: the recipe without the flag


def test_the_frozen_decoder_gets_contiguous_latents_in_the_image_phase(dcgan_here, monkeypatch):
    layouts = []

    class Recording(vae.ScaledDecoder):
        def forward(self, latent):
            layouts.append(latent.is_contiguous())
            return super().forward(latent)

    monkeypatch.setattr(vae, "ScaledDecoder", Recording)
    dcgan.train(steps=2, minutes=5, seed=0, device=CPU, batch=4, image_from_step=1)
    # the generator's output is channels-last, where the decoder's group norms are slow (dcgan.contiguous_input)
    assert dcgan.LatentGenerator().to(memory_format=torch.channels_last)(
        torch.randn(2, dcgan.Z_DIM), torch.zeros(2, dtype=torch.long)).is_contiguous() is False
    assert len(layouts) > 3 and all(layouts)  # the real side's rendering, the warm-up and the step


def test_training_resumes_from_its_checkpoint(published, tmp_path, monkeypatch):
    shutil.copy(published.checkpoint_dir / "vae.pt", tmp_path / "vae.pt")
    monkeypatch.setattr(training, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setattr(data, "load", lambda cache_dir=None: published.dataset)
    resumed = vae.train(steps=3, minutes=5, seed=0, device=CPU, batch=4)
    assert resumed["step"] == 3  # one more step, not three
    assert resumed["minutes"] > published.states["vae"]["minutes"]
    assert training.load_checkpoint("vae")["step"] == 3


# --- the committed text encoder -----------------------------------------------------------------


def test_committed_text_encoder_embeds_prompts_as_sentence_transformers_does():
    from tokenizers import Tokenizer

    text_dir = manifest.MODELS_DIR / "text"
    prompts = ["a red heart", "flag: Japan", "a bouquet of flowers on a table at night"]
    tokenizer = Tokenizer.from_file(str(text_dir / "tokenizer.json"))
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(prompts)
    session = ort.InferenceSession(str(text_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                             "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)})[0]
    torch.set_num_threads(2)
    want = text.load_sentence_transformer().encode(prompts, normalize_embeddings=True, convert_to_numpy=True)
    assert got.shape == (3, text.EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    cosine = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert np.all(cosine >= 0.99), cosine


@pytest.fixture(scope="module")
def rebuilt_from_committed_onnx() -> dict[str, torch.nn.Module]:
    torch.set_num_threads(2)
    autoencoder = from_onnx.load_vae()
    return {"generate": from_onnx.load_generator(), "denoise": from_onnx.load_denoiser(),
            "encode": vae.ScaledEncoder(autoencoder), "decode": vae.ScaledDecoder(autoencoder)}


@pytest.mark.parametrize("function", sorted(from_onnx.GRAPHS))
def test_torch_rebuilt_from_a_committed_graph_matches_onnxruntime_within_1e_4(rebuilt_from_committed_onnx,
                                                                              function):
    # batch 3: neither size the graphs were exported at nor the one load_checked checks
    difference = from_onnx.parity(rebuilt_from_committed_onnx[function], function, batch=3)
    assert difference <= from_onnx.PARITY_BOUND == 1e-4, difference


def test_rebuilt_vae_reconstructs_held_out_emoji(entries, rebuilt_from_committed_onnx):
    """Both halves and the latent_scale they share come back: a wrong scale would ruin the PSNR."""
    held_out = data.build(training_subset(entries, per_split=2)).split(held_out=True)  # 18 emoji
    encode, decode = rebuilt_from_committed_onnx["encode"], rebuilt_from_committed_onnx["decode"]
    images = torch.from_numpy(data.to_unit_range(held_out.images32))
    with torch.no_grad():
        reconstructions = decode(encode(images)[0])
    assert vae.psnr(reconstructions, images) > 20.0


# --- verification -------------------------------------------------------------------------------


@pytest.fixture
def models_copy(tmp_path) -> Path:
    """The committed registry, copied so that a test may break it."""
    return Path(shutil.copytree(manifest.MODELS_DIR, tmp_path / "models"))


def flip_one_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))


def test_verify_names_a_tampered_onnx_file(models_copy):
    manifest.verify(models_copy)  # sound before the flip
    flip_one_byte(models_copy / "vae" / "decoder.onnx")
    with pytest.raises(manifest.VerificationError) as raised:
        manifest.verify(models_copy)
    assert f"{models_copy / 'vae' / 'decoder.onnx'}: sha256 differs" in str(raised.value)
    assert "encoder.onnx" not in str(raised.value)


def test_verify_reports_a_missing_file_and_an_unlisted_one_at_once(models_copy):
    (models_copy / "dcgan" / "generator.onnx").unlink()
    (models_copy / "gmm" / "notes.txt").write_text("not part of the model\n")
    with pytest.raises(manifest.VerificationError) as raised:
        manifest.verify(models_copy)
    assert f"{models_copy / 'dcgan' / 'generator.onnx'}: listed in the manifest but missing" in str(raised.value)
    assert f"{models_copy / 'gmm' / 'notes.txt'}: not listed in the manifest" in str(raised.value)


def test_verify_reports_a_required_model_that_is_absent(models_copy):
    shutil.rmtree(models_copy / "gmm")
    with pytest.raises(manifest.VerificationError, match="gmm: required model missing"):
        manifest.verify(models_copy, required=("vae", "gmm"))


def test_verify_refuses_a_registry_over_the_size_budget(models_copy, monkeypatch):
    monkeypatch.setattr(manifest, "SIZE_BUDGET_BYTES", 1024 * 1024)
    with pytest.raises(manifest.VerificationError, match="exceeds the 1 MiB budget"):
        manifest.verify(models_copy)


def run_export_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_verify_cli_accepts_the_committed_models():
    result = run_export_cli("verify", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stderr and "diffusion" in result.stderr


def test_verify_cli_exits_1_naming_a_tampered_file(models_copy):
    # The CLI verifies the models/ beside its package: run a copy of export/ beside the broken copy.
    shutil.copytree(ROOT / "export", models_copy.parent / "export", ignore=shutil.ignore_patterns("__pycache__"))
    flip_one_byte(models_copy / "diffusion" / "denoiser.onnx")
    result = run_export_cli("verify", cwd=models_copy.parent)
    assert result.returncode == 1
    assert f"{models_copy / 'diffusion' / 'denoiser.onnx'}: sha256 differs" in result.stderr


# --- the wall between the two worlds ------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_service_source_never_imports_torch():
    sources = sorted((ROOT / "service").rglob("*.py"))
    assert len(sources) >= 5
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "torch")
                 for p in sources}
    assert {path: found for path, found in offenders.items() if found} == {}


def test_every_service_module_imports_with_torch_blocked():
    program = """
import importlib, json, pkgutil, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import service
names = [m.name for m in pkgutil.walk_packages(service.__path__, "service.")]
for name in names:
    importlib.import_module(name)
print(json.dumps(names))
"""
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"service.samplers", "service.batcher", "service.config", "service.metrics"} <= set(imported)

"""Pipelines in process (no HTTP): seeds, themes, prompts and validation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service import pipelines
from service.config import load_config
from service.engine import Engine
from service.errors import InvalidInput, ModelNotFound
from service.registry import Registry


@pytest.fixture(scope="module")
def engine():
    engine = Engine(Registry.load(load_config({})), load_config({}))
    yield engine


def run(coroutine):
    return asyncio.run(coroutine)


def test_emoji_in_prompts_become_their_names():
    assert pipelines.prompt_text("❤️ city") == "red heart city"
    assert pipelines.prompt_text("a 🐱  on 🍕") == "a cat face on pizza"


@pytest.mark.parametrize("prompt, group", [("a cat", "Animals & Nature"), ("pizza", "Food & Drink"),
                                           ("a future city", "Travel & Places"), ("a red heart", "Smileys & Emotion"), ("flag: Japan", "Flags"),
                                           ("grinning face", "Smileys & Emotion")])
def test_a_text_theme_picks_the_nearest_class_for_class_only_models(engine, prompt, group):
    classes = engine.manifest("dcgan").classes
    assert classes[run(pipelines.theme_class(engine, prompt))] == group


def test_image_i_of_a_request_is_the_request_with_seed_plus_i(engine):
    together = run(pipelines.generate(engine, pipelines.GenerateRequest(model="gmm", n=4, seed=20, class_id=3)))
    alone = run(pipelines.generate(engine, pipelines.GenerateRequest(model="gmm", n=1, seed=22, class_id=3)))
    assert together.seeds == [20, 21, 22, 23]
    assert np.abs(together.images[2].astype(int) - alone.images[0].astype(int)).max() <= 2


def test_without_class_or_prompt_the_class_is_drawn_from_the_seed(engine):
    first = run(pipelines.generate(engine, pipelines.GenerateRequest(model="dcgan", n=8, seed=5)))
    second = run(pipelines.generate(engine, pipelines.GenerateRequest(model="dcgan", n=8, seed=5)))
    assert first.class_ids == second.class_ids and len(set(first.class_ids)) > 1
    assert np.array_equal(first.images, second.images)


@pytest.mark.parametrize("request_, error", [
    (pipelines.GenerateRequest(model="midjourney"), ModelNotFound),
    (pipelines.GenerateRequest(model="dcgan", n=17), InvalidInput),
    (pipelines.GenerateRequest(model="dcgan", seed=-1), InvalidInput),
    (pipelines.GenerateRequest(model="dcgan", class_id=9), InvalidInput),
    (pipelines.GenerateRequest(model="diffusion", steps=0), InvalidInput),
    (pipelines.GenerateRequest(model="diffusion", sampler="plms"), InvalidInput),
    (pipelines.GenerateRequest(model="diffusion", prompt=""), InvalidInput),
])
def test_every_transport_shares_one_validation(engine, request_, error):
    with pytest.raises(error):
        run(pipelines.generate(engine, request_))

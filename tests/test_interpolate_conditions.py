"""Diffusion interpolation between two conditions (issue 21, item 1), in process against the real Engine: the
frames between two classes or two prompts blend the condition as well as the initial noise, while frame 0 and
K-1 stay the endpoints' own generations byte for byte; blends are refused where they mean nothing.
(The route, /v1/interpolate with `classes`/`prompts`, is tested on a server in tests/test_creative_api.py.)

    .venv/bin/python -m pytest tests/test_interpolate_conditions.py -q -s   # -s prints the step figures
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from harness import in_process
from harness.in_process import generate_all, run
from service import creative, pipelines
from service.errors import InvalidInput

GenerateRequest = pipelines.GenerateRequest
STEPS = 8
PAIRS = {"classes": ({"class_id": 2}, {"class_id": 3}),
         "prompts": ({"prompt": "a red heart"}, {"prompt": "a green tree"}),
         "class to prompt": ({"class_id": 2}, {"prompt": "a green tree"})}


@pytest.fixture(scope="module")
def engine():
    with in_process.engine() as running:
        yield running


def endpoints(pair: str, seeds=(3, 9)) -> tuple[GenerateRequest, GenerateRequest]:
    a, b = PAIRS[pair]
    return (GenerateRequest(model="diffusion", seed=seeds[0], steps=STEPS, **a),
            GenerateRequest(model="diffusion", seed=seeds[1], steps=STEPS, **b))


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_endpoints_are_their_own_generations_and_the_frames_between_blend_both_conditions(engine, pair):
    start, end = endpoints(pair)
    frames = run(creative.interpolation_frames(engine, start, end, 6))
    assert frames[0] is start and frames[-1] is end  # the endpoints' requests, unchanged
    assert [frame.blend.weight for frame in frames[1:-1]] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert all(frame.class_id is None and frame.prompt is None for frame in frames[1:-1])
    results = run(creative.run_interpolation(frames, lambda rows: generate_all(engine, rows)))
    alone = run(pipelines.generate(engine, start)), run(pipelines.generate(engine, end))
    assert results[0].images.tobytes() == alone[0].images.tobytes()
    assert results[-1].images.tobytes() == alone[1].images.tobytes()
    images = np.stack([result.images[0] for result in results]).astype(np.float32)
    for middle in images[1:-1]:  # each frame between is an image of its own, not a copy of an endpoint
        assert np.abs(middle - images[0]).mean() > 1.0 and np.abs(middle - images[-1]).mean() > 1.0
    steps = np.abs(np.diff(images, axis=0)).mean(axis=(1, 2, 3))
    print(f"\n{pair}: step distance mean {steps.mean():.2f}, max/mean {steps.max() / steps.mean():.2f}")
    assert results[2].parameters["blend"] == {"class_ids": [start.class_id, end.class_id],
                                              "prompts": [start.prompt, end.prompt], "weight": pytest.approx(0.4)}


def test_the_condition_moves_the_frames_not_only_the_noise(engine):
    """With both endpoints on one seed the noise does not move: the frames between differ only by their
    condition, and move step by step from one endpoint's image to the other's."""
    start, end = endpoints("prompts", seeds=(5, 5))
    results = run(creative.run_interpolation(run(creative.interpolation_frames(engine, start, end, 5)),
                                             lambda rows: generate_all(engine, rows)))
    images = np.stack([result.images[0] for result in results]).astype(np.float32)
    to_end = [np.abs(image - images[-1]).mean() for image in images]
    assert to_end[0] > to_end[2] > to_end[-1] == 0  # nearer the second prompt's image half way than at the start


def test_one_condition_is_not_blended(engine):
    start, end = endpoints("prompts")
    frames = run(creative.interpolation_frames(engine, start, replace(end, prompt=start.prompt), 5))
    assert all(frame.blend is None and frame.prompt == start.prompt for frame in frames)


def test_two_class_frames_plan_and_run_two_conditional_rows_a_step(engine):
    start, end = endpoints("classes")
    middle = run(creative.interpolation_frames(engine, start, end, 6))[1:-1]
    assert pipelines.planned_rows(middle[0])["diffusion.denoise"] == (STEPS * 4, 4)  # 2 classes x (cond + uncond)
    prompts = run(creative.interpolation_frames(engine, *endpoints("prompts"), 6))[1:-1]
    assert pipelines.planned_rows(prompts[0])["diffusion.denoise"] == (STEPS * 2, 2)  # one class: as a plain image
    runs_before = engine.batchers["diffusion.denoise"].runs
    run(generate_all(engine, middle))
    assert engine.batchers["diffusion.denoise"].runs - runs_before < 2 * STEPS  # 4 frames share each step's runs


def test_a_frame_between_two_conditions_has_no_genome(engine):
    middle = run(creative.interpolation_frames(engine, *endpoints("classes"), 4))[1]
    with pytest.raises(InvalidInput, match="no genome"):
        creative.genome_of(middle, "1.0.0")


def test_blends_are_refused_where_they_mean_nothing(engine):
    blend = run(creative.interpolation_frames(engine, *endpoints("classes"), 4))[1].blend
    frame = GenerateRequest(model="diffusion", seed=1, blend=blend)
    pipelines.validate(engine, frame)
    for refused, message in [(replace(frame, model="dcgan"), "only diffusion"),
                             (replace(frame, class_id=1), "replaces the request's class"),
                             (replace(frame, blend=replace(blend, weight=1.5)), "weight must be 0..1"),
                             (replace(frame, blend=replace(blend, class_ids=(2, 9))), "classes must be 0..8"),
                             (replace(frame, blend=replace(blend, text_embedding=np.zeros(3, np.float32))), "shape")]:
        with pytest.raises(InvalidInput, match=message):
            pipelines.validate(engine, refused)

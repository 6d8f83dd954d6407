"""Genome and session tokens (service/genomes.py): exact round trips, and every kind of bad token refused
with InvalidInput (400) naming the check it failed.

    .venv/bin/python -m pytest tests/test_genomes.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from service import rules
from service.config import load_config
from service.errors import InvalidInput
from service.genomes import Genome, Signer, open_genome, seal_genome

SIGNER = Signer(b"a test key")
NOISE = np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float32)


def test_a_genome_round_trips_exactly_with_its_vector():
    genome = Genome(model="diffusion", version="1.0.0", seed=7, class_id=3, prompt="a red heart", steps=12,
                    guidance=2.5, sampler="euler", eta=0.0, noise=NOISE)
    opened = open_genome(SIGNER, seal_genome(SIGNER, genome))
    assert opened.noise.tobytes() == NOISE.tobytes()
    assert opened == Genome(**{**genome.__dict__, "noise": opened.noise})


def test_a_seed_genome_is_short_and_has_no_vector():
    token = seal_genome(SIGNER, Genome(model="dcgan", version="1.0.0", seed=5))
    assert token.startswith("g1.") and len(token) < 200
    assert open_genome(SIGNER, token).noise is None


def tampered(token: str) -> str:
    prefix, body, mac = token.split(".")
    middle = len(body) // 2
    return f"{prefix}.{body[:middle]}{'A' if body[middle] != 'A' else 'B'}{body[middle + 1:]}.{mac}"


@pytest.mark.parametrize("make_token, message", [
    (lambda token: tampered(token), "signature does not match"),
    (lambda token: seal_genome(Signer(b"another key"), Genome(model="dcgan", version="1.0.0", seed=5)),
     "signed with another server's key"),
    (lambda token: token.replace("g1.", "g2.", 1), "format '2' is not supported"),
    (lambda token: SIGNER.seal("s", {"round": 0}), "expected a genome token, got a session token"),
    (lambda token: "not a token", "malformed genome token"),
    (lambda token: "", "1..8192 characters"),
    (lambda token: "g1." + "A" * rules.MAX_TOKEN_CHARS, "1..8192 characters"),
])
def test_bad_tokens_are_refused_by_name(make_token, message):
    token = seal_genome(SIGNER, Genome(model="dcgan", version="1.0.0", seed=5, noise=NOISE[0, 0]))
    with pytest.raises(InvalidInput, match=message):
        open_genome(SIGNER, make_token(token))


def test_a_payload_signed_but_unreadable_is_a_clear_400():
    with pytest.raises(InvalidInput, match="unreadable genome token payload"):
        open_genome(SIGNER, SIGNER.seal("g", {"model": "dcgan"}))


def test_without_a_key_each_process_signs_with_its_own_random_key():
    first, second = Signer.from_key(None), Signer.from_key(None)
    token = seal_genome(first, Genome(model="dcgan", version="1.0.0", seed=5))
    with pytest.raises(InvalidInput):
        open_genome(second, token)
    assert open_genome(Signer.from_key("k"), seal_genome(Signer.from_key("k"), Genome("dcgan", "1", 5))).seed == 5


def test_the_genome_key_is_read_once_and_kept_out_of_repr():
    config = load_config({"ATELIER_GENOME_KEY": "hunter2"})
    assert config.genome_key == "hunter2" and "hunter2" not in repr(config)
    assert load_config({}).genome_key is None

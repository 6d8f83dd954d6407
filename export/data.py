"""The offline training set: every fully-qualified emoji of Noto Color Emoji, rendered locally.

Sources (Debian packages, nothing is downloaded):
  fonts-noto-color-emoji  /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf  (SIL OFL 1.1)
  unicode-data            /usr/share/unicode/emoji/emoji-test.txt            (names, groups)

Each emoji is rendered at the font's only bitmap size (109 px), cropped to its alpha box,
centred on a square white canvas and resized to 128x128 (kept for super-resolution) and
32x32 (what the generators learn). Class = Unicode emoji group, caption = CLDR name.
The held-out split is chosen by *base* emoji (skin-tone modifiers removed), so that the five
skin-tone variants of one emoji never sit on both sides of the split.

    python -m export data          # build (or reuse) the cache and print a summary
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.manifest import sha256_file

log = logging.getLogger(__name__)

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST_PATH = Path("/usr/share/unicode/emoji/emoji-test.txt")
DATA_SOURCE = "Debian fonts-noto-color-emoji (NotoColorEmoji.ttf, SIL OFL 1.1) + unicode-data emoji-test.txt"
DATA_LICENSE = "SIL Open Font License 1.1 (Noto Color Emoji glyphs); Unicode License v3 (emoji-test.txt)"
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache"
FORMAT_VERSION = 2  # bump when rendering changes, so stale caches are rebuilt

# Unicode's group order; the class id is the index. "Component" entries are never fully-qualified.
GROUPS = (
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
)
FONT_SIZE = 109  # the only strike in Noto Color Emoji's CBDT table
BACKGROUND = (255, 255, 255)  # a fixed white canvas: emoji are designed to sit on light backgrounds
SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}
VARIATION_SELECTOR_16 = 0xFE0F  # absent from the font's cmap; the glyph renders without it
HELD_OUT_PERCENT = 10
MAX_ASPECT = 1.6  # wider than this = an unsupported ZWJ sequence drawn as several glyphs (flags are ~1.34)


@dataclass(frozen=True)
class EmojiEntry:
    codepoints: tuple[int, ...]
    name: str
    group: str
    subgroup: str

    @property
    def base_key(self) -> str:
        """The emoji without skin tones: variants of one emoji share a split."""
        return "-".join(f"{c:X}" for c in self.codepoints if c not in SKIN_TONES)


@dataclass(frozen=True)
class EmojiDataset:
    images32: np.ndarray  # (N, 32, 32, 3) uint8
    images128: np.ndarray  # (N, 128, 128, 3) uint8
    labels: np.ndarray  # (N,) int64, index into GROUPS
    captions: np.ndarray  # (N,) str, CLDR name
    subgroups: np.ndarray  # (N,) str
    held_out: np.ndarray  # (N,) bool
    font_sha256: str

    def split(self, held_out: bool) -> "EmojiDataset":
        keep = self.held_out == held_out
        images128 = self.images128[keep] if len(self.images128) else self.images128
        return EmojiDataset(self.images32[keep], images128, self.labels[keep],
                            self.captions[keep], self.subgroups[keep], self.held_out[keep],
                            self.font_sha256)

    def __len__(self) -> int:
        return len(self.labels)


def parse_emoji_test(text: str) -> list[EmojiEntry]:
    """Fully-qualified entries of emoji-test.txt with their group and subgroup."""
    entries, group, subgroup = [], "", ""
    for line in text.splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line and group in GROUPS:
            points, rest = line.split(";", 1)
            # "# 😀 E1.0 grinning face": the name follows the emoji version token
            name = rest.split("#", 1)[1].strip().split(" ", 2)[2]
            codepoints = tuple(int(p, 16) for p in points.split())
            entries.append(EmojiEntry(codepoints, name, group, subgroup))
    return entries


def render(entry: EmojiEntry, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """One emoji centred on a white square, or None when the font draws it as several glyphs."""
    text = "".join(chr(c) for c in entry.codepoints if c != VARIATION_SELECTOR_16)
    canvas = Image.new("RGBA", (FONT_SIZE * 3, FONT_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((8, 8), text, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    if glyph.width > glyph.height * MAX_ASPECT:
        return None
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), BACKGROUND + (255,))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB")


def is_held_out(entry: EmojiEntry) -> bool:
    """A stable 10 % of base emoji, chosen by hash so the split never depends on file order."""
    digest = hashlib.sha256(entry.base_key.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def build(entries: list[EmojiEntry], font_path: Path = FONT_PATH) -> EmojiDataset:
    font = ImageFont.truetype(str(font_path), size=FONT_SIZE)
    images32, images128, kept = [], [], []
    for entry in entries:
        image = render(entry, font)
        if image is None:
            continue
        images128.append(np.asarray(image.resize((128, 128), Image.LANCZOS)))
        # a box filter from 128 px averages whole pixels: no ringing at 32 px
        images32.append(np.asarray(image.resize((128, 128), Image.LANCZOS).resize((32, 32), Image.BOX)))
        kept.append(entry)
    return EmojiDataset(
        images32=np.stack(images32),
        images128=np.stack(images128),
        labels=np.array([GROUPS.index(e.group) for e in kept], dtype=np.int64),
        captions=np.array([e.name for e in kept]),
        subgroups=np.array([e.subgroup for e in kept]),
        held_out=np.array([is_held_out(e) for e in kept]),
        font_sha256=sha256_file(font_path),
    )


def load(cache_dir: Path = CACHE_DIR) -> EmojiDataset:
    """The full dataset, rendered once and cached as one .npz keyed by the font's sha256.
    Without the font (a training machine that only received the cache) the cache is used as is."""
    if not FONT_PATH.exists():
        return read_cache(next(cache_dir.glob(f"emoji-v{FORMAT_VERSION}-*.npz")))
    font_sha = sha256_file(FONT_PATH)
    cache = cache_dir / f"emoji-v{FORMAT_VERSION}-{font_sha[:12]}.npz"
    if not cache.exists():
        started = time.perf_counter()
        dataset = build(parse_emoji_test(EMOJI_TEST_PATH.read_text(encoding="utf-8")))
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache.with_suffix(".tmp.npz"), images32=dataset.images32,
                            images128=dataset.images128, labels=dataset.labels,
                            captions=dataset.captions, subgroups=dataset.subgroups,
                            held_out=dataset.held_out, font_sha256=np.array(font_sha))
        cache.with_suffix(".tmp.npz").rename(cache)
        log.info("rendered %d emoji in %.1f s -> %s", len(dataset), time.perf_counter() - started, cache)
    return read_cache(cache)


def read_cache(cache: Path) -> EmojiDataset:
    with np.load(cache) as arrays:
        # a cache shipped to a training machine may leave out the 128 px renders
        images128 = arrays["images128"] if "images128" in arrays else np.zeros((0, 128, 128, 3), np.uint8)
        return EmojiDataset(arrays["images32"], images128, arrays["labels"], arrays["captions"],
                            arrays["subgroups"], arrays["held_out"], str(arrays["font_sha256"]))


def data_record() -> dict:
    """What a manifest says about the data a model was trained on."""
    return {"source": DATA_SOURCE, "font_sha256": sha256_file(FONT_PATH),
            "emoji_test_sha256": sha256_file(EMOJI_TEST_PATH), "license": DATA_LICENSE}


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1], the generators' image space."""
    return (images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5) - 1.0

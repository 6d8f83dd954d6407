"""Uploaded images and masks: decoded onto the training canvas at 32×32, hostile uploads refused
with a 400 before any pixel is decoded.

    .venv/bin/python -m pytest tests/test_uploads.py -q
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service import uploads
from service.errors import InvalidInput


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header that declares width × height pixels, with almost no data behind it."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_any_size_image_becomes_32_by_32_rgb_uint8():
    decoded = uploads.decode_image(png(Image.new("RGB", (200, 120), (200, 30, 30))))
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    assert tuple(decoded[16, 16]) == (200, 30, 30)  # the centre keeps its colour
    assert tuple(decoded[0, 16]) == (255, 255, 255)  # a wide image is padded with the white canvas


def test_transparent_pixels_become_the_white_training_canvas():
    decoded = uploads.decode_image(png(Image.new("RGBA", (64, 64), (0, 0, 0, 0))))
    assert (decoded == 255).all()


def test_mask_marks_transparent_pixels_for_repainting():
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half transparent: repaint it
    repaint = uploads.decode_edit(png(Image.new("RGB", (64, 64))), png(mask)).mask
    assert repaint.shape == (32, 32) and repaint[:, :16].all() and not repaint[:, 16:].any()


def test_mask_without_alpha_is_refused_with_a_reason():
    with pytest.raises(InvalidInput, match="alpha channel"):
        uploads.decode_edit(png(Image.new("RGB", (8, 8))), png(Image.new("RGB", (8, 8))))


def test_mask_of_another_size_is_refused():
    with pytest.raises(InvalidInput, match="8x8 but the image is 16x16"):
        uploads.decode_edit(png(Image.new("RGB", (16, 16))), png(Image.new("RGBA", (8, 8))))


@pytest.mark.parametrize("side", [5_000, 50_000])  # past our limit; past Pillow's own bomb limit too
def test_decompression_bomb_is_refused_from_its_header(side):
    with pytest.raises(InvalidInput, match="declares"):
        uploads.decode_image(bomb_png(side, side))


@pytest.mark.parametrize("payload,reason", [(b"", "empty"), (b"GIF89a not really", "not a PNG"),
                                            (b"x" * (uploads.MAX_UPLOAD_BYTES + 1), "limit is")])
def test_empty_foreign_or_oversized_upload_is_refused(payload, reason):
    with pytest.raises(InvalidInput, match=reason):
        uploads.decode_image(payload)


@pytest.mark.parametrize("kind", ["TIFF", "BMP", "GIF", "ICO"])
def test_formats_beyond_png_jpeg_and_webp_are_refused(kind):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format=kind)
    with pytest.raises(InvalidInput, match="not a PNG, JPEG or WebP"):
        uploads.decode_image(buffer.getvalue())


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_are_accepted(kind):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format=kind)
    assert uploads.decode_image(buffer.getvalue()).shape == (32, 32, 3)


def test_truncated_image_is_refused():
    with pytest.raises(InvalidInput, match="truncated or corrupt|not a PNG"):
        uploads.decode_image(png(Image.new("RGB", (64, 64), (1, 2, 3)))[:60])


# --- a JPEG larger than the models need decodes at a reduced scale (issue 17) --------------------------

def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def drawing(size: tuple[int, int]) -> Image.Image:
    """A smooth gradient with a few filled shapes: a photo's and a sketch's features, at any size."""
    from PIL import ImageDraw

    width, height = size
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    image = Image.fromarray((np.dstack([x, y, 1 - x]) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 8, height // 8, width // 2, height // 2), fill=(220, 30, 40))
    draw.rectangle((width // 2, height // 2, 7 * width // 8, 7 * height // 8), fill=(30, 60, 210))
    return image


def recorded_decode_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The size of each image as decoded, before it is reduced to the model's input: appended per decode."""
    sizes = []
    real_model_input = uploads._model_input
    monkeypatch.setattr(uploads, "_model_input",
                        lambda image, turn: sizes.append(image.size) or real_model_input(image, turn))
    return sizes


@pytest.mark.parametrize("options", [{}, {"progressive": True}], ids=["baseline", "progressive"])
def test_a_large_jpeg_is_decoded_at_reduced_scale_with_the_same_result(options, monkeypatch):
    payload = jpeg(drawing((4096, 3072)), **options)
    full = uploads._model_input(uploads._open(payload, "image"), None)  # every pixel decoded, then reduced
    decoded_sizes = recorded_decode_sizes(monkeypatch)
    edit = uploads.decode_edit(payload, None)
    assert edit.size == (4096, 3072)  # the upload's own size, for the answer's aspect and the mask's check
    assert decoded_sizes == [(512, 384)]  # libjpeg's 1/8 scale: never below PREPARED_SIDE on the longer side
    difference = np.abs(edit.image.astype(int) - full.astype(int))
    assert difference.mean() < 0.5 and difference.max() <= 2, (difference.mean(), difference.max())  # measured: 0.10, 1


def test_a_small_jpeg_and_other_formats_decode_at_full_size(monkeypatch):
    decoded_sizes = recorded_decode_sizes(monkeypatch)
    uploads.decode_edit(jpeg(drawing((300, 200))), None)
    uploads.decode_edit(png(drawing((1024, 1024))), None)
    assert decoded_sizes == [(300, 200), (1024, 1024)]


def test_a_mask_is_checked_against_the_size_of_a_jpeg_decoded_smaller():
    mask = Image.new("RGBA", (1024, 768), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 512, 768))  # the left half repainted
    edit = uploads.decode_edit(jpeg(drawing((1024, 768))), png(mask))
    # the square padding (rows 0-3 and 28-31) is kept, like the image's
    assert edit.size == (1024, 768) and edit.mask[5:27, :14].all() and not edit.mask[:, 18:].any()
    with pytest.raises(InvalidInput, match="mask is 1024x768 but the image is 1000x768"):
        uploads.decode_edit(jpeg(drawing((1000, 768))), png(mask))


def test_the_scan_bound_holds_for_a_jpeg_decoded_smaller():
    from tests.test_hardening import progressive_jpeg

    with pytest.raises(InvalidInput, match=f"JPEG of {uploads.MAX_JPEG_SCANS + 1} scans"):
        uploads.decode_edit(progressive_jpeg(2048, uploads.MAX_JPEG_SCANS + 1), None)


def test_a_16_bit_grey_upload_keeps_its_grey_for_the_model():
    """Pillow would clip 16-bit values at 255 in any conversion: a mid-grey image would reach the model white."""
    mid_grey = png(Image.fromarray(np.full((48, 48), 30000, np.uint16)))  # square: no white padding
    assert abs(uploads.decode_image(mid_grey).mean() - 30000 / 257) < 1


def sideways(image: Image.Image, orientation: int, image_format: str = "JPEG") -> bytes:
    """`image` stored as a phone stores it: pixels turned, an EXIF orientation saying how to turn them back."""
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
            8: Image.Transpose.ROTATE_270}[orientation]
    stored = image.transpose(undo)
    exif = stored.getexif()
    exif[uploads.EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    quality = {"quality": 90} if image_format == "JPEG" else {}
    stored.save(buffer, format=image_format, exif=exif.tobytes(), **quality)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_photo_stored_sideways_reaches_the_model_upright(orientation):
    """A phone stores a portrait photo's pixels sideways and says so in EXIF: the model, the answer's aspect
    and the mask check all see the photo as a viewer shows it, the same as the photo stored upright."""
    photo = drawing((120, 80))
    upright = uploads.decode_edit(jpeg(photo), None)
    turned = uploads.decode_edit(sideways(photo, orientation), None)
    assert turned.size == upright.size == (120, 80)
    difference = np.abs(turned.image.astype(int) - upright.image.astype(int))
    assert difference.mean() < 3, difference.mean()  # JPEG noise only; turned wrongly, 87 (180°) or 95 (90°)
    assert np.abs(uploads.decode_image(sideways(photo, orientation)).astype(int) - upright.image).mean() < 3
    # a PNG says it too, and a 16-bit grey one keeps it through the conversion to 8 bits
    as_png = uploads.decode_edit(sideways(photo, orientation, image_format="PNG"), None)
    assert as_png.size == (120, 80) and np.abs(as_png.image.astype(int) - upright.image).mean() < 3
    grey = Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 257))
    grey_upright = uploads.decode_image(png(grey)).astype(int)
    grey_turned = uploads.decode_image(sideways(grey, orientation, image_format="PNG")).astype(int)
    assert np.abs(grey_turned - grey_upright).mean() < 1


def test_a_large_photo_stored_sideways_is_decoded_at_reduced_scale_and_upright(monkeypatch):
    """The EXIF orientation survives libjpeg's reduced-scale decoding (`_drafted`)."""
    photo = drawing((2048, 1536))
    decoded_sizes = recorded_decode_sizes(monkeypatch)
    upright, turned = uploads.decode_edit(jpeg(photo), None), uploads.decode_edit(sideways(photo, 6), None)
    assert decoded_sizes == [(256, 192), (192, 256)]  # 1/8 scale, the second one stored sideways
    assert turned.size == upright.size == (2048, 1536)
    assert np.abs(turned.image.astype(int) - upright.image.astype(int)).mean() < 3


def test_a_mask_is_compared_with_the_image_as_it_is_shown():
    """Image and mask are each turned upright by their own EXIF orientation; a mask of the stored, sideways
    size is refused with a reason, and an upright mask marks the same pixels whichever way the image is
    stored."""
    photo = drawing((120, 80))
    mask = Image.new("RGBA", (120, 80), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 60, 80))  # the left half repainted
    upright = uploads.decode_edit(jpeg(photo), png(mask))
    stored_sideways = uploads.decode_edit(sideways(photo, 6), png(mask))
    mask_sideways_too = uploads.decode_edit(sideways(photo, 6), sideways(mask, 6, image_format="PNG"))
    assert upright.mask[10:22, :14].all() and not upright.mask[:, 18:].any()
    assert np.array_equal(stored_sideways.mask, upright.mask)
    assert np.array_equal(mask_sideways_too.mask, upright.mask)
    with pytest.raises(InvalidInput, match="mask is 80x120 but the image is 120x80 .*EXIF orientation"):
        uploads.decode_edit(sideways(photo, 6), png(mask.transpose(Image.Transpose.ROTATE_90)))

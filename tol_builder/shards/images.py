"""The training image of a sample: the stored JPEG brought to shards.image_size, encoded with fixed settings.

Owns the pixel rules of the shards only (fetch/imaging.py owns decoding, orientation and the stored copy;
every stored JPEG is already an upright RGB JPEG). Modes:

* `squash` (BioCLIP): resize to size x size, ignoring the aspect ratio;
* `keep_ratio`: resize the longer side to size, pad the rest with `pad_colour`, the image centred;
* `center_crop`: resize the shorter side to size, cut the centre square.

Determinism: the same bytes in give the same bytes out: a JPEG decoded at a fixed DCT reduction (the largest
that keeps both sides >= image_size), Pillow's resize with a fixed filter, then one JPEG
encoder call with every setting fixed (quality, 4:2:0 subsampling, baseline, no optimisation, no EXIF/ICC).
A stored JPEG that is already size x size (squash / crop) is written as it is: re-encoding it would only lose
quality, and it is what lets the writer keep up when fetch already stored the training size (bench).
"""

from __future__ import annotations

import io

from PIL import Image

from ..fetch.imaging import STORE_FILTERS, STORE_REDUCING_GAP

JPEG_SETTINGS = {"subsampling": 2, "optimize": False, "progressive": False}  # with quality: the whole encoder setup


class ShardImageError(Exception):
    """A stored JPEG that cannot be decoded (the fetch stage checked it: this means a damaged media file)."""


def _geometry(w: int, h: int, size: int, mode: str) -> tuple[tuple[int, int], tuple[int, int, int, int] | None,
                                                              tuple[int, int] | None]:
    """(resized size, crop box in the resized image or None, paste offset for padding or None)."""
    if mode == "squash":
        return (size, size), None, None
    if mode == "keep_ratio":
        scale = size / max(w, h)
        rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
        return (rw, rh), None, ((size - rw) // 2, (size - rh) // 2)
    scale = size / min(w, h)  # center_crop
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (rw - size) // 2, (rh - size) // 2
    return (rw, rh), (left, top, left + size, top + size), None


def training_jpeg(data: bytes, size: int, mode: str = "squash", resize_filter: str = "bicubic",
                  quality: int = 95, pad_colour: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """The sample's .jpg from a stored JPEG (see the module docstring)."""
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if (w, h) == (size, size) and img.format == "JPEG" and img.mode == "RGB":
            return data  # already the training image: kept byte for byte
        if img.format == "JPEG":
            # decode at the largest DCT reduction (1/2, 1/4, 1/8) that keeps both sides >= size, which every
            # mode needs; the filter then does the rest. A 720 x 540 stored copy to 224: 7.5 -> 4.9 ms
            img.draft("RGB", (size, size))
        img.load()
    except Exception as e:
        raise ShardImageError(f"{type(e).__name__}: {e}") from None
    if img.mode != "RGB":
        img = img.convert("RGB")
    resized, crop, paste = _geometry(*img.size, size, mode)  # a reduced decode keeps the aspect ratio
    if resized != img.size:
        img = img.resize(resized, STORE_FILTERS[resize_filter], reducing_gap=STORE_REDUCING_GAP)
    if crop is not None:
        img = img.crop(crop)
    if paste is not None:
        canvas = Image.new("RGB", (size, size), tuple(pad_colour))
        canvas.paste(img, paste)
        img = canvas
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **JPEG_SETTINGS)
    return buf.getvalue()

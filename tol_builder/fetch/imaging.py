"""Image processing, once per image: decode, orient, RGB, hashes, PDQ, resize, JPEG.

Owns the pixel rules of the whole project; the dedup stage calls `pdq_of_bytes` on evaluation images so
that pool and evaluation hashes come from the same preparation. Knows nothing of HTTP or files.

PDQ canonical preparation (one function of the file's bytes, used everywhere, not a setting):
    1. decode; a JPEG at the largest DCT-domain reduction (1/2, 1/4, 1/8: Pillow's `draft`) that keeps
       its longer side at least 256 px and its shorter side at least 64 px; other formats in full;
    2. apply EXIF orientation, convert to RGB (alpha composited on white);
    3. squash to 64 x 64 pixels with Pillow's antialiased BICUBIC filter (`reducing_gap=2.0`);
    4. pdqhash on that 64 x 64 image.
`pdq_of_bytes(data)` is that function; `process(data)` computes exactly the same hash (it shares the
decode of step 1 with the stored copy when that decode is large enough, else decodes twice).
Why 64 x 64: PDQ reduces every image to a 64 x 64 luminance grid with a crude box (Jarosz) filter, so the
hash of a full image and of a smaller copy of it drift apart: measured on 1/f-noise photographs-alike and
a photo, 4-17 bits on average and up to 24 between an image and its half / quarter / 300 px / 128 px /
224 x 224 copies, as much as the match threshold of 10. Handing PDQ a properly antialiased 64 x 64 image
makes its own reduction an identity, and the hash then barely depends on the resolution the image arrived
in: with this whole procedure, 0.3-1.1 bits on average and 2 at most for the same copies.
Why DCT scaling is allowed in step 1: against a full decode it moved the hash by 0.3 bits on average and 2
at most (the floors keep 4x the 64 px target on the longer side), while it makes big JPEGs (EOL full-size
copies) several times cheaper to hash. A PNG evaluation image is decoded in full: its distance to the JPEG
it came from carries that same <= 2 bits. A coarser floor (shorter side >= 128 px) was measured too; it
forced a second decode for most 256-640 px images stored at 256 px, with no gain in agreement.
Measurements: bench/fetch_pdq_preparation.py; figures in bench/README_fetch.md.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

PDQ_DECODE_LONG, PDQ_DECODE_SHORT = 256, 64  # the canonical preparation: a JPEG's DCT reduction keeps the
# longer side >= PDQ_DECODE_LONG and the shorter >= PDQ_DECODE_SHORT px, ...
PDQ_SIDE = 64  # ... then squash to PDQ_SIDE x PDQ_SIDE ...
PDQ_FILTER = Image.Resampling.BICUBIC  # ... with this antialiased filter ...
PDQ_REDUCING_GAP = 2.0  # ... box-reducing first when the image is at least this many times larger
STORE_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                 "box": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS}  # FetchConfig.resize_filter
STORE_REDUCING_GAP = 2.0

_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


class ImageError(Exception):
    """A per-image problem: `error_class` is one of not_image, decode_error, too_many_pixels."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


@dataclass
class ProcessedImage:
    sha256: str  # of the original bytes, hex
    md5: str  # of the original bytes, hex
    pdq: str  # 256-bit PDQ of the canonical preparation, 64 hex digits (most significant bit first)
    pdq_quality: int  # 0..100, PDQ's own measure of how much structure the image has
    format: str  # the original's format as Pillow names it (JPEG, PNG, ...)
    width: int  # the original's size after EXIF orientation
    height: int
    stored_width: int
    stored_height: int
    jpeg: bytes  # the stored image
    kept_original: bool  # True when `jpeg` is the original bytes (already an upright RGB JPEG within max_side)


def _setting(cfg: Any, name: str, default: Any) -> Any:
    return getattr(cfg, name, default) if cfg is not None else default


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only: refuse what is not an image and what would decode to more than max_pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own process-wide cap, met before ours
        raise ImageError("too_many_pixels", str(e)) from None
    except UnidentifiedImageError:
        # the message never carries the file's bytes: it may be anything a URL pointed at
        raise ImageError("not_image", f"not a recognised image format ({len(data)} bytes)") from None
    except Exception as e:  # Pillow raises assorted errors on corrupt headers
        raise ImageError("decode_error", f"{type(e).__name__}: {e}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError("decode_error", f"image declares size {w}x{h}")
    if w * h > max_pixels:
        raise ImageError("too_many_pixels", f"{w}x{h} = {w * h} pixels is over the cap of {max_pixels}")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Decoded pixels as 8-bit RGB: alpha composited on white, 16-bit and float images scaled, CMYK/L/P converted."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        top = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block is not a broken image
        return 1


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise ImageError("too_many_pixels", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as e:
        raise ImageError("decode_error", f"{type(e).__name__}: {e}") from None
    except MemoryError:
        raise ImageError("too_many_pixels", "out of memory while decoding") from None


def _upright_rgb(img: Image.Image, orientation: int) -> Image.Image:
    """Decoded pixels, EXIF orientation applied, as 8-bit RGB."""
    _load(img)
    if orientation in _TRANSPOSE:
        img = img.transpose(_TRANSPOSE[orientation])
    return to_rgb(img)


def _draft(img: Image.Image, need_w: int, need_h: int) -> None:
    """JPEG only: decode at the largest DCT reduction keeping at least need_w x need_h (raw orientation)."""
    if img.format == "JPEG" and len(getattr(img, "tile", ()) or ()) == 1:
        img.draft(img.mode, (max(1, need_w), max(1, need_h)))


def _reduction(width: int, height: int, need_w: int, need_h: int) -> int:
    """The DCT reduction Pillow's JPEG draft picks for these needs (8, 4, 2 or 1)."""
    scale = min(width // max(1, need_w), height // max(1, need_h))
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def decode(data: bytes, max_pixels: int = 89_478_485) -> tuple[Image.Image, str, bool]:
    """Fully decode (first frame), apply EXIF orientation, convert to RGB.

    Returns (RGB image, original format, whether pixels were changed from a plain RGB decode)."""
    img = open_image(data, max_pixels)
    fmt, mode, orientation = img.format or "", img.mode, _orientation(img)
    rgb = _upright_rgb(img, orientation)
    return rgb, fmt, orientation in _TRANSPOSE or mode != "RGB"


def pdq_decode_need(width: int, height: int) -> tuple[int, int]:
    """The least decoded size (file orientation) step 1 keeps: PDQ_DECODE_LONG on the longer side."""
    return (PDQ_DECODE_LONG, PDQ_DECODE_SHORT) if width >= height else (PDQ_DECODE_SHORT, PDQ_DECODE_LONG)


def decode_for_pdq(data: bytes, max_pixels: int = 89_478_485) -> Image.Image:
    """Steps 1-2 of the canonical preparation: the upright RGB image PDQ is computed from."""
    img = open_image(data, max_pixels)
    orientation = _orientation(img)
    _draft(img, *pdq_decode_need(*img.size))
    return _upright_rgb(img, orientation)


def canonical_pdq_image(rgb: Image.Image) -> Image.Image:
    """Step 3 of the canonical preparation, on an upright RGB image."""
    if rgb.mode != "RGB":
        rgb = to_rgb(rgb)
    return rgb.resize((PDQ_SIDE, PDQ_SIDE), PDQ_FILTER, reducing_gap=PDQ_REDUCING_GAP)


def pdq_of(rgb: Image.Image) -> tuple[str, int]:
    """(PDQ as 64 hex digits, quality) of an upright RGB image (steps 3-4). For files use pdq_of_bytes."""
    import pdqhash

    small = np.ascontiguousarray(np.asarray(canonical_pdq_image(rgb), dtype=np.uint8))
    bits, quality = pdqhash.compute(small)
    # pdqhash returns bit 255 first: packing gives the reference hex form (word 15 first)
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


def pdq_of_bytes(data: bytes, max_pixels: int = 89_478_485) -> tuple[str, int]:
    """PDQ of an image file on the canonical preparation: what the dedup stage calls on evaluation images."""
    return pdq_of(decode_for_pdq(data, max_pixels))


def hamming(a: str, b: str) -> int:
    """Bits that differ between two PDQ hashes in hex."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def stored_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    scale = max_side / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_jpeg(rgb: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def process(data: bytes, cfg: Any = None) -> ProcessedImage:
    """Everything fetch does to one image's bytes. `cfg`: a FetchConfig (or anything with its fields).

    Raises ImageError (not_image, decode_error, too_many_pixels) for an image that cannot be used."""
    max_pixels = _setting(cfg, "max_pixels", 89_478_485)
    max_side = _setting(cfg, "max_side", 720)
    quality = _setting(cfg, "jpeg_quality", 95)
    keep = _setting(cfg, "keep_original_jpeg", True)
    resample = STORE_FILTERS[_setting(cfg, "resize_filter", "bicubic")]
    sha256 = hashlib.sha256(data).hexdigest()
    md5 = hashlib.md5(data).hexdigest()
    img = open_image(data, max_pixels)
    fmt, mode, orientation = img.format or "", img.mode, _orientation(img)
    raw_w, raw_h = img.size
    turned = orientation in (5, 6, 7, 8)
    width, height = (raw_h, raw_w) if turned else (raw_w, raw_h)
    sw, sh = stored_size(width, height, max_side)
    kept = keep and fmt == "JPEG" and mode == "RGB" and orientation not in _TRANSPOSE and (sw, sh) == (width, height)
    need_w, need_h = (sh, sw) if turned else (sw, sh)  # the stored size in the file's own orientation
    pdq_need = pdq_decode_need(raw_w, raw_h)
    if kept or _reduction(raw_w, raw_h, need_w, need_h) >= _reduction(raw_w, raw_h, *pdq_need):
        # one decode serves both: the canonical one is at least as large as the stored copy needs
        _draft(img, *pdq_need)
        pdq_rgb = stored_src = _upright_rgb(img, orientation)
    else:  # the stored copy needs more pixels than PDQ's decode has: a second, larger decode for it
        pdq_rgb = decode_for_pdq(data, max_pixels)
        _draft(img, need_w, need_h)
        stored_src = _upright_rgb(img, orientation)
    pdq, pdq_quality = pdq_of(pdq_rgb)
    if kept:
        jpeg = data
    else:
        small = stored_src if stored_src.size == (sw, sh) else stored_src.resize(
            (sw, sh), resample, reducing_gap=STORE_REDUCING_GAP)
        jpeg = encode_jpeg(small, quality)
    return ProcessedImage(sha256, md5, pdq, pdq_quality, fmt, width, height, sw, sh, jpeg, kept)

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

What is decoded at all (issue 18): only the formats of `fetch.image_formats` are ever opened, through Pillow's
own `Image.open(fp, formats=...)` (JPEG, PNG, WebP, GIF by default: what every source and benchmark serves);
another format is a per-image failure `format_refused` naming it, found by the plugins' magic-number checks
only. EPS is never opened, whatever the setting: Pillow runs Ghostscript on it. And the memory a decode
will take, by mode and size, is checked against `fetch.max_decoded_bytes` after the header is read and before
any pixel is decoded (`too_large_decoded`): `max_pixels` alone let a 177 KB 16-bit PNG of 9400 x 9400 peak at
2.2 GB. The RGB conversion works in 8-bit integers, strip by strip where it needs temporaries, and releases
the decoded original as soon as it is converted; `decoded_bytes_per_pixel` is the model of that peak.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import NEVER_OPENED, FetchConfig

_DEFAULTS = FetchConfig()  # config.py is the one home of the defaults (max_pixels, image_formats, ...)

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


# Bytes per pixel of Pillow's own storage (Storage.c): 1-bit, L and P one byte, 16-bit grey two, every other
# mode four (RGB is stored as RGBX).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_SCALED = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # more than 8 bits: scaled into an L image first
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")  # composited on white
_DECODER_BYTES = {"WEBP": 12}  # libwebp's two frame canvases and the frame's bytes, beside the image
STRIP_PIXELS = 1 << 20  # conversions that need temporaries make them this many pixels at a time
_LUT16 = ((np.arange(65536, dtype=np.uint32) * 2 + 257) // 514).astype(np.uint8)  # round(v * 255 / 65535)


class ImageError(Exception):
    """A per-image problem: `error_class` is one of not_image, format_refused, decode_error, too_many_pixels,
    too_large_decoded."""

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


def _setting(cfg: Any, name: str) -> Any:
    return getattr(cfg, name, getattr(_DEFAULTS, name)) if cfg is not None else getattr(_DEFAULTS, name)


def allowed_formats(cfg: Any = None) -> list[str]:
    """The formats this configuration lets Pillow open (fetch.image_formats, never EPS), in Pillow's spelling."""
    return [f.upper() for f in _setting(cfg, "image_formats") if f.upper() not in NEVER_OPENED]


def sniff_format(data: bytes) -> str | None:
    """The format Pillow would take these bytes for, by its plugins' magic-number checks of the first 16 bytes
    (what Image.open reads first); nothing is parsed or decoded. None: no plugin claims them."""
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # a check that wants more bytes than there are
            continue
    return None


def open_image(data: bytes, max_pixels: int, formats: list[str] | None = None) -> Image.Image:
    """Parse the header only, with only the allowed formats' plugins: refuse what is not an image, what is in
    another format, and what would decode to more than max_pixels."""
    formats = allowed_formats() if formats is None else [f for f in formats if f.upper() not in NEVER_OPENED]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as e:  # Pillow's own process-wide cap, met before ours
        raise ImageError("too_many_pixels", str(e)) from None
    except UnidentifiedImageError:
        fmt = sniff_format(data)
        if fmt is not None and fmt not in formats:
            why = " (EPS is never opened: Pillow would run Ghostscript on it)" if fmt in NEVER_OPENED else ""
            raise ImageError("format_refused", f"{fmt} (by its signature) is not an allowed image format{why}; "
                             f"fetch.image_formats allows {', '.join(formats)} ({len(data)} bytes)") from None
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


def decoded_bytes_per_pixel(mode: str, fmt: str = "", transposed: bool = False) -> int:
    """Peak bytes per pixel of decoding an image of this mode to upright RGB the way _upright_rgb does: the
    decoded original, the 8-bit L image of a 16-bit / 32-bit / float one (the original released once it is
    made), the RGB result, the transposed copy (the RGB released once it is made), the decoder's buffers.
    Measured peaks (bench/imaging_hotpath.py --memory) are at most 18% over this (strips, resizes)."""
    src = _PIXEL_BYTES.get(mode, 4)
    if mode == "RGB":
        peak = src + 1  # beside it, the stored copy's first reduction (a quarter of the pixels or fewer)
    elif mode in _SCALED:
        peak = max(src + 1, 1 + 4)
    else:
        peak = src + 4
    if transposed:
        peak = max(peak, 4 + 4)
    return peak + _DECODER_BYTES.get(fmt, 0)


def check_decoded_bytes(img: Image.Image, orientation: int, cap: int) -> None:
    """Refuse, from the header only, a decode that would take more than `cap` bytes."""
    w, h = img.size
    bpp = decoded_bytes_per_pixel(img.mode, img.format or "", orientation in _TRANSPOSE)
    if w * h * bpp > cap:
        raise ImageError("too_large_decoded", f"decoding this {w}x{h} {img.mode} {img.format} image takes about "
                         f"{w * h * bpp:,} bytes ({bpp} per pixel, with the RGB conversion), over the cap of "
                         f"{cap:,} bytes (fetch.max_decoded_bytes)")


def _strips(size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    w, h = size
    rows = max(1, STRIP_PIXELS // max(1, w))
    return [(0, y, w, min(h, y + rows)) for y in range(0, h, rows)]


def _scaled_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float pixels as 8-bit L, in integers (float32 for F), a strip at a time.

    The scale is the one the project always used: 16-bit images by 255/65535, 32-bit ones by 255/65535 when a
    value is over 255 (else as they are), float ones by 255 when all are within 0..1 (else as they are);
    rounded half up, clipped to 0..255."""
    mode = img.mode
    if mode == "I" and img.getextrema()[1] <= 255:
        return img.convert("L")  # Pillow clips to 0..255: the same as scaling by 1
    top_one = mode == "F" and img.getextrema()[1] <= 1.0
    out = np.empty((img.size[1], img.size[0]), dtype=np.uint8)
    for box in _strips(img.size):
        a = np.asarray(img.crop(box))
        rows = out[box[1]:box[3]]
        if mode.startswith("I;16"):
            rows[:] = _LUT16[a]
        elif mode == "I":
            rows[:] = np.clip((a.astype(np.int64) * 2 + 257) // 514, 0, 255)
        else:
            with np.errstate(invalid="ignore"):  # NaN becomes 0, as it always did
                rows[:] = np.clip(a * np.float32(255.0 if top_one else 1.0) + np.float32(0.5), 0, 255)
    return Image.fromarray(out)


def _composited(img: Image.Image) -> Image.Image:
    """An image with alpha as RGB composited on white, a strip at a time (the same pixels as in one go)."""
    strips = _strips(img.size)
    if len(strips) == 1:
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    out = Image.new("RGB", img.size)
    for box in strips:
        part = img.crop(box)
        rgba = part if part.mode == "RGBA" else part.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out.paste(Image.alpha_composite(white, rgba).convert("RGB"), box[:2])
    return out


def _to_rgb(img: Image.Image, own: bool) -> Image.Image:
    """`img` as 8-bit RGB; `own`: release each image (the original too) as soon as the next one is made."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SCALED:
        grey = _scaled_to_l(img)
        if own:
            img.close()
        return grey.convert("RGB")
    if mode in _ALPHA or (mode == "P" and "transparency" in img.info):
        rgb = _composited(img)
    else:
        rgb = img.convert("RGB")
    if own:
        img.close()
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """Decoded pixels as 8-bit RGB: alpha composited on white, 16-bit and float images scaled, CMYK/L/P converted.
    No float64 copies: integers (float32 for F), strip by strip where temporaries are needed."""
    return _to_rgb(img, own=False)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block is not a broken image
        return 1


def _orientation_checked(img: Image.Image, cap: int) -> int:
    """EXIF orientation; when reading it means decoding (a PNG whose EXIF, if any, follows the pixel data:
    Pillow decodes the image to reach it), the decode's memory is checked first, as if upright."""
    if img.format == "PNG" and "exif" not in img.info:
        check_decoded_bytes(img, 1, cap)
        _load(img)
    return _orientation(img)


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
    """Decoded pixels, EXIF orientation applied, as 8-bit RGB. Consumes `img` (its pixels are released).

    Converted first, then turned: both are per-pixel, so the order changes no pixel, and the transposed copy
    is then always 4 bytes per pixel."""
    _load(img)
    rgb = _to_rgb(img, own=True)
    if orientation in _TRANSPOSE:
        turned = rgb.transpose(_TRANSPOSE[orientation])
        rgb.close()
        rgb = turned
    return rgb


def _draftable(img: Image.Image) -> bool:
    return img.format == "JPEG" and len(getattr(img, "tile", ()) or ()) == 1


def _draft(img: Image.Image, need_w: int, need_h: int) -> None:
    """JPEG only: decode at the largest DCT reduction keeping at least need_w x need_h (raw orientation)."""
    if _draftable(img):
        img.draft(img.mode, (max(1, need_w), max(1, need_h)))


def _reduction(width: int, height: int, need_w: int, need_h: int) -> int:
    """The DCT reduction Pillow's JPEG draft picks for these needs (8, 4, 2 or 1)."""
    scale = min(width // max(1, need_w), height // max(1, need_h))
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def decode(data: bytes, cfg: Any = None) -> tuple[Image.Image, str, bool]:
    """Fully decode (first frame), apply EXIF orientation, convert to RGB. `cfg`: a FetchConfig or None.

    Returns (RGB image, original format, whether pixels were changed from a plain RGB decode)."""
    img, cap = open_image(data, _setting(cfg, "max_pixels"), allowed_formats(cfg)), _setting(cfg, "max_decoded_bytes")
    fmt, mode, orientation = img.format or "", img.mode, _orientation_checked(img, cap)
    check_decoded_bytes(img, orientation, cap)
    rgb = _upright_rgb(img, orientation)
    return rgb, fmt, orientation in _TRANSPOSE or mode != "RGB"


def pdq_decode_need(width: int, height: int) -> tuple[int, int]:
    """The least decoded size (file orientation) step 1 keeps: PDQ_DECODE_LONG on the longer side."""
    return (PDQ_DECODE_LONG, PDQ_DECODE_SHORT) if width >= height else (PDQ_DECODE_SHORT, PDQ_DECODE_LONG)


def decode_for_pdq(data: bytes, cfg: Any = None) -> Image.Image:
    """Steps 1-2 of the canonical preparation: the upright RGB image PDQ is computed from."""
    img, cap = open_image(data, _setting(cfg, "max_pixels"), allowed_formats(cfg)), _setting(cfg, "max_decoded_bytes")
    orientation = _orientation_checked(img, cap)
    _draft(img, *pdq_decode_need(*img.size))
    check_decoded_bytes(img, orientation, cap)
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


def pdq_of_bytes(data: bytes, cfg: Any = None) -> tuple[str, int]:
    """PDQ of an image file on the canonical preparation (the same formats and caps as `process` with `cfg`)."""
    return pdq_of(decode_for_pdq(data, cfg))


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

    Raises ImageError (not_image, format_refused, decode_error, too_many_pixels, too_large_decoded) for an
    image that cannot be used."""
    max_pixels = _setting(cfg, "max_pixels")
    max_side = _setting(cfg, "max_side")
    quality = _setting(cfg, "jpeg_quality")
    keep = _setting(cfg, "keep_original_jpeg")
    cap = _setting(cfg, "max_decoded_bytes")
    resample = STORE_FILTERS[_setting(cfg, "resize_filter")]
    sha256 = hashlib.sha256(data).hexdigest()
    md5 = hashlib.md5(data).hexdigest()
    img = open_image(data, max_pixels, allowed_formats(cfg))
    fmt, mode, orientation = img.format or "", img.mode, _orientation_checked(img, cap)
    raw_w, raw_h = img.size
    turned = orientation in (5, 6, 7, 8)
    width, height = (raw_h, raw_w) if turned else (raw_w, raw_h)
    sw, sh = stored_size(width, height, max_side)
    kept = keep and fmt == "JPEG" and mode == "RGB" and orientation not in _TRANSPOSE and (sw, sh) == (width, height)
    need_w, need_h = (sh, sw) if turned else (sw, sh)  # the stored size in the file's own orientation
    pdq_need = pdq_decode_need(raw_w, raw_h)
    if kept or not _draftable(img) or _reduction(raw_w, raw_h, need_w, need_h) >= _reduction(raw_w, raw_h, *pdq_need):
        # one decode serves both: the canonical one is at least as large as the stored copy needs (or, for
        # formats other than JPEG, both are the full decode anyway)
        _draft(img, *pdq_need)
        check_decoded_bytes(img, orientation, cap)
        stored_src = _upright_rgb(img, orientation)
        pdq, pdq_quality = pdq_of(stored_src)
    else:  # the stored copy needs more pixels than PDQ's decode has: a second, larger decode for it
        pdq, pdq_quality = pdq_of(decode_for_pdq(data, cfg))  # hashed and released before the larger decode
        _draft(img, need_w, need_h)
        check_decoded_bytes(img, orientation, cap)
        stored_src = _upright_rgb(img, orientation)
    if kept:
        jpeg = data
    else:
        small = stored_src if stored_src.size == (sw, sh) else stored_src.resize(
            (sw, sh), resample, reducing_gap=STORE_REDUCING_GAP)
        jpeg = encode_jpeg(small, quality)
    return ProcessedImage(sha256, md5, pdq, pdq_quality, fmt, width, height, sw, sh, jpeg, kept)

"""Image processing: decode under a pixel cap, EXIF orientation, RGB from every mode, hashes, PDQ on the
canonical preparation, resize, JPEG; per-image problems raise ImageError with their class."""

import functools
import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from conftest_fetch import bomb_png, jpeg_bytes, noise_image, png_bytes
from tol_builder.config import FetchConfig
from tol_builder.fetch import imaging


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_jpeg_hashes_sizes_and_stored_copy():
    data = jpeg_bytes(noise_image(900, 600, seed=1))
    p = imaging.process(data, FetchConfig(max_side=300, jpeg_quality=90))
    assert p.sha256 == hashlib.sha256(data).hexdigest()
    assert p.md5 == hashlib.md5(data).hexdigest()
    assert len(p.pdq) == 64 and int(p.pdq, 16) > 0 and 0 <= p.pdq_quality <= 100
    assert (p.format, p.width, p.height) == ("JPEG", 900, 600)
    assert (p.stored_width, p.stored_height) == (300, 200) and not p.kept_original
    stored = _decode(p.jpeg)
    assert stored.format == "JPEG" and stored.mode == "RGB" and stored.size == (300, 200)


def test_small_upright_rgb_jpeg_is_kept_byte_for_byte():
    data = jpeg_bytes(noise_image(200, 150, seed=2))
    p = imaging.process(data, FetchConfig(max_side=720))
    assert p.kept_original and p.jpeg == data
    p = imaging.process(data, FetchConfig(max_side=720, keep_original_jpeg=False))
    assert not p.kept_original and p.jpeg != data and _decode(p.jpeg).size == (200, 150)


def test_exif_orientation_is_applied_before_everything():
    img = Image.new("RGB", (200, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 100, 100))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate 90 degrees clockwise: the left (red) half ends on top
    data = jpeg_bytes(img, exif=exif.tobytes())
    p = imaging.process(data, FetchConfig())
    assert (p.width, p.height) == (100, 200) and not p.kept_original
    stored = _decode(p.jpeg).convert("RGB")
    top, bottom = stored.getpixel((50, 20)), stored.getpixel((50, 180))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom
    # PDQ is of the upright pixels: near the hash of an upright copy, far from the hash of the unrotated one
    photo = noise_image(300, 200, seed=7)
    p = imaging.process(jpeg_bytes(photo, 95, exif=exif.tobytes()), FetchConfig())
    upright = imaging.pdq_of(photo.transpose(Image.Transpose.ROTATE_270))[0]
    assert imaging.hamming(p.pdq, upright) <= 6
    assert imaging.hamming(p.pdq, imaging.pdq_of(photo)[0]) > 60


@pytest.mark.parametrize("make, fmt", [
    (lambda: jpeg_bytes(noise_image(120, 90, seed=3).convert("CMYK")), "JPEG"),
    (lambda: png_bytes(noise_image(120, 90, seed=3).convert("L")), "PNG"),
    (lambda: png_bytes(noise_image(120, 90, seed=3).convert("P")), "PNG"),
    (lambda: png_bytes(noise_image(120, 90, seed=3).convert("RGBA")), "PNG"),
    (lambda: png_bytes(noise_image(120, 90, seed=3).convert("LA")), "PNG"),
    (lambda: _gif(), "GIF"),
    (lambda: _webp(), "WEBP"),
])
def test_every_mode_becomes_rgb(make, fmt):
    p = imaging.process(make(), FetchConfig())
    stored = _decode(p.jpeg)
    assert p.format == fmt and stored.mode == "RGB" and stored.size == (120, 90)


def _gif() -> bytes:
    buf = io.BytesIO()
    noise_image(120, 90, seed=3).convert("P").save(buf, "GIF")
    return buf.getvalue()


def _webp() -> bytes:
    buf = io.BytesIO()
    noise_image(120, 90, seed=3).save(buf, "WEBP")
    return buf.getvalue()


def test_transparency_is_composited_on_white_and_16_bit_is_scaled_not_clipped():
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    p = imaging.process(png_bytes(rgba), FetchConfig())
    assert min(_decode(p.jpeg).convert("RGB").getpixel((32, 32))) > 245  # white, not black
    mid = Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16))  # mode I;16, half of full scale
    assert mid.mode.startswith("I;16")
    p = imaging.process(png_bytes(mid), FetchConfig())
    value = _decode(p.jpeg).convert("L").getpixel((32, 32))
    assert 120 <= value <= 135, value  # 32768/65535 of white, not clipped to 255


def test_decompression_bomb_is_refused_before_decoding():
    data = bomb_png(20000)
    assert len(data) < 200_000
    with pytest.raises(imaging.ImageError) as e:
        imaging.process(data, FetchConfig())
    assert e.value.error_class == "too_many_pixels" and "400000000 pixels" in str(e.value)
    # a cap is a setting: a modest image over a low cap is refused the same way
    with pytest.raises(imaging.ImageError) as e:
        imaging.process(jpeg_bytes(noise_image(100, 100)), FetchConfig(max_pixels=5000))
    assert e.value.error_class == "too_many_pixels"


def test_not_an_image_and_a_broken_image_have_their_classes():
    with pytest.raises(imaging.ImageError) as e:
        imaging.process(b"<html><body>404</body></html>", FetchConfig())
    assert e.value.error_class == "not_image"
    data = jpeg_bytes(noise_image(300, 200, seed=4))
    with pytest.raises(imaging.ImageError) as e:
        imaging.process(data[: len(data) // 2], FetchConfig())
    assert e.value.error_class == "decode_error"


def test_pdq_is_of_the_canonical_preparation_and_survives_downscaled_copies():
    img = noise_image(1200, 900, seed=5)
    full = imaging.pdq_of(img)[0]
    # the same pixels by any path give the same hash (pool images through process, eval images through pdq_of_bytes)
    assert imaging.process(png_bytes(img), FetchConfig()).pdq == full
    assert imaging.pdq_of_bytes(png_bytes(img)) == imaging.pdq_of(img)
    for copy in (img.resize((600, 450), Image.Resampling.LANCZOS), img.resize((300, 225), Image.Resampling.LANCZOS),
                 img.resize((128, 96), Image.Resampling.BICUBIC), img.resize((224, 224), Image.Resampling.BICUBIC)):
        assert imaging.hamming(full, imaging.pdq_of_bytes(jpeg_bytes(copy, 90))[0]) <= 8, copy.size
    # and a different image is far away
    other = imaging.pdq_of(noise_image(1200, 900, seed=6))[0]
    assert imaging.hamming(full, other) > 64


def test_canonical_preparation_is_fixed():
    # a change here changes every PDQ in every build: it must be deliberate (and the notes updated)
    assert (imaging.PDQ_DECODE_LONG, imaging.PDQ_DECODE_SHORT, imaging.PDQ_SIDE, imaging.PDQ_FILTER,
            imaging.PDQ_REDUCING_GAP) == (256, 64, 64, Image.Resampling.BICUBIC, 2.0)
    assert imaging.canonical_pdq_image(noise_image(300, 100)).size == (64, 64)


@pytest.mark.parametrize("size, max_side, orientation", [
    ((1600, 1200), 720, 1),  # stored copy needs a larger decode than PDQ's: two decodes
    ((1600, 1200), 128, 1),  # one decode at 1/8 serves both
    ((1200, 1600), 300, 6),  # rotated by EXIF
    ((300, 200), 720, 1),  # small: kept as is, PDQ from a full decode
    ((2000, 260), 256, 8),  # a panorama: the shorter side limits the DCT reduction
])
def test_pool_and_evaluation_paths_give_the_same_pdq(size, max_side, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg_bytes(noise_image(*size, seed=8), 92, exif=exif.tobytes())
    p = imaging.process(data, FetchConfig(max_side=max_side))
    assert p.pdq == imaging.pdq_of_bytes(data)[0]  # process() and the dedup stage's call agree exactly
    expected = (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
    assert (p.width, p.height) == expected
    assert max(p.stored_width, p.stored_height) == min(max_side, max(expected))
    assert _decode(p.jpeg).size == (p.stored_width, p.stored_height)
    # the JPEG DCT reduction of the canonical decode moves the hash by very little against a full decode
    full, _, _ = imaging.decode(data)
    assert imaging.hamming(p.pdq, imaging.pdq_of(full)[0]) <= 4


# --------------------------------------------------------------- issue 18: formats and decode memory
def _png_of(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _reference_rgb(data: bytes) -> Image.Image:
    """The plain conversion the project always did, on a full decode: whole-image alpha compositing on white,
    16-bit grey scaled in float64 (fine here: small images), every other mode through Pillow's convert."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(a * (255.0 / 65535.0) + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _with_alpha(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.asarray(img.convert("L"))[::-1].copy()))  # every alpha level, not just 0/255
    return rgba


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def _noise(size: tuple[int, int]) -> Image.Image:
    return noise_image(*size, seed=11)


# 1500 x 1000 = 1.5 Mpx: more than imaging.STRIP_PIXELS, so the strip-wise conversions run in several strips
ORDINARY = {
    "RGB PNG": lambda im: _png_of(im),
    "palette PNG": lambda im: _png_of(im.convert("P")),
    "palette PNG with a transparent index": lambda im: _png_of(im.quantize(64), transparency=3),
    "RGBA PNG": lambda im: _png_of(_with_alpha(im)),
    "LA PNG": lambda im: _png_of(_with_alpha(im).convert("LA")),
    "L PNG": lambda im: _png_of(im.convert("L")),
    "1-bit PNG": lambda im: _png_of(im.convert("1")),
    "16-bit grey PNG": lambda im: _png_of(Image.fromarray(np.asarray(im.convert("L"), dtype=np.uint16) * 257 + 77)),
    "GIF": lambda im: _save(im.convert("P"), "GIF"),
    "RGBA WebP": lambda im: _save(_with_alpha(im), "WEBP", quality=80),
}


@pytest.mark.parametrize("size", [(300, 200), (1500, 1000)])
@pytest.mark.parametrize("kind", list(ORDINARY))
def test_ordinary_modes_give_exactly_the_plain_conversions_pdq_and_bytes(kind, size):
    """The memory-bounded conversion changes no pixel: PDQ and the stored JPEG equal those of the plain one."""
    data = ORDINARY[kind](_noise(size))
    cfg = FetchConfig(max_side=720)
    p = imaging.process(data, cfg)
    rgb = _reference_rgb(data)
    assert (p.pdq, p.pdq_quality) == imaging.pdq_of(rgb)
    assert imaging.pdq_of_bytes(data) == (p.pdq, p.pdq_quality)
    sw, sh = imaging.stored_size(*rgb.size, cfg.max_side)
    small = rgb if rgb.size == (sw, sh) else rgb.resize((sw, sh), Image.Resampling.BICUBIC, reducing_gap=2.0)
    assert p.jpeg == imaging.encode_jpeg(small, cfg.jpeg_quality)


def test_an_exif_turned_png_is_turned_after_conversion_with_the_same_pixels():
    exif = Image.Exif()
    exif[0x0112] = 6
    img = _with_alpha(noise_image(1500, 1000, seed=12))
    p = imaging.process(_png_of(img, exif=exif.tobytes()), FetchConfig(max_side=720))
    upright = _reference_rgb(_png_of(img)).transpose(Image.Transpose.ROTATE_270)
    assert (p.width, p.height) == (1000, 1500) and p.pdq == imaging.pdq_of(upright)[0]


def test_formats_outside_the_allow_list_are_refused_by_name():
    img = noise_image(120, 90, seed=13)
    for fmt in ("TIFF", "BMP", "SGI", "PPM", "PCX"):  # named by their signatures (magic numbers) only
        with pytest.raises(imaging.ImageError) as e:
            imaging.process(_save(img, fmt), FetchConfig())
        assert e.value.error_class == "format_refused", fmt
        assert f"{fmt} (by its signature) is not an allowed image format" in str(e.value)
        assert "JPEG, PNG, WEBP, GIF" in str(e.value)
        p = imaging.process(_save(img, fmt), FetchConfig(image_formats=["JPEG", fmt]))  # a setting
        assert p.format == fmt and _decode(p.jpeg).size == (120, 90)
    # a format without a signature (TGA) cannot be named: refused all the same, never parsed by its plugin
    with pytest.raises(imaging.ImageError) as e:
        imaging.process(_save(img, "TGA"), FetchConfig())
    assert e.value.error_class in ("format_refused", "not_image")
    # a format the list allows but whose header is broken is still not_image, not refused
    with pytest.raises(imaging.ImageError) as e:
        imaging.process(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, FetchConfig())
    assert e.value.error_class == "not_image"
    assert imaging.sniff_format(b"<html><body>404</body></html>") is None
    assert FetchConfig().image_formats == ["JPEG", "PNG", "WEBP", "GIF"]


def _png_header_only(width: int, height: int, colour_type: int, bit_depth: int = 8) -> bytes:
    """A PNG whose IHDR declares a size but whose pixel data is missing: decoding it fails at once."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 10)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_the_decoded_bytes_cap_is_checked_from_the_header_before_any_decode():
    # 9000 x 9000 RGBA (81 Mpx, under max_pixels): 4 bytes per pixel decoded + 4 of the RGB copy = 648 MB.
    # Its pixel data is missing, so a decode would fail as decode_error: too_large_decoded proves none ran.
    with pytest.raises(imaging.ImageError) as e:
        imaging.process(_png_header_only(9000, 9000, 6), FetchConfig())
    assert e.value.error_class == "too_large_decoded"
    msg = str(e.value)
    assert "9000x9000 RGBA PNG" in msg and "648,000,000 bytes (8 per pixel" in msg
    assert f"cap of {512 * 1024 ** 2:,} bytes (fetch.max_decoded_bytes)" in msg
    with pytest.raises(imaging.ImageError) as e:
        imaging.pdq_of_bytes(_png_header_only(9000, 9000, 6))  # evaluation images: the same guard
    assert e.value.error_class == "too_large_decoded"
    # under the cap the decode is tried (and fails on the missing data), by mode: 16-bit grey is 2 + 1 + 4 bytes
    # at most 5 at once (the original is released once its 8-bit copy is made)
    with pytest.raises(imaging.ImageError) as e:
        imaging.process(_png_header_only(9000, 9000, 0, 16), FetchConfig())
    assert e.value.error_class == "decode_error"
    assert imaging.decoded_bytes_per_pixel("I;16") == 5 and imaging.decoded_bytes_per_pixel("RGBA") == 8
    with pytest.raises(imaging.ImageError) as e:
        imaging.process(_png_header_only(9000, 9000, 0, 16), FetchConfig(max_decoded_bytes=400_000_000))
    assert e.value.error_class == "too_large_decoded" and "405,000,000 bytes" in str(e.value)
    # a big JPEG is checked at the size its DCT reduction decodes: a 6000 x 4000 photo is not refused
    photo = noise_image(600, 400, seed=14).resize((6000, 4000), Image.Resampling.BILINEAR)
    p = imaging.process(jpeg_bytes(photo, 70), FetchConfig(max_decoded_bytes=20_000_000))
    assert (p.stored_width, p.stored_height) == (720, 480)


def _workflow(tmp, fetch_lines: str):
    (tmp / "m.toml").write_text('source = "table"\n[[files]]\nname = "t.csv"\nrole = "metadata"\n')
    wf = tmp / "wf.toml"
    wf.write_text(f'name = "t"\nout = "{tmp / "b"}"\n[[sources]]\nname = "table"\nmanifest = "m.toml"\n'
                  f'[fetch]\n{fetch_lines}\n')
    return wf


def test_image_settings_are_checked_at_load_with_file_and_key(tmp_path):
    from tol_builder.config import ConfigError, load_workflow

    wf = load_workflow(_workflow(tmp_path, 'image_formats = ["JPEG", "PNG", "TIFF"]\nmax_decoded_bytes = 1000000'))
    assert wf.fetch.image_formats == ["JPEG", "PNG", "TIFF"] and wf.fetch.max_decoded_bytes == 1_000_000
    for lines, key, expected in [
        ('image_formats = ["JPEG", "jpg"]', "fetch.image_formats[1]", "a format name Pillow opens"),
        ('image_formats = ["png"]', "fetch.image_formats[0]", "did you mean 'PNG'?"),
        ('image_formats = ["JPEG", "EPS"]', "fetch.image_formats[1]", "Ghostscript"),
        ('image_formats = ["JPEG", "JPEG"]', "fetch.image_formats[1]", "each format once"),
        ("image_formats = []", "fetch.image_formats", "at least one format"),
        ("max_decoded_bytes = 0", "fetch.max_decoded_bytes", "a positive integer"),
        ('max_decoded_bytes = "512MB"', "fetch.max_decoded_bytes", "an integer"),
    ]:
        path = _workflow(tmp_path, lines)
        with pytest.raises(ConfigError) as e:
            load_workflow(path)
        assert str(path) in str(e.value) and f"'{key}'" in str(e.value) and expected in str(e.value), lines

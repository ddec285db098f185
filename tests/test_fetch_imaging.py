"""Image processing: decode under a pixel cap, EXIF orientation, RGB from every mode, hashes, PDQ on the
canonical preparation, resize, JPEG; per-image problems raise ImageError with their class."""

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

"""PDQ through the canonical preparation (imaging.pdq_of_bytes) on real pixels: copies are caught, hard
negatives are not, at the dedup threshold of 10 bits.

The tolerances come from bench/pdq_robustness.py (figures in bench/README_dedup.md), measured on 288 images
and 17,080 hard-negative pairs:
* photographs-alike (1/f colour noise): JPEG q40, a 50% resize and darkening x0.8 never moved a hash over
  10 bits (96 images, max 6); +20 levels of brightness never did when it clipped under 5% of the pixels
  (213 copies, max 10): a brightening that saturates much of the picture destroys what PDQ sees;
* demo drawings: the misses are the zigzag style (fine periodic lines that alias on PDQ's 64 x 64 grid:
  up to 26 bits at quality 100), hashes below quality 50, and 3 in the 672 copies of trusted pictures of
  the other styles: one miss per transformation is tolerated over those styles;
* hard negatives: 0 of 10,080 same-taxon pairs within 10 (minimum 46); 0 of 2,660 moving-subject burst
  pairs whose subject moved at least 5% of the frame (minimum 22): none tolerated here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from tol_builder.demo import images as demo_images
from tol_builder.demo.taxa import STYLES
from tol_builder.fetch.imaging import decode as imaging_decode, encode_jpeg, hamming, pdq_of_bytes

MATCH = 10
QUALITY_FLOOR = 50
ALIASING_STYLE = "zigzag"  # the demo shape family PDQ cannot follow (see the module docstring)


def encode(img: Image.Image, quality: int = 90) -> bytes:
    return encode_jpeg(img, quality)


def decoded(data: bytes) -> Image.Image:
    return imaging_decode(data)[0]


def photo_like(rng: np.random.Generator, w: int = 512, h: int = 384) -> Image.Image:
    """Colour noise with a 1/f^beta spectrum: the statistics of natural photographs, no content."""
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1.0
    white = rng.normal(size=(3, h, w)) + rng.normal(size=(1, h, w))  # channels share structure, as in photos
    field = np.fft.ifft2(np.fft.fft2(white) / radius ** rng.uniform(0.9, 1.5)).real
    lo, hi = np.percentile(field, [1, 99], axis=(1, 2), keepdims=True)
    return Image.fromarray((np.clip((field - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0))


def newly_clipped(original: Image.Image, copy: Image.Image) -> float:
    a, b = np.asarray(original), np.asarray(copy)
    return float(((b >= 255).any(axis=2) & ~(a >= 255).any(axis=2)).mean())


COPIES = {
    "jpeg_q40": lambda im: encode(im, 40),
    "resize_50": lambda im: encode(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)),
    "darken_x0.8": lambda im: encode(ImageEnhance.Brightness(im).enhance(0.8)),
    "brighten_+20": lambda im: encode(im.point(np.clip(np.arange(256) + 20, 0, 255).astype(np.uint8).tolist() * 3)),
}


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    rng = np.random.default_rng(2024)
    return [encode(photo_like(rng), 92) for _ in range(12)]


@pytest.fixture(scope="module")
def drawings() -> dict[str, bytes]:
    """One demo picture per taxon style, at the demo's iNat21 size."""
    return {name: demo_images.render(style, (500, 375), 0, "pdq-test", name) for name, style in STYLES.items()}


def copy_distances(data: bytes) -> tuple[int, dict[str, tuple[int, float]]]:
    """(quality, {transformation: (distance, share of pixels newly clipped)}) of one image's copies."""
    h, quality = pdq_of_bytes(data)
    img = decoded(data)
    out = {}
    for name, make in COPIES.items():
        copy = make(img)
        clipped = newly_clipped(img, decoded(copy).resize(img.size))
        out[name] = (hamming(h, pdq_of_bytes(copy)[0]), clipped)
    return quality, out


def test_copies_of_photographs_are_caught(photos):
    brightened = 0
    for k, data in enumerate(photos):
        quality, dist = copy_distances(data)
        assert quality >= QUALITY_FLOOR
        for name, (d, clipped) in dist.items():
            if name == "brighten_+20" and clipped >= 0.05:
                continue  # saturating a large part of the picture: measured, not claimed (see the docstring)
            brightened += name == "brighten_+20"
            assert d <= MATCH, f"photo {k}: {name} moved the hash {d} bits"
    assert brightened >= 8  # the brightness claim was checked on most of the pictures


def test_copies_of_drawings_are_caught(drawings):
    misses: dict[str, list] = {name: [] for name in COPIES}
    checked = 0
    for name, data in drawings.items():
        if STYLES[name].shape == ALIASING_STYLE:
            continue
        quality, dist = copy_distances(data)
        if quality < QUALITY_FLOOR:
            continue  # an untrusted hash takes no part in near matching
        checked += 1
        for t, (d, clipped) in dist.items():
            if d > MATCH and not (t == "brighten_+20" and clipped >= 0.05):
                misses[t].append((name, d))
    assert checked >= 12
    for t, miss in misses.items():
        assert len(miss) <= 1, f"{t}: {miss}"


def test_different_pictures_of_one_taxon_stay_apart():
    """Same style (background, shapes, palette), other picture: 8 pictures of 4 taxa, 112 pairs."""
    for name in ("Panthera leo", "Coccinella septempunctata", "Danaus plexippus", "Trametes versicolor"):
        hashes = [pdq_of_bytes(demo_images.render(STYLES[name], (500, 375), 0, "pdq-test-burst", name, k))
                  for k in range(8)]
        close = [(i, j, hamming(a[0], b[0])) for (i, a), (j, b) in itertools.combinations(enumerate(hashes), 2)
                 if hamming(a[0], b[0]) <= MATCH]
        assert not close, f"{name}: {close}"


def test_a_moving_subject_on_one_background_is_not_a_copy():
    """Tripod bursts: one photo-like background, a textured subject placed at 4 spots >= 8% of the frame
    apart: 6 scenes, 36 pairs, none within the threshold."""
    rng = np.random.default_rng(7)
    spots = [(0.38, 0.42), (0.50, 0.50), (0.62, 0.44), (0.46, 0.60)]  # centres, fractions of the frame
    for scene in range(6):
        background, subject = photo_like(rng), photo_like(rng, 240, 160)
        mask = Image.new("L", subject.size, 0)
        ImageDraw.Draw(mask).ellipse((0, 0, subject.width - 1, subject.height - 1), fill=255)
        hashes = []
        for cx, cy in spots:
            frame = background.copy()
            frame.paste(subject, (round(cx * frame.width - subject.width / 2),
                                  round(cy * frame.height - subject.height / 2)), mask)
            hashes.append(pdq_of_bytes(encode(frame))[0])
        distances = [hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
        assert min(distances) > MATCH, f"scene {scene}: {distances}"

"""The demo's procedurally drawn pictures: taxa look clearly different, pictures of one taxon differ,
and the same seed gives the same bytes."""

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from tol_builder.demo import images
from tol_builder.demo.taxa import STYLES, TAXA


def _pixels(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.mode == "RGB"
    return np.asarray(img, dtype=np.float64)


def test_every_taxon_has_a_known_style_and_every_shape_draws():
    assert {t.style.shape for t in TAXA} <= set(images.SHAPES)
    assert {s.shape for s in STYLES.values()} == set(images.SHAPES)  # each family in use
    for name, style in STYLES.items():
        for size in ((500, 375), (256, 341), (64, 48)):
            img = Image.open(io.BytesIO(images.render(style, size, 1, name, 0)))
            assert img.size == size


def test_taxa_differ_strongly_in_colour():
    """Mean colours: far apart between taxa, and a nearest-centroid rule tells held-out pictures apart."""
    n = 8
    means = {name: np.array([_pixels(images.render(s, (160, 120), 17, name, i)).reshape(-1, 3).mean(0)
                             for i in range(n)]) for name, s in STYLES.items()}
    centroids = {k: v[: n // 2].mean(0) for k, v in means.items()}
    closest = min(np.linalg.norm(centroids[a] - centroids[b]) for a, b in itertools.combinations(centroids, 2))
    assert closest > 30, closest
    right = sum(min(centroids, key=lambda c: np.linalg.norm(centroids[c] - m)) == k
                for k, v in means.items() for m in v[n // 2:])
    assert right >= 0.9 * len(means) * (n - n // 2)


def test_same_seed_same_bytes_other_seed_other_bytes():
    style = STYLES["Danaus plexippus"]
    a = images.render(style, (320, 240), 17, "eol:174532", "", 3)
    assert a == images.render(style, (320, 240), 17, "eol:174532", "", 3)
    assert a != images.render(style, (320, 240), 18, "eol:174532", "", 3)


@pytest.mark.parametrize("name", ["Marmota flaviventris", "Cecidomyiidae", "Trametes versicolor"])
def test_pictures_of_one_taxon_differ(name):
    pics = [images.render(STYLES[name], (200, 150), 17, name, i) for i in range(5)]
    assert len(set(pics)) == len(pics)
    arrays = [_pixels(p) for p in pics]
    for a, b in itertools.combinations(arrays, 2):
        assert np.abs(a - b).mean() > 4  # jittered positions, sizes, rotation, gradient, noise


def test_rng_for_is_stable_across_processes():
    # seeded by sha256, not Python's salted hash(): a fixed value
    assert images.rng_for(17, "x", 1).integers(0, 1 << 30) == images.rng_for(17, "x", 1).integers(0, 1 << 30)
    assert int(images.rng_for(0).integers(0, 1000)) == int(np.random.default_rng(
        int.from_bytes(__import__("hashlib").sha256(b"0").digest()[:16], "big")).integers(0, 1000))

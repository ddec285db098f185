"""Procedurally drawn demo pictures: every taxon looks clearly different, every picture is a little different.

A taxon's `Style` (demo.taxa) fixes the background colour, the shape family and the palette; each picture
adds seeded jitter (shape positions, sizes, rotation, a colour gradient, mild noise, brightness). The same
(seed, taxon, index) always gives the same JPEG bytes with the same Pillow/numpy versions: all randomness
comes from a numpy Generator seeded by a hash of those, and nothing depends on time or global state.

Only Pillow and numpy; a few hundred pictures take a few seconds.
"""

from __future__ import annotations

import hashlib
import io
import math
from statistics import NormalDist
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from .taxa import Style

RGB = tuple[int, int, int]


def rng_for(*parts: object) -> np.random.Generator:
    """A generator seeded by a stable hash of `parts` (not Python's salted hash())."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def _jitter(rng: np.random.Generator, colour: RGB, amount: int = 18) -> RGB:
    return tuple(int(v) for v in np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, 3), 0, 255))


def _rotated(points: np.ndarray, angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    x, y = points[:, 0], points[:, 1]
    return list(zip((cx + c * x - s * y).tolist(), (cy + s * x + c * y).tolist()))


def _ellipse_points(rx: float, ry: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _count(rng, base: int, density: float) -> int:
    return max(1, int(round(base * density * rng.uniform(0.75, 1.25))))


# --------------------------------------------------------------------------------------- shape families
# Each draws onto `d` (an ImageDraw of a w x h RGB image) with colours from `pal`.
def _circles(d, rng, w, h, pal, density):
    m = min(w, h)
    for _ in range(_count(rng, 9, density)):
        r = rng.uniform(0.05, 0.16) * m
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        d.ellipse([x - r, y - r, x + r, y + r], fill=_jitter(rng, pal[rng.integers(len(pal))]))


def _rings(d, rng, w, h, pal, density):
    m = min(w, h)
    for _ in range(_count(rng, 2, density)):
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        r = rng.uniform(0.25, 0.45) * m
        band = max(3, int(r / rng.uniform(5, 8)))
        i = 0
        while r > band:
            d.ellipse([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], fill=_jitter(rng, pal[i % len(pal)], 10))
            r -= band
            i += 1


def _spots(d, rng, w, h, pal, density):
    m = min(w, h)
    for _ in range(_count(rng, 2, density)):
        rx, ry = rng.uniform(0.14, 0.24) * m, rng.uniform(0.11, 0.18) * m
        cx, cy, a = rng.uniform(rx, w - rx), rng.uniform(ry, h - ry), rng.uniform(0, math.pi)
        d.polygon(_rotated(_ellipse_points(rx, ry), a, cx, cy), fill=_jitter(rng, pal[0], 12))
        d.line(_rotated(np.array([[-rx, 0.0], [rx, 0.0]]), a + math.pi / 2, cx, cy), fill=pal[1], width=3)
        for _ in range(7):
            sx, sy = rng.uniform(-0.6, 0.6) * rx, rng.uniform(-0.6, 0.6) * ry
            (px, py), = _rotated(np.array([[sx, sy]]), a, cx, cy)
            sr = rng.uniform(0.1, 0.16) * ry
            d.ellipse([px - sr, py - sr, px + sr, py + sr], fill=pal[1])


def _stripes(d, rng, w, h, pal, density):
    a = rng.uniform(-0.35, 0.35) + math.pi / 4
    period = rng.uniform(0.07, 0.11) * max(w, h) / density
    diag = math.hypot(w, h)
    k = 0
    off = -diag
    while off < diag:
        width = period * rng.uniform(0.35, 0.55)
        pts = np.array([[off, -diag], [off + width, -diag], [off + width, diag], [off, diag]])
        d.polygon(_rotated(pts, a, w / 2, h / 2), fill=_jitter(rng, pal[k % len(pal)], 10))
        off += period
        k += 1


def _triangles(d, rng, w, h, pal, density):
    m = min(w, h)
    for _ in range(_count(rng, 2, density)):  # three-petalled flowers
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        size, a = rng.uniform(0.2, 0.32) * m, rng.uniform(0, 2 * math.pi)
        for k in range(3):
            t = a + k * 2 * math.pi / 3
            pts = np.array([[0.0, 0.0], [size, -0.45 * size], [size, 0.45 * size]])
            d.polygon(_rotated(pts, t, cx, cy), fill=_jitter(rng, pal[0 if k else 1], 8))
        r = 0.08 * size
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=pal[2])


def _waves(d, rng, w, h, pal, density):
    n = _count(rng, 5, density)
    for i in range(n):
        y0 = (i + rng.uniform(0.2, 0.8)) * h / n
        amp, freq, phase = rng.uniform(0.03, 0.08) * h, rng.uniform(1.5, 3.5), rng.uniform(0, 2 * math.pi)
        xs = np.linspace(-10, w + 10, 40)
        ys = y0 + amp * np.sin(xs / w * 2 * math.pi * freq + phase)
        d.line(list(zip(xs.tolist(), ys.tolist())), fill=_jitter(rng, pal[i % len(pal)]),
               width=int(rng.uniform(0.02, 0.045) * h) + 2)


def _blobs(d, rng, w, h, pal, density):
    m = min(w, h)
    for _ in range(_count(rng, 1, density)):  # a body, a head, a pale belly
        rx, ry = rng.uniform(0.28, 0.38) * m, rng.uniform(0.18, 0.24) * m
        cx, cy, a = rng.uniform(0.35, 0.65) * w, rng.uniform(0.4, 0.65) * h, rng.uniform(-0.5, 0.5)
        d.polygon(_rotated(_ellipse_points(rx, ry), a, cx, cy), fill=_jitter(rng, pal[0], 12))
        d.polygon(_rotated(_ellipse_points(0.6 * rx, 0.45 * ry) + [0, 0.35 * ry], a, cx, cy),
                  fill=_jitter(rng, pal[1], 12))
        hx, hy = _rotated(np.array([[rx * 1.05, -ry * 0.5]]), a, cx, cy)[0]
        hr = 0.45 * ry
        d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=_jitter(rng, pal[2], 8))


def _diamonds(d, rng, w, h, pal, density):
    step = rng.uniform(0.08, 0.12) * min(w, h) / math.sqrt(density)
    a = rng.uniform(-0.3, 0.3)
    ox, oy = rng.uniform(0, step), rng.uniform(0, step)
    for i in range(int(h / step) + 2):
        for j in range(int(w / step) + 2):
            if rng.random() < 0.25:
                continue
            cx, cy = ox + j * step + (step / 2 if i % 2 else 0), oy + i * step
            s = step * rng.uniform(0.3, 0.45)
            pts = np.array([[0.0, -s], [s * 0.7, 0.0], [0.0, s], [-s * 0.7, 0.0]])
            d.polygon(_rotated(pts, a, cx, cy), fill=_jitter(rng, pal[rng.integers(len(pal))], 10))


def _squares(d, rng, w, h, pal, density):
    m = min(w, h)
    for _ in range(_count(rng, 10, density)):
        s = rng.uniform(0.04, 0.1) * m
        pts = np.array([[-s, -s], [s, -s], [s, s], [-s, s]], dtype=float)
        d.polygon(_rotated(pts, rng.uniform(0, math.pi / 2), rng.uniform(0, w), rng.uniform(0, h)),
                  fill=_jitter(rng, pal[rng.integers(len(pal))]))


def _crosses(d, rng, w, h, pal, density):
    m = min(w, h)
    for _ in range(_count(rng, 12, density)):
        s, a = rng.uniform(0.05, 0.11) * m, rng.uniform(0, math.pi)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        col, width = _jitter(rng, pal[rng.integers(len(pal))]), max(2, int(s / 5))
        d.line(_rotated(np.array([[-s, 0.0], [s, 0.0]]), a, cx, cy), fill=col, width=width)
        d.line(_rotated(np.array([[0.0, -s], [0.0, s]]), a, cx, cy), fill=col, width=width)


def _zigzag(d, rng, w, h, pal, density):
    n = _count(rng, 4, density)
    for i in range(n):
        y0 = (i + rng.uniform(0.2, 0.8)) * h / n
        amp, teeth = rng.uniform(0.04, 0.09) * h, int(rng.integers(6, 12))
        xs = np.linspace(-10, w + 10, 2 * teeth + 1)
        ys = y0 + amp * np.where(np.arange(xs.size) % 2 == 0, -1.0, 1.0)
        d.line(list(zip(xs.tolist(), ys.tolist())), fill=_jitter(rng, pal[i % len(pal)]),
               width=int(rng.uniform(0.015, 0.03) * h) + 2, joint="curve")


def _arcs(d, rng, w, h, pal, density):
    m = min(w, h)
    for _ in range(_count(rng, 6, density)):
        r = rng.uniform(0.12, 0.35) * m
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        start = float(rng.uniform(0, 360))
        d.arc([cx - r, cy - r, cx + r, cy + r], start, start + float(rng.uniform(90, 200)),
              fill=_jitter(rng, pal[rng.integers(len(pal))]), width=max(3, int(r / 5)))


def _star_points(r: float, points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = np.arange(2 * points) * math.pi / points
    radius = np.where(np.arange(2 * points) % 2 == 0, r, r * inner)
    return np.stack([radius * np.sin(t), -radius * np.cos(t)], axis=1)


def _stars(d, rng, w, h, pal, density):
    m = min(w, h)
    for _ in range(_count(rng, 6, density)):
        r = rng.uniform(0.06, 0.15) * m
        d.polygon(_rotated(_star_points(r), rng.uniform(0, math.pi), rng.uniform(0, w), rng.uniform(0, h)),
                  fill=_jitter(rng, pal[rng.integers(len(pal))], 10))


def _petals(d, rng, w, h, pal, density):
    m = min(w, h)
    for _ in range(_count(rng, 2, density)):
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        size, a, n = rng.uniform(0.15, 0.25) * m, rng.uniform(0, math.pi), int(rng.integers(5, 7))
        for k in range(n):
            pts = _ellipse_points(size * 0.5, size * 0.17) + [size * 0.5, 0]
            d.polygon(_rotated(pts, a + k * 2 * math.pi / n, cx, cy), fill=_jitter(rng, pal[0], 10))
        r = 0.22 * size
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=pal[1])
        d.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=pal[2])


def _mushrooms(d, rng, w, h, pal, density):
    m = min(w, h)
    for _ in range(_count(rng, 2, density)):
        r = rng.uniform(0.14, 0.24) * m
        cx, cy = rng.uniform(r, w - r), rng.uniform(0.45, 0.75) * h
        d.rectangle([cx - 0.18 * r, cy, cx + 0.18 * r, min(h, cy + 1.2 * r)], fill=_jitter(rng, pal[2], 8))
        d.chord([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], 180, 360, fill=_jitter(rng, pal[0], 12))
        for _ in range(6):
            t = rng.uniform(math.pi * 1.1, math.pi * 1.9)
            rr = rng.uniform(0.3, 0.8)
            px, py = cx + rr * r * math.cos(t), cy + rr * 0.8 * r * math.sin(t)
            sr = 0.07 * r
            d.ellipse([px - sr, py - sr, px + sr, py + sr], fill=pal[1])


def _veins(d, rng, w, h, pal, density):
    step = rng.uniform(0.12, 0.18) * min(w, h) / math.sqrt(density)
    a = rng.uniform(-0.4, 0.4)
    diag = math.hypot(w, h)
    pos = -diag
    while pos < diag:
        x = pos + rng.uniform(-0.2, 0.2) * step
        d.line(_rotated(np.array([[x, -diag], [x + rng.uniform(-0.3, 0.3) * diag, diag]]), a, w / 2, h / 2),
               fill=pal[0], width=max(2, int(step / 8)))
        pos += step
    bw = max(4, int(0.04 * min(w, h)))
    d.rectangle([0, 0, w, bw * 2], fill=pal[0])
    d.rectangle([0, h - bw * 2, w, h], fill=pal[0])
    for x in np.arange(rng.uniform(0, bw * 2), w, bw * 2.5):
        d.ellipse([x, bw * 0.6, x + bw * 0.8, bw * 1.4], fill=pal[1])
        d.ellipse([x, h - bw * 1.4, x + bw * 0.8, h - bw * 0.6], fill=pal[1])


SHAPES: dict[str, Callable] = {
    "circles": _circles, "rings": _rings, "spots": _spots, "stripes": _stripes, "triangles": _triangles,
    "waves": _waves, "blobs": _blobs, "diamonds": _diamonds, "squares": _squares, "crosses": _crosses,
    "zigzag": _zigzag, "arcs": _arcs, "stars": _stars, "petals": _petals, "mushrooms": _mushrooms,
    "veins": _veins,
}


# ------------------------------------------------------------------------------------------------ drawing
# 256 quantiles of the standard normal distribution: a random byte through this table is gaussian noise
_GAUSS = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)])


def draw(style: Style, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """One picture of a taxon of `style`, `size` = (width, height)."""
    w, h = size
    if style.shape not in SHAPES:
        raise ValueError(f"unknown shape family {style.shape!r}: one of {', '.join(SHAPES)}")
    # background: the taxon's colour with a gentle seeded gradient (a grey ramp mapped through a LUT)
    bg = np.asarray(style.background, dtype=np.float64)
    c0, c1 = bg + rng.uniform(-14, 14, 3), bg + rng.uniform(-14, 14, 3)
    a = rng.uniform(0, 2 * math.pi)
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32) * np.float32(math.cos(a))
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32) * np.float32(math.sin(a))
    ramp = np.clip(ys[:, None] + xs[None, :] + np.float32(0.5), 0, 1) * np.float32(255)
    levels = np.arange(256) / 255.0
    lut = np.clip(np.round(c0[:, None] + (c1 - c0)[:, None] * levels[None, :]), 0, 255).astype(np.uint8)
    img = Image.fromarray(ramp.astype(np.uint8), "L").convert("RGB").point(lut.ravel().tolist())
    SHAPES[style.shape](ImageDraw.Draw(img), rng, w, h, style.palette, style.density)
    # brightness (a LUT) and mild gaussian noise (uniform random bytes through the gaussian quantiles)
    brightness = rng.uniform(0.92, 1.08)
    img = img.point(np.clip(np.round(np.arange(256) * brightness), 0, 255).astype(np.uint8).tolist() * 3)
    table = np.round(_GAUSS * rng.uniform(2.0, 5.0)).astype(np.int16)
    arr = np.asarray(img, dtype=np.int16)
    arr += np.take(table, np.frombuffer(rng.bytes(arr.size), dtype=np.uint8)).reshape(arr.shape)
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def render(style: Style, size: tuple[int, int], seed: int, *key: object, quality: int = 88) -> bytes:
    """The JPEG bytes of picture `key` (e.g. taxon key, split, index) of a taxon: same inputs, same bytes."""
    return jpeg_bytes(draw(style, size, rng_for(seed, "image", *key)), quality)


def pick_size(rng: np.random.Generator, choices: list[tuple[int, int]]) -> tuple[int, int]:
    return choices[int(rng.integers(len(choices)))]

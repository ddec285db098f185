"""Benchmark images for bench/fetch_vs_img2dataset.py: N JPEGs, width and height each 256-640 px, 30-60 KB.

Content with natural-image statistics (1/f^beta colour noise textures, cropped, scaled and tinted), so
that JPEG sizes, decode and resize costs resemble photos. Deterministic for a seed; written once and reused
(`python bench/fetch_images.py DIR [N]`).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

MIN_SIDE, MAX_SIDE = 256, 640
MIN_BYTES, MAX_BYTES = 30_000, 60_000


def _texture(rng: np.random.Generator, n: int = 2048, beta: float = 1.0) -> np.ndarray:
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    base = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    chans = []
    for _ in range(3):
        spec = (base + 0.4 * (rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n)))) / f ** beta
        x = np.real(np.fft.ifft2(spec))
        x = (x - np.percentile(x, 1)) / (np.percentile(x, 99) - np.percentile(x, 1))
        chans.append(np.clip(x, 0, 1))
    return (np.stack(chans, -1) * 255).astype(np.uint8)


def _encode_in_range(img: Image.Image, rng: np.random.Generator) -> bytes | None:
    target = rng.uniform(MIN_BYTES + 2000, MAX_BYTES - 2000)
    lo, hi, best = 40, 98, None
    while lo <= hi:  # binary search of the JPEG quality that lands nearest the target size
        q = (lo + hi) // 2
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        data = buf.getvalue()
        if MIN_BYTES <= len(data) <= MAX_BYTES and (best is None or abs(len(data) - target) < abs(len(best) - target)):
            best = data
        if len(data) < target:
            lo = q + 1
        else:
            hi = q - 1
    return best


def make_images(directory: str | Path, n: int = 10_000, seed: int = 0) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{i:06d}.jpg" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    textures = [_texture(rng, beta=b) for b in (0.8, 1.0, 1.2, 1.5)]
    i = 0
    while i < n:
        if paths[i].exists():
            i += 1
            continue
        tex = textures[int(rng.integers(len(textures)))]
        w, h = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))  # each side 256-640 px
        scale = rng.uniform(1.0, 3.0)
        cw, ch = min(2047, int(w * scale)), min(2047, int(h * scale))
        x0, y0 = int(rng.integers(0, 2048 - cw)), int(rng.integers(0, 2048 - ch))
        crop = Image.fromarray(tex[y0:y0 + ch, x0:x0 + cw]).resize((w, h), Image.Resampling.BICUBIC)
        tint = rng.uniform(0.6, 1.2, size=3)
        crop = Image.fromarray(np.clip(np.asarray(crop, dtype=np.float32) * tint, 0, 255).astype(np.uint8))
        data = _encode_in_range(crop, rng)
        if data is None:  # this crop cannot land in 30-60 KB: draw another
            continue
        paths[i].write_bytes(data)
        i += 1
    return paths


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/tol-bench/images-256-640"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    made = make_images(out, count)
    sizes = [p.stat().st_size for p in made]
    print(f"{len(made)} images in {out}: {min(sizes)}..{max(sizes)} bytes, mean {sum(sizes) / len(sizes):.0f}")

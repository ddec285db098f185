"""Why PDQ runs on a 64 x 64 antialiased copy: the measurement behind fetch/imaging.py's canonical preparation.

For each test image (1/f-noise photographs-alike at 1600 x 1200, plus matplotlib's grace_hopper.jpg when
present), the PDQ hash of the image is compared with the PDQ hash of smaller copies of it (half, quarter,
300 px and 128 px on the longer side, a 224 x 224 squash), each JPEG re-encoded at quality 90, under several
preparations of the pixels before pdqhash. Columns: mean / max Hamming distance over the images. Also the
drift that JPEG DCT-domain downscaling (`Image.draft`) would add, and the time per image.

    python bench/fetch_pdq_preparation.py
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
import pdqhash
from PIL import Image

from fetch_images import _texture

BIC = Image.Resampling.BICUBIC


def pdq(img: Image.Image) -> np.ndarray:
    bits, _ = pdqhash.compute(np.ascontiguousarray(np.asarray(img.convert("RGB"))))
    return np.asarray(bits, dtype=bool)


def fit(img: Image.Image, side: int, filt=BIC) -> Image.Image:
    s = side / max(img.size)
    return img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), filt)


PREPARATIONS = {
    "full resolution (pdqhash as is)": lambda im: im,
    "fit 512 bilinear": lambda im: fit(im, 512, Image.Resampling.BILINEAR) if max(im.size) > 512 else im,
    "squash 256 bicubic": lambda im: im.resize((256, 256), BIC, reducing_gap=2.0),
    "squash 128 bicubic": lambda im: im.resize((128, 128), BIC, reducing_gap=2.0),
    "squash 64 box": lambda im: im.resize((64, 64), Image.Resampling.BOX),
    "squash 64 bicubic": lambda im: im.resize((64, 64), BIC, reducing_gap=2.0),
}
COPIES = {
    "half": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "quarter": lambda im: im.resize((im.width // 4, im.height // 4), Image.Resampling.LANCZOS),
    "300px": lambda im: fit(im, 300, Image.Resampling.BILINEAR),
    "128px": lambda im: fit(im, 128),
    "224sq": lambda im: im.resize((224, 224), BIC),
}


def jpeg(img: Image.Image, q: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=q)
    return buf.getvalue()


def decode(data: bytes, draft: tuple[int, int] | None = None) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    if draft:
        img.draft("RGB", draft)
    return img.convert("RGB")


def test_images() -> list[bytes]:
    rng = np.random.default_rng(7)
    out = []
    for beta in (0.9, 1.0, 1.1, 1.2, 1.3, 1.5):
        tex = _texture(rng, 2048, beta)
        for k in range(2):
            y, x = int(rng.integers(0, 800)), int(rng.integers(0, 400))
            out.append(jpeg(Image.fromarray(tex[y:y + 1200, x:x + 1600]), 92))
    try:
        import matplotlib

        out.append((Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").read_bytes())
    except Exception:
        pass
    return out


def main() -> None:
    images = test_images()
    print(f"{len(images)} images; Hamming distance image vs copy, mean/max over images")
    print("preparation".ljust(30), " ".join(c.rjust(9) for c in COPIES), "  ms/image")
    for name, prep in PREPARATIONS.items():
        dist = {c: [] for c in COPIES}
        t = 0.0
        for data in images:
            full = decode(data)
            t0 = time.perf_counter()
            h = pdq(prep(full))
            t += time.perf_counter() - t0
            for c, make in COPIES.items():
                dist[c].append(int((h != pdq(prep(decode(jpeg(make(full)))))).sum()))
        print(name.ljust(30), " ".join(f"{np.mean(v):4.1f}/{max(v):<3d}".rjust(9) for v in dist.values()),
              f"  {t / len(images) * 1000:.1f}")
    # the chosen procedure end to end, from the files' bytes (JPEG DCT reduction, then 64 x 64)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tol_builder.fetch import imaging

    dist = {c: [] for c in COPIES}
    t = 0.0
    drift = []
    for data in images:
        t0 = time.perf_counter()
        h = imaging.pdq_of_bytes(data)[0]
        t += time.perf_counter() - t0
        full = decode(data)
        drift.append(imaging.hamming(h, imaging.pdq_of(full)[0]))
        for c, make in COPIES.items():
            dist[c].append(imaging.hamming(h, imaging.pdq_of_bytes(jpeg(make(full)))[0]))
    print("chosen: pdq_of_bytes".ljust(30), " ".join(f"{np.mean(v):4.1f}/{max(v):<3d}".rjust(9) for v in dist.values()),
          f"  {t / len(images) * 1000:.1f} (decode included)")
    print(f"its JPEG DCT reduction (sides >= {imaging.PDQ_DECODE_LONG} / {imaging.PDQ_DECODE_SHORT} px) "
          "against a full decode: "
          f"{np.mean(drift):.1f} bits on average, {max(drift)} at most")


if __name__ == "__main__":
    main()

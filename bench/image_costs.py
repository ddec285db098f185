"""Per-image CPU costs behind the README's projection of a full rebuild ("How long the full rebuild takes").

    python bench/image_costs.py

* `imaging.process` (everything fetch does to one image: decode, sha256, md5, PDQ, resize to
  `fetch.max_side` and JPEG encode, or the original kept when it is already small enough) on JPEGs of the
  sizes the sources serve: iNat21 (longer side <= 500 px), BIOSCAN-1M cropped_256, EOL full-size copies
  (from 640 px to several megapixels);
* streaming a `.tar.gz` of JPEGs member by member (what each of the `fetch.archive_stream_tasks` tasks does
  with iNat21's 224 GB train.tar.gz);
* the shard writer's resize of a stored copy to 224 x 224 (squash, bicubic) and its JPEG encode.

CPU seconds of this process (time.process_time), so other work on the machine changes them little. Results
also go to bench/results/image_costs.json.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tol_builder.config import FetchConfig  # noqa: E402
from tol_builder.fetch.imaging import process  # noqa: E402

SIZES = [(256, 256), (500, 375), (640, 480), (1024, 768), (1600, 1200), (3000, 2000)]


def photo(w: int, h: int, rng) -> bytes:
    """A JPEG that compresses like a photo (smooth, upsampled noise), quality 90."""
    small = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((w, h), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def cpu_ms(fn, n: int) -> float:
    fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n * 1000


def main() -> None:
    rng = np.random.default_rng(0)
    cfg = FetchConfig()
    results: dict = {"process_ms": {}, "resize_224_ms": {}}
    for w, h in SIZES:
        data = photo(w, h, rng)
        ms = cpu_ms(lambda: process(data, cfg), 40 if w * h < 2_000_000 else 15)
        stored = process(data, cfg).jpeg

        def resize(stored=stored):
            with Image.open(io.BytesIO(stored)) as im:
                small = im.convert("RGB").resize((224, 224), Image.BICUBIC)
            small.save(io.BytesIO(), "JPEG", quality=95)

        rs = cpu_ms(resize, 40)
        results["process_ms"][f"{w}x{h}"] = round(ms, 2)
        results["resize_224_ms"][f"{w}x{h}"] = round(rs, 2)
        print(f"{w:>5} x {h:<5} {len(data) // 1024:>5} KB  fetch processing {ms:6.1f} ms   "
              f"shard resize of the stored copy {rs:5.1f} ms")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(400):
            d = photo(500, 375, rng)
            info = tarfile.TarInfo(f"train/x/{i}.jpg")
            info.size = len(d)
            tar.addfile(info, io.BytesIO(d))
    gz = gzip.compress(buf.getvalue(), compresslevel=6)

    def stream():
        with tarfile.open(fileobj=io.BytesIO(gz), mode="r|gz") as t:
            for m in t:
                t.extractfile(m).read()

    ms = cpu_ms(stream, 5)
    results["targz_stream_mb_per_s"] = round(len(gz) / (ms / 1000) / 1e6, 1)
    print(f"streaming a .tar.gz of JPEGs member by member: {results['targz_stream_mb_per_s']} MB/s of archive a core")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "image_costs.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

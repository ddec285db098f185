"""The cost of issue 18's decode guards on the hot path, and the peak memory they bound.

    python bench/imaging_hotpath.py [--base DIR] [-n 2000] [--rounds 5]       # CPU ms per image
    python bench/imaging_hotpath.py --memory [--base DIR]                       # peak memory of the examples
    python bench/imaging_hotpath.py --same [--base DIR]                         # the same outputs before / after

CPU: `imaging.process` over bench/fetch_images.py's JPEGs (256-640 px, 30-60 KB), before (the tree at
commit 1544851) and after (this tree), each in a fresh subprocess that imports its tree's tol_builder by
path; base and current alternate, the order swapped every round (ABBA), `--rounds` each. CPU seconds of the
subprocess (time.process_time) over all images after a warm-up, divided by the images; the median round
counts. Two settings: the defaults (most of these images are kept as they came: the PDQ decode only) and
`max_side = 256` (every image resized and re-encoded, as bench/fetch_vs_img2dataset.py runs the stage).

Memory: issue 18's examples, 9400 x 9400 pixels each (a 16-bit grey PNG, an RGBA PNG, a float TIFF), one
subprocess per image and tree; the peak is the growth of the process's high-water mark (VmHWM, reset through
/proc/self/clear_refs before the call) during `imaging.process`. Linux only. Then one 6000 x 6000 file per
mode the conversion treats differently, decoded in full by this tree: measured bytes per pixel against the
model `imaging.decoded_bytes_per_pixel` that fetch.max_decoded_bytes is checked with.

Same output (`--same`): 160 images drawn by the demo (tol_builder/demo/images.py) at 5 sizes up to 3000 x 2000,
saved as RGB / palette / palette with a transparent index / RGBA / LA / L / 1-bit / 16-bit PNG, JPEG, CMYK JPEG,
GIF, WebP (RGB and RGBA), float and 32-bit TIFF, and JPEG and RGBA PNG in the 7 turned EXIF orientations;
`imaging.process` under 4 settings and `pdq_of_bytes` on each, before and after: every PDQ, size and stored
JPEG byte must be equal (TIFF allowed after, as it was before).

Without --base, a git worktree of 1544851 is made in a temporary folder and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_COMMIT = "1544851"
SETTINGS = {"defaults": {}, "max_side=256": {"max_side": 256}}
SIDE = 9400  # the examples: under max_pixels (89,478,485)


# ------------------------------------------------------------------------------------------- workers
def _import_tree(tree: str):
    sys.path.insert(0, tree)
    from tol_builder.config import FetchConfig
    from tol_builder.fetch import imaging

    assert Path(imaging.__file__).resolve().is_relative_to(Path(tree).resolve()), imaging.__file__
    return FetchConfig, imaging


def cpu_worker(tree: str, images: str, n: int) -> None:
    import time

    FetchConfig, imaging = _import_tree(tree)
    files = sorted(Path(images).glob("*.jpg"))[:n]
    blobs = [f.read_bytes() for f in files]
    out = {}
    for name, kw in SETTINGS.items():
        cfg = FetchConfig(**kw)
        for data in blobs[:50]:  # warm-up: imports, allocator, caches
            imaging.process(data, cfg)
        t0 = time.process_time()
        for data in blobs:
            imaging.process(data, cfg)
        out[name] = (time.process_time() - t0) / len(blobs) * 1000
    print(json.dumps(out))


def _peak_bytes() -> tuple[int, int]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmHWM"], fields["VmRSS"]


def memory_worker(tree: str, image: str, settings: str) -> None:
    FetchConfig, imaging = _import_tree(tree)
    import pdqhash  # noqa: F401  (imported lazily by process: not part of the peak)

    data = Path(image).read_bytes()
    cfg = FetchConfig(**json.loads(settings))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    rss0 = _peak_bytes()[1]
    try:
        p = imaging.process(data, cfg)
        result = f"ok, stored {p.stored_width}x{p.stored_height}"
    except imaging.ImageError as e:
        result = e.error_class
    print(json.dumps({"peak_mb": (_peak_bytes()[0] - rss0) / 1e6, "result": result}))


SAME_SETTINGS = [{}, {"max_side": 128}, {"max_side": 2000}, {"keep_original_jpeg": False, "resize_filter": "lanczos"}]


def same_worker(tree: str, corpus: str) -> None:
    import hashlib

    FetchConfig, imaging = _import_tree(tree)
    digests = {}
    for path in sorted(Path(corpus).iterdir()):
        data = path.read_bytes()
        for i, kw in enumerate(SAME_SETTINGS):
            cfg = FetchConfig(**kw)
            cfg.image_formats = ["JPEG", "PNG", "WEBP", "GIF", "TIFF"]  # an unknown attribute before: ignored
            try:
                p = imaging.process(data, cfg)
                got = [p.pdq, p.pdq_quality, p.format, p.width, p.height, p.stored_width, p.stored_height,
                       hashlib.sha256(p.jpeg).hexdigest(), p.kept_original]
            except imaging.ImageError as e:
                got = [e.error_class]
            digests[f"{path.name} {i}"] = got
        if path.suffix != ".tif":  # pdq_of_bytes takes the default formats
            digests[f"{path.name} pdq_of_bytes"] = list(imaging.pdq_of_bytes(data))
    print(json.dumps(digests))


def make_corpus(folder: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from tol_builder.demo.images import draw, rng_for
    from tol_builder.demo.taxa import STYLES

    def save(name: str, img: Image.Image, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        (folder / name).write_bytes(buf.getvalue())

    styles = list(STYLES.values())
    for i, size in enumerate([(500, 375), (1600, 1200), (300, 200), (3000, 2000), (260, 2000)]):
        img = draw(styles[i % len(styles)], size, rng_for(1, i))
        grey = np.asarray(img.convert("L"))
        rgba = img.copy()
        rgba.putalpha(Image.fromarray(grey[::-1].copy()))  # every alpha level
        t = f"{i}_{size[0]}x{size[1]}"
        save(f"{t}.jpg", img, "JPEG", quality=88)
        save(f"{t}.png", img, "PNG", compress_level=1)
        save(f"{t}_p.png", img.convert("P"), "PNG")
        save(f"{t}_pt.png", img.quantize(64), "PNG", transparency=3)
        save(f"{t}_rgba.png", rgba, "PNG", compress_level=1)
        save(f"{t}_la.png", rgba.convert("LA"), "PNG", compress_level=1)
        save(f"{t}_l.png", img.convert("L"), "PNG")
        save(f"{t}_1.png", img.convert("1"), "PNG")
        save(f"{t}_cmyk.jpg", img.convert("CMYK"), "JPEG", quality=90)
        save(f"{t}_i16.png", Image.fromarray(grey.astype(np.uint16) * 251), "PNG")
        save(f"{t}.gif", img.convert("P"), "GIF")
        save(f"{t}.webp", img, "WEBP", quality=80)
        save(f"{t}_rgba.webp", rgba, "WEBP", quality=80)
        save(f"{t}_f.tif", Image.fromarray(grey.astype(np.float32) / 255, "F"), "TIFF")
        save(f"{t}_f255.tif", Image.fromarray(grey.astype(np.float32) * 1.3 - 20, "F"), "TIFF")
        save(f"{t}_i.tif", Image.fromarray(grey.astype(np.int32) * 300 - 1000), "TIFF")
        save(f"{t}_ismall.tif", Image.fromarray(grey.astype(np.int32) - 10), "TIFF")
        for o in range(2, 9):
            exif = Image.Exif()
            exif[0x0112] = o
            save(f"{t}_o{o}.jpg", img, "JPEG", quality=88, exif=exif.tobytes())
            save(f"{t}_o{o}_rgba.png", rgba, "PNG", exif=exif.tobytes())


def same(base: str) -> None:
    with tempfile.TemporaryDirectory() as corpus:
        make_corpus(Path(corpus))
        got = {which: _run(["--same-worker", tree, "--images", corpus])
               for which, tree in (("base", base), ("current", str(ROOT)))}
    differ = [k for k in got["base"] if got["base"][k] != got["current"].get(k)]
    images = len({k.split()[0] for k in got["base"]})
    print(f"{images} images, {len(got['base'])} results (4 settings + pdq_of_bytes): {len(differ)} differ")
    for k in differ:
        print(f"  {k}: before {got['base'][k]}, after {got['current'].get(k)}")


# ------------------------------------------------------------------------------------------- driver
def _run(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_examples(folder: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    paths = {"16-bit grey PNG": folder / "grey16.png", "RGBA PNG": folder / "rgba.png",
             "float TIFF": folder / "float.tif"}
    if not all(p.exists() for p in paths.values()):
        grey = np.zeros((SIDE, SIDE), np.uint16)
        grey[::97, :], grey[:, ::89] = 40000, 20000
        Image.fromarray(grey).save(paths["16-bit grey PNG"])
        del grey
        rgba = Image.new("RGBA", (SIDE, SIDE), (10, 200, 30, 128))
        rgba.paste((200, 10, 10, 255), (0, 0, SIDE // 2, SIDE // 3))
        rgba.save(paths["RGBA PNG"])
        del rgba
        flt = np.zeros((SIDE, SIDE), np.float32)
        flt[::53, :], flt[:, ::61] = 0.7, 0.3
        Image.fromarray(flt, "F").save(paths["float TIFF"], compression="tiff_adobe_deflate")
    return paths


def cpu(base: str, n: int, rounds: int) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from fetch_images import make_images

    images = Path(tempfile.gettempdir()) / "tol-bench" / "images-256-640"
    make_images(images, n)
    runs: dict[str, dict[str, list[float]]] = {"base": {s: [] for s in SETTINGS}, "current": {s: [] for s in SETTINGS}}
    trees = {"base": base, "current": str(ROOT)}
    for r in range(rounds):
        for which in (("base", "current") if r % 2 == 0 else ("current", "base")):
            got = _run(["--cpu-worker", trees[which], "--images", str(images), "-n", str(n)])
            for s, ms in got.items():
                runs[which][s].append(ms)
            print(f"round {r + 1} {which:8s}", "  ".join(f"{s}: {ms:.3f} ms" for s, ms in got.items()), flush=True)
    print(f"\nCPU ms per image of imaging.process, {n} images of bench/fetch_images.py, median of {rounds} "
          f"alternating runs (all runs in brackets)")
    for s in SETTINGS:
        b, c = statistics.median(runs["base"][s]), statistics.median(runs["current"][s])
        both = {k: ", ".join(f"{v:.3f}" for v in runs[k][s]) for k in runs}
        print(f"{s:14s} base {b:.3f} ({both['base']})  current {c:.3f} ({both['current']})  "
              f"current / base {c / b:.4f} ({(c / b - 1) * 100:+.2f}%)")


def memory(base: str) -> None:
    folder = Path(tempfile.gettempdir()) / "tol-bench" / "issue18-examples"
    folder.mkdir(parents=True, exist_ok=True)
    paths = make_examples(folder)
    allow_all = json.dumps({"image_formats": ["JPEG", "PNG", "WEBP", "GIF", "TIFF"],
                            "max_decoded_bytes": 4 * 1024 ** 3})
    runs = [("base", base, "{}"), ("current, defaults", str(ROOT), "{}"),
            ("current, TIFF allowed, cap 4 GiB", str(ROOT), allow_all)]
    print(f"peak memory of imaging.process (growth of VmHWM), {SIDE} x {SIDE} pixels")
    for name, path in paths.items():
        for label, tree, settings in runs:
            got = _run(["--memory-worker", tree, "--image", str(path), "--settings", settings])
            print(f"{name:16s} {path.stat().st_size / 1e3:7.0f} KB  {label:34s} {got['peak_mb']:7.0f} MB  "
                  f"{got['result']}", flush=True)


MODES_SIDE = 6000


def make_modes(folder: Path) -> dict[str, tuple[Path, str, bool]]:
    """One 6000 x 6000 file per mode the conversion treats differently: path, mode, EXIF-turned."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    s = MODES_SIDE
    base = Image.fromarray(rng.integers(0, 255, (s // 8, s // 8, 3), dtype=np.uint8)).resize((s, s))
    grey = np.asarray(base.convert("L"))
    turned = Image.Exif()
    turned[0x0112] = 6
    cases = {  # name: (image, format, save options, mode, turned)
        "RGB PNG": (base, "PNG", {"compress_level": 1}, "RGB", False),
        "RGB JPEG": (base, "JPEG", {"quality": 90}, "RGB", False),
        "turned RGB JPEG": (base, "JPEG", {"quality": 90, "exif": turned.tobytes()}, "RGB", True),
        "L PNG": (base.convert("L"), "PNG", {}, "L", False),
        "palette PNG": (base.convert("P"), "PNG", {}, "P", False),
        "palette + tRNS PNG": (base.convert("P"), "PNG", {"transparency": 0}, "P", False),
        "1-bit PNG": (base.convert("1"), "PNG", {}, "1", False),
        "16-bit PNG": (Image.fromarray(grey.astype(np.uint16) * 257), "PNG", {}, "I;16", False),
        "RGBA PNG": (base.convert("RGBA"), "PNG", {"compress_level": 1}, "RGBA", False),
        "LA PNG": (base.convert("LA"), "PNG", {"compress_level": 1}, "LA", False),
        "CMYK JPEG": (base.convert("CMYK"), "JPEG", {"quality": 90}, "CMYK", False),
        "WebP": (base, "WEBP", {"quality": 80}, "RGB", False),
        "GIF": (base.convert("P"), "GIF", {}, "P", False),
        "float TIFF": (Image.fromarray(grey.astype(np.float32) / 255, "F"), "TIFF", {}, "F", False),
        "32-bit TIFF": (Image.fromarray(grey.astype(np.int32) * 200), "TIFF", {}, "I", False),
    }
    out = {}
    for name, (img, fmt, kw, mode, is_turned) in cases.items():
        path = folder / f"mode-{name.replace(' ', '_').replace('+', 'plus')}.{fmt.lower()}"
        if not path.exists():
            img.save(path, fmt, **kw)
        out[name] = (path, mode, is_turned)
    return out


def modes() -> None:
    sys.path.insert(0, str(ROOT))
    from tol_builder.fetch.imaging import decoded_bytes_per_pixel

    folder = Path(tempfile.gettempdir()) / "tol-bench" / "issue18-modes"
    folder.mkdir(parents=True, exist_ok=True)
    full = json.dumps({"image_formats": ["JPEG", "PNG", "WEBP", "GIF", "TIFF"], "max_decoded_bytes": 4 * 1024 ** 3,
                       "max_side": 100_000, "keep_original_jpeg": False})  # JPEGs decoded in full too
    print(f"\npeak bytes per pixel of imaging.process (current), {MODES_SIDE} x {MODES_SIDE}, against the model")
    for name, (path, mode, turned) in make_modes(folder).items():
        got = _run(["--memory-worker", str(ROOT), "--image", str(path), "--settings", full])
        fmt = path.suffix[1:].upper()
        model = decoded_bytes_per_pixel(mode, fmt, turned)
        measured = got["peak_mb"] * 1e6 / MODES_SIDE ** 2
        print(f"{name:20s} {mode:5s} measured {measured:5.2f}  model {model:2d}  ratio {measured / model:.2f}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help=f"a checkout of {BASE_COMMIT} (default: a temporary git worktree)")
    ap.add_argument("-n", type=int, default=2000, help="images (bench/fetch_images.py)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--memory", action="store_true", help="peak memory of the issue's examples instead of CPU")
    ap.add_argument("--same", action="store_true", help="compare every output before / after instead of CPU")
    ap.add_argument("--cpu-worker", help=argparse.SUPPRESS)
    ap.add_argument("--same-worker", help=argparse.SUPPRESS)
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    ap.add_argument("--images", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cpu_worker:
        return cpu_worker(a.cpu_worker, a.images, a.n)
    if a.memory_worker:
        return memory_worker(a.memory_worker, a.image, a.settings)
    if a.same_worker:
        return same_worker(a.same_worker, a.images)
    made = None
    base = a.base
    if base is None:
        made = tempfile.mkdtemp(prefix="tol-base-")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", made, BASE_COMMIT], check=True,
                       capture_output=True)
        base = made
    try:
        if a.memory:
            memory(base)
            modes()
        elif a.same:
            same(base)
        else:
            cpu(base, a.n, a.rounds)
    finally:
        if made:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", made], check=False)


if __name__ == "__main__":
    main()

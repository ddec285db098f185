"""How PDQ (imaging.pdq_of_bytes, the canonical preparation) sees copies and hard negatives.

    python bench/pdq_robustness.py              # ~3 minutes; bench/results/pdq_robustness.json
    python bench/pdq_robustness.py --parts edits  # edit-robust matching (issue 22); pdq_robustness_edits.json

Part `edits` (issue 22) is described in `measure_edits`: re-hosting edits at several strengths, recall with
one hash (today), with the 8 dihedral hashes, and with dihedral + a variant grid of the evaluation image
(tol_builder/dedup/variants.py), the grid chosen from these measurements; false matches per variant class on
synthetic same-taxon hard negatives.


Images, all deterministic:
* demo pictures (tol_builder.demo.images): each of the 16 demo taxon styles drawn at the demo's iNat21 /
  EOL sizes, different pictures from different keys;
* photographs-alike: crops of 1/f^beta colour-noise textures (bench/fetch_images._texture, as in
  bench/fetch_pdq_preparation.py), 512 x 384, beta 0.9..1.5, tinted.

Copies (must match, distance <= 10): JPEG quality 40; resize to 50% (Lanczos); brightness x1.1, x1.2, x0.8
and +20 levels; and, reported only, a 5% crop (2.5% off each side) and a 2 degree rotation (bicubic, same
size). Every copy but q40 is re-encoded at JPEG quality 90. For the crop and the rotation, also the distance
to the nearest of a grid of variants an evaluation side could hash (centre crops 3% and 7%, rotations +-1
and +-3 degrees: the copy's own 5% / 2 degrees left out, as a copy's exact crop is never known).

Hard negatives (must not match): pairs of different pictures of the same taxon with similar composition
and background:
* same taxon: pictures of one demo style with other keys (same background colour, shapes and palette);
* demo bursts: one scene drawn 25% larger, 5 frames panned 3-6% of the frame apart along a direction,
  each with its own brightness (+-4%) and sensor noise: a handheld burst;
* photo bursts: one 1/f background, a textured subject (an ellipse of another texture, 30-45% of the
  frame) moved up to 12% of the frame and rescaled +-10% between frames, own brightness and noise: a
  tripod burst of a moving animal.

Prints per transformation and per kind of hard negative the distance distribution, the share within 10,
and the same restricted to hashes of PDQ quality >= 50 (Meta's recommended floor for trusting a hash).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fetch_images import _texture  # noqa: E402
from tol_builder.demo import images as demo_images  # noqa: E402
from tol_builder.demo.sources import EOL_SIZES, INAT_SIZES  # noqa: E402
from tol_builder.demo.taxa import STYLES  # noqa: E402
from tol_builder.dedup import variants as V  # noqa: E402
from tol_builder.fetch.imaging import decode as imaging_decode, decode_for_pdq, encode_jpeg, hamming, pdq_of_bytes  # noqa: E402

MATCH = 10
QUALITY_FLOOR = 50
PHOTO_SIZE = (512, 384)
BINS = [0, 11, 21, 41, 61, 81, 101, 129, 257]  # histogram edges printed (the JSON keeps every distance)
THRESHOLDS = (10, 16, 20, 24, 31)  # 10: TreeOfLife-200M's; 31: Meta's suggested PDQ match threshold


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    return encode_jpeg(img, quality)


def decode(data: bytes) -> Image.Image:
    return imaging_decode(data)[0]


def centre_crop(img: Image.Image, fraction: float) -> Image.Image:
    dx, dy = round(img.width * fraction / 2), round(img.height * fraction / 2)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


def shift_levels(img: Image.Image, v: int) -> Image.Image:
    return img.point(np.clip(np.arange(256) + v, 0, 255).astype(np.uint8).tolist() * 3)


COPIES = {
    "jpeg_q40": lambda im: jpeg(im, 40),
    "resize_50": lambda im: jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)),
    "brightness_x1.1": lambda im: jpeg(ImageEnhance.Brightness(im).enhance(1.1)),
    "brightness_x1.2": lambda im: jpeg(ImageEnhance.Brightness(im).enhance(1.2)),
    "brightness_x0.8": lambda im: jpeg(ImageEnhance.Brightness(im).enhance(0.8)),
    "brightness_+20": lambda im: jpeg(shift_levels(im, 20)),
    "crop_5pct": lambda im: jpeg(centre_crop(im, 0.05)),
    "rotate_2deg": lambda im: jpeg(im.rotate(2, resample=Image.Resampling.BICUBIC)),
}
CAUGHT = ("jpeg_q40", "resize_50", "brightness_x1.1", "brightness_x1.2", "brightness_x0.8", "brightness_+20")
VARIANTS = {  # what an evaluation side could hash besides the image itself (see the docstring)
    "crop_5pct": [lambda im, f=f: centre_crop(im, f) for f in (0.03, 0.07)],
    "rotate_2deg": [lambda im, a=a: im.rotate(a, resample=Image.Resampling.BICUBIC) for a in (-3, -1, 1, 3)],
}


# --------------------------------------------------------------------------------------------- pictures
def demo_picture(style_name: str, key: int, seed: int) -> bytes:
    rng = demo_images.rng_for(seed, "pdq-size", style_name, key)
    size = demo_images.pick_size(rng, INAT_SIZES + EOL_SIZES)
    return demo_images.render(STYLES[style_name], size, seed, "pdq", style_name, key)


class Textures:
    """512 x 384 crops of 1/f textures: four disjoint crops per 1024 x 1024 texture."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng([seed, 7])
        self.pending: list[np.ndarray] = []

    def next(self) -> np.ndarray:
        if not self.pending:
            tex = _texture(self.rng, 1024, float(self.rng.uniform(0.9, 1.5)))
            w, h = PHOTO_SIZE
            self.pending = [tex[y:y + h, x:x + w] for y in (0, 512) for x in (0, 512)]
        crop = self.pending.pop().astype(np.float32)
        tint = self.rng.uniform(0.7, 1.15, 3).astype(np.float32)  # a colour cast, as photos have
        return np.clip(crop * tint, 0, 255).astype(np.uint8)


def noisy(img: Image.Image, rng: np.random.Generator, brightness: float, sigma: float = 2.0) -> Image.Image:
    a = np.asarray(img, dtype=np.float32) * brightness + rng.normal(0, sigma, (img.height, img.width, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def demo_burst(style_name: str, scene: int, seed: int, frames: int = 5) -> tuple[list[bytes], list[float]]:
    """Frames of one drawn scene panned along a direction; returns (JPEGs, pan offset of each in % of width)."""
    rng = demo_images.rng_for(seed, "pdq-burst", style_name, scene)
    w, h = demo_images.pick_size(rng, INAT_SIZES + EOL_SIZES)
    canvas = demo_images.draw(STYLES[style_name], (round(w * 1.25), round(h * 1.25)), rng)
    step = rng.uniform(0.03, 0.06)
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = np.cos(angle) * step * w, np.sin(angle) * step * h
    x0 = (canvas.width - w) / 2 - dx * (frames - 1) / 2
    y0 = (canvas.height - h) / 2 - dy * (frames - 1) / 2
    out, offsets = [], []
    for k in range(frames):
        x, y = round(x0 + k * dx), round(y0 + k * dy)
        frame = canvas.crop((x, y, x + w, y + h))
        out.append(jpeg(noisy(frame, rng, rng.uniform(0.96, 1.04)), 88))
        offsets.append(100 * k * step)
    return out, offsets


def photo_burst(textures: Textures, rng: np.random.Generator, frames: int = 6) -> tuple[list[bytes], list[tuple]]:
    """A background and a subject moving over it; returns (JPEGs, subject centre and scale per frame)."""
    background = Image.fromarray(textures.next())
    subject = Image.fromarray(textures.next())
    w, h = background.size
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.35, 0.65) * h
    size = rng.uniform(0.30, 0.45) * h
    out, where = [], []
    for _ in range(frames):
        x, y = cx + rng.uniform(-0.12, 0.12) * w, cy + rng.uniform(-0.12, 0.12) * h
        s = size * rng.uniform(0.9, 1.1)
        sw, sh = round(1.5 * s), round(s)
        mask = Image.new("L", (sw, sh), 0)

        ImageDraw.Draw(mask).ellipse((0, 0, sw - 1, sh - 1), fill=255)
        mask = mask.filter(ImageFilter.GaussianBlur(2))
        frame = background.copy()
        frame.paste(subject.resize((sw, sh)), (round(x - sw / 2), round(y - sh / 2)), mask)
        out.append(jpeg(noisy(frame, rng, rng.uniform(0.96, 1.04)), 90))
        where.append((x / w, y / h, s / h))
    return out, where


# ------------------------------------------------------------------------------------------- measuring
def summary(d: list[int], q_ok: list[bool] | None = None) -> dict:
    a = np.asarray(d, dtype=int)
    out = {"n": int(a.size), "mean": float(a.mean()) if a.size else None,
           "median": float(np.median(a)) if a.size else None,
           "p95": float(np.percentile(a, 95)) if a.size else None,
           "min": int(a.min()) if a.size else None, "max": int(a.max()) if a.size else None,
           "within_10": float((a <= MATCH).mean()) if a.size else None,
           "histogram": np.histogram(a, BINS)[0].tolist(), "counts": np.bincount(a, minlength=257).tolist()}
    if q_ok is not None:
        ok = np.asarray(q_ok, bool)
        out["n_quality_ok"] = int(ok.sum())
        out["within_10_quality_ok"] = float((a[ok] <= MATCH).mean()) if ok.any() else None
        out["max_quality_ok"] = int(a[ok].max()) if ok.any() else None
        out["min_quality_ok"] = int(a[ok].min()) if ok.any() else None
    return out


def clipped_share(original: Image.Image, copy: Image.Image) -> float:
    """Share of pixels a brightening pushed to 255 (in some channel) that were not saturated before."""
    a, b = np.asarray(original), np.asarray(copy.resize(original.size))
    return float(((b >= 255).any(axis=2) & ~(a >= 255).any(axis=2)).mean())


def measure_copies(originals: list[tuple[str, str, bytes]]) -> dict:
    """originals: (kind, label, JPEG bytes); label = the demo style or "photo"."""
    rows: dict = {}  # (kind, transformation) -> lists
    misses_by_style: dict = {}
    clip: dict = {}
    for kind, label, data in originals:
        h, q = pdq_of_bytes(data)
        img = decode(data)
        for name, make in COPIES.items():
            copy = make(img)
            hc, qc = pdq_of_bytes(copy)
            d = hamming(h, hc)
            row = rows.setdefault((kind, name), {"d": [], "ok": [], "nearest_variant": []})
            row["d"].append(d)
            row["ok"].append(q >= QUALITY_FLOOR and qc >= QUALITY_FLOOR)
            if name in VARIANTS:
                row["nearest_variant"].append(min(hamming(pdq_of_bytes(jpeg(v(img)))[0], hc) for v in VARIANTS[name]))
            if name in CAUGHT and d > MATCH:
                misses_by_style.setdefault(label, {}).setdefault(name, []).append((d, q))
            if name.startswith("brightness"):
                share = clipped_share(img, decode(copy))
                band = "<5%" if share < 0.05 else ("5-10%" if share < 0.10 else ">=10%")
                clip.setdefault(name, {}).setdefault(band, []).append(d)
    res: dict = {}
    for name in COPIES:
        for kind in ("demo", "photo", "all"):
            parts = [rows[(k, name)] for k in ("demo", "photo") if (k, name) in rows and kind in (k, "all")]
            if not parts:
                continue
            res.setdefault(name, {})[kind] = summary([x for p in parts for x in p["d"]],
                                                     [x for p in parts for x in p["ok"]])
            if name in VARIANTS:
                res[name][kind]["nearest_variant"] = summary([x for p in parts for x in p["nearest_variant"]])
    res["_misses_by_style"] = misses_by_style  # which pictures a caught transformation missed: (distance, quality)
    res["_brightness_by_clipped_pixels"] = {n: {band: summary(v) for band, v in bands.items()}
                                            for n, bands in clip.items()}
    return res


def within(counts: list[int], t: int) -> float:
    """Share of a distance histogram (counts per distance) at or below t."""
    return float(sum(counts[:t + 1]) / max(1, sum(counts)))


def pair_distances(hashes: list[tuple[str, int]]) -> tuple[list[int], list[bool]]:
    d, ok = [], []
    for (a, qa), (b, qb) in itertools.combinations(hashes, 2):
        d.append(hamming(a, b))
        ok.append(qa >= QUALITY_FLOOR and qb >= QUALITY_FLOOR)
    return d, ok


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copies-demo", type=int, default=12, help="demo pictures per style copied")
    ap.add_argument("--copies-photo", type=int, default=96)
    ap.add_argument("--same-taxon", type=int, default=36, help="pictures per style (pairs: n(n-1)/2 x 16)")
    ap.add_argument("--demo-scenes", type=int, default=25, help="burst scenes per style (5 frames)")
    ap.add_argument("--photo-scenes", type=int, default=200, help="photo burst scenes (6 frames)")
    ap.add_argument("--parts", default="copies", help="copies (issue 8's tables), edits (issue 22), or both: "
                    "copies,edits")
    ap.add_argument("--edit-photos-alike", type=int, default=48, help="edits: 1/f photographs-alike")
    ap.add_argument("--edit-demo", type=int, default=2, help="edits: demo pictures per style")
    ap.add_argument("--neg-same-taxon", type=int, default=10, help="edits: demo pictures per style (pairs)")
    ap.add_argument("--neg-demo-scenes", type=int, default=8, help="edits: demo burst scenes per style")
    ap.add_argument("--neg-photo-scenes", type=int, default=100, help="edits: photo burst scenes")
    ap.add_argument("--work-side", type=int, default=V.WORK_SIDE, help="edits: variants.WORK_SIDE to measure")
    args = ap.parse_args(argv)
    V.WORK_SIDE = args.work_side
    if "edits" in args.parts.split(","):
        measure_edits(args)
    if "copies" not in args.parts.split(","):
        return
    t0 = time.perf_counter()
    styles = list(STYLES)
    textures = Textures(args.seed)
    originals = [("demo", s, demo_picture(s, k, args.seed)) for s in styles for k in range(args.copies_demo)]
    originals += [("photo", "photo", jpeg(Image.fromarray(textures.next()), 92)) for _ in range(args.copies_photo)]
    report: dict = {"args": vars(args), "copies": measure_copies(originals)}
    t_copies = time.perf_counter() - t0
    # hard negatives
    negatives: dict[str, dict] = {}
    d_all, ok_all = [], []
    for s in styles:
        d, ok = pair_distances([pdq_of_bytes(demo_picture(s, k, args.seed)) for k in range(args.same_taxon)])
        d_all += d
        ok_all += ok
    negatives["same_taxon_other_picture"] = summary(d_all, ok_all)
    d_all, ok_all, by_pan = [], [], {}
    for s in styles:
        for scene in range(args.demo_scenes):
            frames, offsets = demo_burst(s, scene, args.seed)
            hashes = [pdq_of_bytes(f) for f in frames]
            for (i, a), (j, b) in itertools.combinations(list(enumerate(hashes)), 2):
                dist = hamming(a[0], b[0])
                d_all.append(dist)
                ok_all.append(a[1] >= QUALITY_FLOOR and b[1] >= QUALITY_FLOOR)
                pan = abs(offsets[j] - offsets[i])
                by_pan.setdefault(f"{int(pan // 5) * 5}-{int(pan // 5) * 5 + 5}%", []).append(dist)
    negatives["demo_burst_panned"] = summary(d_all, ok_all)
    pans = sorted(by_pan.items(), key=lambda kv: float(kv[0].split("-")[0]))
    negatives["demo_burst_panned"]["by_pan"] = {k: summary(v) for k, v in pans}
    rng = np.random.default_rng([args.seed, 8])
    d_all, ok_all, by_move = [], [], {}
    for _ in range(args.photo_scenes):
        frames, where = photo_burst(textures, rng)
        d, ok = pair_distances([pdq_of_bytes(f) for f in frames])
        d_all += d
        ok_all += ok
        for dist, (a, b) in zip(d, itertools.combinations(where, 2)):
            move = 100 * float(np.hypot(a[0] - b[0], a[1] - b[1]))  # subject displacement, % of the frame
            by_move.setdefault(min(4, int(move // 5)), []).append(dist)
    negatives["photo_burst_moving_subject"] = summary(d_all, ok_all)
    negatives["photo_burst_moving_subject"]["by_move"] = {
        (f"{5 * k}-{5 * k + 5}%" if k < 4 else ">=20%"): summary(v) for k, v in sorted(by_move.items())}
    report["hard_negatives"] = negatives
    total = sum(v["n"] for v in negatives.values())
    fp = sum(round(v["within_10"] * v["n"]) for v in negatives.values())
    report["hard_negative_pairs"], report["hard_negative_within_10"] = total, fp
    report["thresholds"] = {t: {
        "copies": {n: within(report["copies"][n]["all"]["counts"], t) for n in COPIES},
        "hard_negatives": {n: within(v["counts"], t) for n, v in negatives.items()}} for t in THRESHOLDS}
    report["seconds"] = {"copies": round(t_copies, 1), "total": round(time.perf_counter() - t0, 1)}
    print_report(report)
    out = HERE / "results" / "pdq_robustness.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"written {out}")


def print_report(r: dict) -> None:
    edges = [f"{a}-{b - 1}" for a, b in zip(BINS[:-1], BINS[1:])]
    print(f"\n## copies (Hamming distance to the original; caught when <= {MATCH})")
    print("| transformation | images | mean | median | p95 | max | within 10 | within 10, quality >= 50 |")
    for name, kinds in r["copies"].items():
        if name.startswith("_"):
            continue
        for kind in ("demo", "photo", "all"):
            s = kinds[kind]
            print(f"| {name} ({kind}) | {s['n']} | {s['mean']:.1f} | {s['median']:.0f} | {s['p95']:.0f} | {s['max']} "
                  f"| {s['within_10']:.3f} | {s['within_10_quality_ok']:.3f} of {s['n_quality_ok']} |")
    for name in VARIANTS:
        s = r["copies"][name]["all"]["nearest_variant"]
        print(f"| {name}: nearest grid variant | {s['n']} | {s['mean']:.1f} | {s['median']:.0f} | {s['p95']:.0f} "
              f"| {s['max']} | {s['within_10']:.3f} | |")
    print("\n## brightness copies by the share of pixels the change clipped to 255")
    print("| transformation | clipped | images | mean | max | within 10 |")
    for name, bands in r["copies"]["_brightness_by_clipped_pixels"].items():
        for band in ("<5%", "5-10%", ">=10%"):
            if band in bands:
                s = bands[band]
                print(f"| {name} | {band} | {s['n']} | {s['mean']:.1f} | {s['max']} | {s['within_10']:.3f} |")
    print("\n## misses of the caught transformations, by picture style: [(distance, PDQ quality), ...]")
    for label, names in sorted(r["copies"]["_misses_by_style"].items(), key=lambda kv: -sum(map(len, kv[1].values()))):
        print(f"| {label} | " + "; ".join(f"{n}: {v}" for n, v in names.items()) + " |")
    print(f"\n## hard negatives ({r['hard_negative_pairs']:,} pairs; within {MATCH} = false positive: "
          f"{r['hard_negative_within_10']})")
    print("| kind | pairs | mean | min | p5 | within 10 | within 10, quality >= 50 | min, quality >= 50 |")
    for name, s in r["hard_negatives"].items():
        p5 = float(np.percentile(np.repeat(np.arange(257), s["counts"]), 5))
        print(f"| {name} | {s['n']:,} | {s['mean']:.1f} | {s['min']} | {p5:.0f} | {s['within_10']:.4f} | "
              f"{s['within_10_quality_ok']:.4f} of {s['n_quality_ok']:,} | {s['min_quality_ok']} |")
    for pan, s in r["hard_negatives"]["demo_burst_panned"]["by_pan"].items():
        print(f"|   demo burst, pan {pan} | {s['n']:,} | {s['mean']:.1f} | {s['min']} | | {s['within_10']:.4f} | | |")
    for move, s in r["hard_negatives"]["photo_burst_moving_subject"]["by_move"].items():
        print(f"|   photo burst, subject moved {move} | {s['n']:,} | {s['mean']:.1f} | {s['min']} | | "
              f"{s['within_10']:.4f} | | |")
    print("\n## distance histogram (matches = copies caught by design; non-matches = hard negatives)")
    print("| | " + " | ".join(edges) + " |")
    for name in COPIES:
        print(f"| copy: {name} | " + " | ".join(map(str, r["copies"][name]["all"]["histogram"])) + " |")
    for name, s in r["hard_negatives"].items():
        print(f"| non-match: {name} | " + " | ".join(map(str, s["histogram"])) + " |")
    print("\n## threshold trade-off: copies caught (all images) and hard-negative pairs matched")
    print("| distance <= | " + " | ".join(CAUGHT + ("crop_5pct", "rotate_2deg")) + " | "
          + " | ".join(r["hard_negatives"]) + " |")
    for t in r["thresholds"]:
        row = r["thresholds"][t]
        print(f"| {t} | " + " | ".join(f"{row['copies'][n]:.3f}" for n in CAUGHT + ("crop_5pct", "rotate_2deg"))
              + " | " + " | ".join(f"{row['hard_negatives'][n]:.4f}" for n in r["hard_negatives"]) + " |")
    print(f"\n{r['seconds']}")


# ------------------------------------------------------------------------------------------ edits (issue 22)
# Candidate variants the grid is chosen from (every one hashed for every image; the dihedral ones always on)
CANDIDATES = tuple(
    [f"crop{c:g}" for c in np.arange(0.5, 6.01, 0.5)]
    + [f"rotate{s}{a:g}" for a in np.arange(0.5, 4.01, 0.5) for s in "+-"]
    + [f"border_{col}{b}" for col in ("black", "white") for b in range(1, 13)]
    + [f"letterbox_{col}_{a}" for col in ("black", "white") for a in ("4x3", "16x9")])
CLASSES = {"crop": "pdq_crop", "rotate": "pdq_rotate", "border": "pdq_border", "letterbox": "pdq_letterbox"}
RECALL_BAR = {"dihedral": 0.99, "grid": 0.95}


def _mirror(im):
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def text_overlay(im: Image.Image) -> Image.Image:
    """A photographer's credit, white with a dark outline, along the bottom-left (6% of the height)."""
    from PIL import ImageFont

    out = im.copy()
    size = max(10, round(0.06 * im.height))
    ImageDraw.Draw(out).text((round(0.03 * im.width), round(0.91 * im.height)), "(c) J. Smith - iNaturalist",
                             fill=(255, 255, 255), font=ImageFont.load_default(size=size), stroke_width=2,
                             stroke_fill=(0, 0, 0))
    return out


def edit_table(rng: np.random.Generator) -> dict:
    """name -> (class it belongs to, bar, function of the decoded original -> copy bytes). Strengths drawn at
    random (off the grid) are drawn per image from `rng`. Every copy re-encoded at JPEG q90."""
    sign = lambda: 1 if rng.random() < 0.5 else -1  # noqa: E731
    t = {
        "reencode_q90 (reference: no edit)": ("none", False, lambda im: jpeg(im)),
        "mirror": ("dihedral", True, lambda im: jpeg(_mirror(im))),
        "flip_vertical": ("dihedral", False, lambda im: jpeg(im.transpose(Image.Transpose.FLIP_TOP_BOTTOM))),
        "rot90": ("dihedral", True, lambda im: jpeg(im.transpose(Image.Transpose.ROTATE_90))),
        "rot180": ("dihedral", True, lambda im: jpeg(im.transpose(Image.Transpose.ROTATE_180))),
        "rot270": ("dihedral", True, lambda im: jpeg(im.transpose(Image.Transpose.ROTATE_270))),
        "mirror+rot90": ("dihedral", False, lambda im: jpeg(_mirror(im).transpose(Image.Transpose.ROTATE_90))),
    }
    for c in (1, 2, 5, 10):
        t[f"crop_{c}%"] = ("crop", c <= 5, lambda im, c=c: jpeg(V.centre_crop(im, c / 100)))
    t["crop_random_0.5-5%"] = ("crop", True, lambda im: jpeg(V.centre_crop(im, rng.uniform(0.005, 0.05))))
    for edges, f in (("l", 2), ("l", 5), ("t", 5), ("lt", 5), ("rb", 10)):
        t[f"offcrop_{edges}{f}%"] = ("offcrop", False, lambda im, e=edges, f=f: jpeg(V.side_crop(im, e, f / 100)))
    for a in (1, 2, 3, 5):
        t[f"rotate_{a}deg"] = ("rotate", a <= 3, lambda im, a=a: jpeg(V.rotate_fill(im, a * sign())))
    t["rotate_random_0.5-3deg"] = ("rotate", True, lambda im: jpeg(V.rotate_fill(im, sign() * rng.uniform(0.5, 3))))
    for col in ("black", "white"):
        for b in (2, 5, 10):
            t[f"border_{col}_{b}%"] = ("border", True, lambda im, c=col, b=b: jpeg(V.add_border(im, b / 100, c)))
        t[f"border_{col}_random_1-10%"] = ("border", True,
                                           lambda im, c=col: jpeg(V.add_border(im, rng.uniform(0.01, 0.10), c)))
    for a in ("4x3", "16x9"):
        w, h = map(int, a.split("x"))
        t[f"letterbox_{a}"] = ("letterbox", False, lambda im, w=w, h=h: jpeg(V.letterbox(im, w, h, "black") or im))
    t["squash_5%"] = ("none", False, lambda im: jpeg(im.resize((round(im.width * 0.95), im.height), Image.LANCZOS)))
    t["squash_10%"] = ("none", False, lambda im: jpeg(im.resize((round(im.width * 0.90), im.height), Image.LANCZOS)))
    t["text_overlay"] = ("none", False, lambda im: jpeg(text_overlay(im)))
    t["crop2%+q70+resize50%"] = ("crop", False, lambda im: jpeg(V.centre_crop(im, 0.02).resize(
        (im.width // 2, im.height // 2), Image.LANCZOS), 70))
    return t


def real_photographs(limit_side: int = 1024) -> list[tuple[str, bytes]]:
    """The photographs available offline: scikit-image's data images (if installed: `pip install scikit-image`,
    a bench-only extra) and matplotlib's grace_hopper.jpg, each also as 4 corner views of 80% (so more
    compositions), JPEG q92, longer side at most limit_side."""
    found: list[tuple[str, Image.Image]] = []
    try:
        from skimage import data as skd

        for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
                     "retina", "camera", "moon", "coins", "grass", "gravel", "brick", "cat", "colorwheel", "page"):
            try:
                a = getattr(skd, name)()
            except Exception:  # an image fetched on demand (not in the wheel): skipped, we are offline
                continue
            found.append((f"skimage:{name}", Image.fromarray(np.asarray(a)[..., :3] if np.ndim(a) == 3 else a)))
    except ImportError:
        print("scikit-image not installed: its photographs are left out (pip install scikit-image)")
    try:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            found.append(("matplotlib:grace_hopper", Image.open(f).convert("RGB")))
    except Exception as e:  # noqa: BLE001
        print(f"matplotlib sample data unavailable: {e}")
    out = []
    for label, im in found:
        im = im.convert("RGB")
        if max(im.size) > limit_side:
            k = limit_side / max(im.size)
            im = im.resize((round(im.width * k), round(im.height * k)), Image.LANCZOS)
        out.append((label, jpeg(im, 92)))
        w, h = im.size
        cw, ch = round(w * 0.8), round(h * 0.8)
        for x, y in ((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)):
            out.append((f"{label}@{x},{y}", jpeg(im.crop((x, y, x + cw, y + ch)), 92)))
    return out


def variant_matrix(data: bytes) -> tuple[str, int, dict[str, tuple[str, int]]]:
    """(own hash, quality, {variant: (hash, quality)}) of an evaluation image: the dihedral ones and every
    candidate of the grid, through tol_builder.dedup.variants (the stage's code) on the canonical input."""
    h, q = pdq_of_bytes(data)
    rgb = decode_for_pdq(data)
    found = {n: (vh, vq) for n, vh, vq in V.dihedral_hashes(rgb) if n != "identity"}
    found.update({n: (vh, vq) for n, vh, vq in V.grid_hashes(rgb, CANDIDATES)})
    return h, q, found


def _distances(target: str, h: str, variants: dict, names: list[str]) -> np.ndarray:
    """Distances of `target` to the image's own hash (column 0) and to each named variant (255: not made)."""
    return np.array([hamming(h, target)] + [hamming(variants[n][0], target) if n in variants else 255
                                            for n in names], np.int32)


def measure_edits(args) -> dict:
    """Recall per edit and false matches per variant class (issue 22).

    Evaluation images: real photographs (`real_photographs`), 1/f photographs-alike and demo pictures. For each,
    the evaluation side hashes its variants (dihedral + every CANDIDATES grid variant, on the canonical input,
    by the stage's own code); the pool side hashes each edited copy once (imaging.pdq_of_bytes of a JPEG q90).
    A copy is caught when its hash is within 10 bits of the original's own hash ("today"), of one of the 8
    dihedral hashes, or of one of the dihedral + chosen grid hashes. Only hashes of quality >= 50 on both sides
    count (the stage's min_pdq_quality). The grid is chosen greedily per class (crop, rotate, border) from the
    candidates: add the candidate catching the most still-missed copies of the class's barred edits (the
    issue's strengths: crops 1/2/5%, rotations 1/2/3 degrees, borders 2/5/10%, and strengths drawn at random
    inside those ranges, so that the grid also catches what lies between its points) until each reaches 95%
    or no candidate adds a copy; letterboxes: the ones that catch letterboxed copies the rest miss.
    Hard negatives (synthetic: same-taxon demo pictures, demo bursts, photo bursts with a moving subject; see
    the module doc): for each pair, each image in turn as the evaluation side with its variants, the other as
    the pool copy; a false match per class when the class's chosen variants bring it within 10."""
    t0 = time.perf_counter()
    load = os.getloadavg()
    rng = np.random.default_rng([args.seed, 22])
    textures = Textures(args.seed + 1)
    originals = [("photo", label, data) for label, data in real_photographs()]
    originals += [("alike", "photo-alike", jpeg(Image.fromarray(textures.next()), 92))
                  for _ in range(args.edit_photos_alike)]
    originals += [("demo", s, demo_picture(s, 1000 + k, args.seed)) for s in STYLES for k in range(args.edit_demo)]
    names = [n for n in V.DIHEDRAL if n != "identity"] + list(CANDIDATES)
    edits = edit_table(rng)
    rows: dict[str, list] = {e: [] for e in edits}  # edit -> [(kind, distances vector)]
    t_var = 0.0
    n_images = 0
    for kind, label, data in originals:
        t = time.perf_counter()
        h, q, var = variant_matrix(data)
        t_var += time.perf_counter() - t
        n_images += 1
        if q < QUALITY_FLOOR:
            continue
        img = decode(data)
        for e, (_, _, make) in edits.items():
            hc, qc = pdq_of_bytes(make(img))
            if qc < QUALITY_FLOOR:
                continue
            d = _distances(hc, h, {n: v for n, v in var.items() if v[1] >= QUALITY_FLOOR}, names)
            rows[e].append((kind, d))
    col = {n: i + 1 for i, n in enumerate(names)}
    dihedral_cols = [0] + [col[n] for n in V.DIHEDRAL if n != "identity"]
    mats = {e: (np.array([k for k, _ in r]), np.stack([d for _, d in r])) for e, r in rows.items() if r}

    def caught(e: str, cols: list[int]) -> np.ndarray:
        return (mats[e][1][:, cols] <= MATCH).any(axis=1)

    # choose the grid, per class
    chosen: list[str] = []
    for cls in ("crop", "rotate", "border"):
        barred = [e for e, (c, bar, _) in edits.items() if c == cls and bar and e in mats]
        pool = [n for n in CANDIDATES if n.startswith(cls)]
        mine: list[str] = []
        while True:
            cols = dihedral_cols + [col[n] for n in mine]
            recall = {e: caught(e, cols).mean() for e in barred}
            if min(recall.values()) >= RECALL_BAR["grid"] or not pool:
                break
            missed = {e: ~caught(e, cols) for e in barred}
            gain = {n: sum(int((missed[e] & (mats[e][1][:, col[n]] <= MATCH)).sum()) for e in barred) for n in pool}
            best = max(pool, key=lambda n: (gain[n], -pool.index(n)))
            if gain[best] == 0:
                break
            mine.append(best)
            pool.remove(best)
        chosen += sorted(mine, key=CANDIDATES.index)
    lb_edits = [e for e, (c, _, _) in edits.items() if c == "letterbox" and e in mats]
    for n in [n for n in CANDIDATES if n.startswith("letterbox")]:
        so_far = dihedral_cols + [col[c] for c in chosen]
        if any(((mats[e][1][:, col[n]] <= MATCH) & ~caught(e, so_far)).sum() > 0 for e in lb_edits):
            chosen.append(n)
    grid_cols = dihedral_cols + [col[n] for n in chosen]
    all_cols = list(range(len(names) + 1))
    recall = {}
    for e, (cls, bar, _) in edits.items():
        if e not in mats:
            continue
        kinds, m = mats[e]
        entry = {"class": cls, "bar": bar, "copies": int(len(kinds))}
        for label, cols in (("today", [0]), ("dihedral", dihedral_cols), ("dihedral+grid", grid_cols),
                            ("all_candidates", all_cols)):
            c = (m[:, cols] <= MATCH).any(axis=1)
            entry[label] = float(c.mean())
            entry[f"{label}_by_kind"] = {k: float(c[kinds == k].mean()) for k in ("photo", "alike", "demo")
                                         if (kinds == k).any()}
        entry["nearest_mean"] = {"today": float(m[:, 0].mean()), "dihedral+grid": float(m[:, grid_cols].min(1).mean())}
        recall[e] = entry
    t_copies = time.perf_counter() - t0
    negatives = edit_negatives(args, names, chosen)
    report = {"args": vars(args), "work_side": V.WORK_SIDE, "load_before": [round(x, 2) for x in load],
              "load_after": [round(x, 2) for x in os.getloadavg()],
              "images": {k: sum(1 for o in originals if o[0] == k) for k in ("photo", "alike", "demo")},
              "real_photographs": sorted({o[1].split("@")[0] for o in originals if o[0] == "photo"}),
              "candidates": list(CANDIDATES), "chosen_grid": chosen, "grid_in_variants_py": list(V.GRID),
              "variants_per_image": {"dihedral": 7, "grid": len(chosen)},
              "variant_hashing_ms_per_image": round(1000 * t_var / max(1, n_images), 1),
              "candidates_hashed_per_image": len(names), "recall": recall, "hard_negatives": negatives,
              "seconds": round(time.perf_counter() - t0, 1), "seconds_copies": round(t_copies, 1)}
    print_edits(report)
    out = HERE / "results" / f"pdq_robustness_edits{'' if V.WORK_SIDE == 128 else f'_work{V.WORK_SIDE}'}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"written {out}")
    return report


def edit_negatives(args, names: list[str], chosen: list[str]) -> dict:
    """False matches per variant class on the synthetic hard negatives (see measure_edits)."""
    groups: dict[str, list[list[bytes]]] = {"same_taxon_other_picture": [], "demo_burst_panned": [],
                                            "photo_burst_moving_subject": []}
    for s in STYLES:
        groups["same_taxon_other_picture"].append([demo_picture(s, k, args.seed) for k in range(args.neg_same_taxon)])
        for scene in range(args.neg_demo_scenes):
            groups["demo_burst_panned"].append(demo_burst(s, scene, args.seed)[0])
    textures = Textures(args.seed + 2)
    rng = np.random.default_rng([args.seed, 23])
    for _ in range(args.neg_photo_scenes):
        groups["photo_burst_moving_subject"].append(photo_burst(textures, rng)[0])
    classes = {"today": [], "dihedral": [n for n in V.DIHEDRAL if n != "identity"]}
    for cls in ("crop", "rotate", "border", "letterbox"):
        classes[cls] = [n for n in chosen if n.startswith(cls)]
    classes["all_chosen"] = classes["dihedral"] + chosen
    classes["all_candidates"] = names
    out: dict = {}
    for kind, scenes in groups.items():
        trials, hits = 0, {c: 0 for c in classes}
        for frames in scenes:
            hashed = [variant_matrix(f) for f in frames]
            for a, b in itertools.permutations(range(len(frames)), 2):  # a: evaluation side, b: pool copy
                ha, qa, va = hashed[a]
                hb, qb, _ = hashed[b]
                if qa < QUALITY_FLOOR or qb < QUALITY_FLOOR:
                    continue
                trials += 1
                own = hamming(ha, hb) <= MATCH
                for c, members in classes.items():
                    hits[c] += own or any(hamming(va[n][0], hb) <= MATCH for n in members
                                          if n in va and va[n][1] >= QUALITY_FLOOR)
        out[kind] = {"trials": trials, "matched": hits, "rate": {c: hits[c] / max(1, trials) for c in classes}}
    total = sum(v["trials"] for v in out.values())
    out["all"] = {"trials": total, "matched": {c: sum(v["matched"][c] for v in out.values()) for c in classes}}
    out["all"]["rate"] = {c: out["all"]["matched"][c] / max(1, total) for c in classes}
    return out


def print_edits(r: dict) -> None:
    print(f"\n## edits: recall (copy within {MATCH} bits of a trusted hash; q >= {QUALITY_FLOOR} both sides)")
    print(f"images: {r['images']}; real photographs: {', '.join(r['real_photographs'])}")
    print(f"chosen grid ({len(r['chosen_grid'])}): {' '.join(r['chosen_grid'])}")
    print("| edit | bar | copies | today | dihedral | dihedral + grid | all 63 candidates | photos: today -> grid |"
          " mean bits today -> nearest |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e, s in r["recall"].items():
        ph = (f"{s['today_by_kind'].get('photo', float('nan')):.3f} -> "
              f"{s['dihedral+grid_by_kind'].get('photo', float('nan')):.3f}")
        print(f"| {e} | {'yes' if s['bar'] else ''} | {s['copies']} | {s['today']:.3f} | {s['dihedral']:.3f} | "
              f"{s['dihedral+grid']:.3f} | {s['all_candidates']:.3f} | {ph} | {s['nearest_mean']['today']:.1f} -> "
              f"{s['nearest_mean']['dihedral+grid']:.1f} |")
    print("\n## hard negatives (synthetic): evaluation side with its variants vs the other image's one hash")
    classes = list(r["hard_negatives"]["all"]["rate"])
    print("| kind | trials | " + " | ".join(classes) + " |")
    print("|---|---|" + "---|" * len(classes))
    for kind, v in r["hard_negatives"].items():
        print(f"| {kind} | {v['trials']:,} | " + " | ".join(f"{v['matched'][c]} ({100 * v['rate'][c]:.3f}%)"
                                                          for c in classes) + " |")
    print(f"\nvariant hashing: {r['variant_hashing_ms_per_image']} ms per image for {r['candidates_hashed_per_image']}"
          f" variants; load {r['load_before']} -> {r['load_after']}; {r['seconds']} s")

if __name__ == "__main__":
    main()

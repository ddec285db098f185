"""Edit variants of an evaluation image, hashed for the dedup index: mirrors, 90-degree turns, crops, small
rotations, borders and letterboxes.

Owns the variant grid and nothing else: given an evaluation image as the canonical PDQ preparation takes it
(the upright RGB of `imaging.decode_for_pdq`), `variant_hashes` yields (variant, method, pdq hex, quality) for

* the 8 dihedral hashes (`pdqhash.compute_dihedral` on the canonical 64 x 64 image: a mirrored or turned pool
  copy meets one of them at the distance an unedited copy meets the original); `identity` is the image's own
  hash, which the stage takes from the media table instead (method `pdq`);
* the grid (`GRID`): the image edited the way re-hosted copies are (centred crops, rotations with a centred
  fill-crop, black / white borders, letterboxes to 4:3 and 16:9), each through the same preparation (steps
  3-4 of imaging.py: squash to 64 x 64, PDQ) as the pool's hashes. Chosen from bench/pdq_robustness.py's
  measurements (bench/README_dedup.md): PDQ is a global DCT, so a crop moves it ~18 bits per 1% per edge of
  mismatch and the grid must sit close to the edits it catches.

The pool side is untouched: pool images are hashed once by fetch, and a pool copy is caught when its one hash
is within `dedup.pdq_max_distance` of any variant of an evaluation image. Names are spelled so that the
edit can be rebuilt from them (`edit(name)`): `crop2` (2% off each edge), `rotate-1.5` (degrees,
counter-clockwise positive, then the largest centred crop of the original aspect), `border_white5` (5% of the
mean side on every edge), `letterbox_black_16x9` (bars to that aspect; none when the image is within 2%
of it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, ImageOps

# pdqhash.compute_dihedral's order: the image, turned 90 / 180 / 270 degrees counter-clockwise (numpy's
# rot90), flipped top-bottom, mirrored left-right, transposed, anti-transposed
DIHEDRAL = ("identity", "rot90", "rot180", "rot270", "flip_vertical", "mirror", "transpose", "transverse")

# the grid: chosen by bench/pdq_robustness.py --parts edits (bench/README_dedup.md, "Edit-robust matching"),
# greedily from 56 candidates, the fewest variants per class that bring crops of 1/2/5% per edge and of random
# strengths up to 5%, rotations of 1/2/3 degrees and random up to 3, borders of 2/5/10% and random up to 10%
# to 95% recall or as near as the candidates go (PDQ moves ~10 bits per 0.5% of crop mismatch: the steps
# are fine); letterboxes that catch letterboxed copies the rest miss. 40 variants, ~1 ms each.
GRID = (
    "crop1", "crop1.5", "crop2", "crop3", "crop4", "crop4.5", "crop5",
    "rotate+1", "rotate-1", "rotate+1.5", "rotate-1.5", "rotate+2", "rotate-2", "rotate+2.5", "rotate-2.5",
    "rotate+3", "rotate-3",
    *(f"border_{colour}{b}" for colour in ("black", "white") for b in range(1, 11)),
    "letterbox_black_4x3", "letterbox_black_16x9", "letterbox_white_4x3",
)

METHODS = {"identity": "pdq", "rot90": "pdq_rot90", "rot180": "pdq_rot90", "rot270": "pdq_rot90",
           "flip_vertical": "pdq_mirror", "mirror": "pdq_mirror", "transpose": "pdq_mirror", "transverse": "pdq_mirror"}
# exclusions.method of a grid variant, by its name's prefix
GRID_METHODS = {"crop": "pdq_crop", "offcrop": "pdq_crop", "rotate": "pdq_rotate", "border": "pdq_border",
                "letterbox": "pdq_letterbox"}
# the order in which one pool image's matches to one evaluation image are preferred (the first is recorded)
METHOD_ORDER = ("pdq", "pdq_mirror", "pdq_rot90", "pdq_crop", "pdq_rotate", "pdq_border", "pdq_letterbox")

_NAME = re.compile(r"^(?:(crop)(\d+(?:\.\d+)?)|(rotate)([+-]\d+(?:\.\d+)?)|(border)_(black|white)(\d+(?:\.\d+)?)"
                   r"|(letterbox)_(black|white)_(\d+)x(\d+)|(offcrop)_([lrtb]+)(\d+(?:\.\d+)?))$")
_COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255)}
LETTERBOX_TOLERANCE = 0.02  # an image within 2% of the target aspect gets no letterbox variant


def method_of(variant: str) -> str:
    """exclusions.method of a variant name."""
    if variant in METHODS:
        return METHODS[variant]
    m = re.match(r"^[a-z]+", variant)
    if m is None or m.group(0) not in GRID_METHODS:
        raise ValueError(f"not a variant name: {variant!r}")
    return GRID_METHODS[m.group(0)]


def centre_crop(img: Image.Image, per_edge: float) -> Image.Image:
    """`per_edge` (a fraction) of the width off the left and right, of the height off the top and bottom."""
    dx, dy = img.width * per_edge, img.height * per_edge
    return img.crop((round(dx), round(dy), round(img.width - dx), round(img.height - dy)))


def side_crop(img: Image.Image, edges: str, fraction: float) -> Image.Image:
    """`fraction` off each of the named edges (l, r, t, b): an off-centre crop."""
    dx, dy = round(img.width * fraction), round(img.height * fraction)
    return img.crop((dx if "l" in edges else 0, dy if "t" in edges else 0,
                     img.width - (dx if "r" in edges else 0), img.height - (dy if "b" in edges else 0)))


def rotate_fill(img: Image.Image, degrees: float) -> Image.Image:
    """Rotated (bicubic, counter-clockwise for positive degrees), then the largest centred rectangle of the
    original's aspect that holds no corner fill: what a straightened re-hosted copy looks like."""
    w, h = img.size
    turned = img.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True)
    a = math.radians(abs(degrees))
    c, s = math.cos(a), math.sin(a)
    scale = min(w / (w * c + h * s), h / (w * s + h * c))
    cw, ch = w * scale, h * scale
    x0, y0 = (turned.width - cw) / 2, (turned.height - ch) / 2
    return turned.crop((math.ceil(x0), math.ceil(y0), math.floor(x0 + cw), math.floor(y0 + ch)))


def add_border(img: Image.Image, fraction: float, colour: str) -> Image.Image:
    """A border of `fraction` of the mean side, the same width on every edge."""
    width = max(1, round(fraction * (img.width + img.height) / 2))
    return ImageOps.expand(img, border=width, fill=_COLOURS[colour])


def letterbox(img: Image.Image, aspect_w: int, aspect_h: int, colour: str) -> Image.Image | None:
    """Bars (top-bottom or left-right, centred) to the aspect aspect_w:aspect_h; None when the image already has
    it (within LETTERBOX_TOLERANCE)."""
    w, h = img.size
    target = aspect_w / aspect_h
    if abs(w / h - target) <= LETTERBOX_TOLERANCE * target:
        return None
    nw, nh = (round(h * target), h) if w / h < target else (w, round(w / target))
    canvas = Image.new("RGB", (nw, nh), _COLOURS[colour])
    canvas.paste(img, ((nw - w) // 2, (nh - h) // 2))
    return canvas


def edit(name: str) -> Callable[[Image.Image], Image.Image | None]:
    """The edit a grid variant name stands for (see the module doc); None from it: no such variant here."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"not a grid variant name: {name!r} (crop2, rotate+1, border_black5, letterbox_black_16x9, "
                         "offcrop_l5)")
    g = m.groups()
    if g[0]:
        per_edge = float(g[1]) / 100
        return lambda im: centre_crop(im, per_edge)
    if g[2]:
        degrees = float(g[3])
        return lambda im: rotate_fill(im, degrees)
    if g[4]:
        colour, fraction = g[5], float(g[6]) / 100
        return lambda im: add_border(im, fraction, colour)
    if g[7]:
        colour, aw, ah = g[8], int(g[9]), int(g[10])
        return lambda im: letterbox(im, aw, ah, colour)
    edges, fraction = g[12], float(g[13]) / 100
    return lambda im: side_crop(im, edges, fraction)


def _hex(bits) -> str:
    # pdqhash gives bit 255 first: packing gives the reference hex form, as imaging.pdq_of writes it
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()


def dihedral_hashes(rgb: Image.Image) -> list[tuple[str, str, int]]:
    """(variant, pdq hex, quality) of the 8 dihedral transforms of the canonical 64 x 64 image, DIHEDRAL order."""
    import pdqhash

    from ..fetch.imaging import canonical_pdq_image

    small = np.ascontiguousarray(np.asarray(canonical_pdq_image(rgb), dtype=np.uint8))
    hashes, quality = pdqhash.compute_dihedral(small)
    return [(name, _hex(h), int(quality)) for name, h in zip(DIHEDRAL, hashes)]


def grid_hashes_exact(rgb: Image.Image, grid: tuple[str, ...] = GRID) -> Iterator[tuple[str, str, int]]:
    """(variant, pdq hex, quality) of each grid edit of `rgb` done in full and hashed by the canonical
    preparation: the reference the fast path (`grid_hashes`) is measured against (bench/pdq_robustness.py)."""
    from ..fetch.imaging import pdq_of

    for name in grid:
        edited = edit(name)(rgb)
        if edited is None or edited.width < 8 or edited.height < 8:
            continue
        h, q = pdq_of(edited)
        yield name, h, q


# working resolution of the grid: the longer side every edit starts from. Measured (bench/README_dedup.md):
# 128 (2x PDQ's 64) recalls as well as 256 (the canonical input's floor) and costs a variant ~30% less
WORK_SIDE = 128


def _pdq(small: Image.Image) -> tuple[str, int]:
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(np.asarray(small, dtype=np.uint8)))
    return _hex(bits), int(quality)


def _box_resize(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    from ..fetch.imaging import PDQ_FILTER, PDQ_REDUCING_GAP, PDQ_SIDE

    return img.resize((PDQ_SIDE, PDQ_SIDE), PDQ_FILTER, box=box, reducing_gap=PDQ_REDUCING_GAP)


def _padded_box(img: Image.Image, bx: float, by: float, colour: str) -> tuple[Image.Image, tuple]:
    """`img` inside bars of bx pixels on the left and right and by on top and bottom (floats): a canvas padded
    by whole pixels and the float box of exactly that region (resized from, no rounding of the bars)."""
    w, h = img.size
    ix, iy = math.ceil(bx) + 1 if bx else 0, math.ceil(by) + 1 if by else 0
    canvas = Image.new("RGB", (w + 2 * ix, h + 2 * iy), _COLOURS[colour])
    canvas.paste(img, (ix, iy))
    return canvas, (ix - bx, iy - by, ix + w + bx, iy + h + by)


ROTATE_SIDE = 192  # the affine map's square output (3x the 64 px of PDQ: little aliasing, then antialiased)


def _rotated_square(img: Image.Image, degrees: float) -> Image.Image:
    """The canonical 64 x 64 of `rotate_fill(img, degrees)` without making it: one affine map (bicubic) from
    the image to a ROTATE_SIDE square covering the fill-crop, then the canonical resize. Pillow's rotate maps
    an output point (x, y) from the centre to the source point (x cos t - y sin t, x sin t + y cos t)."""
    from ..fetch.imaging import PDQ_FILTER, PDQ_REDUCING_GAP, PDQ_SIDE

    w, h = img.size
    a = math.radians(abs(degrees))
    scale = min(w / (w * math.cos(a) + h * math.sin(a)), h / (w * math.sin(a) + h * math.cos(a)))
    cw, ch = w * scale, h * scale
    t = math.radians(degrees)
    ct, st = math.cos(t), math.sin(t)
    sx, sy = cw / ROTATE_SIDE, ch / ROTATE_SIDE
    ox, oy = -cw / 2, -ch / 2  # Pillow samples output pixel centres (u + 0.5): the box starts at its corner
    matrix = (ct * sx, -st * sy, w / 2 + ct * ox - st * oy, st * sx, ct * sy, h / 2 + st * ox + ct * oy)
    square = img.transform((ROTATE_SIDE, ROTATE_SIDE), Image.Transform.AFFINE, matrix,
                           resample=Image.Resampling.BICUBIC)
    return square.resize((PDQ_SIDE, PDQ_SIDE), PDQ_FILTER, reducing_gap=PDQ_REDUCING_GAP)


def grid_hashes(rgb: Image.Image, grid: tuple[str, ...] = GRID) -> Iterator[tuple[str, str, int]]:
    """(variant, pdq hex, quality) of each grid edit of `rgb` that applies (letterboxes may not), fast.

    Every edit starts from one aspect-kept reduction of the image to longer side WORK_SIDE (when larger; the
    geometry stays the full image's). Crops, borders and letterboxes then go straight to 64 x 64 by one
    resize of a float box (padded by whole pixels for bars): the canonical squash of the edited image
    without making it; rotations by one affine map (`_rotated_square`). Agreement with the pool's hashes of
    such edits: bench/README_dedup.md."""
    from ..fetch.imaging import PDQ_FILTER, PDQ_REDUCING_GAP

    rgb = rgb if rgb.mode == "RGB" else rgb.convert("RGB")
    w, h = rgb.size
    if WORK_SIDE < max(w, h):
        k = WORK_SIDE / max(w, h)
        rgb = rgb.resize((max(8, round(w * k)), max(8, round(h * k))), PDQ_FILTER, reducing_gap=PDQ_REDUCING_GAP)
    sx, sy = rgb.width / w, rgb.height / h  # full-image pixels -> working pixels
    ww, wh = rgb.size
    for name in grid:
        m = _NAME.match(name)
        if m is None:
            raise ValueError(f"not a grid variant name: {name!r}")
        g = m.groups()
        if g[0]:  # centred crop
            f = float(g[1]) / 100
            small = _box_resize(rgb, (f * ww, f * wh, ww - f * ww, wh - f * wh))
        elif g[12]:  # off-centre crop
            f, edges = float(g[13]) / 100, g[12]
            small = _box_resize(rgb, (f * ww if "l" in edges else 0, f * wh if "t" in edges else 0,
                                      ww - (f * ww if "r" in edges else 0), wh - (f * wh if "b" in edges else 0)))
        elif g[4]:  # border: the same width on every edge, in the full image's pixels (as add_border)
            b = max(1.0, float(round(float(g[6]) / 100 * (w + h) / 2)))
            small = _box_resize(*_padded_box(rgb, b * sx, b * sy, g[5]))
        elif g[7]:  # letterbox
            target = int(g[9]) / int(g[10])
            if abs(w / h - target) <= LETTERBOX_TOLERANCE * target:
                continue
            bx, by = ((h * target - w) / 2, 0.0) if w / h < target else (0.0, (w / target - h) / 2)
            small = _box_resize(*_padded_box(rgb, bx * sx, by * sy, g[8]))
        else:  # rotation with a centred fill-crop
            small = _rotated_square(rgb, float(g[3]))
        yield (name, *_pdq(small))


def variant_hashes(rgb: Image.Image, *, dihedral: bool = True, grid: tuple[str, ...] = GRID,
                   identity: bool = False) -> Iterator[tuple[str, str, str, int]]:
    """(variant, method, pdq hex, quality) of an evaluation image's variants: the dihedral ones (without
    `identity` unless asked: the stage has that hash already) and the grid's."""
    if dihedral:
        for name, h, q in dihedral_hashes(rgb):
            if identity or name != "identity":
                yield name, METHODS[name], h, q
    for name, h, q in grid_hashes(rgb, grid):
        yield name, method_of(name), h, q


__all__ = ["DIHEDRAL", "GRID", "METHODS", "METHOD_ORDER", "method_of", "edit", "centre_crop", "side_crop",
           "rotate_fill", "add_border", "letterbox", "dihedral_hashes", "grid_hashes", "grid_hashes_exact",
           "variant_hashes"]

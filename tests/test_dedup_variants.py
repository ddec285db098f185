"""Edit-robust matching (issue 22) through the real dedup stage: pool images fetched over a loopback server by
the real fetch stage, lineages reconciled by the real taxonomy stage, an image-folder evaluation set prepared
by the stage itself. Edited copies of evaluation photographs in the pool (mirrored, turned 90 degrees,
cropped 2% and 5% per edge, rotated 3 degrees with a centred fill-crop, bordered, letterboxed) are excluded
with the method that names the edit; different photographs of the same taxon with a similar composition are
not. Photograph-like pictures: 1/f colour noise (conftest_fetch.noise_image), as the fetch tests use."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w
from PIL import Image

from conftest_fetch import jpeg_bytes, noise_image
from test_taxonomy_fixtures import make_workflow, seven, write_authorities
from tol_builder import catalog
from tol_builder import dedup as stage
from tol_builder import fetch, taxonomy
from tol_builder.context import BuildContext
from tol_builder.dedup import variants
from tol_builder.demo.server import serve_directory
from tol_builder.errors import ConfigError
from tol_builder.records import RECORD_SCHEMA, make_uid
from tol_builder.runner import Runner

SPECIES = seven("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Curculionidae", "Xyleborus", "ferrugineus")
W, H = 480, 360

# pool copy -> (the edit of its evaluation image, the method and variant it must be excluded by)
EDITS = {
    "mirrored": (lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "pdq_mirror", "mirror"),
    "turned90": (lambda im: im.transpose(Image.Transpose.ROTATE_90), "pdq_rot90", "rot90"),
    "crop2": (lambda im: variants.centre_crop(im, 0.02), "pdq_crop", "crop2"),
    "crop5": (lambda im: variants.centre_crop(im, 0.05), "pdq_crop", "crop5"),
    "rotated3": (lambda im: variants.rotate_fill(im, -3), "pdq_rotate", "rotate-3"),
    "bordered": (lambda im: variants.add_border(im, 0.05, "white"), "pdq_border", "border_white5"),
    "letterboxed": (lambda im: variants.letterbox(im, 16, 9, "black"), "pdq_letterbox", "letterbox_black_16x9"),
}


def _scene(seed: int) -> Image.Image:
    return noise_image(2 * W, 2 * H, seed=seed)


def images() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(evaluation images, pool images): one evaluation photograph per edit, its edited copy in the pool; and
    the same-taxon negatives: other frames of the evaluation photographs' scenes (panned 15% of the frame) and
    other photographs, as a burst of one animal would give."""
    ev, pool = {}, {}
    for k, (name, (make, _, _)) in enumerate(EDITS.items()):
        scene = _scene(100 + k)
        original = scene.crop((0, 0, W, H))
        ev[f"e_{name}"] = jpeg_bytes(original, quality=92)
        pool[name] = jpeg_bytes(make(original), quality=90)
        dx = round(0.15 * W)
        pool[f"pan_{name}"] = jpeg_bytes(scene.crop((dx, dx // 2, dx + W, dx // 2 + H)), quality=90)
    for k in range(3):
        pool[f"other{k}"] = jpeg_bytes(_scene(200 + k).crop((0, 0, W, H)), quality=90)
    return ev, pool


def _build(tmp, **dedup):
    out = tmp / "build"
    ev, pool = images()
    served = tmp / "images"
    rows = []
    for sid, data in pool.items():
        (served / "inat21").mkdir(parents=True, exist_ok=True)
        (served / "inat21" / f"{sid}.jpg").write_bytes(data)
    bench = tmp / "eval" / "bench" / "Xyleborus ferrugineus"
    bench.mkdir(parents=True)
    for name, data in ev.items():
        (bench / f"{name}.jpg").write_bytes(data)
    manifest = tmp / "manifests" / "evalsets" / "bench.toml"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(tomli_w.dumps({"source": "image_folder", "title": "bench",
                                       "evalset": {"name": "bench", "hold_images": True, "hold_species": "none"},
                                       "files": [{"name": "images", "role": "media", "url": "../../eval/bench"}]}))
    authorities = write_authorities(tmp)
    with serve_directory(served) as base_url:
        for sid in pool:
            rows.append({"uid": make_uid("inat21", sid), "source": "inat21", "source_id": sid,
                         "media_uri": f"{base_url}/inat21/{sid}.jpg", "media_member": None, **SPECIES,
                         "scientific_name": "Xyleborus ferrugineus", "common_name": None, "source_taxon_id": "1234",
                         "licence": "cc-by", "rights_holder": None, "source_url": None, "source_split": "train"})
        (out / "records" / "inat21").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), out / "records" / "inat21" / "part-0.parquet")
        catalog.register_parquet(out, "records", "records/*/*.parquet")
        wf = make_workflow(tmp, authorities, ("inat21",))
        wf.dedup.evalsets = [str(manifest.relative_to(tmp))]
        for k, v in dedup.items():
            setattr(wf.dedup, k, v)
        wf.fetch.retry_passes = 0
        wf.fetch.allow_private_addresses = True  # the pool's images are served from loopback
        ctx = BuildContext(wf, out, Runner(out, client=None, progress=False), None, threads=1)
        fetch.run(ctx)
        taxonomy.run(ctx)
        counters = stage.run(ctx)
    return out, wf, counters


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("variants")
    out, wf, counters = _build(tmp)
    return tmp, out, wf, counters


def _excluded(out) -> dict[str, dict]:
    rows = catalog.query(out, """SELECT r.source_id, x.* FROM exclusions x JOIN records r USING (uid)
                                 ORDER BY r.source_id""").to_pylist()
    return {r["source_id"]: r for r in rows}


@pytest.mark.slow
def test_edited_copies_are_excluded_by_the_method_of_their_edit(built):
    _, out, _, counters = built
    got = _excluded(out)
    for name, (_, method, variant) in EDITS.items():
        row = got.get(name)
        assert row is not None, f"the {name} copy was not excluded"
        assert (row["reason"], row["eval_id"].split("/")[-1], row["method"]) == \
            ("near_duplicate", f"e_{name}.jpg", method), row
        assert row["variant"] == variant and 0 <= row["distance"] <= 10, row
        assert variant in variants.DIHEDRAL or variant in variants.GRID  # the edits tested are on the grid
    skipped = sum(n.startswith("letterbox") and n.endswith("_4x3") for n in variants.GRID)  # 4:3 images: none
    assert counters["eval_variants"] == len(EDITS) * (7 + len(variants.GRID) - skipped)


@pytest.mark.slow
def test_other_photographs_of_the_same_taxon_are_not_excluded(built):
    _, out, _, _ = built
    wrongly = sorted(set(_excluded(out)) - set(EDITS))
    assert wrongly == [], wrongly  # panned frames of the same scenes and other photographs stay


@pytest.mark.slow
def test_dedup_summary_counts_per_method(built):
    _, out, _, _ = built
    rows = catalog.query(out, "SELECT method, images FROM dedup_summary WHERE reason = 'near_duplicate'").to_pylist()
    want: dict[str, int] = {}
    for _, method, _ in EDITS.values():
        want[method] = want.get(method, 0) + 1
    assert {r["method"]: r["images"] for r in rows} == want
    assert stage.summary_line(out).startswith(f"excluded {len(EDITS)} images: 0 exact_duplicate, {len(EDITS)} near")


@pytest.mark.slow
def test_the_settings_turn_it_off(built):
    """Without dihedral hashes and variants, the stage matches as before: no edited copy is caught."""
    tmp, out, wf, _ = built
    wf.dedup.match_dihedral = False
    wf.dedup.match_variants = False
    try:
        counters = stage.run(BuildContext(wf, out, Runner(out, client=None, progress=False), None, threads=1))
        assert _excluded(out) == {}
        assert counters.get("eval_variants_indexed", 0) == 0
        wf.dedup.match_variants = True  # mirrors off, grid on: the mirrored and turned copies go back in
        stage.run(BuildContext(wf, out, Runner(out, client=None, progress=False), None, threads=1))
        assert set(_excluded(out)) == set(EDITS) - {"mirrored", "turned90"}
        wf.dedup.match_variants = "yes"
        with pytest.raises(ConfigError, match=r"dedup\.match_variants"):
            stage.settings_of(BuildContext(wf, out, Runner(out, client=None, progress=False), None, threads=1))
    finally:
        wf.dedup.match_dihedral = wf.dedup.match_variants = True
        stage.run(BuildContext(wf, out, Runner(out, client=None, progress=False), None, threads=1))


def test_variant_names_and_methods():
    assert [variants.method_of(n) for n in ("identity", "mirror", "transverse", "rot180", "crop2", "rotate-1",
                                            "border_white5", "letterbox_black_4x3")] == \
        ["pdq", "pdq_mirror", "pdq_mirror", "pdq_rot90", "pdq_crop", "pdq_rotate", "pdq_border", "pdq_letterbox"]
    with pytest.raises(ValueError, match="not a grid variant name"):
        variants.edit("crop")
    im = noise_image(200, 150, seed=1)
    assert variants.letterbox(im, 4, 3, "black") is None  # already 4:3: no variant
    assert variants.letterbox(im, 16, 9, "black").size == (267, 150)
    assert variants.add_border(im, 0.1, "white").size == (236, 186)
    assert np.asarray(variants.add_border(im, 0.1, "white"))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.slow
def test_the_report_names_the_variant_of_each_match(built, tmp_path):
    from tol_builder.dedup.report import write_report

    _, out, _, _ = built
    page, shown = write_report(out, tmp_path / "report.html")
    html = page.read_text()
    assert shown["near_shown"] == len(EDITS) and shown["near_left_out"] == 0
    for _, method, variant in EDITS.values():
        assert f"matched {method} (variant {variant})" in html, variant
    assert html.count("data:image/jpeg;base64,") == 2 * len(EDITS)  # each copy beside its evaluation image

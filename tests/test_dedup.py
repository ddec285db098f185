"""The dedup stage on real parts: images fetched by the real fetch stage, lineages reconciled by the real
taxonomy stage against fixture authorities (test_taxonomy_fixtures), evaluation sets in three layouts
(image folder, Rare Species metadata, a table with URLs) prepared by the stage itself, DuckDB files, and
the HTML report rendered by a real headless Chromium."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w
from PIL import Image, ImageEnhance

from conftest_fetch import jpeg_bytes, noise_image
from test_taxonomy_fixtures import make_workflow, seven, write_authorities
from tol_builder import catalog
from tol_builder import dedup as stage
from tol_builder import fetch, taxonomy
from tol_builder.context import BuildContext
from tol_builder.dedup.evalsets import load_evalsets
from tol_builder.dedup.match import url_key_sql
from tol_builder.demo.server import serve_directory
from tol_builder.errors import ConfigError
from tol_builder.records import RECORD_SCHEMA, duckdb_connection, make_uid
from tol_builder.runner import Runner, read_markers

SOURCES = {"inat21": "inat21", "bioscan1m": "bioscan1m", "eol": "eol"}


def _img(seed: int, size=(320, 240)) -> bytes:
    return jpeg_bytes(noise_image(*size, seed=seed), quality=90)


def _grey(quality: int) -> bytes:
    return jpeg_bytes(Image.new("RGB", (300, 200), (128, 128, 128)), quality=quality)


def _reencode(data: bytes, how: str) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if how == "q40":
        return jpeg_bytes(img, quality=40)
    if how == "half":
        return jpeg_bytes(img.resize((img.width // 2, img.height // 2), Image.Resampling.BICUBIC))
    return jpeg_bytes(ImageEnhance.Brightness(img).enhance(1.15))


# pool: (source, source_id, ranks, scientific_name, source_taxon_id, source_url, image bytes)
def pool_images(near_copy: bool = False) -> list[tuple]:
    marmot = seven("Animalia", "Chordata", "Mammalia", "Rodentia", "Sciuridae", "Marmota", "flaviventris")
    xyl = seven("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Curculionidae", "Xyleborus", "ferrugineus")
    cocc = seven("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Coccinellidae", "Coccinella", "septempunctata")
    rows = []
    for i in range(3):
        rows.append(("inat21", f"m{i}", marmot, "Marmota flaviventris", "4831", None, _img(100 + i)))
        rows.append(("inat21", f"x{i}", xyl, "Xyleborus ferrugineus", "1234", None, _img(200 + i)))
        rows.append(("inat21", f"c{i}", cocc, "Coccinella septempunctata", "310", None, _img(300 + i)))
    och = seven(None, "Arthropoda", "Insecta", "Diptera", "Culicidae", "Ochlerotatus", "Ochlerotatus japonicus")
    cec = seven(None, "Arthropoda", "Insecta", "Diptera", "Cecidomyiidae")
    rows += [("bioscan1m", f"o{i}", och, "Ochlerotatus japonicus", "BOLD:AAA0001", None, _img(400 + i))
             for i in range(2)]
    rows += [("bioscan1m", "g0", cec, "Cecidomyiidae", "BOLD:ACB4407", None, _grey(90)),
             ("bioscan1m", "g1", cec, "Cecidomyiidae", "BOLD:ACB4407", None, _img(500))]
    rows += [("eol", f"{7000 + i}", seven(), None, "328672", None, _img(600 + i)) for i in range(3)]
    rows += [("eol", "8000", seven(), None, "45511123", "https://www.inaturalist.org/photos/111", _img(700)),
             ("eol", "8001", seven(), None, "45511123", None, _img(701)),
             # the same file as inat21 m0 (EOL re-hosts iNaturalist photos), on a page named Marmota flaviventris
             ("eol", "8002", seven(), None, "990001", None, _img(100))]
    if near_copy:  # a re-encoded (not byte-identical) copy of inat21 x1 inside the pool
        rows.append(("inat21", "x1copy", rows[4][2], "Xyleborus ferrugineus", "1234", None, _reencode(_img(201), "q40")))
    return rows


def write_pool(out: Path, images: Path, order_seed: int = 0, near_copy: bool = False,
               base_url: str = "") -> dict[str, str]:
    """records/<source>/part-0.parquet with images served from `base_url` (the pool's sources are web sources:
    their local paths would not be read); returns {source:source_id: uid}."""
    import random

    rows = pool_images(near_copy)
    random.Random(order_seed).shuffle(rows)
    uids, by_source = {}, {}
    for source, sid, ranks, sci, tid, url, data in rows:
        path = images / source / f"{sid}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        uid = make_uid(source, sid)
        uids[f"{source}:{sid}"] = uid
        by_source.setdefault(source, []).append({
            "uid": uid, "source": source, "source_id": sid, "media_uri": f"{base_url}/{source}/{sid}.jpg",
            "media_member": None, **ranks,
            "scientific_name": sci, "common_name": None, "source_taxon_id": tid, "licence": "cc-by",
            "rights_holder": None, "source_url": url, "source_split": "train"})
    for source, recs in by_source.items():
        p = out / "records" / source / "part-0.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(recs, schema=RECORD_SCHEMA), p)
    catalog.register_parquet(out, "records", "records/*/*.parquet")
    return uids


def _manifest(path: Path, source: str, evalset: dict, files: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps({"source": source, "title": path.stem, "evalset": evalset, "files": files}))
    return path


def write_evalsets(tmp: Path) -> list[str]:
    """Three evaluation sets (image folder, Rare Species metadata, a URL table); returns manifest paths."""
    pool = {f"{s}:{sid}": data for s, sid, *_, data in pool_images()}
    bench = tmp / "eval" / "bench"
    files = {"Xyleborus ferrugineus/exact.jpg": pool["inat21:x0"],
             "Coccinella septempunctata/q40.jpg": _reencode(pool["inat21:c0"], "q40"),
             "Coccinella septempunctata/half.jpg": _reencode(pool["inat21:c1"], "half"),
             "Panthera leo/bright.jpg": _reencode(pool["eol:7000"], "bright"),
             "Pica hudsonia/other.jpg": _img(900),
             "Aedes japonicus/0.jpg": _img(901),
             "Cecidomyiidae/blank.jpg": _grey(70)}
    for rel, data in files.items():
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_bytes(data)
    m1 = _manifest(tmp / "manifests" / "evalsets" / "bench.toml", "image_folder",
                   {"name": "bench", "hold_images": True, "hold_species": ["Aedes japonicus"]},
                   [{"name": "images", "role": "media", "url": "../../eval/bench"}])
    # Rare Species: the real metadata columns; one image is EOL content 8000 of page 45511123 (not a copy)
    rare = tmp / "eval" / "rare"
    (rare / "images" / "2024-03-20").mkdir(parents=True)
    (rare / "images" / "2024-03-20" / "8000_45511123_eol-full-size-copy.jpg").write_bytes(_img(950))
    (rare / "images" / "2024-03-20" / "8999_45511123_eol-full-size-copy.jpg").write_bytes(_img(951))
    with open(rare / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "kingdom", "phylum", "cls", "order", "family", "genus", "species", "common_name", "filepath",
                    "class"])
        for i, cid in enumerate((8000, 8999)):
            w.writerow([i, "Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia",
                        "black-billed magpie", f"2024-03-20/{cid}_45511123_eol-full-size-copy.jpg", "Pica hudsonia"])
    m2 = _manifest(tmp / "manifests" / "evalsets" / "rare.toml", "rare_species",
                   {"name": "rare", "hold_species": "all", "same_ids_as": "eol"},
                   [{"name": "metadata.csv", "role": "metadata", "url": "../../eval/rare/metadata.csv"},
                    {"name": "images", "role": "media", "url": "../../eval/rare/images"}])
    # a generic table: its image's source URL is the pool's EOL 8000 one, written differently
    tab = tmp / "eval" / "urls"
    tab.mkdir(parents=True)
    (tab / "u0.jpg").write_bytes(_img(960))
    (tab / "urls.csv").write_text("id,file,url,species_name\nu0,u0.jpg,http://inaturalist.org/photos/111/,x\n")
    m3 = _manifest(tmp / "manifests" / "evalsets" / "urls.toml", "table",
                   {"name": "urls", "options": {"local_media": True,
                                                "columns": {"source_id": "id", "media_uri": "file",
                                                            "source_url": "url", "scientific_name": "species_name"}}},
                   [{"name": "urls.csv", "role": "metadata", "url": "../../eval/urls/urls.csv"}])
    return [str(m.relative_to(tmp)) for m in (m1, m2, m3)]


def build(tmp: Path, order_seed: int = 0, evalsets: list[str] | None = None, near_copy: bool = False,
          **dedup) -> tuple[Path, dict, dict]:
    """records (written) -> fetch -> taxonomy -> dedup, in this process (the runner without a cluster)."""
    out = tmp / "build"
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    with serve_directory(tmp / "images") as base_url:
        return _build(tmp, out, base_url, order_seed, evalsets, near_copy, **dedup)


def _build(tmp: Path, out: Path, base_url: str, order_seed: int, evalsets, near_copy: bool, **dedup):
    uids = write_pool(out, tmp / "images", order_seed, near_copy, base_url)
    authorities = tmp / "authorities" if (tmp / "authorities").exists() else write_authorities(tmp)
    wf = make_workflow(tmp, authorities, tuple(SOURCES))
    for s in wf.sources:
        s.name = SOURCES[s.id]
    wf.dedup.evalsets = write_evalsets(tmp) if evalsets is None else evalsets
    for k, v in dedup.items():
        setattr(wf.dedup, k, v)
    wf.fetch.retry_passes = 0
    wf.fetch.allow_private_addresses = True  # the pool's images are served from loopback
    ctx = BuildContext(wf, out, Runner(out, client=None, progress=False), None, threads=1)
    fetch.run(ctx)
    taxonomy.run(ctx)
    counters = stage.run(ctx)
    return out, uids, counters


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dedup")
    out, uids, counters = build(tmp)
    return tmp, out, uids, counters


def _excl(out: Path) -> list[dict]:
    return catalog.query(out, "SELECT * FROM exclusions ORDER BY uid, eval_set, method").to_pylist()


@pytest.mark.slow
def test_exact_near_held_and_pool_duplicates(built):
    tmp, out, uids, counters = built
    name = {v: k for k, v in uids.items()}
    got = {(name[r["uid"]], r["reason"], r["eval_set"], r["method"]) for r in _excl(out)}
    expected = {
        ("inat21:x0", "exact_duplicate", "bench", "sha256"),
        ("inat21:c0", "near_duplicate", "bench", "pdq"),  # JPEG quality 40
        ("inat21:c1", "near_duplicate", "bench", "pdq"),  # resized to 50 %
        ("eol:7000", "near_duplicate", "bench", "pdq"),  # brightened
        ("bioscan1m:o0", "species_hold", "bench", "taxon"),  # raw label Ochlerotatus: a synonym of Aedes
        ("bioscan1m:o1", "species_hold", "bench", "taxon"),
        ("eol:8000", "exact_duplicate", "rare", "source_id"),  # EOL content id + page id
        ("eol:8000", "exact_duplicate", "urls", "url"),  # https://www. vs http://, trailing slash
        ("eol:8000", "species_hold", "rare", "taxon"),  # Rare Species holds every image of its species
        ("eol:8001", "species_hold", "rare", "taxon"),
        ("eol:8002", "pool_duplicate", None, "sha256"),  # the EOL copy of inat21 m0: iNat21 is listed first
    }
    assert got == expected
    near = {name[r["uid"]]: r["distance"] for r in _excl(out) if r["method"] == "pdq"}
    assert all(0 <= d <= 10 for d in near.values()), near
    survivor = [r for r in _excl(out) if r["reason"] == "pool_duplicate"][0]
    assert survivor["eval_uid"] == uids["inat21:m0"]
    # the featureless grey pictures have equal-looking hashes but low quality: never matched by PDQ
    assert uids["bioscan1m:g0"] not in {r["uid"] for r in _excl(out)}
    assert counters["pdq_untrusted"] >= 1 and counters["eval_pdq_untrusted"] >= 1
    dups = catalog.query(out, "SELECT uid, cluster_id, method FROM pool_duplicates ORDER BY uid").to_pylist()
    assert {name[d["uid"]] for d in dups} == {"inat21:m0", "eol:8002"}
    assert {d["cluster_id"] for d in dups} == {min(uids["inat21:m0"], uids["eol:8002"])}


@pytest.mark.slow
def test_evaluation_images_stay_out_of_the_pool_tables(built):
    tmp, out, uids, _ = built
    n_eval = catalog.query(out, "SELECT count(*) AS n FROM eval_records").column("n")[0].as_py()
    assert n_eval == 7 + 2 + 1
    for view in ("records", "media", "images"):
        clash = catalog.query(out, f"SELECT count(*) AS n FROM {view} WHERE uid IN (SELECT uid FROM eval_records)")
        assert clash.column("n")[0].as_py() == 0, view
    assert catalog.query(out, "SELECT count(*) AS n FROM records").column("n")[0].as_py() == len(pool_images())
    ev = catalog.query(out, """SELECT eval_set, scientific_name, lowest_rank FROM eval_images
                               WHERE eval_set IN ('bench', 'rare') GROUP BY ALL ORDER BY ALL""").to_pylist()
    assert {"eval_set": "rare", "scientific_name": "Pica hudsonia", "lowest_rank": "species"} in ev
    assert {"eval_set": "bench", "scientific_name": "Aedes japonicus", "lowest_rank": "species"} in ev
    ok = catalog.query(out, "SELECT count(*) AS n FROM eval_media WHERE status = 'ok' AND pdq IS NOT NULL")
    assert ok.column("n")[0].as_py() == n_eval


@pytest.mark.slow
def test_rerunning_changes_nothing_and_the_survivor_is_the_same_in_any_order(built, tmp_path):
    tmp, out, uids, counters = built
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "dedup").glob("*.parquet")}
    markers = read_markers(out, stage.STAGE)
    wf = make_workflow(tmp, tmp / "authorities", tuple(SOURCES))
    for s in wf.sources:
        s.name = SOURCES[s.id]
    wf.dedup.evalsets = [str(p.relative_to(tmp)) for p in sorted((tmp / "manifests" / "evalsets").glob("*.toml"))]
    ctx = BuildContext(wf, out, Runner(out, client=None, progress=False), None, threads=1)
    again = stage.run(ctx)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "dedup").glob("*.parquet")} == before
    assert read_markers(out, stage.STAGE) == markers
    assert {k: v for k, v in again.items() if k.startswith("excluded_")} == \
        {k: v for k, v in counters.items() if k.startswith("excluded_")}
    # another build with the records in another order: the same exclusions, the same survivor
    shutil.copytree(tmp / "authorities", tmp_path / "authorities")
    out2, _, _ = build(tmp_path, order_seed=7)
    assert _excl(out2) == _excl(out)


@pytest.mark.slow
def test_dedup_summary_counts_per_set_and_method(built):
    _, out, _, counters = built
    rows = catalog.query(out, "SELECT reason, eval_set, method, images FROM dedup_summary").to_pylist()
    assert {(r["reason"], r["eval_set"], r["method"]): r["images"] for r in rows} == {
        ("exact_duplicate", "bench", "sha256"): 1, ("exact_duplicate", "rare", "source_id"): 1,
        ("exact_duplicate", "urls", "url"): 1, ("near_duplicate", "bench", "pdq"): 3,
        ("species_hold", "bench", "taxon"): 2, ("species_hold", "rare", "taxon"): 2,
        ("pool_duplicate", None, "sha256"): 1}
    assert counters["excluded_images"] == 9  # eol:8000 is excluded for three reasons
    assert stage.summary_line(out) == ("excluded 9 images: 2 exact_duplicate, 3 near_duplicate, 4 species_hold, "
                                       "1 pool_duplicate")


@pytest.mark.slow
def test_near_pool_copies_stay_in_one_cluster_unless_asked(tmp_path):
    """A near (not byte-exact) copy inside the pool joins its original's cluster and stays; with
    dedup.drop_pool_near one of them goes, by the same rule as exact copies."""
    out, uids, _ = build(tmp_path / "keep", evalsets=[], near_copy=True)
    dups = {d["uid"]: d for d in catalog.query(out, "SELECT * FROM pool_duplicates").to_pylist()}
    a, b = uids["inat21:x1"], uids["inat21:x1copy"]
    assert dups[a]["cluster_id"] == dups[b]["cluster_id"] == min(a, b)
    assert dups[a]["method"] == dups[b]["method"] == "pdq" and 0 <= dups[a]["distance"] <= 10
    assert not {a, b} & {r["uid"] for r in _excl(out)}
    out, uids, _ = build(tmp_path / "drop", evalsets=[], near_copy=True, drop_pool_near=True)
    gone = [r for r in _excl(out) if r["uid"] in (a, b)]
    assert [(r["uid"], r["method"], r["eval_uid"]) for r in gone] == [(max(a, b), "pdq", min(a, b))]


def test_url_keys():
    con = duckdb_connection()
    cases = {"https://www.inaturalist.org/photos/111": "inaturalist.org/photos/111",
             "HTTP://WWW.Inaturalist.org:80/photos/111/#frag": "inaturalist.org/photos/111",
             "http://example.org/a?b=1": "example.org/a?b=1", "file:///etc/passwd": None, "/tmp/x.jpg": None,
             "ftp://example.org/a": None}
    for url, key in cases.items():
        assert con.sql(f"SELECT {url_key_sql('$u')}", params={"u": url}).fetchall()[0][0] == key, url


def test_evalset_manifest_errors_name_the_key(tmp_path):
    wf = make_workflow(tmp_path, tmp_path, tuple(SOURCES))
    bad = {"missing": ({"source": "image_folder", "files": []}, r"evalset"),
           "hold": ({"source": "image_folder", "evalset": {"name": "x", "hold_species": "some"}, "files": []},
                    r"evalset\.hold_species"),
           "clash": ({"source": "image_folder", "evalset": {"name": "eol"}, "files": []}, r"evalset\.name"),
           "typo": ({"source": "image_folder", "evalset": {"name": "x", "hold_imgs": True}, "files": []},
                    r"evalset\.hold_imgs")}
    for key, (doc, pattern) in bad.items():
        p = tmp_path / f"{key}.toml"
        p.write_text(tomli_w.dumps(doc))
        wf.dedup.evalsets = [p.name]
        with pytest.raises(ConfigError, match=pattern):
            load_evalsets(wf)


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("TOL_CI"):
            pytest.fail("chromium is missing in CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (.ci/run installs it; apt-get install chromium)")
    return found


@pytest.mark.slow
def test_report_page_renders_in_a_real_browser(built, tmp_path):
    _, out, uids, _ = built
    from tol_builder.dedup.report import write_report

    page, shown = write_report(out, tmp_path / "report.html", max_pairs=2)
    html = page.read_text()
    assert shown == {"near_shown": 2, "near_left_out": 1, "pool_shown": 0, "pool_left_out": 0}
    assert "1 more not shown" in html and html.count("data:image/jpeg;base64,") == 4
    chromium = _chromium()
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1400",
                    f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    import numpy as np

    pixels = np.asarray(Image.open(shot).convert("RGB").resize((250, 350))).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    assert colours > 2000, colours  # the noise pictures rendered (a page of text has a few hundred colours)


@pytest.mark.slow
def test_status_and_cli_report(built, tmp_path):
    from conftest import run_cli

    _, out, _, _ = built
    r = run_cli("status", str(out))
    assert r.returncode == 0 and "near_duplicate" in r.stdout + r.stderr
    r = run_cli("dedup", "report", str(out), "--out", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r.html").exists() and "3 near matches shown" in " ".join(r.stderr.split())


@pytest.mark.slow
def test_an_evaluation_set_that_changed_is_prepared_again(built, tmp_path):
    """An image added to an image-folder set (its manifest unchanged) is noticed: the set is read again, its
    images already fetched are carried over, the new one is matched."""
    tmp, out, uids, _ = built
    pool = {f"{s}:{sid}": data for s, sid, *_, data in pool_images()}
    (tmp / "eval" / "bench" / "Xyleborus ferrugineus" / "exact2.jpg").write_bytes(pool["inat21:x1"])
    wf = make_workflow(tmp, tmp / "authorities", tuple(SOURCES))
    for s in wf.sources:
        s.name = SOURCES[s.id]
    wf.dedup.evalsets = [str(p.relative_to(tmp)) for p in sorted((tmp / "manifests" / "evalsets").glob("*.toml"))]
    said = []

    class Say:
        def print(self, message, **kw):
            said.append(message)

    with serve_directory(tmp / "images"):
        stage.run(BuildContext(wf, out, Runner(out, client=None, progress=False), Say(), threads=1))
    assert any("'bench' changed" in m for m in said), said
    assert any("carried over" in m for m in said), said
    assert catalog.query(out, "SELECT count(*) AS n FROM eval_records WHERE source = 'bench'").column("n")[0].as_py() == 8
    assert uids["inat21:x1"] in {r["uid"] for r in _excl(out) if r["reason"] == "exact_duplicate"}

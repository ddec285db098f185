"""The shards stage on the real demo build (`tol demo`: ingest, fetch, taxonomy, shards on a LocalCluster):
the plan's rules (splits, clusters, exclusions, selection, include lists), the tars read back, the member
index through DuckDB, the dataset card, `tol shards verify` on good and damaged shards, and `tol build` on the
demo's workflow doing nothing. Clients (webdataset, open_clip, Hugging Face) are in test_shards_clients.py."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w
from PIL import Image

from conftest import run_cli
from tol_builder import catalog
from tol_builder.catalog import query
from tol_builder.config import load_workflow
from tol_builder.errors import ConfigError
from tol_builder.fileio import file_digest
from tol_builder.records import RANKS
from tol_builder.shards import SHARD_VIEWS
from tol_builder.shards import plan as planning
from tol_builder.shards.images import training_jpeg
from tol_builder.shards.layout import index_dir, licences_path, sizes_path, split_dir
from tol_builder.shards.licences import licence_id
from tol_builder.text import taxon_texts, text_keys

pytestmark = pytest.mark.slow
SPLITS = ("train", "val", "train_small")
SHARD_OUTPUTS = ("shards", "shards_meta", "selection", "README.md", "coverage.png", "croissant.json")


def tol_demo(root: Path) -> Path:
    """`tol demo` into root/demo (every stage, shards included): a build of its own, for test_shards_determinism
    (this module and the others share the session's demo, tests/fixtures_demo.py)."""
    out = root / "demo"
    r = run_cli("demo", "--out", str(out), "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def demo(demo_run) -> Path:
    """The session's `tol demo` folder (tests/fixtures_demo.py): read only; `variant` copies its build."""
    return demo_run.out


def variant(demo: Path, tmp_path: Path, name: str, **sections) -> tuple[Path, Path]:
    """A copy of the demo build without shard outputs (mtimes kept: earlier stages stay complete) and a
    workflow beside the demo's with `sections` merged in (shards={...}, cluster={...}, seed=3).
    Returns (build, workflow)."""
    build = tmp_path / name / "build"

    def ignore(folder, names):
        at_root = Path(folder) == demo / "build"
        skip = {n for n in names if at_root and n in SHARD_OUTPUTS}
        if Path(folder).name == "_markers":
            skip |= {n for n in names if n.startswith("shards")}
        if Path(folder).name == "cache":
            skip |= {"shards", "card"} & set(names)
        return skip

    shutil.copytree(demo / "build", build, ignore=ignore)
    catalog.unregister(build, *SHARD_VIEWS)  # the catalog of a build before the shards stage
    doc = tomllib.loads((demo / "workflow.toml").read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            doc.setdefault(section, {}).update(values)
        else:
            doc[section] = values
    doc["out"] = str(build)
    wf = demo / f"workflow-{name}.toml"  # beside the demo's: its manifest paths are relative to it
    wf.write_text(tomli_w.dumps(doc))
    return build, wf


def samples(build: Path) -> list[dict]:
    return pq.read_table(build / "selection" / "samples.parquet").to_pylist()


SOURCE_ORDER = ("inat21", "bioscan1m", "eol")  # the demo workflow's order of sources


def anchors(build: Path, clusters: dict[str, list[str]]) -> dict[str, str]:
    """uid -> the uid that decides its split (plan.py): its cluster's member from the earliest source, then
    the smallest uid."""
    source = {r["uid"]: r["source"] for r in query(build, "SELECT uid, source FROM records").to_pylist()}
    out = {}
    for members in clusters.values():
        anchor = min(members, key=lambda u: (SOURCE_ORDER.index(source[u]), u))
        out.update({u: anchor for u in members})
    return out


def usable_images(build: Path) -> list[dict]:
    """What should become samples: fetched, resolved, not excluded by the dedup stage; with the uid that
    decides each one's split (`cluster`)."""
    rows = query(build, "SELECT i.uid, i.common_name FROM images i JOIN media m USING (uid) WHERE m.status = 'ok' "
                        "AND i.taxon_id IS NOT NULL ORDER BY uid").to_pylist()
    dedup = build / "dedup"
    excluded = set(pq.read_table(dedup / "exclusions.parquet")["uid"].to_pylist())
    clusters: dict[str, list[str]] = {}
    for r in pq.read_table(dedup / "pool_duplicates.parquet").to_pylist():
        clusters.setdefault(r["cluster_id"], []).append(r["uid"])
    anchor = anchors(build, clusters)
    return [{**r, "cluster": anchor.get(r["uid"], r["uid"])} for r in rows if r["uid"] not in excluded]


def h64(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)


def expected_split(seed: int, cluster: str, val_fraction: float = 0.05) -> str:
    """The documented rule (plan.py): val when sha256(seed:split:cluster) < val_fraction * 2^64."""
    return "val" if h64(f"{seed}:split:{cluster}") < int(val_fraction * 2 ** 64) else "train"


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


# ------------------------------------------------------------------------------------------- the plan
def test_plan_splits_by_the_documented_hash_and_fills_shards_in_order(demo):
    build = demo / "build"
    rows = samples(build)
    usable = {r["uid"]: r for r in usable_images(build)}
    assert len(usable) < 364  # the demo's evaluation set holds some images out
    by_split = {s: [r for r in rows if r["split"] == s] for s in SPLITS}
    assert sorted(r["uid"] for r in by_split["train"] + by_split["val"]) == sorted(usable)  # each image once
    assert {r["uid"] for r in by_split["train_small"]} <= {r["uid"] for r in by_split["train"]}
    for r in by_split["train"] + by_split["val"]:
        assert r["cluster"] == usable[r["uid"]]["cluster"] and r["split"] == expected_split(17, r["cluster"])
    small = {r["uid"] for r in by_split["train"] if h64(f"17:train_small:{r['uid']}") < int(0.1 * 2 ** 64)}
    assert small == {r["uid"] for r in by_split["train_small"]}
    for split, part in by_split.items():  # the seeded order: sorted by sha256(seed:order:split:uid)
        order = sorted(part, key=lambda r: (h64(f"17:order:{split}:{r['uid']}"), r["uid"]))
        assert [(r["shard"], r["position"]) for r in order] == [(i // 64, i % 64) for i in range(len(part))]
    assert {r["source"] for r in by_split["train"][:64]} == {"inat21", "bioscan1m", "eol"}  # mixed sources
    assert 0 < len(by_split["val"]) < 0.12 * len(usable)


def test_plan_cut_into_many_order_ranges_writes_the_same_files(demo, tmp_path, monkeypatch):
    """The plan orders its samples one range of the order hash at a time (plan.SORT_PART_ROWS records a range):
    cut into ranges of 7 records, with a cap and a floor dropping candidates after the cut, it writes the same
    bytes as in one range."""
    build, wf_path = variant(demo, tmp_path, "ranges", shards={"max_per_species": 3, "min_per_species": 2})
    wf = load_workflow(wf_path)
    seen_parts = []
    split_pass = planning._split_pass
    monkeypatch.setattr(planning, "_split_pass", lambda reader, scratch, parts: (
        seen_parts.append(parts), split_pass(reader, scratch, parts))[1])
    results = {}
    for rows in (10 ** 9, 7):
        monkeypatch.setattr(planning, "SORT_PART_ROWS", rows)
        dest = tmp_path / f"selection-{rows}"
        counts = planning.compute(build, wf, dest)
        results[rows] = (counts, {f: (dest / f).read_bytes() for f in (
            "samples.parquet", "routes.parquet", "unselected.parquet")})
    assert seen_parts[0] == 1 and seen_parts[1] > 40
    assert results[7] == results[10 ** 9]
    counts = results[7][0]
    assert counts["unselected"]["species_cap"] > 0 and counts["splits"]["train_small"]["samples"] > 0
    assert not (build / "cache" / "selection-tmp" / "plan-parts").exists()  # the scratch files are gone


def _write_dedup(build: Path, clusters: dict[str, list[str]], excluded: dict[str, str]) -> None:
    """The dedup stage's two files, by hand, in its schema."""
    (build / "dedup").mkdir(exist_ok=True)
    members = [(c, u) for c, us in clusters.items() for u in us]
    pq.write_table(pa.table({"uid": [u for _, u in members], "cluster_id": [c for c, _ in members],
                             "method": ["pdq"] * len(members), "distance": [3] * len(members)}),
                   build / "dedup" / "pool_duplicates.parquet")
    pq.write_table(pa.table({"uid": list(excluded), "reason": list(excluded.values()),
                             "eval_set": ["demo_eval"] * len(excluded),
                             "eval_id": [str(i) for i in range(len(excluded))],
                             "method": [{"near_duplicate": "pdq", "exact_duplicate": "sha256"}.get(r, "taxon")
                                        for r in excluded.values()],
                             "distance": [4 if r == "near_duplicate" else 0 for r in excluded.values()]}),
                   build / "dedup" / "exclusions.parquet")


def test_adding_a_source_moves_no_image_between_splits(demo, tmp_path):
    recs = query(demo / "build", "SELECT uid, source FROM records ORDER BY uid").to_pylist()
    eol = [r["uid"] for r in recs if r["source"] == "eol"]
    inat = [r["uid"] for r in recs if r["source"] == "inat21"]
    # near copies across sources whose EOL member has the smaller uid and the other split: keyed by the
    # smallest uid, the iNat21 image would move to the EOL copy's split when EOL is added
    pairs = [(e, i) for e in eol for i in inat if e < i and expected_split(17, e) != expected_split(17, i)]
    chosen, used = [], set()
    for e, i in pairs:
        if e not in used and i not in used and len(chosen) < 4:
            chosen.append((e, i))
            used |= {e, i}
    assert len(chosen) == 4
    full, wf = variant(demo, tmp_path, "witheol")
    _write_dedup(full, {e: [e, i] for e, i in chosen}, {})
    planning.plan(full, load_workflow(wf))
    before = {(r["uid"], r["split"]) for r in samples(full) if r["split"] != "train_small"}
    assert {(i, expected_split(17, i)) for _, i in chosen} <= before
    assert {(e, expected_split(17, i)) for e, i in chosen} <= before  # the EOL copy follows its cluster's anchor
    build, wf = variant(demo, tmp_path, "noeol")
    for folder in ("records", "media"):
        shutil.rmtree(build / folder / "eol")  # as if EOL had not been added yet: no clusters, no EOL images
    _write_dedup(build, {}, {})
    planning.plan(build, load_workflow(wf))
    without = {(r["uid"], r["split"]) for r in samples(build) if r["split"] != "train_small"}
    assert without and {r["source"] for r in samples(build)} == {"inat21", "bioscan1m"}
    assert without <= before  # every image of the earlier sources keeps its split


def test_near_copies_share_a_split_and_excluded_images_never_enter(demo, tmp_path):
    rows = [r for r in samples(demo / "build") if r["split"] != "train_small"]
    val = sorted(r["uid"] for r in rows if r["split"] == "val")
    train = sorted(r["uid"] for r in rows if r["split"] == "train")
    clusters = {f"cluster-{i}": [v, *train[3 * i:3 * i + 3]] for i, v in enumerate(val[:6])}  # would straddle
    excluded = {train[30]: "near_duplicate", train[31]: "exact_duplicate", val[7]: "species_hold"}
    build, wf = variant(demo, tmp_path, "dedup")
    _write_dedup(build, clusters, excluded)  # in place of the demo's own dedup outputs
    doc = planning.plan(build, load_workflow(wf))
    after = {r["uid"]: r for r in samples(build) if r["split"] != "train_small"}
    anchor = anchors(build, clusters)
    for cluster, members in clusters.items():
        assert {after[u]["split"] for u in members} == {expected_split(17, anchor[members[0]])}, cluster
        assert {after[u]["cluster"] for u in members} == {anchor[members[0]]}
    assert not set(excluded) & set(after)
    unselected = {r["uid"]: r["reason"] for r in pq.read_table(build / "selection" / "unselected.parquet").to_pylist()}
    assert unselected == {u: f"excluded_{why}" for u, why in excluded.items()}
    assert doc["counts"]["clusters_split"] == 0
    assert doc["counts"]["unselected"] == {"excluded_exact_duplicate": 1, "excluded_near_duplicate": 1,
                                           "excluded_species_hold": 1}
    r = run_cli("build", str(wf), "--stages", "shards", "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    in_tars = {m.split(".")[0] for t in build.glob("shards/*/*.tar") for m, _ in tar_members(t)}
    assert len(in_tars) == 364 - 3 and not set(excluded) & in_tars  # an excluded uid never enters a shard
    card = (build / "README.md").read_text()
    assert "| demo_eval | pdq | near_duplicate | 1 |" in card and "| demo_eval | taxon | species_hold | 1 |" in card
    assert "Within-pool duplicate clusters: from `dedup/pool_duplicates.parquet`." in card


def test_selection_settings_and_tol_shards_plan(demo, tmp_path):
    build, wf = variant(demo, tmp_path, "select", shards={
        "include_taxa": ["class:Insecta"], "exclude_licences": ["CC-BY-NC*"], "min_rank": "genus",
        "max_per_species": 8, "min_per_species": 5, "below_min_per_species": "drop"})
    r = run_cli("shards", "plan", str(build), "--workflow", str(wf))
    assert r.returncode == 0, r.stderr
    rows = [x for x in samples(build) if x["split"] != "train_small"]
    assert rows
    images = {x["uid"]: x for x in query(build, "SELECT i.*, r.licence FROM images i JOIN records r USING (uid)").to_pylist()}
    excluded = set(query(build, "SELECT uid FROM exclusions").column("uid").to_pylist())
    per_taxon: dict[str, int] = {}
    for x in rows:
        assert x["class"] == "Insecta" and not x["licence_id"].startswith("CC-BY-NC")
        assert x["lowest_rank"] in ("genus", "species")
        per_taxon[x["taxon_id"]] = per_taxon.get(x["taxon_id"], 0) + 1
    assert max(per_taxon.values()) == 8 and min(per_taxon.values()) >= 5
    reasons = {x["uid"]: x["reason"] for x in pq.read_table(build / "selection" / "unselected.parquet").to_pylist()}
    assert set(reasons) | {x["uid"] for x in rows} == set(images) and not set(reasons) & {x["uid"] for x in rows}
    for uid, why in reasons.items():
        img = images[uid]
        if why == "taxon_excluded":
            assert img["class"] != "Insecta"
        elif why == "licence_excluded":
            assert licence_id(img["licence"]).startswith("CC-BY-NC")
        elif why == "below_min_rank":
            assert img["lowest_rank"] == "family"
        elif why.startswith("excluded_"):
            assert uid in excluded
        else:
            assert why == "species_cap" and per_taxon[img["taxon_id"]] == 8
    capped = [t for t, n in per_taxon.items() if n == 8]
    assert capped and all(sum(1 for u, w in reasons.items() if w == "species_cap" and images[u]["taxon_id"] == t) > 0
                          for t in capped)
    printed = r.stdout
    for reason in set(reasons.values()):
        assert f"{reason}: {sum(1 for w in reasons.values() if w == reason):,}" in printed
    assert f"train: {sum(1 for x in rows if x['split'] == 'train'):,} samples" in printed
    # the floor: with a floor above every eligible taxon, the taxa go (drop) or stay whole (keep)
    for action, expect_samples in (("drop", False), ("keep", True)):
        build2, wf2 = variant(demo, tmp_path, f"floor-{action}", shards={
            "include_taxa": ["family:Cecidomyiidae"], "min_per_species": 1000, "below_min_per_species": action})
        doc = planning.plan(build2, load_workflow(wf2))
        assert bool(doc["counts"]["selected"]) is expect_samples
        assert doc["counts"]["unselected"].get("species_floor", 0) == (0 if expect_samples else 21)


def test_include_list_in_both_layouts_reports_what_it_lacks(demo, tmp_path):
    usable = {r["uid"] for r in usable_images(demo / "build")}
    recs = [r for r in query(demo / "build", "SELECT uid, source, source_id, media_member FROM records ORDER BY uid")
            .to_pylist() if r["uid"] in usable]
    pick = [r for r in recs if r["source"] == "eol"][:4] + [r for r in recs if r["source"] == "inat21"][:4] + \
        [r for r in recs if r["source"] == "bioscan1m"][:4]
    plain = tmp_path / "include.csv"
    with open(plain, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "source_id"])
        w.writerows([[r["source"], r["source_id"]] for r in pick] + [["eol", "999999999"], ["inat21", "no-such-uuid"]])
    tol = tmp_path / "catalog.csv"  # the published TreeOfLife-10M catalog's columns
    with open(tol, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "treeoflife_id", "eol_content_id", "eol_page_id", "bioscan_part", "bioscan_filename",
                    "inat21_filename", "inat21_cls_name", "inat21_cls_num", *RANKS, "common"])
        for r in pick:
            eol = r["source_id"] if r["source"] == "eol" else ""
            part, file = (r["media_member"].split("/")[-2][4:], r["media_member"].split("/")[-1]) \
                if r["source"] == "bioscan1m" else ("", "")
            inat = r["media_member"] if r["source"] == "inat21" else ""
            w.writerow(["train", "x", eol, "", part, file, inat, "", ""] + [""] * 8)
        w.writerow(["train", "x", "", "", "7", "nothere.jpg", "", "", ""] + [""] * 8)
    wanted = {(r["source"], r["source_id"]) for r in pick}
    for path, missing in ((plain, 2), (tol, 1)):
        build, wf = variant(demo, tmp_path, f"include-{path.stem}", shards={"include_list": str(path)})
        doc = planning.plan(build, load_workflow(wf))
        got = {(x["source"], x["source_id"]) for x in samples(build) if x["split"] != "train_small"}
        assert got == wanted
        assert doc["counts"]["include_list_missing"] == missing
        lacking = pq.read_table(build / "selection" / "include_missing.parquet").to_pylist()
        assert len({x["row"] for x in lacking}) == missing
        assert set(pq.read_table(build / "selection" / "unselected.parquet")["reason"].to_pylist()) == {"not_in_include_list"}


@pytest.mark.parametrize("line,key", [
    ("include_taxa = ['Aves']", "shards.include_taxa[0]"),
    ("default_text = 'caption'", "shards.default_text"),
    ("include_sources = ['gbif']", "shards.include_sources[0]"),
    ("val_fraction = 1.5", "shards.val_fraction"),
    ("pad_colour = [1, 2]", "shards.pad_colour"),
    ("include_list = 'nowhere.csv'", "shards.include_list"),
])
def test_bad_shard_settings_name_their_key_at_load(demo, line, key):
    doc = (demo / "workflow.toml").read_text()
    path = demo / "workflow-bad.toml"
    path.write_text(doc.replace("[shards]\n", f"[shards]\n{line}\n"))
    with pytest.raises(ConfigError) as e:
        load_workflow(path)  # before any cluster starts
    assert key in str(e.value) and str(path) in str(e.value)
    wf = load_workflow(demo / "workflow.toml")
    setattr(wf.shards, *next(iter(tomllib.loads(line).items())))  # the same value set in code ...
    with pytest.raises(ConfigError) as e:
        planning.validate(wf)  # ... is named by the stage's own check
    assert key in str(e.value)


@pytest.mark.parametrize("raw,lid", [
    ("Attribution-NonCommercial License", "CC-BY-NC"), ("No known copyright restrictions",
                                                        "LicenseRef-No-Known-Copyright-Restrictions"),
    ("CreativeCommons - Attribution", "CC-BY"), ("CreativeCommons - Attribution Non-Commercial Share-Alike", "CC-BY-NC-SA"),
    ("cc-by-nc-sa-3.0", "CC-BY-NC-SA-3.0"), ("cc-publicdomain", "LicenseRef-Public-Domain"), ("cc-by-4.0", "CC-BY-4.0"),
    ("http://creativecommons.org/licenses/by-nc-nd/2.0/", "CC-BY-NC-ND-2.0"),
    ("https://creativecommons.org/publicdomain/zero/1.0/", "CC0-1.0"), ("Public Domain Dedication", "CC0-1.0"),
    ("3", "LicenseRef-Unknown"), ("", "LicenseRef-Unknown"), (None, "LicenseRef-Unknown"),
])
def test_licences_are_normalised(raw, lid):
    assert licence_id(raw) == lid


def test_training_jpeg_modes():
    wide = Image.new("RGB", (400, 200), (200, 30, 30))
    wide.paste((30, 30, 200), (100, 0, 300, 200))  # blue centre, red sides
    buf = io.BytesIO()
    wide.save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    out = {m: Image.open(io.BytesIO(training_jpeg(data, 64, m, pad_colour=(0, 255, 0))))
           for m in ("squash", "keep_ratio", "center_crop")}
    assert all(im.size == (64, 64) and im.mode == "RGB" and im.format == "JPEG" for im in out.values())
    px = {m: im.convert("RGB").getpixel for m, im in out.items()}
    assert px["squash"]((2, 32))[0] > 150 and px["squash"]((32, 32))[2] > 150  # red sides kept, squeezed
    assert px["center_crop"]((2, 32))[2] > 150 and px["center_crop"]((61, 32))[2] > 150  # only the blue centre
    assert px["keep_ratio"]((32, 2))[1] > 200 and px["keep_ratio"]((32, 32))[2] > 150  # padded top, image centred
    assert training_jpeg(data, 64) == training_jpeg(data, 64)  # fixed encoder: same bytes
    exact = training_jpeg(data, 64)
    assert training_jpeg(exact, 64) is exact  # already the training size: kept byte for byte


# --------------------------------------------------------------------------------------- the shards
def test_shards_hold_every_key_and_the_text_modules_texts(demo):
    build = demo / "build"
    plan = {(r["uid"], r["split"]): r for r in samples(build)}
    keys = text_keys(("en",))
    seen = {s: [] for s in SPLITS}
    for split in SPLITS:
        sizes = json.loads(sizes_path(build, split).read_text())
        assert sorted(sizes) == sorted(p.name for p in split_dir(build, split).iterdir())  # tars only
        for name, n in sizes.items():
            members = tar_members(split_dir(build, split) / name)
            assert len(members) == n * (len(keys) + 3)  # sizes.json is the true count
            for i in range(0, len(members), len(keys) + 3):
                uid = members[i][0].split(".")[0]
                row = plan[(uid, split)]
                assert [m for m, _ in members[i:i + len(keys) + 3]] == \
                    [f"{uid}.jpg", *[f"{uid}.{k}.txt" for k in keys], f"{uid}.txt", f"{uid}.json"]
                t = taxon_texts({r: row[r] for r in RANKS}, row["common_name"], confirmed_rank=row["lowest_rank"])
                got = {m.split(".", 1)[1][:-4]: d.decode() for m, d in members[i + 1:i + len(keys) + 2]}
                assert got == {**t.captions, "": t.captions["taxon_com"]}
                meta = json.loads(members[i + len(keys) + 2][1])
                assert meta["texts"] == t.captions and meta["uid"] == uid and meta["pdq"] == row["pdq"]
                assert {k: meta[k] for k in ("source", "source_id", "licence", "sha256")} == \
                    {k: row[k] for k in ("source", "source_id", "licence", "sha256")}
                assert meta["common_name"] == (row["common_name"] or "") and meta["rank_status"] == t.rank_status
                img = Image.open(io.BytesIO(members[i][1]))
                assert img.format == "JPEG" and img.size == (224, 224) and img.mode == "RGB"
                seen[split].append((uid, row["position"], row["shard"], name))
    for split, got in seen.items():
        assert [(u, p) for u, p, s, n in got] == [(u, p) for u, p, s, n in sorted(got, key=lambda x: (x[2], x[1]))]
        assert all(n == f"shard-{s:06d}.tar" for _, _, s, n in got)
    assert len(seen["train"]) + len(seen["val"]) == len(usable_images(build))
    with tarfile.open(build / "shards" / "train" / "shard-000000.tar") as tar:
        m = tar.getmembers()[0]
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)


def test_duckdb_reads_the_member_index_and_its_offsets_are_right(demo):
    build = demo / "build"
    rows = query(build, "SELECT split, shard, key, count(*) AS n FROM shard_index GROUP BY ALL ORDER BY ALL").to_pylist()
    assert {r["key"] for r in rows} == {"jpg", "txt", "json", *[f"{k}.txt" for k in text_keys()]}
    sample = query(build, "SELECT split, shard, uid, key, data_offset, size FROM shard_index "
                          "WHERE position % 7 = 0 ORDER BY split, shard, data_offset").to_pylist()
    assert len(sample) > 100
    members = {}
    for r in sample:
        tar_path = split_dir(build, r["split"]) / r["shard"]
        if tar_path not in members:
            members[tar_path] = dict(tar_members(tar_path))
        with open(tar_path, "rb") as f:  # random access: one seek and one read
            f.seek(r["data_offset"])
            assert f.read(r["size"]) == members[tar_path][f"{r['uid']}.{r['key']}"]
    import duckdb

    direct = duckdb.sql(f"SELECT count(DISTINCT uid) FROM read_parquet('{index_dir(build, 'train')}/*.parquet')").fetchall()
    assert direct[0][0] == sum(json.loads(sizes_path(build, "train").read_text()).values())


def test_dataset_card_licences_and_catalog(demo):
    build = demo / "build"
    card = (build / "README.md").read_text()
    for heading in ("## What is here", "## Sources", "## Taxa per rank", "## Selection", "## Evaluation sets",
                    "## Coverage", "## Texts", "## Licences", "## Workflow", "## Versions", "## Taxonomic authorities"):
        assert heading in card
    n = len(usable_images(build))
    train_shards = len(list((build / "shards" / "train").glob("*.tar")))
    for row in query(build, "SELECT coalesce(eval_set, '(none)') AS s, method, reason, count(DISTINCT uid) AS n "
                            "FROM exclusions GROUP BY ALL").to_pylist():
        assert f"| {row['s']} | {row['method']} | {row['reason']} | {row['n']} |" in card
    assert "open_clip_train.main --train-data" in card and f"shard-{{000000..{train_shards - 1:06d}}}.tar" in card
    assert f"| taxon_com | {n} | 0 | 0 |" in card  # every image, none over 77 tokens in the demo
    assert 'name = "demo"' in card and "samples_per_shard = 64" in card
    authority_rows = [line.split(" | ") for line in card.split("## Taxonomic authorities")[1].splitlines()
                      if line.startswith("| ") and "`" in line]
    assert {row[0][2:] for row in authority_rows} == {"eol", "gbif", "inaturalist", "itis"}
    for row in authority_rows:  # each file with the sha256 of the copy the build used
        (used,) = [p for p in (demo / "data" / "authorities").rglob(row[2]) if p.is_file()]
        assert row[4].strip(" |`") == file_digest(used, "sha256")
    hf = (build / "shards" / "README.md").read_text()
    assert hf.startswith("---\n") and "path: trainsmall/shard-*.tar" in hf and "split: validation" in hf
    assert (build / "coverage.png").read_bytes()[:4] == b"\x89PNG" and (build / "shards" / "coverage.png").exists()
    with open(licences_path(build), newline="") as f:
        lic = list(csv.DictReader(f))
    assert len(lic) == len({r["uid"] for r in lic}) == n
    assert all(r["licence_id"] == licence_id(r["licence"]) for r in lic)
    tables = set(query(build, "SELECT name FROM tables").column("name").to_pylist())
    assert {"samples", "unselected", "shard_index", "licence_map"} <= tables
    assert query(build, "SELECT count(*) AS n FROM samples WHERE split = 'val'").to_pylist()[0]["n"] == \
        sum(json.loads(sizes_path(build, "val").read_text()).values())


def _files(build: Path) -> dict[Path, tuple]:
    # every output and marker; not the catalog (stats refreshed), workflow.json (rewritten by every build) and
    # the runner's per-stage list of task keys (_plan.json, rewritten by every stage run)
    return {p: (p.stat().st_mtime_ns, file_digest(p, "sha256") if p.suffix == ".tar" else "")
            for p in build.rglob("*") if p.is_file() and p.name not in ("catalog.duckdb", "workflow.json", "_plan.json")}


def test_card_says_how_to_count_tokens_without_open_clip(demo, monkeypatch):
    from tol_builder.shards.card import token_counts

    rows, note = token_counts(demo / "build", ["en"])
    assert [r[0] for r in rows] == text_keys() and all(r[1] == len(usable_images(demo / "build")) for r in rows)
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if open_clip_torch were not installed
    rows, note = token_counts(demo / "build", ["en"])
    assert rows == [] and "were not counted" in note and "pip install 'tol_builder[train]'" in note


def test_tol_build_on_the_demo_workflow_does_nothing_and_verify_passes(demo):
    build = demo / "build"
    before = _files(build)
    r = run_cli("build", str(demo / "workflow.toml"), "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "all were complete" in " ".join(r.stderr.split())
    assert _files(build) == before  # no task ran, no file was rewritten
    r = run_cli("shards", "verify", str(build))
    assert r.returncode == 0, r.stderr
    train = sum(json.loads(sizes_path(build, "train").read_text()).values())
    assert "all good" in r.stderr and f"train {train}" in " ".join(r.stderr.split())


def test_verify_names_the_shard_and_key_of_every_problem(demo, tmp_path):
    build = tmp_path / "broken"
    shutil.copytree(demo / "build", build)
    shard = build / "shards" / "train" / "shard-000001.tar"
    members = tar_members(shard)
    dropped = members[5][0]  # a text member of the first sample
    garbled = members[13][0]  # the .jpg of the second sample
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            if name == dropped:
                continue
            data = b"not a jpeg" if name == garbled else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sizes = json.loads(sizes_path(build, "val").read_text())
    sizes["shard-000000.tar"] += 1
    sizes_path(build, "val").write_text(json.dumps(sizes))
    r = run_cli("shards", "verify", str(build), "--workers", "1")
    assert r.returncode == 1
    text = " ".join(r.stderr.split())
    uid1, key1 = dropped.split(".", 1)
    assert f"train/shard-000001.tar, sample {uid1}, key {key1}: missing" in text
    assert f"train/shard-000001.tar, sample {garbled[:32]}, key jpg: does not decode" in text
    assert "train/shard-000001.tar: the member index differs from the tar" in text
    assert f"val/shard-000000.tar: {sizes['shard-000000.tar'] - 1} samples, sizes.json says {sizes['shard-000000.tar']}" in text
    (build / "shards" / "train" / "shard-000002.tar").unlink()
    r = run_cli("shards", "verify", str(build))
    assert "train/shard-000002.tar: planned but not written" in " ".join(r.stderr.split())

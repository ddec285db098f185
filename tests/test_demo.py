"""`tol demo`: the generated miniatures parse in their real formats (standard library only), the loopback
server serves and stops, and the whole demo builds end to end in a subprocess on a real LocalCluster."""

import csv
import http.client
import io
import json
import re
import socket
import tarfile
import threading
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli
from fixtures_demo import copy_build
from tol_builder.config import load_workflow
from tol_builder.demo import SENTINEL, DEMO_WORKFLOW, generate, prepare_out, write_workflow
from tol_builder.demo import sources as gen
from tol_builder.demo.server import DirectoryServer, serve_directory
from tol_builder.demo.taxa import (BIOSCAN1M, BIOSCAN_BAD_ROW, BIOSCAN_COLUMNS, EOL, EOL_INAT_DUPLICATE, INAT21,
                                   NC, TAXA, expected_records)
from tol_builder.fileio import file_digest
from tol_builder.manifest import load_manifest

FAKE_BASE = "http://127.0.0.1:9"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _generate(out: Path, seed: int = 17) -> dict:
    prepare_out(out)
    generated, media = generate(out, seed)
    generated["eol"] = gen.write_eol_manifest(out / "data", media, FAKE_BASE)
    manifests = {n: gen.write_manifest(out / "data" / "manifests", g) for n, g in generated.items()}
    return {"generated": generated, "media": media, "manifests": manifests}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    info = _generate(out)
    info["out"] = out
    info["data"] = out / "data"
    return info


def _tar_files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


# ------------------------------------------------------------------------------------------- iNat21
def test_inat21_json_and_image_archives(demo):
    d = demo["data"] / "inat21"
    by_split = {}
    for split in ("train", "val"):
        meta = _tar_files(d / f"{split}.json.tar.gz")
        assert list(meta) == [f"{split}.json"]
        doc = json.loads(meta[f"{split}.json"])
        assert list(doc) == ["info", "images", "categories", "annotations", "licenses"]
        by_split[split] = doc
        for c in doc["categories"]:
            expected = (f"{c['id']:05d}_{c['kingdom']}_{c['phylum']}_{c['class']}_{c['order']}_{c['family']}_"
                        f"{c['genus']}_{c['specific_epithet']}")
            assert c["image_dir_name"] == expected
            assert int(c["image_dir_name"][:5]) == c["id"]
            assert c["name"] == f"{c['genus']} {c['specific_epithet']}"
        cats = {c["id"]: c for c in doc["categories"]}
        images = {im["id"]: im for im in doc["images"]}
        assert {a["image_id"] for a in doc["annotations"]} == set(images)
        with tarfile.open(d / f"{split}.tar.gz", "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}
            files = {n for n, m in members.items() if m.isfile()}
            assert files == {im["file_name"] for im in images.values()}  # tar member paths equal file_name
            for a in doc["annotations"]:
                im = images[a["image_id"]]
                split_dir, dir_name, file = im["file_name"].split("/")
                assert split_dir == split and dir_name == cats[a["category_id"]]["image_dir_name"]
                assert UUID4.match(file[:-4]) and file.endswith(".jpg")
                pic = Image.open(io.BytesIO(tar.extractfile(members[im["file_name"]]).read()))
                assert pic.format == "JPEG" and pic.size == (im["width"], im["height"])
                assert max(pic.size) <= 500
        counts = {}
        for a in doc["annotations"]:
            counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
        assert counts == {t.ids["category_id"]: t.images[split] for t in INAT21}
    train_ids = [im["id"] for im in by_split["train"]["images"]]
    val_ids = [im["id"] for im in by_split["val"]["images"]]
    assert sorted(train_ids) == list(range(len(train_ids)))
    assert min(val_ids) == max(train_ids) + 1  # val ids continue after train
    assert {c["id"] for c in by_split["train"]["categories"]} >= {2912, 4831}
    assert {c["kingdom"] for c in by_split["train"]["categories"]} == {"Animalia", "Plantae", "Fungi"}


# -------------------------------------------------------------------------------------- BIOSCAN-1M
def test_bioscan_tsv_final_schema_and_zip_members(demo):
    d = demo["data"] / "bioscan1m"
    with open(d / "BIOSCAN_Insect_Dataset_metadata.tsv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        assert tuple(reader.fieldnames) == BIOSCAN_COLUMNS
        rows = list(reader)
    assert "kingdom" not in rows[0]
    assert all(v not in ("", None) for r in rows for v in r.values())  # missing ranks are not_classified
    assert sum(r["genus"] == NC for r in rows) > 0
    family_only = [r for r in rows if r["family"] == "Cecidomyiidae"]
    assert family_only and all(r["genus"] == NC and r["species"] == NC and r["name"] == "Cecidomyiidae"
                               for r in family_only)
    interim = [r for r in rows if r["species"] == "phyMalaise01 Malaise2939"]
    assert interim and all(r["genus"] == NC for r in interim)
    assert any(r["genus"] != NC and r["species"] == NC for r in rows)  # genus-only
    assert any(r["species"] == "Coleomegilla maculata" for r in rows)
    for col in BIOSCAN_COLUMNS:
        if col.endswith(("_family", "_order")) and col.split("_")[0] in ("large", "medium", "small"):
            assert {r[col] for r in rows} <= {"train", "validation", "test", "no_split"}
    bad = [r for r in rows if not r["chunk_number"].isdigit()]
    assert len(bad) == 1 and bad[0]["processid"] == BIOSCAN_BAD_ROW["processid"]
    assert bad[0]["chunk_number"] == BIOSCAN_BAD_ROW["value"]
    good = [r for r in rows if r["chunk_number"].isdigit()]
    assert len(good) == expected_records()["bioscan1m"]
    assert len({r["processid"] for r in rows}) == len(rows)
    with zipfile.ZipFile(d / "cropped_256.zip") as zf:
        names = {i.filename for i in zf.infolist() if not i.is_dir()}
        assert names == {f"bioscan/images/cropped_256/part{r['chunk_number']}/{r['image_file']}" for r in good}
        for r in good[:10]:
            pic = Image.open(io.BytesIO(zf.read(f"bioscan/images/cropped_256/part{r['chunk_number']}/"
                                                f"{r['image_file']}")))
            assert pic.format == "JPEG" and min(pic.size) == 256
    assert any(r["image_file"] == f"{r['sampleid']}.jpg" for r in good)
    assert any(re.fullmatch(r"\d+\.jpg", r["image_file"]) for r in good)


# --------------------------------------------------------------------------------------------- EOL
def test_eol_manifest_chunks_header_only_first(demo):
    path = demo["data"] / "eol" / "media_manifest.tgz"
    chunks = _tar_files(path)
    assert set(chunks) == {"media_manifest_2.csv", "media_manifest_10.csv"}
    order = sorted(chunks, key=lambda n: int(re.search(r"_(\d+)\.csv$", n).group(1)))
    assert order == ["media_manifest_2.csv", "media_manifest_10.csv"]  # numerically, not as text
    parsed = {n: list(csv.reader(io.StringIO(chunks[n].decode("utf-8")))) for n in order}
    header = ["EOL content ID", "EOL page ID", "Medium Source URL", "EOL Full-Size Copy URL", "License Name",
              "Copyright Owner"]
    assert parsed[order[0]][0] == header
    assert header not in parsed[order[1]]
    rows = parsed[order[0]][1:] + parsed[order[1]]
    assert all(len(r) == 6 for r in rows)
    assert any("," in r[5] for r in rows)  # quoted owners
    assert len({r[0] for r in rows}) == len(rows) == expected_records()["eol"]
    pages = {}
    for r in rows:
        pages[int(r[1])] = pages.get(int(r[1]), 0) + 1
        assert r[2].startswith(("https://www.inaturalist.org/photos/", "https://www.flickr.com/photos/"))
        assert r[3].startswith(FAKE_BASE + "/data/media/") and r[0] in r[3] and r[3].endswith(".jpg")
    assert pages == {t.ids["page_id"]: t.n_images for t in EOL}


def test_eol_media_files_and_inat_duplicate(demo):
    root = gen.eol_content_root(demo["data"])
    served = {m.content_id: (root / m.path).read_bytes() for m in demo["media"]}
    assert all(Image.open(io.BytesIO(b)).format == "JPEG" for b in served.values())
    train = _tar_files(demo["data"] / "inat21" / "train.tar.gz")
    dup = EOL_INAT_DUPLICATE
    marmot = next(t for t in INAT21 if t.ids["category_id"] == dup["inat21_category_id"])
    uid = gen.inat21_uuid(17, marmot, "train", dup["inat21_train_index"])
    inat_bytes = train[f"train/{marmot.ids['image_dir_name']}/{uid}.jpg"]
    same = [cid for cid, b in served.items() if b == inat_bytes]
    assert len(same) == 1  # one EOL image is byte-identical to an iNat21 train image
    page_of = {m.content_id: m.page_id for m in demo["media"]}
    assert page_of[same[0]] == dup["eol_page_id"]
    assert len(set(served.values())) == len(served)


# ------------------------------------------------------------------------------ manifests and workflow
def test_manifests_load_with_real_checksums(demo):
    for name, path in demo["manifests"].items():
        m = load_manifest(path)
        assert m.source == name
        for f in m.files:
            local = Path(m.url(f))
            assert local.is_file() and local.is_relative_to(demo["data"])
            assert file_digest(local, "md5") == f.md5 and local.stat().st_size == f.bytes
    assert load_manifest(demo["manifests"]["bioscan1m"]).one("metadata").format == "tsv"
    assert load_manifest(demo["manifests"]["inat21"]).splits() == ["train", "val"]


def test_demo_workflow_toml_loads_and_demo_workflow_names_the_sources(demo):
    wf = load_workflow(DEMO_WORKFLOW)
    assert wf.name == "demo" and wf.sources == [] and wf.cluster.n_workers == 2
    from tol_builder.config import read_toml

    path = write_workflow(demo["out"], read_toml(DEMO_WORKFLOW), demo["manifests"])
    wf = load_workflow(path)
    assert Path(wf.out) == demo["out"] / "build"
    assert [s.name for s in wf.sources] == ["inat21", "bioscan1m", "eol"]
    assert wf.sources[0].options == {"splits": ["train", "val"]}
    assert all(wf.source_manifest_path(s) == demo["manifests"][s.name] for s in wf.sources)


def test_same_seed_same_bytes(demo, tmp_path):
    again = _generate(tmp_path / "again")
    for name in ("inat21", "bioscan1m"):
        for a, b in zip(demo["generated"][name].files, again["generated"][name].files):
            assert a.path.name == b.path.name and a.path.read_bytes() == b.path.read_bytes()
    assert (demo["data"] / "eol" / "media_manifest.tgz").read_bytes() == \
        (tmp_path / "again" / "data" / "eol" / "media_manifest.tgz").read_bytes()  # same base URL here
    other = _generate(tmp_path / "other", seed=18)
    assert (other["generated"]["inat21"].files[1].path.read_bytes()
            != demo["generated"]["inat21"].files[1].path.read_bytes())


def test_taxa_table_is_complete():
    assert {t.source for t in TAXA} == {"inat21", "bioscan1m", "eol"}
    assert {2912, 4831} <= {t.ids["category_id"] for t in INAT21}
    for t in EOL:
        assert t.dh_lineage[0][0] == "Life" and t.dh_lineage[-1] == (t.scientific_name, "species")
    assert any(("Metazoa", "kingdom") in t.dh_lineage for t in EOL)
    assert any(t.resolved["genus"] == "Laelia" for t in EOL)
    assert any(t.ranks["genus"] == NC and t.ranks["species"] == NC for t in BIOSCAN1M)


# --------------------------------------------------------------------------------------- out directory
def test_prepare_out_refuses_foreign_directories_and_replaces_a_demo(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    from tol_builder.errors import TolError

    with pytest.raises(TolError, match="not a previous demo"):
        prepare_out(foreign)
    assert (foreign / "thesis.tex").read_text() == "precious"
    with pytest.raises(TolError, match="not a directory"):
        prepare_out(foreign / "thesis.tex")
    old = tmp_path / "olddemo"
    prepare_out(old)
    (old / "leftover").write_text("x")
    prepare_out(old)
    assert sorted(p.name for p in old.iterdir()) == [SENTINEL]
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_out(empty)
    assert (empty / SENTINEL).is_file()


# ------------------------------------------------------------------------------------- loopback server
def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


def test_server_serves_an_image_and_stops(tmp_path):
    root = tmp_path / "www"
    (root / "data" / "media" / "aa").mkdir(parents=True)
    jpeg = gen.images.render(INAT21[0].style, (64, 48), 1, "x")
    (root / "data" / "media" / "aa" / "1.https___x.jpg").write_bytes(jpeg)
    (tmp_path / "secret.txt").write_text("outside the served root")
    threads_before = {t.name for t in threading.enumerate()}
    with serve_directory(root) as base:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base)
        port = int(base.rsplit(":", 1)[1])
        with urllib.request.urlopen(f"{base}/data/media/aa/1.https___x.jpg", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg" and r.read() == jpeg
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/data/media/aa/missing.jpg", timeout=10)
        assert e.value.code == 404
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/../secret.txt")
        assert conn.getresponse().status == 404
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("HEAD", "/data/media/aa/1.https___x.jpg")
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(jpeg)
        conn.close()
    assert _refused(port)
    assert {t.name for t in threading.enumerate()} <= threads_before


def test_server_stops_on_error(tmp_path):
    server = DirectoryServer(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with server:
            port = server.port
            assert not _refused(port)
            raise RuntimeError("boom")
    assert _refused(port) and server.port is None


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tol_demo_end_to_end(demo_run, tmp_path):
    out = demo_run.out  # the session's `tol demo` (tests/fixtures_demo.py): what it printed and built
    r = demo_run.result
    assert r.returncode == 0, r.stderr
    assert (out / SENTINEL).is_file() and (out / "workflow.toml").is_file()
    printed = "".join(r.stderr.split())  # rich wraps long lines
    assert str(out / "build" / "catalog.duckdb").replace(" ", "") in printed
    assert f"inat21:{expected_records()['inat21']}imagesgenerated" in printed
    from tol_builder.catalog import query

    build = out / "build"
    counts = {row["source"]: row["n"] for row in query(
        build, "SELECT source, count(*) AS n FROM records GROUP BY source").to_pylist()}
    assert counts == expected_records()
    rejects = query(build, "SELECT source, reason, field, value, row FROM rejects").to_pylist()
    bad = [x for x in rejects if x["source"] == "bioscan1m"]
    assert len(bad) == 1, rejects
    assert bad[0]["value"] == BIOSCAN_BAD_ROW["value"] or bad[0]["field"] == BIOSCAN_BAD_ROW["field"], bad
    assert all(x["source"] == "bioscan1m" for x in rejects)
    # fetch: every image downloaded (EOL over loopback HTTP) or read from its archive, hashed and stored
    media = query(build, "SELECT m.status, count(*) AS n, count(DISTINCT m.sha256) AS hashes, "
                         "min(length(m.pdq)) AS pdq_len, max(greatest(m.stored_width, m.stored_height)) AS side "
                         "FROM media m JOIN records r USING (uid) GROUP BY ALL").to_pylist()
    total = sum(expected_records().values())
    assert media == [{"status": "ok", "n": total, "hashes": total - 1, "pdq_len": 64, "side": 256}]  # one EOL re-host
    same = query(build, "SELECT list(DISTINCT r.source ORDER BY r.source) AS s FROM media m JOIN records r USING (uid) "
                        "GROUP BY m.sha256 HAVING count(*) > 1").to_pylist()
    assert same == [{"s": ["eol", "inat21"]}]
    # taxonomy: every image resolved; the EOL page under DH Metazoa is Animalia; family-only stays family-only
    images = query(build, "SELECT count(*) AS n, count(taxon_id) AS resolved FROM images").to_pylist()
    assert images == [{"n": total, "resolved": total}]
    lion = query(build, "SELECT DISTINCT kingdom, genus, species FROM images WHERE source = 'eol' AND genus = 'Panthera'")
    assert lion.to_pylist() == [{"kingdom": "Animalia", "genus": "Panthera", "species": "leo"}]
    cecid = query(build, "SELECT DISTINCT kingdom, phylum, class, genus, species FROM images "
                         "WHERE source = 'bioscan1m' AND family = 'Cecidomyiidae'").to_pylist()
    assert cecid == [{"kingdom": "Animalia", "phylum": "Arthropoda", "class": "Insecta", "genus": None, "species": None}]
    r = run_cli("coverage", str(build), "--rank", "class", "--plot", str(tmp_path / "cov.png"))
    assert r.returncode == 0, r.stderr
    assert "Insecta" in r.stdout and (tmp_path / "cov.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run replaces the previous demo (on a copy: the session's demo stays as it was built)
    out = copy_build(demo_run, tmp_path / "demo", whole_demo=True)
    (out / "data" / "stale").write_text("x")
    r = run_cli("demo", "--out", str(out), "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (out / "data" / "stale").exists()

"""The built-in source readers (inat21, bioscan1m, eol) on fixture files in the real formats.

Fixtures are written from the published formats (SOURCES.md) by tests/fixtures_sources.py: real archives
(tar.gz), TSV, JSON-LD and CSV chunks in a temporary folder, read by the real readers; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fixtures_sources import (BIOSCAN_COLUMNS, EOL_HEADER, INAT_CATEGORIES, NC, PRERELEASE_COLUMNS,
                              annotations_for, bioscan_row, csv_text, eol_row, inat_doc, inat_image, read_all,
                              tar_gz, write_bioscan, write_eol, write_inat, write_jsonld, write_manifest, write_tsv)
from tol_builder.config import from_dict
from tol_builder.errors import ConfigError, InputError
from tol_builder.ingest import partitions_file, plan_task, read_task
from tol_builder.records import RAW_SCHEMA, make_uid
from tol_builder.sources import get_source_class

CAT0, CAT7 = INAT_CATEGORIES
INAT_MEDIA = "https://ml-inat-competition-datasets.s3.amazonaws.com/2021/{}.tar.gz"


def make(name: str, manifest, tmp_path: Path, **options):
    cls = get_source_class(name)
    return cls(manifest, from_dict(cls.Options, options, "test"), tmp_path / "cache" / name)


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["source_id"]: r for r in records}


def triples(rejects: list[dict]) -> set[tuple]:
    return {(r["row"], r["field"], r["reason"]) for r in rejects}


# =================================================================================================== iNat21
def _uuid(image: dict) -> str:
    return image["file_name"].rsplit("/", 1)[1][:-4]


def test_inat21_records_two_splits_any_key_order(tmp_path):
    train = [inat_image(0, CAT0), inat_image(1, CAT7, license=4), inat_image(2, CAT7, rights_holder=None)]
    val = [inat_image(2686843, CAT7, split="val"), inat_image(2686844, CAT0, split="val", license=2)]
    m = write_inat(tmp_path, {
        # the real key order, compact like the published files
        "train": inat_doc(train, annotations_for(train, lambda im: 0 if im["id"] == 0 else 7)),
        # TFDS order, tab-indented, no info and no licenses
        "val": inat_doc(val, annotations_for(val, lambda im: 7 if im["id"] == 2686843 else 0),
                        order=("annotations", "images", "categories"), indent="\t"),
    })
    src = make("inat21", m, tmp_path, splits=["train", "val"])
    parts = src.plan()
    assert [p.key for p in parts] == ["train", "val"]
    records, rejects, labels = read_all(src)
    assert rejects == [] and labels == ["train.json", "val.json"]
    assert all(set(r) == set(RAW_SCHEMA.names) for r in records)
    rec = by_id(records)
    r = rec[_uuid(train[1])]
    assert r == {
        "source_id": _uuid(train[1]), "media_uri": INAT_MEDIA.format("train"), "media_member": train[1]["file_name"],
        "kingdom": "Animalia", "phylum": "Arthropoda", "class": "Arachnida", "order": "Araneae",
        "family": "Araneidae", "genus": "Zygiella", "species": "x-notata",  # the epithet as given
        "scientific_name": "Zygiella x-notata", "common_name": "Missing-sector Orb Weaver",
        "source_taxon_id": "7", "licence": "Attribution License", "rights_holder": "Observer 1",
        "source_url": None, "source_split": "train", "_row": 1}
    assert rec[_uuid(train[0])]["licence"] == "Attribution-NonCommercial License"
    assert rec[_uuid(train[0])]["genus"] == "Lumbricus" and rec[_uuid(train[0])]["species"] == "terrestris"
    assert rec[_uuid(train[2])]["rights_holder"] is None and rec[_uuid(train[2])]["_row"] == 2
    v = rec[_uuid(val[1])]
    assert v["source_split"] == "val" and v["media_uri"] == INAT_MEDIA.format("val") and v["_row"] == 1
    assert v["licence"] == "2"  # no licenses key: the id, as text
    assert v["source_taxon_id"] == "0" and v["scientific_name"] == "Lumbricus terrestris"


def test_inat21_per_record_problems_are_rejected_the_rest_is_read(tmp_path):
    images = [inat_image(0, CAT0),
              inat_image(1, CAT0),                       # no annotation
              inat_image(2, CAT7),                       # annotation points at an unknown category
              inat_image(3, CAT7, id="3"),               # id is not an integer
              inat_image(4, CAT7, file_name=5),          # file_name is not a string
              inat_image(5, CAT7),                       # no file_name at all
              inat_image(6, CAT7),                       # two different categories
              inat_image(7, CAT7, id=7.5),               # float id
              inat_image(8, CAT7)]
    del images[5]["file_name"]
    ann = [{"id": 0, "image_id": 0, "category_id": 0}, {"id": 1, "image_id": 2, "category_id": 999},
           {"id": 2, "image_id": 3, "category_id": 7}, {"id": 3, "image_id": 4, "category_id": 7},
           {"id": 4, "image_id": 5, "category_id": 7}, {"id": 5, "image_id": 6, "category_id": 7},
           {"id": 6, "image_id": 6, "category_id": 0}, {"id": 7, "image_id": "8", "category_id": 7},
           {"id": 8, "image_id": 8, "category_id": 7}, {"id": 9, "image_id": 8, "category_id": 7}]
    m = write_inat(tmp_path, {"train": inat_doc(images, ann)})
    records, rejects, _ = read_all(make("inat21", m, tmp_path))
    assert sorted(by_id(records)) == sorted([_uuid(images[0]), _uuid(images[8])])
    assert by_id(records)[_uuid(images[8])]["source_taxon_id"] == "7"  # the same annotation twice is fine
    assert triples(rejects) == {
        (1, "category_id", "missing_annotation"), (2, "category_id", "unknown_category"),
        (3, "id", "bad_type"), (4, "file_name", "bad_type"), (5, "file_name", "missing_field"),
        (6, "category_id", "conflicting_annotations"), (7, "id", "bad_type"),
        (7, "annotations.image_id", "bad_type")}  # annotation #7: image_id "8" is a string
    by_reason = {r["reason"]: r for r in rejects if r["field"] == "category_id"}
    assert all(r["file"] == "train.json" for r in rejects)
    assert by_reason["unknown_category"]["value"] == "999"
    assert by_reason["unknown_category"]["member"] == images[2]["file_name"]
    assert by_reason["conflicting_annotations"]["value"] == "0,7"


def test_inat21_without_annotations_gives_unlabelled_records(tmp_path):
    images = [inat_image(1, None, split="public_test"), inat_image(2, None, split="public_test")]
    m = write_inat(tmp_path, {"public_test": inat_doc(images, order=("images",))})
    records, rejects, _ = read_all(make("inat21", m, tmp_path, splits=["public_test"]))
    assert rejects == [] and len(records) == 2
    r = records[0]
    assert r["source_taxon_id"] is None and r["kingdom"] is None and r["species"] is None
    assert r["licence"] == "1" and r["source_split"] == "public_test"


@pytest.mark.parametrize("indent", [None, "\t", 2])
@pytest.mark.parametrize("order", [("info", "images", "categories", "annotations", "licenses"),
                                   ("licenses", "annotations", "categories", "images", "info"),
                                   ("categories", "images", "annotations")])
def test_inat21_many_images_in_any_layout(tmp_path, monkeypatch, order, indent):
    """Enough images for several read buffers and Arrow batches; keys searched outside the images array."""
    from tol_builder.sources import inat21

    monkeypatch.setattr(inat21, "BATCH", 997)
    monkeypatch.setattr(inat21, "_BUF", 1 << 16)
    images = [inat_image(i, CAT0 if i % 3 else CAT7, license=1 if i % 2 else 4) for i in range(6000)]
    # a rights holder that spells a top-level key inside a string (escaped quotes): not a key
    images[10]["rights_holder"] = 'x", "annotations": [{"image_id": 10, "category_id": 0}], "y": "\\'
    ann = annotations_for(images, lambda im: 0 if im["id"] % 3 else 7)
    m = write_inat(tmp_path, {"train": inat_doc(images, ann, order=order, indent=indent)})
    records, rejects, _ = read_all(make("inat21", m, tmp_path))
    assert rejects == [] and len(records) == 6000
    rec = by_id(records)
    for i in (0, 1, 10, 5999):
        r = rec[_uuid(images[i])]
        assert r["_row"] == i and r["source_taxon_id"] == ("0" if i % 3 else "7")
        assert r["rights_holder"] == images[i]["rights_holder"]
        if "licenses" in order:
            assert r["licence"] == ("Attribution-NonCommercial License" if i % 2 else "Attribution License")


def test_inat21_nested_keys_named_like_top_level_keys(tmp_path):
    """`info` holding keys called categories/annotations: the fast key search must not be fooled."""
    images = [inat_image(i, CAT7) for i in range(5)]
    info = {"annotations": [{"image_id": 0, "category_id": 0}], "categories": [{"id": 0, "name": "Wrong"}],
            "licenses": []}
    m = write_inat(tmp_path, {"train": inat_doc(images, annotations_for(images, lambda im: 7), info=info)})
    records, rejects, _ = read_all(make("inat21", m, tmp_path))
    assert rejects == [] and {r["source_taxon_id"] for r in records} == {"7"}
    assert {r["licence"] for r in records} == {"Attribution-NonCommercial License"}
    # only nested ones, none at the top level: the images are unlabelled
    m = write_inat(tmp_path, {"train": inat_doc(images, info=info, order=("info", "images"))})
    records, rejects, _ = read_all(make("inat21", m, tmp_path / "again"))
    assert rejects == [] and len(records) == 5 and {r["source_taxon_id"] for r in records} == {None}


def test_inat21_arrays_are_read_from_their_own_byte_ranges(tmp_path):
    """After the images pass, the other arrays are parsed from their ranges only; doubtful layouts fall back."""
    from tol_builder.records import RejectLog
    from tol_builder.sources.inat21 import CocoJson, _annotations_of, _categories_of

    images = [inat_image(i, CAT7) for i in range(3000)]
    ann = annotations_for(images, lambda im: 7)
    for info, full in (({"year": 2021}, 0), ({"categories": [], "annotations": []}, 2)):
        path = tmp_path / f"train-{full}.json"
        path.write_text(inat_doc(images, ann, info=info))
        doc = CocoJson(path, "train.json.tar.gz", "train.json")
        assert sum(t.num_rows for t in doc.read_images(RejectLog("inat21", "t"), "train.json")) == 3000
        arrays = doc.read_arrays({"categories": _categories_of, "annotations": _annotations_of})
        (cats, _), (anns, _) = arrays["categories"], arrays["annotations"]
        assert cats.column("id").to_pylist() == [0, 7] and anns.num_rows == 3000
        assert doc.full_passes == full


@pytest.mark.parametrize("damage", ["truncated", "in_images", "in_annotations"])
def test_inat21_broken_json_names_the_file(tmp_path, damage):
    images = [inat_image(i, CAT0) for i in range(3)]
    text = inat_doc(images, annotations_for(images, lambda im: 0))
    if damage == "truncated":
        text = text[: len(text) // 2]
    elif damage == "in_images":
        text = text.replace('"width": 500, "height": 375', '"width": 500 "height": 375', 1)
    else:
        text = text.replace('"image_id": 1, ', '"image_id": 1,, ', 1)
    m = write_inat(tmp_path, {"train": text})
    src = make("inat21", m, tmp_path)
    with pytest.raises(InputError) as e:
        read_all(src)
    assert "train.json" in str(e.value) and "invalid JSON" in str(e.value)
    assert e.value.member == "train.json" and e.value.file == "train.json.tar.gz"


def test_inat21_missing_member_names_archive_and_member(tmp_path):
    m = write_inat(tmp_path, {"train": inat_doc([])}, member_of=lambda split: "val.json")
    with pytest.raises(InputError) as e:
        make("inat21", m, tmp_path).plan()
    assert "train.json.tar.gz" in str(e.value) and "member train.json" in str(e.value)


def test_inat21_member_inside_a_folder_and_no_images_key(tmp_path):
    m = write_inat(tmp_path, {"train": inat_doc([], order=("info", "categories"))},
                   member_of=lambda split: f"./2021/{split}.json")
    src = make("inat21", m, tmp_path)
    assert len(src.plan()) == 1
    with pytest.raises(InputError, match="images"):
        read_all(src)


@pytest.mark.parametrize("member,kind", [("../train.json", None), ("/tmp/train.json", None),
                                         ("train.json", tarfile.SYMTYPE)])
def test_inat21_unsafe_archive_members_are_refused(tmp_path, member, kind):
    tar_gz(tmp_path / "train.json.tar.gz", {member: inat_doc([])}, kinds={member: kind} if kind else None)
    m = write_manifest(tmp_path, "inat21", [
        {"name": "train.json.tar.gz", "role": "metadata", "split": "train"},
        {"name": "train.tar.gz", "role": "media", "split": "train"}])
    with pytest.raises(InputError) as e:
        make("inat21", m, tmp_path).plan()
    assert "train.json.tar.gz" in str(e.value) and member in str(e.value)
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing written


def test_inat21_corrupt_archive_and_missing_split(tmp_path):
    (tmp_path / "train.json.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
    m = write_manifest(tmp_path, "inat21", [
        {"name": "train.json.tar.gz", "role": "metadata", "split": "train"},
        {"name": "train.tar.gz", "role": "media", "split": "train"}])
    with pytest.raises(InputError, match="train.json.tar.gz.*unreadable archive"):
        make("inat21", m, tmp_path).plan()
    with pytest.raises(ConfigError, match="val"):
        make("inat21", m, tmp_path, splits=["val"]).plan()


def test_inat21_plan_extracts_once_and_again_for_a_new_archive(tmp_path):
    images = [inat_image(0, CAT0)]
    m = write_inat(tmp_path, {"train": inat_doc(images, annotations_for(images, lambda im: 0))})
    src = make("inat21", m, tmp_path)
    path = Path(src.plan()[0].get("path"))
    first = path.stat().st_mtime_ns
    assert Path(src.plan()[0].get("path")).stat().st_mtime_ns == first  # not extracted again
    images.append(inat_image(1, CAT7))
    write_inat(tmp_path, {"train": inat_doc(images, annotations_for(images, lambda im: 7 if im["id"] else 0))})
    os.utime(tmp_path / "train.json.tar.gz", ns=(first + 10**9, first + 10**9))
    records, _, _ = read_all(src)
    assert len(records) == 2  # the new archive was extracted
    assert not list(path.parent.glob(".tmp-*"))


# ============================================================================================== BIOSCAN-1M
def _bioscan_rows() -> list[dict]:
    return [
        bioscan_row("CNGMA001-22", order="Coleoptera", family="Coccinellidae", subfamily="Coccinellinae",
                    genus="Coleomegilla", species="Coleomegilla maculata", name="Coleomegilla maculata",
                    uri="BOLD:AAD7604", image_file="6043900.jpg", chunk_number="7"),
        bioscan_row("CNGMA002-22", family="Cecidomyiidae", name="Cecidomyiidae", chunk_number="113",
                    small_insect_order="validation"),  # family only
        bioscan_row("CNGMA003-22", family="Phoridae", species="phyMalaise01 Malaise2939",
                    name="phyMalaise01 Malaise2939", copyright_holder=""),  # interim name, no genus
        bioscan_row("CNGMA004-22", family="Sciaridae", chunk_number="abc"),
        bioscan_row("CNGMA005-22", family="Sciaridae", chunk_number="0"),
        bioscan_row("CNGMA006-22", family="Sciaridae", chunk_number="114"),
        bioscan_row("CNGMA007-22", family="Sciaridae"),  # written as a malformed line in the TSV
        bioscan_row("CNGMA008-22", family="", name="Diptera", large_insect_order="no_split"),
        bioscan_row("CNGMA009-22", family="Sciaridae", image_file=NC),
        bioscan_row("CNGMA010-22", family="Sciaridae", chunk_number="012"),
    ]


def test_bioscan1m_tsv_records_and_rejects(tmp_path):
    rows = _bioscan_rows()
    write_tsv(tmp_path / "BIOSCAN_Insect_Dataset_metadata.tsv", rows, BIOSCAN_COLUMNS,
              raw_lines={7: "\t".join(rows[6][c] for c in BIOSCAN_COLUMNS[:5])})
    src = make("bioscan1m", write_bioscan(tmp_path), tmp_path)
    assert [p.key for p in src.plan()] == ["metadata"]
    records, rejects, labels = read_all(src)
    assert labels == ["BIOSCAN_Insect_Dataset_metadata.tsv"]
    rec = by_id(records)
    assert sorted(rec) == ["CNGMA001-22", "CNGMA002-22", "CNGMA003-22", "CNGMA008-22", "CNGMA010-22"]
    zip_url = "https://zenodo.org/records/8030065/files/cropped_256.zip"
    assert rec["CNGMA001-22"] == {
        "source_id": "CNGMA001-22", "media_uri": zip_url,
        "media_member": "bioscan/images/cropped_256/part7/6043900.jpg", "kingdom": None,
        "phylum": "Arthropoda", "class": "Insecta", "order": "Coleoptera", "family": "Coccinellidae",
        "genus": "Coleomegilla", "species": "Coleomegilla maculata", "scientific_name": "Coleomegilla maculata",
        "common_name": None, "source_taxon_id": "BOLD:AAD7604", "licence": "CreativeCommons - Attribution",
        "rights_holder": "CBG Photography Group", "source_url": None, "source_split": "train", "_row": 1}
    fam = rec["CNGMA002-22"]  # family only: every lower rank null, name = the family
    assert (fam["family"], fam["genus"], fam["species"], fam["scientific_name"]) == (
        "Cecidomyiidae", None, None, "Cecidomyiidae")
    assert fam["media_member"] == "bioscan/images/cropped_256/part113/CNGMA002-22.jpg"
    interim = rec["CNGMA003-22"]
    assert interim["species"] == "phyMalaise01 Malaise2939" and interim["genus"] is None  # raw, not repaired
    assert interim["rights_holder"] == "Centre for Biodiversity Genomics"  # copyright_holder empty
    assert rec["CNGMA008-22"]["family"] is None and rec["CNGMA008-22"]["source_split"] == "no_split"
    assert rec["CNGMA010-22"]["media_member"].startswith("bioscan/images/cropped_256/part12/")
    assert rec["CNGMA010-22"]["_row"] == 10
    assert triples(rejects) == {(4, "chunk_number", "bad_type"), (5, "chunk_number", "out_of_range"),
                                (6, "chunk_number", "out_of_range"), (7, "class", "malformed_csv"),
                                (9, "image_file", "missing_field")}
    malformed = next(r for r in rejects if r["reason"] == "malformed_csv")
    assert malformed["file"] == "BIOSCAN_Insect_Dataset_metadata.tsv" and "CNGMA007-22" in malformed["value"]


def test_bioscan1m_split_column_option_and_crlf(tmp_path):
    write_tsv(tmp_path / "BIOSCAN_Insect_Dataset_metadata.tsv", _bioscan_rows()[:2], BIOSCAN_COLUMNS,
              newline="\r\n")
    src = make("bioscan1m", write_bioscan(tmp_path), tmp_path, split_column="small_insect_order")
    rec = by_id(read_all(src)[0])
    assert rec["CNGMA001-22"]["source_split"] == "test" and rec["CNGMA002-22"]["source_split"] == "validation"
    assert rec["CNGMA002-22"]["rights_holder"] == "CBG Photography Group"  # no '\r' left on the last column


def test_bioscan1m_jsonld_reads_like_the_tsv(tmp_path):
    rows = [r for i, r in enumerate(_bioscan_rows()) if i != 6]
    write_tsv(tmp_path / "BIOSCAN_Insect_Dataset_metadata.tsv", rows, BIOSCAN_COLUMNS)
    write_jsonld(tmp_path / "BIOSCAN_Insect_Dataset_metadata.jsonld", rows)
    m = write_bioscan(tmp_path, more=[{"name": "BIOSCAN_Insect_Dataset_metadata.jsonld", "role": "metadata",
                                       "format": "jsonld"}])
    tsv_src = make("bioscan1m", m, tmp_path)
    assert [p.get("format") for p in tsv_src.plan()] == ["tsv"]  # the same data twice: read one
    json_src = make("bioscan1m", m, tmp_path, format="jsonld")
    tsv_records, tsv_rejects, _ = read_all(tsv_src)
    json_records, json_rejects, labels = read_all(json_src)
    assert labels == ["BIOSCAN_Insect_Dataset_metadata.jsonld"]
    strip = lambda recs: sorted(({k: v for k, v in r.items() if k != "_row"} for r in recs),  # noqa: E731
                                key=lambda r: r["source_id"])
    assert strip(json_records) == strip(tsv_records) and len(json_records) == 5
    assert by_id(json_records)["CNGMA001-22"]["_row"] == 0  # array index
    assert {(r["row"], r["reason"]) for r in json_rejects} == {
        (3, "bad_type"), (4, "out_of_range"), (5, "out_of_range"), (7, "missing_field")}
    # the format can also come from the file name alone
    m2 = write_manifest(tmp_path, "bioscan1m", [
        {"name": "BIOSCAN_Insect_Dataset_metadata.jsonld", "role": "metadata"},
        {"name": "cropped_256.zip", "role": "media"}], name="m2.toml")
    assert len(read_all(make("bioscan1m", m2, tmp_path))[0]) == 5


def test_bioscan1m_missing_column_names_file_and_column(tmp_path):
    columns = [c for c in BIOSCAN_COLUMNS if c != "chunk_number"]
    write_tsv(tmp_path / "BIOSCAN_Insect_Dataset_metadata.tsv", _bioscan_rows()[:1], columns)
    src = make("bioscan1m", write_bioscan(tmp_path), tmp_path)
    with pytest.raises(InputError) as e:
        read_all(src)
    assert "BIOSCAN_Insect_Dataset_metadata.tsv" in str(e.value) and "'chunk_number'" in str(e.value)
    assert e.value.field == "chunk_number"
    write_tsv(tmp_path / "BIOSCAN_Insect_Dataset_metadata.tsv", _bioscan_rows()[:1], BIOSCAN_COLUMNS)
    with pytest.raises(InputError, match="split_bin"):
        read_all(make("bioscan1m", write_bioscan(tmp_path), tmp_path, split_column="split_bin"))


def test_bioscan1m_broken_jsonld_names_the_file(tmp_path):
    write_jsonld(tmp_path / "meta.jsonld", _bioscan_rows()[:3])
    text = (tmp_path / "meta.jsonld").read_text()
    (tmp_path / "meta.jsonld").write_text(text[: len(text) - 300])
    src = make("bioscan1m", write_bioscan(tmp_path, "meta.jsonld", fmt="jsonld"), tmp_path)
    with pytest.raises(InputError) as e:
        read_all(src)
    assert "meta.jsonld" in str(e.value) and "invalid JSON" in str(e.value)


def test_bioscan1m_prerelease_schema(tmp_path):
    """The 18-column pre-release schema (missing = empty string), built from its header."""
    def row(pid, tar, **over):
        r = {c: "" for c in PRERELEASE_COLUMNS}
        r.update(processid=pid, phylum="Arthropoda", uri="BOLD:ACY4985", orgpic_id=pid[-4:],
                 image_name=f"PLAEZ/{pid}+1612877802.jpg", sampleid=f"BIOUG-{pid}", image_file=f"{pid[-4:]}.jpg",
                 licence="CreativeCommons - Attribution", licence_holder="Centre for Biodiversity Genomics",
                 depository="CBG", primary_database="boldsystems.org", image_tar=tar)
        r["class"] = "Insecta"
        r.update(over)
        return r

    rows = [row("PLAEZ1721", "BIOSCAN_IMAGE_DATASET_V1_019_OF_20.tar", order="Coleoptera", family="Throscidae"),
            row("PLAEZ1722", "BIOSCAN_IMAGE_DATASET_V1_004_OF_20.tar", order="Coleoptera", family="Curculionidae",
                subfamily="Scolytinae", genus="Xyleborus", species="Xyleborus ferrugineus", licence_holder=""),
            row("PLAEZ1723", "", order="Diptera", family="Phoridae", subfamily="Metopininae"),
            row("PLAEZ1724", "BIOSCAN_IMAGE_DATASET_V1_019_OF_20.tar", image_file="")]
    write_tsv(tmp_path / "small_dataset_validation_metadata.tsv", rows, PRERELEASE_COLUMNS)
    tar_url = "https://example.org/bioscan/BIOSCAN_IMAGE_DATASET_V1_019_OF_20.tar"
    m = write_bioscan(tmp_path, "small_dataset_validation_metadata.tsv", extra_media=[
        {"name": "BIOSCAN_IMAGE_DATASET_V1_019_OF_20.tar", "role": "media", "url": tar_url}])
    records, rejects, _ = read_all(make("bioscan1m", m, tmp_path))
    rec = by_id(records)
    zip_url = "https://zenodo.org/records/8030065/files/cropped_256.zip"
    assert rec["PLAEZ1721"]["media_uri"] == tar_url and rec["PLAEZ1721"]["media_member"] == "1721.jpg"
    assert rec["PLAEZ1722"]["media_uri"] == zip_url  # its tar is not in the manifest: the default archive
    assert rec["PLAEZ1723"]["media_uri"] == zip_url
    assert rec["PLAEZ1721"]["scientific_name"] == "Throscidae" and rec["PLAEZ1721"]["genus"] is None
    assert rec["PLAEZ1722"]["scientific_name"] == "Xyleborus ferrugineus"
    assert rec["PLAEZ1722"]["rights_holder"] == "CBG"  # licence_holder empty: depository
    assert rec["PLAEZ1723"]["scientific_name"] == "Metopininae"
    assert rec["PLAEZ1721"]["source_taxon_id"] == "BOLD:ACY4985" and rec["PLAEZ1721"]["kingdom"] is None
    assert rec["PLAEZ1721"]["source_split"] is None and rec["PLAEZ1721"]["licence"] == "CreativeCommons - Attribution"
    assert triples(rejects) == {(4, "image_file", "missing_field")}


# ===================================================================================================== EOL
def test_eol_chunks_in_numeric_order_header_only_in_the_first(tmp_path):
    m = write_eol(tmp_path, {  # written out of order; 10 sorts after 2 numerically, before it as text
        10: csv_text([eol_row(30, 46559197), eol_row(31, 1049480)]),
        2: csv_text([eol_row(20, 45511401), eol_row(21, 45511401, **{"Copyright Owner": 'Jane "J" Doe, 2019'})],
                    header=EOL_HEADER),
    })
    src = make("eol", m, tmp_path)
    parts = src.plan()
    assert [p.key for p in parts] == ["chunk-000002", "chunk-000010"]
    records, rejects, labels = read_all(src)
    assert rejects == [] and labels == ["media_manifest_2.csv", "media_manifest_10.csv"]
    rec = by_id(records)
    assert rec["20"] == {
        "source_id": "20",
        "media_uri": "https://content.eol.org/data/media/3d/1f/f2/20.https___www_inaturalist_org_photos_20.jpg",
        "media_member": None, "kingdom": None, "phylum": None, "class": None, "order": None, "family": None,
        "genus": None, "species": None, "scientific_name": None, "common_name": None,
        "source_taxon_id": "45511401", "licence": "cc-by-nc-4.0", "rights_holder": "Observer 20, some rights reserved",
        "source_url": "https://www.inaturalist.org/photos/20", "source_split": None, "_row": 1}
    assert rec["21"]["rights_holder"] == 'Jane "J" Doe, 2019' and rec["21"]["_row"] == 2
    assert rec["30"]["_row"] == 1 and rec["31"]["source_taxon_id"] == "1049480"


def test_eol_a_chunk_with_and_a_chunk_without_header_both_parse(tmp_path):
    reordered = [EOL_HEADER[i] for i in (1, 0, 3, 2, 5, 4)]
    m = write_eol(tmp_path, {
        7: csv_text([[r[i] for i in (1, 0, 3, 2, 5, 4)] for r in [eol_row(70, 700)]], header=reordered),
        8: csv_text([[r[i] for i in (1, 0, 3, 2, 5, 4)] for r in [eol_row(80, 800)]]),  # the first chunk's order
        9: csv_text([eol_row(90, 900)], header=EOL_HEADER),  # a header in a later chunk is recognised too
    }, prefix="media_manifest/")
    records, rejects, _ = read_all(make("eol", m, tmp_path))
    rec = by_id(records)
    assert rejects == [] and sorted(rec) == ["70", "80", "90"]
    assert rec["80"]["source_taxon_id"] == "800" and rec["80"]["media_uri"].endswith("photos_80.jpg")
    assert rec["90"]["_row"] == 1
    m2 = write_eol(tmp_path, {3: csv_text([eol_row(5, 6)]), 4: csv_text([eol_row(7, 8)], header=EOL_HEADER)},
                   name="other.tgz")
    assert sorted(by_id(read_all(make("eol", m2, tmp_path))[0])) == ["5", "7"]


def test_eol_malformed_and_bad_rows_are_rejected(tmp_path):
    rows = [eol_row(1, 10), eol_row("12a", 10, n=2), eol_row(3, "", n=3),
            eol_row(4, 10, **{"EOL Full-Size Copy URL": ""}), eol_row(5, 10), eol_row("007", "0046", n=6),
            eol_row(8, "x9", n=8), eol_row(9, 10), eol_row(10, 10)]
    text = csv_text(rows, header=EOL_HEADER, raw_lines={
        5: "5,10,https://a/5,https://b/5.jpg,cc-by-4.0,me,extra",  # too many fields
        9: '10,10,https://a/10,"https://b/10.jpg,cc-by-4.0,unterminated'})  # an open quote at the end
    m = write_eol(tmp_path, {1: text})
    records, rejects, _ = read_all(make("eol", m, tmp_path))
    rec = by_id(records)
    assert sorted(rec, key=int) == ["1", "7", "9"]
    assert rec["7"]["source_taxon_id"] == "46" and rec["7"]["_row"] == 6  # leading zeros dropped
    assert rec["9"]["_row"] == 8  # rows after a malformed line keep their numbers
    assert triples(rejects) == {
        (2, "EOL content ID", "bad_type"), (3, "EOL page ID", "missing_field"),
        (4, "EOL Full-Size Copy URL", "missing_field"), (5, None, "malformed_csv"),
        (7, "EOL page ID", "bad_type"), (9, "EOL Full-Size Copy URL", "malformed_csv")}
    bad_type = next(r for r in rejects if r["reason"] == "bad_type" and r["row"] == 2)
    assert bad_type["value"] == "12a" and bad_type["file"] == "media_manifest_1.csv"
    assert "TOO MANY COLUMNS" in next(r["value"] for r in rejects if r["row"] == 5)


def test_eol_unexpected_header_names_chunk_and_columns(tmp_path):
    header = ["EOL content ID", "EOL page ID", "Medium Source URL", "EOL Full Size URL", "License Name",
              "Copyright Owner"]
    m = write_eol(tmp_path, {4: csv_text([eol_row(1, 2)], header=header)})
    with pytest.raises(InputError) as e:
        make("eol", m, tmp_path).plan()
    msg = str(e.value)
    assert "media_manifest_4.csv" in msg and "EOL Full Size URL" in msg and "EOL Full-Size Copy URL" in msg


def test_eol_archive_problems(tmp_path):
    m = write_eol(tmp_path, {}, extra_members={"README.txt": "nothing here"})
    with pytest.raises(InputError, match=r"media_manifest.tgz.*media_manifest_\{N\}.csv"):
        make("eol", m, tmp_path).plan()
    m = write_eol(tmp_path, {1: csv_text([eol_row(1, 2)])}, prefix="../")
    with pytest.raises(InputError, match=r"unsafe.*|.*\.\./media_manifest_1.csv"):
        make("eol", m, tmp_path).plan()
    (tmp_path / "media_manifest.tgz").write_bytes(b"not a tar at all")
    with pytest.raises(InputError, match="media_manifest.tgz.*unreadable archive"):
        make("eol", m, tmp_path / "x").plan()


def test_eol_plan_extracts_once(tmp_path):
    m = write_eol(tmp_path, {1: csv_text([eol_row(1, 2)], header=EOL_HEADER), 2: csv_text([eol_row(3, 4)])})
    src = make("eol", m, tmp_path)
    paths = [Path(p.get("path")) for p in src.plan()]
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert [Path(p.get("path")).stat().st_mtime_ns for p in src.plan()] == stamps
    paths[1].unlink()  # a chunk lost (or a kill mid-way): extracted again
    assert [Path(p.get("path")).exists() for p in src.plan()] == [True, True]


# ================================================================================= through the ingest tasks
def test_builtin_sources_through_the_ingest_tasks(tmp_path):
    """plan_task / read_task (what the runner calls) on all three readers: records and rejects on disk."""
    images = [inat_image(i, CAT7) for i in range(4)]
    for folder in ("inat", "bio", "eol"):
        (tmp_path / folder).mkdir()
    inat = write_inat(tmp_path / "inat", {"train": inat_doc(images, annotations_for(images, lambda im: 7))})
    write_tsv(tmp_path / "bio" / "BIOSCAN_Insect_Dataset_metadata.tsv", _bioscan_rows(), BIOSCAN_COLUMNS)
    bio = write_bioscan(tmp_path / "bio")
    eol = write_eol(tmp_path / "eol", {1: csv_text([eol_row(1, 2), eol_row(1, 3)], header=EOL_HEADER)})
    out = tmp_path / "build"
    expected = {"inat21": (4, {}), "bioscan1m": (6, {"rejected_bad_type": 1, "rejected_out_of_range": 2,
                                                      "rejected_missing_field": 1}),
                "eol": (1, {"rejected_duplicate_source_id": 1})}
    for name, manifest in (("inat21", inat), ("bioscan1m", bio), ("eol", eol)):
        source = {"name": name, "manifest": str(manifest.path), "id": name, "options": {}}
        plan_task(str(out), source, str(manifest.path), 1, "")
        counters: dict[str, int] = {}
        for p in json.loads(partitions_file(out, name).read_text()):
            for k, v in read_task(str(out), source, str(manifest.path), p, 1, "").items():
                counters[k] = counters.get(k, 0) + v
        n, rejected = expected[name]
        assert counters["records"] == n
        assert {k: v for k, v in counters.items() if k.startswith("rejected_")} == rejected
        recs = pq.read_table(next((out / "records" / name).glob("*.parquet"))).to_pylist()
        assert recs[0]["uid"] == make_uid(name, recs[0]["source_id"])

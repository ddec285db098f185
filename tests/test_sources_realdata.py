"""The built-in readers on real sample rows (../shared/realdata, see its PROVENANCE.md); skipped when absent.

* iNat21: the TFDS dummy files are real-format examples built from real records (train, val, train_mini,
  public_test); each is wrapped into `<split>.json.tar.gz` here, as the real metadata is published.
* BIOSCAN-1M: two cuts of the pre-release 18-column TSV (missing values are empty strings).
* EOL: the real rows there are Dynamic Hierarchy taxon.tab and provider_ids rows, not media-manifest rows, so
  there is nothing for the `eol` reader; it is covered by the format fixtures in test_sources.py.
"""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import pytest

from fixtures_sources import read_all, write_manifest
from tol_builder.config import from_dict
from tol_builder.sources import get_source_class

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


@pytest.fixture
def real() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"{REALDATA} is not present")
    return REALDATA


def make(name: str, manifest, tmp_path: Path, **options):
    cls = get_source_class(name)
    return cls(manifest, from_dict(cls.Options, options, "test"), tmp_path / "cache" / name)


SPLITS = {"train": 3, "val": 2, "train_mini": 2, "public_test": 3}


def test_inat21_tfds_files(real, tmp_path):
    files = []
    for split in SPLITS:
        with tarfile.open(tmp_path / f"{split}.json.tar.gz", "w:gz") as tar:
            tar.add(real / "inat21" / f"tfds_dummy_{split}.json", arcname=f"{split}.json")
        files += [{"name": f"{split}.json.tar.gz", "role": "metadata", "split": split},
                  {"name": f"{split}.tar.gz", "role": "media", "split": split}]
    src = make("inat21", write_manifest(tmp_path, "inat21", files), tmp_path, splits=list(SPLITS))
    records, rejects, labels = read_all(src)
    assert rejects == [] and labels == [f"{s}.json" for s in SPLITS]
    per_split = {s: [r for r in records if r["source_split"] == s] for s in SPLITS}
    assert {s: len(v) for s, v in per_split.items()} == SPLITS

    raw = {s: json.loads((real / "inat21" / f"tfds_dummy_{s}.json").read_text()) for s in SPLITS}
    for split in ("train", "val", "train_mini"):
        cats = {c["id"]: c for c in raw[split]["categories"]}
        label = {a["image_id"]: a["category_id"] for a in raw[split]["annotations"]}
        by_member = {r["media_member"]: r for r in per_split[split]}
        for row, img in enumerate(raw[split]["images"]):
            r, c = by_member[img["file_name"]], cats[label[img["id"]]]
            assert r["source_id"] == img["file_name"].rsplit("/", 1)[1][: -len(".jpg")]
            assert r["media_uri"] == str(tmp_path / f"{split}.tar.gz") and r["_row"] == row
            assert [r[k] for k in ("kingdom", "phylum", "class", "order", "family", "genus")] == [
                c[k] for k in ("kingdom", "phylum", "class", "order", "family", "genus")]
            assert r["species"] == c["specific_epithet"] and r["scientific_name"] == c["name"]
            assert r["common_name"] == c["common_name"] and r["source_taxon_id"] == str(c["id"])
            assert r["licence"] == str(img["license"])  # these files have no licenses key: the id
            assert r["rights_holder"] == img["rights_holder"]
    marmot = next(r for r in per_split["train"] if r["genus"] == "Marmota")
    assert (marmot["species"], marmot["common_name"]) == ("flaviventris", "Yellow-bellied Marmot")
    assert per_split["train"][0]["source_id"] == "d615f184-8af4-4c60-b9f8-3081c1607644"
    # public_test: images only, no labels
    assert all(r["source_taxon_id"] is None and r["genus"] is None for r in per_split["public_test"])
    assert sorted(r["source_id"] for r in per_split["public_test"]) == ["1", "2", "3"]


@pytest.mark.parametrize("name,rows", [("prerelease_small_dataset_validation_metadata_first300.tsv", 300),
                                       ("prerelease_small_dataset_validation_metadata_with_genus_species.tsv", 225)])
def test_bioscan1m_prerelease_tsv(real, tmp_path, name, rows):
    m = write_manifest(tmp_path, "bioscan1m", [  # the file is read in place (a local path is not copied)
        {"name": name, "role": "metadata", "format": "tsv", "url": str(real / "bioscan1m" / name)},
        {"name": "BIOSCAN_IMAGE_DATASET_V1_019_OF_20.tar", "role": "media",
         "url": "https://example.org/BIOSCAN_IMAGE_DATASET_V1_019_OF_20.tar"},
        {"name": "cropped_256.zip", "role": "media", "url": "https://example.org/cropped_256.zip"}])
    records, rejects, _ = read_all(make("bioscan1m", m, tmp_path))
    with open(real / "bioscan1m" / name, newline="") as f:
        source = list(csv.DictReader(f, delimiter="\t"))
    assert len(source) == rows and rejects == [] and len(records) == rows
    for i, (r, s) in enumerate(zip(sorted(records, key=lambda r: r["_row"]), source), 1):
        assert r["_row"] == i and r["source_id"] == s["processid"] and r["media_member"] == s["image_file"]
        for rank in ("phylum", "class", "order", "family", "genus", "species"):
            assert r[rank] == (s[rank] or None)  # as given; empty = null
        assert r["kingdom"] is None and r["source_taxon_id"] == (s["uri"] or None)
        assert r["licence"] == s["licence"] and r["rights_holder"] == (s["licence_holder"] or s["depository"])
        expected_uri = ("https://example.org/BIOSCAN_IMAGE_DATASET_V1_019_OF_20.tar"
                        if s["image_tar"] == "BIOSCAN_IMAGE_DATASET_V1_019_OF_20.tar"
                        else "https://example.org/cropped_256.zip")
        assert r["media_uri"] == expected_uri
        most_specific = next((s[k] for k in ("species", "genus", "subfamily", "family", "order", "class", "phylum")
                              if s[k]), None)
        assert r["scientific_name"] == most_specific
    with_species = [r for r in records if r["species"]]
    assert with_species and all(r["scientific_name"] == r["species"] for r in with_species)
    if rows == 225:
        assert len(with_species) == 150
        assert sum(1 for r in records if r["genus"] and not r["species"]) == 75

"""Evaluation-set readers on the real metadata of ../shared/realdata (skipped when it is absent): BioCLIP's
Rare Species metadata.csv (rare_species reader) and Meta-Album Fungi's (the generic table reader), read by
the ingest stage's own task exactly as the dedup stage reads them."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import tomli_w

from tol_builder import ingest
from tol_builder.fileio import file_digest


def _ingest(tmp, reader: str, name: str, metadata, media_url: str, options: dict | None = None):
    manifest = tmp / f"{name}.toml"
    manifest.write_text(tomli_w.dumps({"source": reader, "evalset": {"name": name}, "files": [
        {"name": metadata.name, "role": "metadata", "url": str(metadata), "md5": file_digest(metadata)},
        {"name": "images", "role": "media", "url": media_url}]}))
    source = {"name": reader, "manifest": str(manifest), "id": name, "options": options or {}}
    common = dict(out=str(tmp / "build"), source=source, manifest_path=str(manifest), threads=1, config_file="")
    ingest.plan_task(**common)
    counters = {}
    for p in json.loads(ingest.partitions_file(tmp / "build", name).read_text()):
        counters.update(ingest.read_task(**common, partition=p, records_dir="evalsets/records",
                                         rejects_dir="evalsets/rejects"))
    records = pq.read_table(tmp / "build" / "evalsets" / "records" / name).to_pylist()
    return records, counters


def test_real_rare_species_metadata(realdata, tmp_path):
    meta = realdata / "rare_species" / "bioclip_rare_species_metadata.csv"
    records, counters = _ingest(tmp_path, "rare_species", "rare_species", meta, str(tmp_path / "images"))
    assert len(records) == 11_983 and counters["records"] == 11_983 and counters["rows_read"] == 11_983
    assert len({(r["genus"], r["species"]) for r in records}) == 400
    assert all(r["kingdom"] == "Animalia" for r in records)
    first = records[0]  # 2024-03-20/12853737_449393_eol-full-size-copy.jpg, Cyclonaias tuberculata
    assert (first["source_id"], first["source_taxon_id"]) == ("12853737", "449393")
    assert first["class"] == "Bivalvia" and first["species"] == "tuberculata"
    assert first["scientific_name"] == "Cyclonaias tuberculata" and first["common_name"] == "purple wartyback"
    assert first["media_uri"] == str(tmp_path / "images" / "2024-03-20" / "12853737_449393_eol-full-size-copy.jpg")
    assert all(r["source_id"].isdigit() and r["source_taxon_id"].isdigit() for r in records)


def test_real_meta_album_metadata_through_the_table_reader(realdata, tmp_path):
    meta = realdata / "meta_album" / "FNG_Mini_metadata.csv"
    records, counters = _ingest(tmp_path, "table", "fungi", meta, str(tmp_path), {
        "columns": {"source_id": "filepath", "media_uri": "filepath", "scientific_name": "class"}})
    assert len(records) == 1000 and counters["records"] == 1000
    names = {r["scientific_name"] for r in records}
    assert len(names) == 25 and "Amanita excelsa Gonn. & Rabenh." in names
    assert all(r["media_uri"].startswith(str(meta.parent) + "/") for r in records)

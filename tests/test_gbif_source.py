"""The GBIF occurrence source on a Darwin Core Archive made by the test in GBIF's download layout (meta.xml with
an occurrence core and a Multimedia extension, tab-separated, unquoted, one header line), read by the ingest
stage's own tasks: one record per StillImage, every other row a reject with its row and reason."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import tomli_w

from tol_builder import ingest
from tol_builder.config import ConfigError, from_dict
from tol_builder.records import make_uid
from tol_builder.sources.gbif import GBIFOptions

DWC, GBIF, DC = "http://rs.tdwg.org/dwc/terms/", "http://rs.gbif.org/terms/1.0/", "http://purl.org/dc/terms/"
OCC_TERMS = [GBIF + "gbifID", DC + "license", DC + "rightsHolder", DC + "references", DWC + "occurrenceID",
             DWC + "kingdom", DWC + "phylum", DWC + "class", DWC + "order", DWC + "family", DWC + "genus",
             GBIF + "species", DWC + "scientificName", GBIF + "taxonKey"]
MM_TERMS = [GBIF + "gbifID", DC + "type", DC + "format", DC + "identifier", DC + "references", DC + "license",
            DC + "rightsHolder", DC + "creator"]
MAGPIE = ["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "Pica hudsonia",
          "Pica hudsonia (Sabine, 1823)", "2482498"]


def meta_xml() -> str:
    def fields(terms):
        return "\n".join(f'    <field index="{i}" term="{t}"/>' for i, t in enumerate(terms))
    return f"""<?xml version="1.0" encoding="utf-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="metadata.xml">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy=""
        ignoreHeaderLines="1" rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>occurrence.txt</location></files>
    <id index="0"/>
{fields(OCC_TERMS)}
  </core>
  <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy=""
        ignoreHeaderLines="1" rowType="http://rs.gbif.org/terms/1.0/Multimedia">
    <files><location>multimedia.txt</location></files>
    <coreid index="0"/>
{fields(MM_TERMS)}
  </extension>
</archive>
"""


def tsv(terms, rows) -> str:
    return "\n".join(["\t".join(t.rsplit("/", 1)[-1] for t in terms)] + ["\t".join(r) for r in rows]) + "\n"


def write_download(path: Path) -> dict:
    occ = [["101", "CC_BY_4_0", "Ann", "https://www.inaturalist.org/observations/1", "o1", *MAGPIE],
           ["102", "CC0_1_0", "Bob", "", "o2", "Animalia", "Arthropoda", "Insecta", "Diptera", "Cecidomyiidae", "", "",
            "Cecidomyiidae", "3327"],
           ["103", "CC_BY_NC_4_0", "", "", "o3", *MAGPIE]]
    mm = [["101", "StillImage", "image/jpeg", "https://img.example.org/1.jpg", "https://page/1", "", "", "Ann A."],
          ["101", "StillImage", "image/jpeg", "https://img.example.org/2.jpg", "", "CC0 1.0", "Ann Holder", ""],
          ["101", "Sound", "audio/mpeg", "https://img.example.org/1.mp3", "", "", "", ""],
          ["102", "StillImage", "image/jpeg", "https://img.example.org/3.jpg", "", "", "", ""],
          ["999", "StillImage", "image/jpeg", "https://img.example.org/4.jpg", "", "", "", ""],  # no occurrence
          ["102", "StillImage\tx\ty\tz\tw\tv\tu\tt\ts", "", "", "", "", "", ""],  # too many fields
          ["103", "StillImage", "image/png", "", "", "", "", ""]]  # no URL: the ingest check rejects it
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("meta.xml", meta_xml())
        zf.writestr("occurrence.txt", tsv(OCC_TERMS, occ))
        zf.writestr("multimedia.txt", tsv(MM_TERMS, mm))
        zf.writestr("metadata.xml", "<eml/>")
    return {"occ": occ, "mm": mm}


def ingest_download(tmp: Path, partitions: int = 1, out: Path | None = None) -> tuple[list[dict], list[dict], dict]:
    zpath = tmp / "0001234-260101000000000.zip"
    if not zpath.exists():
        write_download(zpath)
    manifest = tmp / "gbif.toml"
    manifest.write_text(tomli_w.dumps({"source": "gbif", "files": [{"name": zpath.name, "role": "metadata",
                                                                     "url": str(zpath)}]}))
    out = out or tmp / "build"
    source = {"name": "gbif", "manifest": str(manifest), "id": "gbif", "options": {"partitions": partitions}}
    common = dict(out=str(out), source=source, manifest_path=str(manifest), threads=1, config_file="")
    ingest.plan_task(**common)
    counters: dict = {}
    for p in json.loads(ingest.partitions_file(out, "gbif").read_text()):
        for k, v in ingest.read_task(**common, partition=p).items():
            counters[k] = counters.get(k, 0) + v
    records = [r for f in sorted((out / "records" / "gbif").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    rejects = [r for f in sorted((out / "rejects" / "ingest" / "gbif").glob("*.parquet"))
               for r in pq.read_table(f).to_pylist()]
    return records, rejects, counters


def test_one_record_per_still_image_with_its_occurrence(tmp_path):
    records, rejects, counters = ingest_download(tmp_path)
    by_url = {r["media_uri"]: r for r in records}
    assert set(by_url) == {"https://img.example.org/1.jpg", "https://img.example.org/2.jpg",
                           "https://img.example.org/3.jpg"}
    one = by_url["https://img.example.org/1.jpg"]
    assert one["source_id"].startswith("101:") and one["uid"] == make_uid("gbif", one["source_id"])
    assert (one["kingdom"], one["genus"], one["species"]) == ("Animalia", "Pica", "Pica hudsonia")
    assert one["scientific_name"] == "Pica hudsonia (Sabine, 1823)" and one["source_taxon_id"] == "2482498"
    assert one["licence"] == "CC_BY_4_0" and one["rights_holder"] == "Ann A." and one["source_url"] == "https://page/1"
    two = by_url["https://img.example.org/2.jpg"]  # the image's own licence and holder come first
    assert (two["licence"], two["rights_holder"], two["source_url"]) == (
        "CC0 1.0", "Ann Holder", "https://www.inaturalist.org/observations/1")
    assert by_url["https://img.example.org/3.jpg"]["genus"] is None  # a family-only occurrence keeps its family
    reasons = sorted((r["reason"], r["row"]) for r in rejects)
    # rows of multimedia.txt (1 = the first line after the header): 3 Sound, 5 no occurrence, 6 too many fields,
    # 7 no URL
    assert reasons == [("malformed_csv", 6), ("missing_media", 7), ("not_a_still_image", 3),
                       ("occurrence_not_found", 5)]
    assert counters["rows_read"] == 7 == len(records) + len(rejects)  # every multimedia row accounted for


def test_partitions_split_the_records_by_occurrence(tmp_path):
    one, _, _ = ingest_download(tmp_path, partitions=1)
    three, rejects, _ = ingest_download(tmp_path, partitions=3, out=tmp_path / "b3")
    assert sorted(r["uid"] for r in three) == sorted(r["uid"] for r in one)  # same records, same uids
    assert len(rejects) == 4


def test_damaged_archives_are_named(tmp_path):
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("occurrence.txt", "gbifID\n1\n")
    (tmp_path / "gbif.toml").write_text(tomli_w.dumps({"source": "gbif", "files": [
        {"name": z.name, "role": "metadata", "url": str(z)}]}))
    source = {"name": "gbif", "manifest": str(tmp_path / "gbif.toml"), "id": "gbif", "options": {}}
    with pytest.raises(Exception, match="meta.xml"):
        ingest.plan_task(out=str(tmp_path / "b"), source=source, manifest_path=str(tmp_path / "gbif.toml"),
                         threads=1, config_file="")
    with pytest.raises(ConfigError, match=r"options\.partitions"):
        from_dict(GBIFOptions, {"partitions": 0}, "wf.toml", prefix="sources[0].options")

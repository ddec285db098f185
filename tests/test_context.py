"""Each image's context (issue 23 item 1): observed_on, latitude, longitude, coordinate_uncertainty_m,
country_code, basis_of_record, occurrence_id, dataset_id, dna_barcode and sample_id, typed and nullable in the
records (columns.CONTEXT_COLUMNS), filled by the inat21, bioscan1m, gbif and table readers from fixture files in
the real formats, read by the ingest stage's own tasks. A bad value is nulled and counted under its own reason,
the record kept; the columns reach the `images` table and the catalog's `tables` documentation."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fixtures_sources import (BIOSCAN_COLUMNS, DWC, GBIF, GBIF_MM_TERMS, INAT_CATEGORIES, PRERELEASE_COLUMNS,
                              annotations_for, bioscan_row, inat_doc, inat_image, write_bioscan, write_dwca, write_inat,
                              write_manifest, write_tsv)
from tol_builder import catalog, ingest
from tol_builder.columns import CONTEXT_COLUMNS
from tol_builder.records import RECORD_SCHEMA, RejectLog, finalize, RAW_COLUMNS

CAT0, CAT7 = INAT_CATEGORIES


def ingest_source(tmp: Path, name: str, manifest: Path, source_id: str | None = None, **options):
    """Plan and read every partition with the ingest stage's tasks: (records, rejects, nulled values, counters)."""
    out = tmp / "build"
    sid = source_id or name
    source = {"name": name, "manifest": str(manifest), "id": sid, "options": options}
    common = dict(out=str(out), source=source, manifest_path=str(manifest), threads=1, config_file="")
    ingest.plan_task(**common)
    counters: dict = {}
    for p in json.loads(ingest.partitions_file(out, sid).read_text()):
        for k, v in ingest.read_task(**common, partition=p).items():
            counters[k] = counters.get(k, 0) + v
    files = sorted((out / "records" / sid).glob("*.parquet"))
    assert all(pq.read_schema(f) == RECORD_SCHEMA for f in files)
    records = [r for f in files for r in pq.read_table(f).to_pylist()]
    rejects = [r for f in sorted((out / "rejects" / "ingest" / sid).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    nulled = [r for f in sorted((out / "rejects" / "ingest" / sid / "nulled").glob("*.parquet"))
              for r in pq.read_table(f).to_pylist()]
    return records, rejects, nulled, counters


def context_of(r: dict) -> dict:
    return {c: r[c] for c in CONTEXT_COLUMNS}


# ================================================================================================ iNat21
def inat_images():
    return [
        inat_image(0, CAT0),  # the fixture's own: 2010-07-14 20:19 at 43.83486, -71.22231, no uncertainty
        inat_image(1, CAT7, date="2019-06-14", latitude=-33.5, longitude=151.25, location_uncertainty=25),
        inat_image(2, CAT7, latitude=123.0, longitude=10.0, location_uncertainty=-5),  # out of range
        inat_image(3, CAT7, date="2041-03-01 10:00:00+00:00", latitude=None, longitude=None),  # future; no place
        inat_image(4, CAT0, date="N/A", latitude="N/A", longitude=2.5, location_uncertainty="N/A"),
        inat_image(5, CAT0, date="2019-02-30", latitude=10, longitude=None, location_uncertainty=7.5),
    ]


def test_inat21_keeps_date_place_and_uncertainty_and_nulls_bad_values(tmp_path):
    images = inat_images()
    m = write_inat(tmp_path, {"train": inat_doc(images, annotations_for(images, lambda im: CAT7["id"]))})
    records, rejects, nulled, counters = ingest_source(tmp_path, "inat21", m.path, splits=["train"])
    assert len(records) == 6 and rejects == []  # every record kept
    by_row = {r["media_member"]: r for r in records}
    ctx = [context_of(by_row[im["file_name"]]) for im in images]
    empty = {c: None for c in CONTEXT_COLUMNS}
    assert ctx[0] == {**empty, "observed_on": "2010-07-14", "latitude": 43.83486, "longitude": -71.22231}
    assert ctx[1] == {**empty, "observed_on": "2019-06-14", "latitude": -33.5, "longitude": 151.25,
                      "coordinate_uncertainty_m": 25.0}
    assert ctx[2] == {**empty, "observed_on": "2010-07-14"}  # latitude 123: the pair nulled; radius -5 nulled
    assert ctx[3] == empty  # the date in the future nulled; no coordinate given
    assert ctx[4] == empty
    assert ctx[5] == {**empty, "coordinate_uncertainty_m": 7.5}  # 30 February; a latitude alone is no place
    assert isinstance(ctx[1]["latitude"], float)
    reasons = sorted((r["row"], r["field"], r["reason"], r["value"]) for r in nulled)
    assert reasons == [
        (2, "coordinate_uncertainty_m", "invalid_coordinate_uncertainty_m", "-5"),
        (2, "latitude", "invalid_latitude", "123.0"),
        (3, "observed_on", "future_observed_on", "2041-03-01 10:00:00+00:00"),
        (4, "coordinate_uncertainty_m", "invalid_coordinate_uncertainty_m", "N/A"),
        (4, "latitude", "invalid_latitude", "N/A"),
        (4, "observed_on", "invalid_observed_on", "N/A"),
        (5, "latitude", "incomplete_coordinate", "10"),
        (5, "observed_on", "invalid_observed_on", "2019-02-30"),
    ]
    assert all(r["file"] == "train.json" for r in nulled)
    assert counters == {"rows_read": 6, "records": 6, "rejected_invalid_latitude": 2,
                        "rejected_invalid_coordinate_uncertainty_m": 2, "rejected_future_observed_on": 1,
                        "rejected_invalid_observed_on": 2, "rejected_incomplete_coordinate": 1}


# ============================================================================================ BIOSCAN-1M
def test_bioscan1m_final_schema_keeps_barcode_and_sample_id(tmp_path):
    rows = [bioscan_row("CNGMA001-22"),  # the fixture's real-looking barcode and sample id
            bioscan_row("CNGMA002-22", nucraw=" aacatt-NNNNNNNNtatttt ", sampleid=" BIOUG02-B07 "),
            bioscan_row("CNGMA003-22", nucraw="ACGT1234XQ", sampleid="N/A"),
            bioscan_row("CNGMA004-22", nucraw="", sampleid=""),  # empty: missing, not invalid
            bioscan_row("CNGMA005-22", nucraw="NNNN----")]  # no base at all
    write_tsv(tmp_path / "BIOSCAN_Insect_Dataset_metadata.tsv", rows, BIOSCAN_COLUMNS)
    records, rejects, nulled, counters = ingest_source(tmp_path, "bioscan1m", write_bioscan(tmp_path).path)
    rec = {r["source_id"]: r for r in records}
    assert len(rec) == 5 and rejects == []
    assert rec["CNGMA001-22"]["dna_barcode"] == rows[0]["nucraw"] and rec["CNGMA001-22"]["sample_id"] == rows[0]["sampleid"]
    assert rec["CNGMA002-22"]["dna_barcode"] == "AACATT-NNNNNNNNTATTTT" and rec["CNGMA002-22"]["sample_id"] == "BIOUG02-B07"
    assert rec["CNGMA003-22"]["dna_barcode"] is None and rec["CNGMA003-22"]["sample_id"] is None
    assert rec["CNGMA004-22"]["dna_barcode"] is None and rec["CNGMA004-22"]["sample_id"] is None
    assert rec["CNGMA005-22"]["dna_barcode"] is None
    # BIOSCAN-1M has no place or date
    assert all(r[c] is None for r in records for c in ("observed_on", "latitude", "longitude", "country_code"))
    assert sorted((r["row"], r["field"], r["reason"], r["value"]) for r in nulled) == [
        (3, "dna_barcode", "invalid_dna_barcode", "ACGT1234XQ"), (3, "sample_id", "invalid_sample_id", "N/A"),
        (5, "dna_barcode", "invalid_dna_barcode", "NNNN----")]
    assert counters["rejected_invalid_dna_barcode"] == 2 and counters["rejected_invalid_sample_id"] == 1
    assert counters["records"] == 5 == counters["rows_read"]


def test_bioscan1m_prerelease_schema_has_sample_id_only(tmp_path):
    def row(pid, **over):
        r = {c: "" for c in PRERELEASE_COLUMNS}
        r.update(processid=pid, phylum="Arthropoda", uri="BOLD:ACY4985", sampleid=f"BIOUG-{pid}",
                 image_file=f"{pid[-4:]}.jpg", licence="CreativeCommons - Attribution", image_tar="x.tar")
        r.update(over)
        return r

    rows = [row("PLAEZ1721"), row("PLAEZ1722", sampleid="")]
    write_tsv(tmp_path / "small_dataset_validation_metadata.tsv", rows, PRERELEASE_COLUMNS)
    m = write_bioscan(tmp_path, "small_dataset_validation_metadata.tsv")
    records, _, nulled, _ = ingest_source(tmp_path, "bioscan1m", m.path)
    rec = {r["source_id"]: r for r in records}
    assert rec["PLAEZ1721"]["sample_id"] == "BIOUG-PLAEZ1721" and rec["PLAEZ1722"]["sample_id"] is None
    assert all(r["dna_barcode"] is None for r in records) and nulled == []


# ================================================================================================== GBIF
OCC_TERMS = [GBIF + "gbifID", DWC + "occurrenceID", DWC + "basisOfRecord", DWC + "eventDate",
             DWC + "decimalLatitude", DWC + "decimalLongitude", DWC + "coordinateUncertaintyInMeters",
             DWC + "countryCode", GBIF + "datasetKey", GBIF + "issue", DWC + "kingdom", DWC + "genus", GBIF + "species",
             DWC + "scientificName", GBIF + "taxonKey", "http://purl.org/dc/terms/license"]
PICA = ["Animalia", "Pica", "Pica hudsonia", "Pica hudsonia (Sabine, 1823)", "2482498", "CC_BY_4_0"]
DS = "50c9509d-22c7-4a22-a47d-8c48425ef4a7"


def test_gbif_keeps_the_occurrence_context_and_nulls_flagged_coordinates(tmp_path):
    occ = [
        ["1", "urn:catalog:1", "HUMAN_OBSERVATION", "2019-06-14T08:30:00", "51.5", "-0.12", "30", "GB", DS,
         "COORDINATE_ROUNDED", *PICA],  # a flag that leaves the coordinate as it is
        ["2", "urn:catalog:2", "PRESERVED_SPECIMEN", "1887-05", "0", "0", "", "N/A", DS, "ZERO_COORDINATE", *PICA],
        ["3", "urn:catalog:3", "HUMAN_OBSERVATION", "2018-06-01/2018-06-30", "-12.5", "130.8", "1000", "au", DS,
         "COUNTRY_COORDINATE_MISMATCH;PRESUMED_SWAPPED_COORDINATE", *PICA],
        ["4", "", "MACHINE_OBSERVATION", "2041-01-01", "95", "10", "0", "USA", "", "", *PICA],
        ["5", "urn:catalog:5", "HUMAN_OBSERVATION", "", "", "", "", "", DS, "COORDINATE_INVALID", *PICA],
    ]
    mm = [[g, "StillImage", "image/jpeg", f"https://img.example.org/{g}.jpg", "", "", "", ""] for g in "12345"]
    zpath = write_dwca(tmp_path / "0001234-260101000000000.zip", OCC_TERMS, occ, mm)
    manifest = tmp_path / "gbif.toml"
    write_manifest(tmp_path, "gbif", [{"name": zpath.name, "role": "metadata", "url": str(zpath)}])
    records, rejects, nulled, counters = ingest_source(tmp_path, "gbif", manifest)
    rec = {r["media_uri"].rsplit("/", 1)[1][:-4]: r for r in records}
    assert len(rec) == 5 and rejects == []
    assert context_of(rec["1"]) == {
        "observed_on": "2019-06-14", "latitude": 51.5, "longitude": -0.12, "coordinate_uncertainty_m": 30.0,
        "country_code": "GB", "basis_of_record": "HUMAN_OBSERVATION", "occurrence_id": "urn:catalog:1",
        "dataset_id": DS, "dna_barcode": None, "sample_id": None}
    assert context_of(rec["2"]) == {
        "observed_on": "1887-05", "latitude": None, "longitude": None, "coordinate_uncertainty_m": None,
        "country_code": None, "basis_of_record": "PRESERVED_SPECIMEN", "occurrence_id": "urn:catalog:2",
        "dataset_id": DS, "dna_barcode": None, "sample_id": None}
    # a range keeps what both ends share; the swapped coordinate is nulled with its uncertainty
    assert (rec["3"]["observed_on"], rec["3"]["latitude"], rec["3"]["coordinate_uncertainty_m"],
            rec["3"]["country_code"]) == ("2018-06", None, None, "AU")
    assert (rec["4"]["observed_on"], rec["4"]["latitude"], rec["4"]["longitude"], rec["4"]["coordinate_uncertainty_m"],
            rec["4"]["country_code"], rec["4"]["occurrence_id"], rec["4"]["dataset_id"]) == (
        None, None, None, None, None, None, None)
    assert all(v is None for k, v in context_of(rec["5"]).items() if k not in ("occurrence_id", "dataset_id",
                                                                                "basis_of_record"))
    got = sorted((r["row"], r["field"], r["reason"], r["value"]) for r in nulled)
    assert got == [
        (2, "country_code", "invalid_country_code", "N/A"),
        (2, "latitude", "gbif_zero_coordinate", "0,0"),
        (3, "latitude", "gbif_presumed_swapped_coordinate", "-12.5,130.8"),  # the first flag of the order
        (4, "coordinate_uncertainty_m", "invalid_coordinate_uncertainty_m", "0"),
        (4, "country_code", "invalid_country_code", "USA"),
        (4, "latitude", "invalid_latitude", "95"),
        (4, "observed_on", "future_observed_on", "2041-01-01"),
    ]
    assert {k: v for k, v in counters.items() if k.startswith("rejected_")} == {
        "rejected_invalid_country_code": 2, "rejected_gbif_zero_coordinate": 1,
        "rejected_gbif_presumed_swapped_coordinate": 1, "rejected_invalid_coordinate_uncertainty_m": 1,
        "rejected_invalid_latitude": 1, "rejected_future_observed_on": 1}
    assert counters["rows_read"] == counters["records"] == 5


# ================================================================================================= table
def test_table_maps_context_columns(tmp_path):
    (tmp_path / "herbarium.csv").write_text(
        "catalogNumber,image_url,genus,collected,lat,lon,radius,country,barcode\n"
        "H1,https://img.example.org/h1.jpg,Salix,1999-04,45.1,7.6,100,IT,ACGTN\n"
        "H2,https://img.example.org/h2.jpg,Salix,yesterday,-91,7.6,,it,\n"
        "H3,https://img.example.org/h3.jpg,Salix,,,,,,\n")
    write_manifest(tmp_path, "table", [{"name": "herbarium.csv", "role": "metadata",
                                        "url": str(tmp_path / "herbarium.csv")}])
    mapping = {"source_id": "catalogNumber", "media_uri": "image_url", "observed_on": "collected", "latitude": "lat",
               "longitude": "lon", "coordinate_uncertainty_m": "radius", "country_code": "country",
               "dna_barcode": "barcode"}
    records, rejects, nulled, counters = ingest_source(tmp_path, "table", tmp_path / "table.toml", "herbarium",
                                                       columns=mapping)
    rec = {r["source_id"]: r for r in records}
    assert context_of(rec["H1"]) == {
        "observed_on": "1999-04", "latitude": 45.1, "longitude": 7.6, "coordinate_uncertainty_m": 100.0,
        "country_code": "IT", "basis_of_record": None, "occurrence_id": None, "dataset_id": None,
        "dna_barcode": "ACGTN", "sample_id": None}
    assert (rec["H2"]["observed_on"], rec["H2"]["latitude"], rec["H2"]["longitude"], rec["H2"]["country_code"]) == (
        None, None, None, "IT")
    assert all(v is None for v in context_of(rec["H3"]).values())
    assert sorted((r["row"], r["reason"], r["value"]) for r in nulled) == [
        (2, "invalid_latitude", "-91"), (2, "invalid_observed_on", "yesterday")]
    assert rejects == [] and counters["records"] == 3


# ======================================================================================= checks, directly
def test_clean_context_rules(tmp_path):
    """The checks on one column set, with a fixed 'today': precision kept, ranges, calendar, bounds, placeholders."""
    values = {
        "observed_on": ["2019", "2019-06", "2019-06-14T10:00:00Z", "2019-06-14/2019-06-20", "2019-06-30/2019-07-02",
                        "2018/2019", "1650-01-01", "2026-12-07", "2026-12", "2019-13"],
        "latitude": ["90", "-90", "+1.5e1", "90.0001", "nan", "inf", "1,5", "0", " 12 ", "N/A"],
        "longitude": ["180", "-180", "0", "0", "0", "0", "0", "0", "13", "0"],
    }
    n = 10
    cols = {c: pa.array(values.get(c, [None] * n), pa.string()) for c in list(RAW_COLUMNS) + list(CONTEXT_COLUMNS)}
    cols["source_id"] = pa.array([str(i) for i in range(n)])
    cols["media_uri"] = pa.array(["u"] * n)
    raw = pa.table({**cols, "_row": pa.array(range(n), pa.int64())})
    log = RejectLog("s", "p")
    from tol_builder.records import clean_context

    out = clean_context(raw, log, "f", today="2026-12-06")
    assert out["observed_on"].to_pylist() == ["2019", "2019-06", "2019-06-14", "2019-06", "2019", None, None, None,
                                              "2026-12", None]
    assert out["latitude"].to_pylist() == [90.0, -90.0, 15.0, None, None, None, None, 0.0, 12.0, None]
    assert out["longitude"].to_pylist()[:3] == [180.0, -180.0, 0.0]
    assert log.counts == {"invalid_observed_on": 3, "future_observed_on": 1, "invalid_latitude": 5}
    assert len(log) == 0 and log.table().num_rows == 0  # nulled values are no rejected records


# ======================================================================================= images, catalog
def test_context_reaches_images_and_the_tables_documentation(tmp_path):
    from test_taxonomy_fixtures import run_stage, write_authorities

    images = inat_images()
    m = write_inat(tmp_path, {"train": inat_doc(images, annotations_for(images, lambda im: CAT7["id"]))})
    ingest_source(tmp_path, "inat21", m.path, splits=["train"])
    out = tmp_path / "build"
    catalog.register_parquet(out, "records", "records/*/*.parquet")
    run_stage(tmp_path, write_authorities(tmp_path), records={"inat21": []}, out=out)
    rows = catalog.query(out, """SELECT source_id, observed_on, latitude, longitude, coordinate_uncertainty_m,
        dna_barcode FROM images ORDER BY source_id""").to_pylist()
    by_id = {r["source_id"]: r for r in rows}
    one = by_id[images[1]["file_name"].rsplit("/", 1)[1][:-4]]
    assert (one["observed_on"], one["latitude"], one["longitude"], one["coordinate_uncertainty_m"]) == (
        "2019-06-14", -33.5, 151.25, 25.0)
    assert sum(r["latitude"] is not None for r in rows) == 2 and len(rows) == 6
    types = dict((r["column_name"], r["column_type"]) for r in catalog.query(
        out, "SELECT column_name, column_type FROM (DESCRIBE images)").to_pylist())
    assert types["latitude"] == "DOUBLE" and types["observed_on"] == "VARCHAR"
    docs = {r["name"]: json.loads(r["columns"]) for r in catalog.query(out, "SELECT * FROM tables").to_pylist()}
    for table in ("records", "images"):
        assert set(CONTEXT_COLUMNS) <= set(docs[table]), table
    assert "ISO 3166-1 alpha-2" in docs["images"]["country_code"]


def test_finalize_gives_the_typed_schema_when_a_reader_has_no_context():
    raw = pa.table({"source_id": ["a"], "media_uri": ["u"], "_row": pa.array([1], pa.int64())})
    t = finalize("s", raw, RejectLog("s", "p"), "f")
    assert t.schema == RECORD_SCHEMA and t["latitude"].type == pa.float64() and t["latitude"].null_count == 1


# ======================================================================== real files (skipped when absent)
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def test_real_inat21_images_keep_their_context(tmp_path):
    """TFDS's copies of the published iNat21 JSON: each image's date (its day), latitude, longitude and
    location_uncertainty reach the records as given."""
    import tarfile

    import pytest

    if not (REALDATA / "inat21").is_dir():
        pytest.skip(f"{REALDATA} is not present")
    raw = json.loads((REALDATA / "inat21" / "tfds_dummy_train.json").read_text())
    with tarfile.open(tmp_path / "train.json.tar.gz", "w:gz") as tar:
        tar.add(REALDATA / "inat21" / "tfds_dummy_train.json", arcname="train.json")
    m = write_manifest(tmp_path, "inat21", [{"name": "train.json.tar.gz", "role": "metadata", "split": "train"},
                                            {"name": "train.tar.gz", "role": "media", "split": "train"}])
    records, rejects, nulled, counters = ingest_source(tmp_path, "inat21", m.path, splits=["train"])
    by_member = {r["media_member"]: r for r in records}
    assert len(records) == len(raw["images"]) and nulled == []
    for img in raw["images"]:
        r = by_member[img["file_name"]]
        assert r["observed_on"] == img["date"][:10]
        assert (r["latitude"], r["longitude"]) == (img["latitude"], img["longitude"])
        assert r["coordinate_uncertainty_m"] == (None if img["location_uncertainty"] is None
                                                 else float(img["location_uncertainty"]))


def test_real_bioscan1m_prerelease_sample_ids(tmp_path):
    import csv

    import pytest

    name = "prerelease_small_dataset_validation_metadata_first300.tsv"
    if not (REALDATA / "bioscan1m" / name).is_file():
        pytest.skip(f"{REALDATA} is not present")
    m = write_manifest(tmp_path, "bioscan1m", [
        {"name": name, "role": "metadata", "format": "tsv", "url": str(REALDATA / "bioscan1m" / name)},
        {"name": "cropped_256.zip", "role": "media", "url": "https://example.org/cropped_256.zip"}])
    records, _, nulled, _ = ingest_source(tmp_path, "bioscan1m", m.path)
    with open(REALDATA / "bioscan1m" / name, newline="") as f:
        given = {s["processid"]: s["sampleid"] or None for s in csv.DictReader(f, delimiter="\t")}
    assert len(records) == 300 and nulled == []
    assert {r["source_id"]: r["sample_id"] for r in records} == given
    assert all(r["dna_barcode"] is None for r in records)  # the pre-release schema has no nucraw

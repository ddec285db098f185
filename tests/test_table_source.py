"""The generic `table` source and the ingest tasks as plain functions (no cluster)."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tol_builder.errors import InputError
from tol_builder.ingest import partitions_file, plan_task, read_task
from tol_builder.records import make_uid


def _manifest(tmp_path: Path, files: list[tuple[str, str]]) -> Path:
    body = 'source = "table"\n' + "".join(
        f'[[files]]\nname = "{n}"\nrole = "metadata"\nsplit = "{s}"\n' for n, s in files)
    p = tmp_path / "herbarium.toml"
    p.write_text(body)
    return p


def _ingest(tmp_path, manifest, options):
    out = tmp_path / "build"
    source = {"name": "table", "manifest": str(manifest), "id": "herbarium", "options": options}
    plan_task(str(out), source, str(manifest), 1, "")
    counters = {}
    for p in json.loads(partitions_file(out, "herbarium").read_text()):
        for k, v in read_task(str(out), source, str(manifest), p, 1, "").items():
            counters[k] = counters.get(k, 0) + v
    recs = pa.concat_tables(pq.read_table(f) for f in sorted((out / "records" / "herbarium").glob("*.parquet")))
    rejects = pa.concat_tables(pq.read_table(f) for f in sorted((out / "rejects" / "ingest" / "herbarium").glob("*.parquet")))
    return counters, recs, rejects


def test_csv_and_parquet_tables_with_column_mapping(tmp_path):
    (tmp_path / "a.csv").write_text(
        "catalogNumber,image_url,genus,epithet,license\n"
        "H1,http://127.0.0.1:1/h1.jpg,Quercus,robur,CC0\n"
        "H2,img/h2.jpg,Quercus,,CC0\n"
        "H3,,Acer,campestre,CC0\n"          # no image: rejected, the rest goes on
        "H1,http://127.0.0.1:1/dup.jpg,Quercus,robur,CC0\n")  # same id again: rejected
    pq.write_table(pa.table({"catalogNumber": ["P1"], "image_url": ["file:///data/p1.jpg"], "genus": ["Pinus"],
                             "epithet": ["nigra"], "license": ["CC BY"]}), tmp_path / "b.parquet")
    m = _manifest(tmp_path, [("a.csv", "train"), ("b.parquet", "")])
    counters, recs, rejects = _ingest(tmp_path, m, {"columns": {
        "source_id": "catalogNumber", "media_uri": "image_url", "species": "epithet", "licence": "license"}})
    rows = {r["source_id"]: r for r in recs.to_pylist()}
    assert set(rows) == {"H1", "H2", "P1"}
    assert rows["H1"]["uid"] == make_uid("herbarium", "H1") and rows["H1"]["source"] == "herbarium"
    assert rows["H1"]["media_uri"] == "http://127.0.0.1:1/h1.jpg"
    assert rows["H2"]["media_uri"] == f"{tmp_path}/img/h2.jpg" and rows["H2"]["species"] is None
    assert rows["H1"]["genus"] == "Quercus" and rows["H1"]["source_split"] == "train"
    assert rows["P1"]["licence"] == "CC BY" and rows["P1"]["source_split"] is None
    bad = {(r["row"], r["field"], r["reason"]) for r in rejects.to_pylist()}
    assert bad == {(3, "media_uri", "missing_media"), (4, "source_id", "duplicate_source_id")}
    assert counters["records"] == 3 and counters["rejected_missing_media"] == 1


def test_missing_mapped_column_names_file_and_field(tmp_path):
    (tmp_path / "a.csv").write_text("id,url\n1,http://x/1.jpg\n")
    m = _manifest(tmp_path, [("a.csv", "")])
    with pytest.raises(InputError) as e:
        _ingest(tmp_path, m, {"columns": {"source_id": "id", "media_uri": "url", "genus": "Genus"}})
    assert "a.csv" in str(e.value) and "Genus" in str(e.value)
    with pytest.raises(InputError, match="media_uri"):
        _ingest(tmp_path, m, {"columns": {"source_id": "id"}})


def test_unreachable_metadata_url_names_the_url(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on: connection refused, no network needed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/herbarium.csv"
    (tmp_path / "m.toml").write_text(f'source = "table"\n[[files]]\nname = "h.csv"\nrole = "metadata"\nurl = "{url}"\n')
    with pytest.raises(InputError) as e:
        _ingest(tmp_path, tmp_path / "m.toml", {"columns": {"source_id": "id", "media_uri": "url"}})
    assert url in str(e.value) and "cannot download" in str(e.value)

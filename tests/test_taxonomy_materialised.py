"""The `images` table the taxonomy stage writes once (taxonomy/images.py): the same rows and columns as the
view that joined every record to lineage_map at every query, one file per records file, rewritten when the
records change, and a plain parquet scan in the catalog (also when the build is moved)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from test_taxonomy_fixtures import RECORDS, run_stage, write_authorities
from tol_builder import catalog
from tol_builder.runner import read_markers
from tol_builder.sql import literal
from tol_builder.taxonomy import STAGE, register
from tol_builder.taxonomy.images import IMAGE_COLUMNS

# the `images` view as main defined it before the table existed (coverage.create_views), spelled out here
# so that the table is compared with the old definition, not with the code that now writes it
OLD_VIEW = """SELECT r.uid, r.source, r.source_id, m.taxon_id, t.kingdom, t.phylum, t.class, t."order", t.family,
       t.genus, t.species, t.scientific_name, t.common_name, t.lowest_rank, m.confirmed_rank, m.rank_status,
       -- and each record's context as it is (issue 23)
       r.observed_on, r.latitude, r.longitude, r.coordinate_uncertainty_m, r.country_code, r.basis_of_record,
       r.occurrence_id, r.dataset_id, r.dna_barcode, r.sample_id
FROM read_parquet($records, union_by_name=true) r
LEFT JOIN read_parquet($lineage_map) m ON m.source = r.source AND m.lineage_key = md5(concat_ws(chr(31), r.source,
    coalesce(r."kingdom", ''), coalesce(r."phylum", ''), coalesce(r."class", ''), coalesce(r."order", ''),
    coalesce(r."family", ''), coalesce(r."genus", ''), coalesce(r."species", ''), coalesce(r."scientific_name", ''),
    CASE WHEN r.source IN ('eol') THEN coalesce(r.source_taxon_id, '') ELSE '' END))
LEFT JOIN read_parquet($taxa) t ON t.taxon_id = m.taxon_id"""


def old_view_rows(out: Path) -> list[tuple]:
    con = duckdb.connect()
    try:
        return con.execute(f"SELECT * FROM ({OLD_VIEW}) ORDER BY uid", {
            "records": str(out / "records" / "*" / "*.parquet"),
            "lineage_map": str(out / "taxonomy" / "lineage_map.parquet"),
            "taxa": str(out / "taxonomy" / "taxa.parquet")}).fetchall()
    finally:
        con.close()


def catalog_rows(out: Path) -> list[tuple]:
    t = catalog.query(out, "SELECT * FROM images ORDER BY uid")
    assert t.column_names == IMAGE_COLUMNS
    return [tuple(r.values()) for r in t.to_pylist()]


def images_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out / "taxonomy" / "images")): p.stat().st_mtime_ns
            for p in sorted((out / "taxonomy" / "images").glob("*/*.parquet"))}


def test_table_equals_the_old_view_and_mirrors_the_records(tmp_path):
    out, counters = run_stage(tmp_path, write_authorities(tmp_path), shuffle_seed=3, parts=2)
    rows = catalog_rows(out)
    assert rows == old_view_rows(out)
    n = sum(c for rows_ in RECORDS.values() for *_, c in rows_)
    assert len(rows) == n == counters["images_rows"]
    # resolved and unresolved records both present, ranks and rank_status filled from lineage_map / taxa
    assert 0 < sum(r[3] is not None for r in rows) < n
    assert {r[IMAGE_COLUMNS.index("rank_status")] for r in rows} >= {"confirmed", None}
    # one file per records file, same relative path
    assert set(images_files(out)) == {str(p.relative_to(out / "records"))
                                      for p in (out / "records").glob("*/*.parquet")}
    assert counters["images_files"] == len(images_files(out))
    for p in (out / "taxonomy" / "images").glob("*/*.parquet"):
        rel = p.relative_to(out / "taxonomy" / "images")
        assert pq.read_table(p, columns=["uid"]).column("uid").to_pylist() and \
            set(pq.read_table(p, columns=["uid"]).column("uid").to_pylist()) == \
            set(pq.read_table(out / "records" / rel, columns=["uid"]).column("uid").to_pylist())
    # the catalog's view is a scan of those files (no join, no md5 at query time)
    views = dict(duckdb.connect(str(out / "catalog.duckdb"), read_only=True).execute(
        "SELECT name, path_glob FROM _parquet_views").fetchall())
    assert views["images"] == "taxonomy/images/*/*.parquet"
    plan = "\n".join(str(v) for r in catalog.query(out, "EXPLAIN SELECT class, count(*) FROM images GROUP BY 1")
                     .to_pylist() for v in r.values())
    assert "md5" not in plan.lower() and "JOIN" not in plan.upper()


def test_rerun_keeps_then_rewrites_the_table_when_records_change(tmp_path):
    d = write_authorities(tmp_path)
    out, _ = run_stage(tmp_path, d, parts=2)
    before = images_files(out)
    run_stage(tmp_path, d, parts=2)  # nothing changed: nothing rewritten
    assert images_files(out) == before
    # records change: the reconcile key changes and the table is rewritten, without the removed file
    (out / "records" / "manual" / "part-1.parquet").unlink()
    first_key = set(read_markers(out, STAGE))
    _, counters = run_stage(tmp_path, d, parts=2)
    assert set(read_markers(out, STAGE)) != first_key
    after = images_files(out)
    assert "manual/part-1.parquet" not in after and set(after) == set(before) - {"manual/part-1.parquet"}
    assert all(after[k] != before[k] for k in after)
    rows = catalog_rows(out)
    assert rows == old_view_rows(out) and len(rows) == counters["images_rows"]
    # the table removed by hand (or a build reconciled before it existed): the stage writes it again
    shutil.rmtree(out / "taxonomy" / "images")
    run_stage(tmp_path, d, parts=2)
    assert set(images_files(out)) == set(after) and catalog_rows(out) == rows
    # a killed writer's leftover folder is not read
    leftover = out / "taxonomy" / ".tmp-0123456789ab-images.partial"
    shutil.copytree(out / "taxonomy" / "images", leftover)
    assert len(catalog_rows(out)) == len(rows)


def test_moved_build_and_missing_table_fallback(tmp_path):
    out, _ = run_stage(tmp_path, write_authorities(tmp_path))
    rows = catalog_rows(out)
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    assert catalog_rows(moved) == rows  # the view is re-created over where the build is now
    # outputs without the table (reconciled before it existed), registered by hand: the computed view
    shutil.rmtree(moved / "taxonomy" / "images")
    register(moved, ["eol"], 1)
    assert catalog_rows(moved) == rows
    con = duckdb.connect(str(moved / "catalog.duckdb"), read_only=True)
    assert "images" not in {r[0] for r in con.execute("SELECT name FROM _parquet_views").fetchall()}
    con.close()


COVERAGE = ["coverage_ranks", "coverage_lowest_rank", "taxon_images", "taxa_few_images", "unresolved_lineages"]


def coverage_from_views(out: Path) -> dict[str, list[tuple]]:
    """The coverage results computed by their view definitions over the build's parquet (the reference)."""
    from tol_builder.config import TaxonomyConfig
    from tol_builder.taxonomy.coverage import create_views

    con = duckdb.connect()
    try:
        for name in ("lineage_map", "taxa"):
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({literal(out / 'taxonomy' / (name + '.parquet'))})")
        create_views(con, ["eol"], TaxonomyConfig().min_images, images=False)
        return {n: sorted(con.execute(f"SELECT * FROM {n}").fetchall(), key=repr) for n in COVERAGE}
    finally:
        con.close()


def coverage_in_catalog(out: Path) -> dict[str, list[tuple]]:
    return {n: sorted((tuple(r.values()) for r in catalog.query(out, f"SELECT * FROM {n}").to_pylist()), key=repr)
            for n in COVERAGE}


def test_coverage_results_are_tables_equal_to_their_views_and_follow_the_records(tmp_path):
    d = write_authorities(tmp_path)
    out, _ = run_stage(tmp_path, d, parts=2)
    con = duckdb.connect(str(out / "catalog.duckdb"), read_only=True)
    kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables").fetchall())
    con.close()
    assert {n: kinds[n] for n in COVERAGE} == {n: "BASE TABLE" for n in COVERAGE}
    first = coverage_in_catalog(out)
    assert first == coverage_from_views(out) and all(first[n] for n in COVERAGE if n != "taxa_few_images")
    (out / "records" / "eol" / "part-0.parquet").unlink()  # fewer records: every count changes
    run_stage(tmp_path, d, parts=2)
    second = coverage_in_catalog(out)
    assert second == coverage_from_views(out) and second["coverage_ranks"] != first["coverage_ranks"]

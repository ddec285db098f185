"""The taxonomy stage as a whole: tasks and markers (resume = re-run), re-running after an input changed,
configuration errors, the catalog's documented tables and views, coverage tables and the plot, a real
Dask cluster, and real rows of ../shared/realdata."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from test_taxonomy_fixtures import (ITIS_RANKS, built, make_workflow, run_stage, seven,  # noqa: F401
                                    write_authorities, write_records)
from tol_builder import catalog
from tol_builder.errors import ConfigError, TolError
from tol_builder.runner import read_markers
from tol_builder.taxonomy import LOAD_STAGE, STAGE, coverage, plan, writers

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


@pytest.mark.slow  # five real runs of the stage
def test_rerun_resumes_and_changes_rerun_only_what_they_touch(tmp_path):
    d = write_authorities(tmp_path)
    out, first = run_stage(tmp_path, d)
    loads, recs = read_markers(out, LOAD_STAGE), read_markers(out, STAGE)
    assert sorted(k.split(".")[0] for k in loads) == ["eol", "gbif", "inaturalist", "itis"]
    assert len(recs) == 1
    before = {p.name: p.stat().st_mtime_ns for p in (out / "taxonomy").glob("*.parquet")}
    # nothing changed: nothing runs (markers kept, outputs untouched), counters the same
    _, again = run_stage(tmp_path, d)
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in (out / "taxonomy").glob("*.parquet")} == before
    # a curated file changed: reconcile again (new key, stale marker gone), authorities not reloaded
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("rank,name,context,kingdom,phylum,class,order,family,note\n")
    _, third = run_stage(tmp_path, d, homonym_fixes=str(fixes))
    assert read_markers(out, LOAD_STAGE).keys() == loads.keys()
    assert len(read_markers(out, STAGE)) == 1 and read_markers(out, STAGE).keys() != recs.keys()
    assert third["homonym_fixes_applied"] == 0
    # a deleted authority cache is loaded again
    (out / "cache" / "taxonomy" / "gbif.duckdb").unlink()
    run_stage(tmp_path, d, homonym_fixes=str(fixes))
    assert (out / "cache" / "taxonomy" / "gbif.duckdb").exists()
    # new records: reconcile again
    (out / "records" / "manual" / "part-0.parquet").unlink()
    _, fourth = run_stage(tmp_path, d, homonym_fixes=str(fixes))
    assert fourth["lineages"] < third["lineages"]
    stats = catalog.query(out, "SELECT 1").num_rows  # the catalog still opens read-only
    assert stats == 1


def test_configuration_errors_name_the_key(tmp_path):
    d = write_authorities(tmp_path)
    wf = make_workflow(tmp_path, d, authority_order=["source", "itis", "catalogue_of_life"])
    with pytest.raises(ConfigError, match=r"taxonomy\.authority_order\[2\]"):
        plan(wf)
    wf = make_workflow(tmp_path, d, common_name_order=["itis", "wikipedia"])
    with pytest.raises(ConfigError, match=r"taxonomy\.common_name_order\[1\]"):
        plan(wf)
    (d / "gbif.toml").unlink()
    wf = make_workflow(tmp_path, d)
    with pytest.raises(ConfigError, match=r"authority_order\[2\].*manifest named 'gbif'"):
        plan(wf)
    wf = make_workflow(tmp_path, d, overrides=str(tmp_path / "nope.csv"))
    with pytest.raises(ConfigError, match=r"taxonomy\.overrides"):
        plan(wf)
    bad = tmp_path / "fixes.csv"
    bad.write_text("rank,name,context,kingdom,phylum,class,order,family,note\ngenus,Laelia,order,Animalia,,,,,x\n")
    wf = make_workflow(tmp_path, d, authority_order=["source", "itis", "eol"], homonym_fixes=str(bad))
    with pytest.raises(ConfigError, match=r"fixes.csv: key 'line 2, context'"):
        plan(wf)


def test_catalog_documents_tables_and_views(built):
    _, out, _ = built
    docs = {r["name"]: r for r in catalog.query(out, "SELECT * FROM tables").to_pylist()}
    for name in ("taxa", "lineage_map", "conflicts", "images", "coverage_ranks", "coverage_lowest_rank",
                 "taxon_images", "taxa_few_images", "unresolved_lineages"):
        assert name in docs and docs[name]["description"], name
    cols = json.loads(docs["taxa"]["columns"])
    assert list(cols)[:12] == ["taxon_id", "kingdom", "phylum", "class", "order", "family", "genus", "species",
                               "scientific_name", "common_name", "common_name_source", "lowest_rank"]
    # the columns documented are the columns there
    for name in ("taxa", "lineage_map", "conflicts", "images"):
        have = catalog.query(out, f'SELECT * FROM "{name}" LIMIT 0').column_names
        assert set(json.loads(docs[name]["columns"])) == set(have), name


def test_coverage_views_and_tables(built):
    _, out, counters = built
    ranks = {(r["source"], r["rank"]): r for r in coverage.rank_summary(out).to_pylist()}
    assert ranks[("all", "kingdom")]["images"] == counters["images"]
    assert ranks[("all", "kingdom")]["images_with_rank"] == counters["images_resolved"]
    assert ranks[("bioscan1m", "species")]["images_with_rank"] == 3  # Xyleborus 2 + Aedes 1
    assert ranks[("inat21", "species")]["share"] == 1.0
    t = coverage.coverage_table(out, "kingdom").to_pylist()
    by = {r["kingdom"]: r for r in t}
    assert by["(unresolved)"]["images"] == counters["images_unresolved"]
    assert by["Animalia"]["bioscan1m"] == 12 and sum(r["images"] for r in t) == counters["images"]
    assert coverage.coverage_table(out, "class", top=2).num_rows == 2
    few = catalog.query(out, "SELECT scientific_name, images FROM taxa_few_images").to_pylist()
    assert {r["scientific_name"]: r["images"] for r in few}["Panthera leo"] == 6  # page + subspecies page
    assert len(few) == catalog.query(out, "SELECT count(*) AS n FROM taxa WHERE images < 10").to_pylist()[0]["n"]
    lowest = {(r["source"], r["lowest_rank"]): r["images"] for r in catalog.query(
        out, "SELECT * FROM coverage_lowest_rank").to_pylist()}
    assert lowest[("eol", "unresolved")] == 3 and lowest[("bioscan1m", "family")] == 7
    with pytest.raises(TolError, match="--rank"):
        coverage.coverage_table(out, "tribe")


def test_plot_coverage_writes_a_png(built, tmp_path):
    _, out, _ = built
    p = coverage.plot_coverage(out, "class", tmp_path / "cov.png", top=3)
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from PIL import Image

    with Image.open(p) as im:
        assert im.size[0] > im.size[1] > 300


def test_coverage_without_taxonomy_says_what_to_run(tmp_path):
    write_records(tmp_path / "b")
    with pytest.raises(TolError, match="taxonomy stage"):
        coverage.rank_summary(tmp_path / "b")


@pytest.mark.slow
def test_stage_on_a_local_dask_cluster(tmp_path):
    """Tasks and their arguments travel to worker processes; results equal the in-process run."""
    from dask.distributed import Client, LocalCluster

    from tol_builder import taxonomy
    from tol_builder.context import BuildContext
    from tol_builder.runner import Runner

    d = write_authorities(tmp_path)
    ref, _ = run_stage(tmp_path / "ref", d)
    out = tmp_path / "build"
    write_records(out)
    wf = make_workflow(tmp_path, d)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \
            Client(cl) as client:
        counters = taxonomy.run(BuildContext(wf, out, Runner(out, client, progress=False), None, threads=1))
    assert counters["lineages"] == 24
    q = "SELECT * FROM taxa ORDER BY taxon_id"
    assert catalog.query(out, q).to_pylist() == catalog.query(ref, q).to_pylist()


# ------------------------------------------------------------------------------------ real rows
def _rare_species():
    f = REALDATA / "rare_species" / "bioclip_rare_species_metadata.csv"
    if not f.exists():
        pytest.skip("../shared/realdata is not present")
    rows = list(csv.DictReader(open(f, encoding="utf-8")))
    species = {}
    for r in rows:
        page = r["filepath"].split("/")[-1].split("_")[1]
        species.setdefault((r["kingdom"], r["phylum"], r["cls"], r["order"], r["family"], r["genus"], r["species"]),
                           set()).add(page)
    return species


def test_real_rare_species_lineages_resolve_through_dh_and_itis(tmp_path):
    """The 400 Rare Species (real names, real EOL page ids): EOL records resolved through a DH built
    with DH-style kingdoms and clades, and an ITIS holding half of them; each page gets its real lineage."""
    species = _rare_species()
    assert len(species) == 400
    dh_paths, pages, chains = [], {}, []
    for i, ((k, p, c, o, f, g, s), pgs) in enumerate(sorted(species.items())):
        assert k == "Animalia"
        binom = f"{g} {s}"
        dh_paths.append((("Life", ""), ("Metazoa", "kingdom"), ("Bilateria", "clade"), (p, "phylum"),
                         (c, "class"), (f"{o}-clade", "infraorder"), (o, "order"), (f, "family"), (g, "genus"),
                         (binom, "species")))
        pages[binom] = sorted(pgs)[0]
        if i % 2:
            chains.append(tuple(zip((k, "Bilateria", p, c, o, f, g, binom), ITIS_RANKS)))
    d = tmp_path / "auth"
    writers.write_dh_taxon_tab(d / "taxon.tab", writers.dh_rows(dh_paths, pages))
    writers.write_itis_chains(d / "chains.csv", chains)
    writers.write_manifest(d / "eol.toml", "eol", "eol_dh", [{"role": "taxon", "path": "taxon.tab"}])
    writers.write_manifest(d / "itis.toml", "itis", "itis_chains", [{"role": "chains", "path": "chains.csv"}])
    records = {"eol": [(seven(), None, str(page), None, 2) for page in sorted(pages.values())]}
    out, counters = run_stage(tmp_path, d, records=records, authority_order=["source", "itis", "eol"],
                              common_name_order=["itis", "eol"])
    assert counters["lineages"] == 400 and counters["lineages_resolved"] == 400
    assert counters["resolved_by_itis"] == 200 and counters["resolved_by_eol"] == 200
    got = {(r["taxon_ref"]): tuple(r[x] for x in ("kingdom", "phylum", "class", "order", "family", "genus",
                                                  "species"))
           for r in catalog.query(out, """SELECT m.taxon_ref, t.* FROM lineage_map m JOIN taxa t USING (taxon_id)""")
           .to_pylist()}
    for lineage_, pgs in species.items():
        binom = f"{lineage_[5]} {lineage_[6]}"
        assert got[str(pages[binom])] == lineage_


def test_real_inat21_and_bioscan_rows(tmp_path):
    """Real iNat21 categories (TFDS fixture of train.json) pass through; real pre-release BIOSCAN rows
    (missing ranks as empty strings, interim names) are filled upward from a GBIF holding their families."""
    inat = REALDATA / "inat21" / "tfds_dummy_train.json"
    bios = REALDATA / "bioscan1m" / "prerelease_small_dataset_validation_metadata_with_genus_species.tsv"
    if not inat.exists() or not bios.exists():
        pytest.skip("../shared/realdata is not present")
    cats = json.loads(inat.read_text())["categories"]
    records = {"inat21": [(seven(c["kingdom"], c["phylum"], c["class"], c["order"], c["family"], c["genus"],
                                 c["specific_epithet"]), c["name"], str(c["id"]), c["common_name"], 1) for c in cats]}
    rows = list(csv.DictReader(open(bios, encoding="utf-8"), delimiter="\t"))
    records["bioscan1m"] = [(seven(None, r["phylum"] or None, r["class"] or None, r["order"] or None,
                                   r["family"] or None, r["genus"] or None, r["species"] or None),
                             r["species"] or r["genus"] or r["family"], r["uri"], None, 1) for r in rows]
    fams = sorted({(r["order"], r["family"]) for r in rows if r["family"]})
    d = tmp_path / "auth"
    gbif = writers.gbif_rows([(("Animalia", "kingdom"), ("Arthropoda", "phylum"), ("Insecta", "class"), (o, "order"),
                               (f, "family")) for o, f in fams])
    writers.write_gbif_backbone(d / "backbone.zip", gbif)
    writers.write_manifest(d / "gbif.toml", "gbif", "gbif_dwca",
                           [{"role": "taxon", "path": "backbone.zip", "member": "Taxon.tsv"}])
    out, counters = run_stage(tmp_path, d, records=records, authority_order=["source", "gbif"],
                              common_name_order=["source"])
    inat_rows = catalog.query(out, """SELECT m.authority_id, t.* FROM lineage_map m JOIN taxa t USING (taxon_id)
                                      WHERE m.source = 'inat21' ORDER BY m.authority_id""").to_pylist()
    assert [(r["authority_id"], r["genus"], r["species"], r["common_name"]) for r in inat_rows] == [
        ("0", "Ameiurus", "nebulosus", "Brown Bullhead Catfish"), ("1", "Marmota", "flaviventris",
                                                                   "Yellow-bellied Marmot"),
        ("2", "Dipsosaurus", "dorsalis", "Desert Iguana")]
    b = catalog.query(out, """SELECT m.raw_species, m.raw_genus, m.notes, t.* FROM lineage_map m
                              LEFT JOIN taxa t USING (taxon_id) WHERE m.source = 'bioscan1m'""").to_pylist()
    assert all(r["kingdom"] == "Animalia" and r["class"] == "Insecta" for r in b if r["raw_species"] or r["raw_genus"])
    assert counters["lineages_unresolved"] == 0
    interim = [r for r in b if r["raw_species"] and "Malaise" in r["raw_species"]]
    assert interim and all(r["species"] is None for r in interim)
    named = [r for r in b if r["raw_species"] == "Coleomegilla maculata"]
    assert named and named[0]["species"] == "maculata" and named[0]["lowest_rank"] == "species"

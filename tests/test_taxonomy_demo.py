"""The demo's miniature authorities (tol_builder.demo.authorities): in the real formats, and the taxonomy
stage arrives at every demo taxon's expected lineage from them."""

from __future__ import annotations

from test_taxonomy_fixtures import run_stage
from tol_builder import catalog
from tol_builder.demo.authorities import write_demo_authorities
from tol_builder.demo.taxa import NC, RANKS, TAXA
from tol_builder.taxonomy import authorities as auth


def _records():
    records = {"inat21": [], "bioscan1m": [], "eol": []}
    for t in TAXA:
        ranks = {r: (None if v in (None, "", NC) else v) for r, v in t.ranks.items()}
        if t.source == "inat21":
            records["inat21"].append((ranks, t.scientific_name, str(t.ids["category_id"]), t.common_name, t.n_images))
        elif t.source == "bioscan1m":
            records["bioscan1m"].append((ranks, t.extra["name"], t.ids["bin"], None, t.n_images))
        else:
            records["eol"].append((ranks, None, str(t.ids["page_id"]), None, t.n_images))
    return records


def test_demo_authorities_are_valid_manifests(tmp_path):
    paths = write_demo_authorities(TAXA, tmp_path / "auth")
    assert set(paths) == {"itis", "gbif", "eol", "inaturalist"}
    for name, p in paths.items():
        m = auth.load_manifest(p)
        assert m.name == name and all(f.sha256 and f.bytes for f in m.files)
    assert auth.discover(tmp_path / "auth").keys() == paths.keys()


def test_stage_resolves_every_demo_taxon_as_expected(tmp_path):
    write_demo_authorities(TAXA, tmp_path / "auth")
    out, counters = run_stage(tmp_path, tmp_path / "auth", records=_records())
    assert counters["lineages_unresolved"] == 0
    got = {}
    for r in catalog.query(out, """SELECT m.source, m.raw_genus, m.raw_family, m.raw_species, m.taxon_ref,
                                          m.raw_scientific_name, m.rule, t.*
                                   FROM lineage_map m JOIN taxa t USING (taxon_id)""").to_pylist():
        got[(r["source"], r["taxon_ref"] or r["raw_scientific_name"])] = r
    rules = set()
    for t in TAXA:
        key = (t.source, str(t.ids["page_id"]) if t.source == "eol" else
               (t.extra["name"] if t.source == "bioscan1m" else t.scientific_name))
        r = got[key]
        assert tuple(r[x] for x in RANKS) == tuple(t.resolved[x] or None for x in RANKS), t.key
        rules.add(r["rule"].split("+")[0])
    # the demo shows each path: the source's own lineage, ITIS, GBIF (partial BIOSCAN lineages), the DH page
    assert {"source:full:species", "itis:given:species", "gbif:given:family", "gbif:given:genus",
            "eol:page:species", "itis:context:species"} <= rules
    names = {r["scientific_name"]: (r["common_name"], r["common_name_source"]) for r in catalog.query(
        out, "SELECT * FROM taxa").to_pylist()}
    assert names["Marmota flaviventris"] == ("Whistlepig", "inaturalist")  # BioCLIP's name, as BioCLIP trained
    assert names["Panthera leo"] == ("lion", "eol_preferred")

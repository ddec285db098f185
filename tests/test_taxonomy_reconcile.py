"""Reconciliation rules (tol_builder.taxonomy.reconcile) on the fixtures of test_taxonomy_fixtures: each
case the issue lists, on real DuckDB files written by the stage itself."""

from __future__ import annotations

import textwrap

from test_taxonomy_fixtures import RECORDS, built, lineage, ranks_of, run_stage  # noqa: F401  (built: fixture)
from tol_builder import catalog


def one(out, where):
    rows = lineage(out, where)
    assert len(rows) == 1, rows
    return rows[0]


def conflicts(out, where):
    return catalog.query(out, f"SELECT * EXCLUDE (lineage_key) FROM conflicts WHERE {where} "
                              "ORDER BY authority, rank").to_pylist()


def test_inat21_lineage_passes_through_unchanged(built):
    _, out, _ = built
    # ITIS files Xyleborus ferrugineus under Scolytidae; iNat21's full lineage says Curculionidae and wins
    r = one(out, "m.source = 'inat21' AND m.raw_genus = 'Xyleborus'")
    assert ranks_of(r) == ("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Curculionidae", "Xyleborus", "ferrugineus")
    assert (r["rule"], r["authority"], r["authority_id"]) == ("source:full:species", "source", "1234")
    assert r["scientific_name"] == "Xyleborus ferrugineus" and r["lowest_rank"] == "species"


def test_bioscan_family_only_filled_upward(built):
    _, out, _ = built
    r = one(out, "m.source = 'bioscan1m' AND m.raw_family = 'Cecidomyiidae'")
    assert ranks_of(r) == ("Animalia", "Arthropoda", "Insecta", "Diptera", "Cecidomyiidae", None, None)
    assert r["rule"] == "itis:given:family" and r["lowest_rank"] == "family"
    assert r["scientific_name"] == "Cecidomyiidae"
    assert r["images"] == 5  # two BINs, one raw lineage (the BIN is not a taxonomic label)


def test_eol_page_through_dh_parent_chain_metazoa_to_animalia(built):
    _, out, _ = built
    leo = one(out, "m.taxon_ref = '328672'")
    assert ranks_of(leo) == ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Panthera", "leo")
    assert leo["rule"] == "eol:page:species" and leo["authority_id"].startswith("EOL-")
    sub = one(out, "m.taxon_ref = '1052462'")  # the subspecies page: its species
    assert sub["taxon_id"] == leo["taxon_id"]
    # a page ITIS also knows: ITIS first (authority order), with the DH lineage as context
    pica = one(out, "m.taxon_ref = '45511123'")
    assert pica["rule"] == "itis:context:species" and pica["kingdom"] == "Animalia"
    # a page the DH lacks, named by provider_ids, found by its name
    marmot = one(out, "m.taxon_ref = '990001'")
    assert marmot["rule"] == "itis:context:species" and marmot["genus"] == "Marmota"


def test_homonyms_resolved_by_higher_ranks(built):
    _, out, _ = built
    orchid = one(out, "m.source = 'manual' AND m.raw_genus = 'Laelia' AND m.raw_family = 'Orchidaceae' "
                      "AND m.raw_species IS NULL")
    moth = one(out, "m.source = 'manual' AND m.raw_genus = 'Laelia' AND m.raw_order = 'Lepidoptera'")
    assert ranks_of(orchid)[:6] == ("Plantae", "Tracheophyta", "Liliopsida", "Asparagales", "Orchidaceae", "Laelia")
    assert ranks_of(moth)[:6] == ("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Erebidae", "Laelia")
    assert orchid["taxon_id"] != moth["taxon_id"]
    # Pterygota under Insecta is not the plant genus (the only Pterygota genus the authorities hold)
    ptery = one(out, "m.source = 'manual' AND m.raw_genus = 'Pterygota'")
    assert ptery["kingdom"] == "Animalia" and ptery["class"] == "Insecta" and ptery["anchor_rank"] == "class"
    refused = conflicts(out, "anchor_name = 'Pterygota'")
    assert [(c["rank"], c["value_kept"], c["value_refused"], c["decision"]) for c in refused] == [
        ("class", "Insecta", "Magnoliopsida", "kept_given")]


def test_contradiction_goes_to_conflicts(built):
    _, out, _ = built
    r = one(out, "m.source = 'bioscan1m' AND m.raw_genus = 'Xyleborus'")
    # ITIS's species (under Scolytidae) contradicts the given family: refused; the family is confirmed
    assert r["family"] == "Curculionidae" and r["genus"] == "Xyleborus" and r["species"] == "ferrugineus"
    assert r["rule"] == "itis:given:family"
    c = conflicts(out, "lineage_key IN (SELECT lineage_key FROM lineage_map WHERE source = 'bioscan1m' "
                       "AND raw_genus = 'Xyleborus')")
    assert [(x["authority"], x["anchor_name"], x["rank"], x["value_kept"], x["value_refused"], x["decision"],
             x["rule"], x["images"]) for x in c] == [
        ("itis", "Xyleborus ferrugineus", "family", "Curculionidae", "Scolytidae", "kept_given", "contradiction", 2)]
    # an accepted candidate that outvoted the EOL context is recorded too (DH Streptophyta vs ITIS Tracheophyta)
    c = conflicts(out, "rule = 'context_outvoted'")
    assert [(x["rank"], x["value_kept"], x["value_refused"], x["decision"]) for x in c] == [
        ("phylum", "Tracheophyta", "Streptophyta", "used_authority")]


def test_ties_settled_by_the_documented_rule(built):
    _, out, counters = built
    # "Laelia" alone: an orchid and a moth, and nothing to tell them apart -> not a tie but unresolved
    # (ambiguous_homonym; kingdom_priority no longer picks the moth: test_taxonomy_resolution)
    bare = one(out, "m.source = 'manual' AND m.raw_genus = 'Laelia' AND m.raw_family IS NULL "
                    "AND m.raw_order IS NULL")
    assert bare["taxon_id"] is None and bare["rule"] == "unresolved:ambiguous_homonym"
    # two "Aus" genera in one kingdom -> the lexicographically smaller lineage (Cicadellidae < Miridae)
    aus = one(out, "m.raw_genus = 'Aus'")
    assert aus["family"] == "Cicadellidae" and aus["rule"] == "gbif:given:genus+tie:lineage_order"
    ties = conflicts(out, "decision = 'tie'")
    assert [(t["rule"], t["value_kept"], t["value_refused"]) for t in ties] == [
        ("tie:lineage_order", "Animalia|Arthropoda|Insecta|Hemiptera|Cicadellidae|Aus|",
         "Animalia|Arthropoda|Insecta|Hemiptera|Miridae|Aus|")]
    assert counters["ties"] == 1


def test_interim_name_left_unresolved_at_species(built):
    _, out, _ = built
    r = one(out, "m.raw_species = 'phyMalaise01 Malaise2939'")
    assert ranks_of(r) == ("Animalia", "Arthropoda", "Insecta", "Diptera", "Phoridae", None, None)
    assert r["notes"] == "species:interim" and r["lowest_rank"] == "family"
    sp = one(out, "m.raw_species = 'Megaselia sp. 3'")  # sp.: the genus stays, no species
    assert (sp["genus"], sp["species"], sp["notes"]) == ("Megaselia", None, "species:approximate")


def test_unresolvable_lineages_counted_and_listed(built):
    _, out, counters = built
    rows = catalog.query(out, "SELECT source, rule, images, raw_lineage, taxon_ref FROM unresolved_lineages").to_pylist()
    assert {(r["source"], r["rule"]) for r in rows} == {
        ("eol", "unresolved:page_not_found"), ("manual", "unresolved:no_match"),
        ("manual", "unresolved:ambiguous_homonym")}
    assert rows[0]["taxon_ref"] == "777777" and rows[0]["images"] == 3  # most images first
    assert counters["lineages_unresolved"] == len(rows) == 4
    assert counters["unresolved_page_not_found"] == 1 and counters["unresolved_no_match"] == 2
    assert counters["unresolved_ambiguous_homonym"] == 1  # the bare "Laelia"
    # hybrids and cf. are never forced onto a species (their genus is unknown to these authorities)
    assert {r["raw_lineage"].split("|")[-1] for r in rows if r["rule"] == "unresolved:no_match"} == {
        "Salix × rubens", "Carex cf. flava"}
    # the images of unresolved lineages are in the images view, with empty ranks
    imgs = catalog.query(out, "SELECT count(*) AS n, count(kingdom) AS k FROM images WHERE source = 'eol' "
                              "AND taxon_id IS NULL").to_pylist()[0]
    assert imgs == {"n": 3, "k": 0}


def test_names_parsed_before_lookup(built):
    _, out, _ = built
    auth = one(out, "m.raw_scientific_name = 'Pica hudsonia (Forster, 1772)'")  # name only, with authorship
    assert auth["genus"] == "Pica" and auth["species"] == "hudsonia" and auth["notes"] == "name:authorship"
    var = one(out, "m.raw_species = 'Laelia anceps var. dawsonii'")  # variety -> species
    assert var["species"] == "anceps" and var["notes"] == "species:infraspecific"
    assert var["taxon_id"] == one(out, "m.taxon_ref = '1132711'")["taxon_id"]  # same taxon as the EOL page


def test_synonym_resolves_to_the_accepted_name(built, tmp_path):
    _, out, _ = built
    r = one(out, "m.raw_species = 'Ochlerotatus japonicus'")
    assert (r["genus"], r["species"], r["rule"]) == ("Aedes", "japonicus", "gbif:given:species+synonym")
    c = conflicts(out, "rule = 'synonym'")
    assert [(x["value_kept"], x["value_refused"], x["decision"]) for x in c] == [
        ("Aedes japonicus", "Ochlerotatus japonicus", "used_authority")]
    out2, _ = run_stage(tmp_path, resolve_synonyms=False)
    r = one(out2, "m.raw_species = 'Ochlerotatus japonicus'")
    assert r["genus"] == "Ochlerotatus" and r["anchor_rank"] == "family"  # Culicidae confirmed, names kept


def test_homonym_fix_supplies_the_missing_ranks(built):
    _, out, counters = built
    r = one(out, "m.source = 'bioscan1m' AND m.raw_genus = 'Laelia'")
    assert r["kingdom"] == "Animalia" and r["family"] == "Erebidae"
    assert r["rule"] == "itis:given:genus+homonym_fix:2"
    assert counters["homonym_fixes_applied"] == 1


def test_overrides(tmp_path):
    ov = tmp_path / "overrides.csv"
    ov.write_text(textwrap.dedent("""\
        # a page unknown to the DH, set by hand; and a name whose given family is replaced
        source,taxon_ref,name,kingdom,phylum,class,order,family,genus,species,note
        eol,777777,,Animalia,Chordata,Aves,Passeriformes,Corvidae,Pica,pica,test
        bioscan1m,,Xyleborus ferrugineus,Animalia,Arthropoda,Insecta,Coleoptera,Scolytidae,Xyleborus,ferrugineus,x
        """))
    out, counters = run_stage(tmp_path, overrides=str(ov))
    r = one(out, "m.taxon_ref = '777777'")
    assert ranks_of(r) == ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "pica")
    assert (r["rule"], r["authority"], r["authority_id"]) == ("override", "override", "overrides.csv:3")
    assert counters["overrides_applied"] == 2
    c = conflicts(out, "decision = 'override'")
    assert [(x["rank"], x["value_kept"], x["value_refused"]) for x in c] == [("family", "Scolytidae", "Curculionidae")]


def test_authority_order_is_a_setting(tmp_path):
    # ITIS before the source's own lineage: iNat21's Xyleborus is now checked against ITIS, which
    # contradicts its family: ITIS is refused (recorded) and the source's full lineage is used
    out, _ = run_stage(tmp_path, authority_order=["itis", "source", "gbif", "eol"])
    r = one(out, "m.source = 'inat21' AND m.raw_genus = 'Xyleborus'")
    assert r["family"] == "Curculionidae" and r["rule"] == "source:full:species"
    c = conflicts(out, "source = 'inat21'")
    assert [(x["authority"], x["rank"], x["decision"]) for x in c] == [("itis", "family", "kept_given")]
    # GBIF before ITIS: the moth "Laelia" under Lepidoptera, which both hold, is now GBIF's
    moth = one(out, "m.source = 'manual' AND m.raw_genus = 'Laelia' AND m.raw_order = 'Lepidoptera'")
    assert moth["authority"] == "itis"
    out2, _ = run_stage(tmp_path / "b", authority_order=["source", "gbif", "itis", "eol"])
    moth = one(out2, "m.source = 'manual' AND m.raw_genus = 'Laelia' AND m.raw_order = 'Lepidoptera'")
    assert moth["authority"] == "gbif" and moth["family"] == "Erebidae"


def test_taxon_ids_do_not_depend_on_input_order(tmp_path):
    a, _ = run_stage(tmp_path / "a", shuffle_seed=1, parts=1)
    b, _ = run_stage(tmp_path / "b", shuffle_seed=99, parts=3)
    q = "SELECT * FROM taxa ORDER BY taxon_id"
    assert catalog.query(a, q).to_pylist() == catalog.query(b, q).to_pylist()
    q = "SELECT source, lineage_key, taxon_id, rule, authority_id FROM lineage_map ORDER BY lineage_key"
    assert catalog.query(a, q).to_pylist() == catalog.query(b, q).to_pylist()
    # a taxon id is the hash of its lineage
    import hashlib

    t = catalog.query(a, "SELECT * FROM taxa WHERE scientific_name = 'Panthera leo'").to_pylist()[0]
    lin = "|".join(t[r] or "" for r in ("kingdom", "phylum", "class", "order", "family", "genus", "species"))
    assert t["taxon_id"] == hashlib.md5(lin.encode()).hexdigest()[:16]


def test_common_names_by_authority_order(built, tmp_path):
    _, out, _ = built
    names = {r["scientific_name"]: (r["common_name"], r["common_name_source"]) for r in catalog.query(
        out, "SELECT scientific_name, common_name, common_name_source FROM taxa").to_pylist()}
    assert names["Pica hudsonia"] == ("black-billed magpie", "itis")  # the first *English* ITIS name
    assert names["Panthera leo"] == ("lion", "eol_preferred")  # EOL's preferred, not "African lion"
    assert names["Coccinella septempunctata"] == ("7-spot ladybird", "inaturalist")  # BioCLIP's mapping
    assert names["Xyleborus ferrugineus"] == ("Bark beetle", "inaturalist")  # the iNat21 JSON's own
    assert names["Marmota flaviventris"] == ("yellow-bellied marmot", "itis")
    assert names["Cecidomyiidae"] == (None, None)
    out2, _ = run_stage(tmp_path, common_name_order=["inaturalist", "eol"])
    names = {r["scientific_name"]: (r["common_name"], r["common_name_source"]) for r in catalog.query(
        out2, "SELECT scientific_name, common_name, common_name_source FROM taxa").to_pylist()}
    assert names["Marmota flaviventris"] == ("Yellow-bellied Marmot", "inaturalist")
    assert names["Pica hudsonia"] == (None, None)  # no EOL name for it in the fixtures, ITIS not asked
    assert names["Panthera leo"] == ("lion", "eol")


def test_images_view_has_every_record_once(built):
    _, out, counters = built
    n_records = sum(c for rows in RECORDS.values() for *_, c in rows)
    got = catalog.query(out, "SELECT count(*) AS n, count(DISTINCT uid) AS u, count(taxon_id) AS t FROM images"
                        ).to_pylist()[0]
    assert got == {"n": n_records, "u": n_records, "t": counters["images_resolved"]}
    pica = catalog.query(out, "SELECT DISTINCT kingdom, species, scientific_name, common_name FROM images "
                              "WHERE source = 'eol' AND genus = 'Pica'").to_pylist()
    assert pica == [{"kingdom": "Animalia", "species": "hudsonia", "scientific_name": "Pica hudsonia",
                     "common_name": "black-billed magpie"}]

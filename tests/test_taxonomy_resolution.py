"""Honest resolution (issue 13 item 4), through the real taxonomy stage on real DuckDB files: what an
authority confirmed against what a source only asserted (`confirmed_rank`, `rank_status`), suspected
misspellings, bare cross-kingdom homonyms, and the coverage views that count confirmed against asserted.

The authorities are the fixtures of test_taxonomy_fixtures (ITIS chains, GBIF backbone, EOL DH in their
real formats): the DH holds Felidae / Panthera / Panthera leo, ITIS Phoridae / Megaselia / Megaselia
scalaris, and both ITIS and GBIF hold the genus Laelia twice (the moth under Erebidae, the orchid under
Orchidaceae)."""

from __future__ import annotations

import pytest

from test_taxonomy_fixtures import make_workflow, run_stage, seven, write_authorities
from tol_builder import catalog
from tol_builder.errors import ConfigError
from tol_builder.taxonomy import coverage, plan

LION = ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Panthera", "leo")
PHORIDAE = (None, "Arthropoda", "Insecta", "Diptera", "Phoridae", "Megaselia")


def bioscan(species: str, bin_: str, n: int):
    return (seven(*PHORIDAE, species), species, bin_, None, n)


# (ranks, scientific_name, source_taxon_id, common_name, images)
RECORDS = {
    "manual": [
        (seven(None, None, None, None, "Felidae", "Pantherra", "Pantherra leo"), None, None, None, 2),  # misspelt genus
        (seven(None, None, None, None, None, "Laelia"), None, None, None, 1),  # bare genus: orchid or moth?
        (seven(), "Laelia", None, None, 1),  # a name alone, of unknown rank
        (seven(None, None, None, "Lepidoptera", None, "Laelia"), None, None, None, 1),  # its order tells
    ],
    "bioscan1m": [
        bioscan("Megaselia rufipes", "BOLD:AAA0101", 3),  # an expert's species no authority here knows
        bioscan("Megaselia scalarys", "BOLD:AAA0102", 2),  # misspelt epithet (scalaris)
        bioscan("Megaselia scalarina", "BOLD:AAA0103", 1),  # two edits on nine letters: a name of its own
        bioscan("Megaselia scalaris", "BOLD:AAA0104", 4),  # known to ITIS
    ],
    "inat21": [  # the same species as the expert's, in a full source lineage
        (seven("Animalia", "Arthropoda", "Insecta", "Diptera", "Phoridae", "Megaselia", "rufipes"),
         "Megaselia rufipes", "9001", "Scuttle fly", 5),
    ],
    "eol": [(seven(), None, "328672", None, 2)],  # the Panthera leo page
}


def rows(out, where: str) -> list[dict]:
    return catalog.query(out, f"""SELECT m.source, m.rule, m.authority, m.anchor_rank, m.lowest_rank AS m_lowest,
        m.confirmed_rank AS m_confirmed, m.rank_status AS m_status, m.images AS m_images, m.raw_species, t.*
        FROM lineage_map m LEFT JOIN taxa t USING (taxon_id) WHERE {where} ORDER BY m.lineage_key""").to_pylist()


def one(out, where: str) -> dict:
    found = rows(out, where)
    assert len(found) == 1, found
    return found[0]


def ranks_of(r: dict) -> tuple:
    return tuple(r[k] for k in ("kingdom", "phylum", "class", "order", "family", "genus", "species"))


def conflicts(out, where: str) -> list[dict]:
    return catalog.query(out, f"SELECT * EXCLUDE (lineage_key) FROM conflicts WHERE {where} "
                              "ORDER BY authority, rank, value_refused").to_pylist()


@pytest.fixture(scope="module")
def authorities(tmp_path_factory):
    return write_authorities(tmp_path_factory.mktemp("authorities"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, authorities):
    out, counters = run_stage(tmp_path_factory.mktemp("resolution"), authorities, records=RECORDS)
    return out, counters


def test_misspelt_genus_stops_at_the_confirmed_family(built):
    out, counters = built
    r = one(out, "m.raw_genus = 'Pantherra'")
    # Felidae is confirmed (the DH); no authority knows Pantherra, one step from Felidae's Panthera: nothing
    # below Felidae is minted
    assert ranks_of(r) == LION[:5] + (None, None)
    assert (r["m_lowest"], r["m_confirmed"], r["m_status"]) == ("family", "family", "confirmed")
    assert r["rule"] == "eol:given:family+suspected_misspelling:genus"
    assert r["scientific_name"] == "Felidae" and r["confirmed_rank"] == "family"
    c = conflicts(out, "decision = 'suspected_misspelling'")
    assert [(x["rank"], x["value_refused"], x["suggestion"], x["value_kept"], x["anchor_rank"], x["anchor_name"],
             x["authority"], x["rule"], x["images"]) for x in c if x["rank"] == "genus"] == [
        ("genus", "Pantherra", "Panthera", None, "family", "Felidae", "eol", "stopped:edit_distance=1", 2)]
    assert catalog.query(out, "SELECT count(*) AS n FROM taxa WHERE genus ILIKE 'pantherra'").to_pylist()[0]["n"] == 0
    assert counters["suspected_misspellings"] == 2 and counters["suggestions_accepted"] == 0  # + scalarys


def test_misspelt_epithet_under_a_confirmed_genus_stops_at_the_genus(built):
    out, _ = built
    r = one(out, "m.raw_species = 'Megaselia scalarys'")
    assert ranks_of(r) == ("Animalia",) + PHORIDAE[1:] + (None,)
    assert (r["m_confirmed"], r["m_status"], r["rule"]) == (
        "genus", "confirmed", "itis:given:genus+suspected_misspelling:species")
    c = conflicts(out, "decision = 'suspected_misspelling' AND rank = 'species'")
    assert [(x["value_refused"], x["suggestion"], x["anchor_name"], x["rule"]) for x in c] == [
        ("Megaselia scalarys", "Megaselia scalaris", "Megaselia", "stopped:edit_distance=1")]


def test_expert_species_unknown_to_every_authority_is_kept_as_source_asserted(built):
    out, _ = built
    # as BioCLIP kept BIOSCAN-1M's expert identifications: the species stays, reported as the source's own
    r = one(out, "m.source = 'bioscan1m' AND m.raw_species = 'Megaselia rufipes'")
    assert ranks_of(r) == ("Animalia",) + PHORIDAE[1:] + ("rufipes",)
    assert (r["rule"], r["anchor_rank"], r["m_lowest"], r["m_confirmed"], r["m_status"]) == (
        "itis:given:genus", "genus", "species", "genus", "source_asserted")
    # two edits on a nine-letter epithet is too far to suspect: scalarina is a name of its own
    s = one(out, "m.raw_species = 'Megaselia scalarina'")
    assert (s["species"], s["m_confirmed"], s["m_status"]) == ("scalarina", "genus", "source_asserted")
    assert conflicts(out, "value_refused IN ('Megaselia rufipes', 'Megaselia scalarina')") == []
    known = one(out, "m.raw_species = 'Megaselia scalaris'")
    assert (known["m_confirmed"], known["m_status"]) == ("species", "confirmed")
    # every record says so through its own lineage in the images view
    got = {(x["species"], x["confirmed_rank"], x["rank_status"]): x["n"] for x in catalog.query(out, """
        SELECT species, confirmed_rank, rank_status, count(*) AS n FROM images WHERE source = 'bioscan1m'
        GROUP BY ALL""").to_pylist()}
    assert got == {("rufipes", "genus", "source_asserted"): 3, ("scalarina", "genus", "source_asserted"): 1,
                   (None, "genus", "confirmed"): 2, ("scalaris", "species", "confirmed"): 4}


def test_taxa_report_the_most_specific_rank_any_lineage_confirmed(built):
    out, _ = built
    # Megaselia rufipes: iNat21's full lineage confirms the species, BIOSCAN's record only its genus
    t = catalog.query(out, "SELECT * FROM taxa WHERE scientific_name = 'Megaselia rufipes'").to_pylist()
    assert [(x["confirmed_rank"], x["rank_status"], x["images"], x["images_confirmed"]) for x in t] == [
        ("species", "confirmed", 8, 5)]
    t = catalog.query(out, "SELECT * FROM taxa WHERE scientific_name = 'Megaselia scalarina'").to_pylist()
    assert [(x["confirmed_rank"], x["rank_status"], x["images_confirmed"]) for x in t] == [
        ("genus", "source_asserted", 0)]


def test_bare_cross_kingdom_homonym_stays_unresolved(built):
    out, counters = built
    for where in ("m.raw_genus = 'Laelia' AND m.raw_order IS NULL", "m.raw_scientific_name = 'Laelia'"):
        r = one(out, where)
        assert r["taxon_id"] is None and r["rule"] == "unresolved:ambiguous_homonym", where
        assert r["m_confirmed"] is None and r["m_status"] is None
    c = conflicts(out, "decision = 'ambiguous_homonym'")  # per lineage, the best candidate of each kingdom
    assert sorted((x["authority"], x["value_refused"]) for x in c) == sorted(2 * [
        ("itis", "Animalia|Arthropoda|Insecta|Lepidoptera|Erebidae|Laelia|"),
        ("itis", "Plantae|Tracheophyta|Liliopsida|Asparagales|Orchidaceae|Laelia|")])
    assert all(x["value_kept"] is None and x["anchor_name"] == "Laelia" for x in c)
    assert counters["unresolved_ambiguous_homonym"] == 2 and "ties" in counters and counters["ties"] == 0
    listed = catalog.query(out, "SELECT rule, images FROM unresolved_lineages WHERE source = 'manual'").to_pylist()
    assert listed == [{"rule": "unresolved:ambiguous_homonym", "images": 1}] * 2
    # a higher rank tells them apart: the moth, with no tie to break
    moth = one(out, "m.raw_order = 'Lepidoptera'")
    assert moth["family"] == "Erebidae" and moth["rule"] == "itis:given:genus" and moth["m_confirmed"] == "genus"


def test_coverage_counts_confirmed_against_source_asserted(built, tmp_path):
    out, _ = built
    ranks = {(r["source"], r["rank"]): r for r in coverage.rank_summary(out).to_pylist()}
    sp = ranks[("bioscan1m", "species")]
    assert (sp["images"], sp["images_with_rank"], sp["images_confirmed"], sp["images_source_asserted"]) == (10, 8, 4, 4)
    assert sp["share_confirmed"] == 0.4
    g = ranks[("bioscan1m", "genus")]
    assert (g["images_with_rank"], g["images_confirmed"], g["images_source_asserted"]) == (10, 10, 0)
    allsp = ranks[("all", "species")]  # iNat21's 5 and the lion page's 2 are confirmed species
    assert (allsp["images_confirmed"], allsp["images_source_asserted"]) == (11, 4)
    lowest = {(r["source"], r["lowest_rank"]): r for r in catalog.query(
        out, "SELECT * FROM coverage_lowest_rank").to_pylist()}
    b = lowest[("bioscan1m", "species")]
    assert (b["images"], b["images_confirmed"], b["images_source_asserted"]) == (8, 4, 4)
    assert lowest[("manual", "family")]["images_confirmed"] == 2  # stopped at Felidae: confirmed there
    table = {r["species"]: r for r in coverage.coverage_table(out, "species").to_pylist()}
    assert (table["Megaselia rufipes"]["images"], table["Megaselia rufipes"]["images_source_asserted"]) == (8, 3)
    assert table["Megaselia scalaris"]["images_source_asserted"] == 0
    # what the plot hatches: each source's own source-asserted images per name
    assert coverage._asserted_by_source(out, "species") == {
        ("Megaselia rufipes", "bioscan1m"): 3, ("Megaselia scalarina", "bioscan1m"): 1}
    png = coverage.plot_coverage(out, "species", tmp_path / "cov.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accept_suggestions_takes_the_nearest_name(tmp_path, authorities, built):
    out, counters = run_stage(tmp_path, authorities, records=RECORDS, accept_suggestions=True)
    lion_page = one(out, "m.taxon_ref = '328672'")
    r = one(out, "m.raw_genus = 'Pantherra'")
    assert ranks_of(r) == LION and r["taxon_id"] == lion_page["taxon_id"]
    assert (r["m_confirmed"], r["m_status"], r["rule"]) == ("species", "confirmed", "eol:given:species+corrected:genus")
    c = conflicts(out, "decision = 'suspected_misspelling' AND rank = 'genus'")
    assert [(x["value_refused"], x["value_kept"], x["suggestion"], x["rule"]) for x in c] == [
        ("Pantherra", "Panthera", "Panthera", "accepted:edit_distance=1")]
    s = one(out, "m.raw_species = 'Megaselia scalarys'")
    assert s["taxon_id"] == one(out, "m.raw_species = 'Megaselia scalaris'")["taxon_id"]
    assert counters["suggestions_accepted"] == 2 and counters["suspected_misspellings"] == 0
    # nothing else moved: every other lineage resolves as without the setting
    q = ("SELECT lineage_key, taxon_id, rule, confirmed_rank FROM lineage_map WHERE raw_genus IS DISTINCT FROM "
         "'Pantherra' AND raw_species IS DISTINCT FROM 'Megaselia scalarys' ORDER BY lineage_key")
    assert catalog.query(out, q).to_pylist() == catalog.query(built[0], q).to_pylist()


def test_misspelling_check_off_still_reports_what_was_confirmed(tmp_path, authorities):
    out, counters = run_stage(tmp_path, authorities, records=RECORDS, misspelling_max_distance=0)
    r = one(out, "m.raw_genus = 'Pantherra'")
    assert ranks_of(r) == LION[:5] + ("Pantherra", "leo")  # minted, but not as if an authority knew it
    assert (r["m_confirmed"], r["m_status"], r["confirmed_rank"]) == ("family", "source_asserted", "family")
    assert counters["suspected_misspellings"] == 0
    wf = make_workflow(tmp_path, authorities, misspelling_max_distance=7)
    with pytest.raises(ConfigError, match=r"taxonomy\.misspelling_max_distance"):
        plan(wf)


def test_kingdom_priority_only_breaks_ties_the_higher_ranks_left(tmp_path):
    """Real cross-code homonyms (Orestias: a fish and an orchid genus, each with an `elegans`) and a made-up
    pair of genera Yus, under an order Xales in two kingdoms: a name alone stays ambiguous, even a binomial
    (its genus is part of the name and tells nothing); a given rank that both share still ties, and only
    then does kingdom_priority choose."""
    from tol_builder.taxonomy import writers

    d = tmp_path / "auth"
    rows_ = writers.gbif_rows([
        (("Animalia", "kingdom"), ("Chordata", "phylum"), ("Actinopterygii", "class"),
         ("Cyprinodontiformes", "order"), ("Cyprinodontidae", "family"), ("Orestias", "genus"),
         ("Orestias elegans", "species")),
        (("Plantae", "kingdom"), ("Tracheophyta", "phylum"), ("Liliopsida", "class"), ("Asparagales", "order"),
         ("Orchidaceae", "family"), ("Orestias", "genus"), ("Orestias elegans", "species")),
        (("Animalia", "kingdom"), ("Aphyla", "phylum"), ("Aclassa", "class"), ("Xales", "order"),
         ("Aidae", "family"), ("Yus", "genus")),
        (("Plantae", "kingdom"), ("Pphyta", "phylum"), ("Popsida", "class"), ("Xales", "order"),
         ("Paceae", "family"), ("Yus", "genus")),
    ])
    writers.write_gbif_backbone(d / "backbone.zip", rows_)
    writers.write_manifest(d / "gbif.toml", "gbif", "gbif_dwca",
                           [{"role": "taxon", "path": "backbone.zip", "member": "Taxon.tsv"}])
    records = {"manual": [
        (seven(), "Orestias elegans", None, None, 1),
        (seven(None, None, "Actinopterygii", None, None, "Orestias", "Orestias elegans"), None, None, None, 1),
        (seven(None, None, None, None, None, "Yus"), None, None, None, 1),
        (seven(None, None, None, "Xales", None, "Yus"), None, None, None, 1),
    ]}
    out, counters = run_stage(tmp_path, d, records=records, authority_order=["source", "gbif"],
                              common_name_order=["source"])
    assert one(out, "m.raw_scientific_name = 'Orestias elegans'")["rule"] == "unresolved:ambiguous_homonym"
    fish = one(out, "m.raw_class = 'Actinopterygii'")
    assert fish["kingdom"] == "Animalia" and fish["rule"] == "gbif:given:species"
    assert one(out, "m.raw_genus = 'Yus' AND m.raw_order IS NULL")["rule"] == "unresolved:ambiguous_homonym"
    tied = one(out, "m.raw_order = 'Xales'")
    assert tied["kingdom"] == "Animalia" and tied["rule"] == "gbif:given:genus+tie:kingdom_priority"
    assert counters["unresolved_ambiguous_homonym"] == 2 and counters["ties"] == 1

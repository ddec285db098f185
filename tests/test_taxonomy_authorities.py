"""Authority loaders (tol_builder.taxonomy.authorities) on fixtures in the real formats: manifests and
checksums, ITIS chains, GBIF backbone.zip, EOL DH taxon.tab + provider_ids + vernacularnames, the
parent-link walk, and the real DH rows of ../shared/realdata."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from test_taxonomy_fixtures import write_authorities
from tol_builder.errors import ChecksumError, ConfigError, InputError
from tol_builder.taxonomy import authorities as auth
from tol_builder.taxonomy import curation, writers
from tol_builder.taxonomy import project_taxonomy_dir

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
KSYN = curation.read_kingdom_synonyms(project_taxonomy_dir() / "kingdom_synonyms.csv")


def load(tmp: Path, d: Path, name: str) -> duckdb.DuckDBPyConnection:
    out = tmp / "build"
    counters = auth.load_task(str(out), name, str(d / f"{name}.toml"), KSYN)
    assert counters  # counters name the authority
    assert all(k.startswith(name + "_") for k in counters)
    return duckdb.connect(str(auth.authority_db(out, name)), read_only=True)


def rows(con, sql):
    return [tuple(r) for r in con.execute(sql).fetchall()]


@pytest.fixture(scope="module")
def authorities(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    return tmp, write_authorities(tmp)


def test_project_manifests_load_and_name_their_sources():
    found = auth.discover(project_taxonomy_dir() / "authorities")
    assert {"itis", "gbif", "eol", "inaturalist"} <= set(found)
    for name, path in found.items():
        m = auth.load_manifest(path)
        assert m.name == name and m.files and m.homepage and m.licence
        for f in m.files:
            # a download URL, or (vernacularnames.csv, no stable URL) a local copy the notes explain
            assert f.url.startswith("https://") or (f.url == "" and f.name in path.read_text()), (name, f.name)
            assert f.size or f.bytes, (name, f.name)  # stated size (exact bytes where known)


def test_manifest_errors_name_file_and_key(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('name = "x"\nformat = "nope"\n[[files]]\nrole = "chains"\nname = "a.csv"\n')
    with pytest.raises(ConfigError, match=r"x.toml: key 'format'"):
        auth.load_manifest(p)
    p.write_text('name = "x"\nformat = "itis_chains"\n[[files]]\nrole = "taxon"\nname = "a.csv"\n')
    with pytest.raises(ConfigError, match=r"files\[0\]\.role"):
        auth.load_manifest(p)
    p.write_text('name = "x"\nformat = "eol_dh"\n[[files]]\nrole = "vernacular"\nname = "a.csv"\n')
    with pytest.raises(ConfigError, match="role 'taxon'"):
        auth.load_manifest(p)
    p.write_text('name = "x"\nformat = "itis_chains"\n[[files]]\nrole = "chains"\nname = "a.csv"\nmd5 = "xyz"\n')
    with pytest.raises(ConfigError, match=r"files\[0\]\.md5"):
        auth.load_manifest(p)


def test_checksum_and_size_are_verified(authorities, tmp_path):
    _, d = authorities
    m = (d / "itis.toml").read_text()
    bad = tmp_path / "itis.toml"
    bad.write_text(m.replace("sha256 = \"", "sha256 = \"0").replace("\"\n", "\"\n", 1)[:0] +
                   m.replace(m.split("sha256 = ")[1].split("\n")[0], '"' + "0" * 64 + '"')
                    .replace('url = "files/', f'url = "{d}/files/'))
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        auth.load_task(str(tmp_path / "build"), "itis", str(bad), KSYN)
    size = int(m.split("bytes = ")[1].split("\n")[0])
    bad.write_text(m.replace(f"bytes = {size}", f"bytes = {size + 1}").replace('url = "files/', f'url = "{d}/files/'))
    with pytest.raises(ChecksumError, match="size"):
        auth.load_task(str(tmp_path / "build"), "itis", str(bad), KSYN)
    assert not auth.authority_db(tmp_path / "build", "itis").exists()  # nothing half-written


def test_itis_chains(authorities):
    tmp, d = authorities
    con = load(tmp, d, "itis")
    got = rows(con, """SELECT rank, name, kingdom, phylum, class, "order", family, genus, species FROM lineages
                       WHERE name IN ('Pica hudsonia', 'Corvidae', 'Pica') ORDER BY rank""")
    assert got == [("family", "Corvidae", "Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", None, None),
                   ("genus", "Pica", "Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", None),
                   ("species", "Pica hudsonia", "Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica",
                    "hudsonia")]
    # ids: terminal_tsn for species, the TSN at that rank's position of hierarchy_string_tsn above
    import csv

    chain = next(r for r in csv.DictReader(open(d / "files" / "species_level_taxonomy_chains.csv"))
                 if r["Species"] == "Pica hudsonia")
    tsns = chain["hierarchy_string_tsn"].split("-")
    ids = dict(rows(con, "SELECT rank, auth_id FROM lineages WHERE name IN ('Pica hudsonia', 'Pica', 'Corvidae')"))
    assert ids == {"species": chain["terminal_tsn"], "genus": tsns[6], "family": tsns[5]}
    # homonyms are two taxa, one name key
    assert rows(con, "SELECT count(*) FROM names WHERE nk = 'laelia' AND rank = 'genus'") == [(2,)]
    # the first English vernacular, not the first one
    assert rows(con, "SELECT common_name FROM vernaculars WHERE key = 'pica hudsonia'") == [("black-billed magpie",)]


def test_gbif_backbone_zip_with_synonyms_and_vernaculars(authorities):
    tmp, d = authorities
    con = load(tmp, d, "gbif")
    assert (tmp / "build" / "cache" / "taxonomy" / "extracted" / "gbif" / "Taxon.tsv").exists()
    syn = rows(con, """SELECT n.status, l.name, l.genus FROM names n JOIN lineages l ON l.auth_id = n.accepted_id
                       WHERE n.nk = 'ochlerotatus japonicus'""")
    assert syn == [("synonym", "Aedes japonicus", "Aedes")]
    assert rows(con, "SELECT key, common_name FROM vernaculars") == [("aedes japonicus", "Asian bush mosquito")]
    assert rows(con, "SELECT count(*) FROM lineages WHERE name = 'Laelia'") == [(2,)]


@pytest.mark.parametrize("authority_column", [True, False])
def test_eol_dynamic_hierarchy(tmp_path, authority_column):
    d = write_authorities(tmp_path, dh_authority_column=authority_column)
    con = load(tmp_path, d, "eol")
    # the walk drops clades, suborder, subfamily; Metazoa (unranked here) is the kingdom by its name
    assert rows(con, """SELECT kingdom, phylum, class, "order", family, genus, species FROM lineages
                        WHERE name = 'Panthera leo'""") == [
        ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Panthera", "leo")]
    # Archaeplastida (DH kingdom) -> Plantae; DH's own phylum is kept (Streptophyta)
    assert rows(con, "SELECT kingdom, phylum FROM lineages WHERE name = 'Laelia anceps'") == [
        ("Plantae", "Streptophyta")]
    assert rows(con, "SELECT count(*) FROM lineages WHERE name IN ('Feliformia', 'Pantherinae', 'Bilateria')") == [(0,)]
    # pages: eolID of the node, a subspecies page -> its species (not exact), provider_ids names
    pages = dict(rows(con, """SELECT p.page_id, l.name || '/' || p.exact FROM pages p
                              JOIN lineages l ON l.auth_id = p.auth_id"""))
    assert pages["328672"] == "Panthera leo/true" and pages["1052462"] == "Panthera leo/false"
    assert "2913056" not in pages  # the root "Life" has no ranked taxon
    assert rows(con, "SELECT * FROM page_names ORDER BY page_id") == [("2913056", "Life"),
                                                                      ("990001", "Marmota flaviventris")]
    # vernaculars: English only, HTML stripped, EOL-preferred first
    assert sorted(rows(con, "SELECT kind, key, common_name, quality FROM vernaculars WHERE kind = 'page'")) == [
        ("page", "328672", "African lion", 2), ("page", "328672", "lion", 0)]
    assert rows(con, "SELECT DISTINCT key FROM vernaculars WHERE kind = 'sci'") == [("panthera leo",)]


def test_walk_ignores_misplaced_ranks_dangling_parents_and_cycles(tmp_path):
    paths = [(("Life", ""), ("Metazoa", "kingdom"), ("Chordata", "phylum"), ("Aves", "class"),
              ("Corvidae", "family"), ("Pica", "genus"), ("Strange", "family"), ("Pica pica", "species"))]
    rows_ = writers.dh_rows(paths, {"Pica pica": 1})
    rows_ += [  # a node whose parent is missing, and two unranked nodes forming a cycle above a genus
        {"taxonID": "X1", "parentNameUsageID": "NOPE", "scientificName": "Solo", "canonicalName": "Solo",
         "taxonRank": "genus", "taxonomicStatus": "accepted", "eolID": "2"},
        {"taxonID": "C1", "parentNameUsageID": "C2", "canonicalName": "Loopa", "taxonRank": "clade"},
        {"taxonID": "C2", "parentNameUsageID": "C1", "canonicalName": "Loopb", "taxonRank": "clade"},
        {"taxonID": "G1", "parentNameUsageID": "C1", "canonicalName": "Cycla", "taxonRank": "genus", "eolID": "3"},
    ]
    f = writers.write_dh_taxon_tab(tmp_path / "taxon.tab", rows_)
    writers.write_manifest(tmp_path / "eol.toml", "eol", "eol_dh", [{"role": "taxon", "path": str(f)}])
    con = load(tmp_path, tmp_path, "eol")
    got = dict((r[0], r[1:]) for r in rows(con, """SELECT name, kingdom, family, genus, species FROM lineages
                                                  WHERE rank IN ('species', 'genus', 'family')"""))
    # "Strange", a family under a genus: the nearest ancestor of each rank counts, and only ranks above the
    # last one filled: Strange's lineage takes no genus (Pica is below family) and no second family
    assert got["Strange"] == ("Animalia", "Strange", None, None)
    assert got["Pica pica"] == ("Animalia", "Strange", "Pica", "pica")  # genus from its binomial
    assert got["Corvidae"] == ("Animalia", "Corvidae", None, None)
    assert got["Solo"] == (None, None, "Solo", None)
    assert got["Cycla"] == (None, None, "Cycla", None)


def test_inaturalist_common_names(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"4831": "Whistlepig", "12": "", "x": "no"}))
    writers.write_manifest(tmp_path / "inaturalist.toml", "inaturalist", "inat_common_names",
                           [{"role": "common_names", "path": "m.json"}])
    con = load(tmp_path, tmp_path, "inaturalist")
    assert rows(con, "SELECT kind, key, common_name FROM vernaculars") == [("category", "4831", "Whistlepig")]
    p.write_text("[1, 2]")
    writers.write_manifest(tmp_path / "inaturalist.toml", "inaturalist", "inat_common_names",
                           [{"role": "common_names", "path": "m.json"}])
    with pytest.raises(InputError, match="JSON object"):
        auth.load_task(str(tmp_path / "b2"), "inaturalist", str(tmp_path / "inaturalist.toml"), KSYN)


def test_missing_column_is_named(tmp_path):
    f = tmp_path / "taxon.tab"
    f.write_text("taxonID\tparentNameUsageID\tscientificName\nEOL-1\t\tLife\n")
    writers.write_manifest(tmp_path / "eol.toml", "eol", "eol_dh", [{"role": "taxon", "path": "taxon.tab"}])
    with pytest.raises(InputError, match=r"taxon.tab.*missing column\(s\) acceptedNameUsageID"):
        auth.load_task(str(tmp_path / "build"), "eol", str(tmp_path / "eol.toml"), KSYN)


def test_real_dh_rows(tmp_path):
    """The two transcribed DH 2.1 taxon.tab rows: one with the authority column, one from a dump with a
    lower-cased header and none; the species' parent is not in this excerpt."""
    f = REALDATA / "eol" / "eol_real_rows_transcribed.json"
    if not f.exists():
        pytest.skip("../shared/realdata is not present")
    real = json.loads(f.read_text())
    life, acyto = real["dh21_taxon_tab_rows"]
    for i, (row, cols) in enumerate([(life, writers.DH_COLUMNS),
                                     (acyto, [c.lower() for c in writers.DH_COLUMNS if c != "authority"])]):
        t = tmp_path / f"taxon{i}.tab"
        t.write_text("\t".join(cols) + "\n" + "\t".join(row.get(c, "") for c in cols) + "\n")
        writers.write_manifest(tmp_path / "eol.toml", "eol", "eol_dh", [{"role": "taxon", "path": t.name}])
        con = load(tmp_path / f"b{i}", tmp_path, "eol")
        if i == 0:  # "Life": accepted, unranked, no lineage and no page
            assert rows(con, "SELECT count(*) FROM lineages") == [(0,)]
        else:  # a ranked species: genus from its binomial; its page found
            assert rows(con, "SELECT name, genus, species, kingdom FROM lineages") == [
                ("Acytostelium aggregatum", "Acytostelium", "aggregatum", None)]
            assert rows(con, "SELECT page_id FROM pages") == [("732616",)]


def test_optional_local_file_may_be_absent(tmp_path):
    d = write_authorities(tmp_path)
    text = (d / "eol.toml").read_text()
    block = text.split("[[files]]")
    vern = next(b for b in block if 'role = "vernacular"' in b)
    text = text.replace(vern, vern.replace('url = "files/vernacularnames.csv"', 'url = "absent.csv"')
                        .rstrip() + "\noptional = true\n\n")
    (d / "eol.toml").write_text(text)
    con = load(tmp_path, d, "eol")
    assert rows(con, "SELECT count(*) FROM vernaculars") == [(0,)]
    assert rows(con, "SELECT count(*) FROM pages") == [(6,)]
    (d / "eol.toml").write_text(text.replace('role = "taxon"', 'role = "taxon"\noptional = true'))
    with pytest.raises(ConfigError, match=r"optional"):
        auth.load_manifest(d / "eol.toml")

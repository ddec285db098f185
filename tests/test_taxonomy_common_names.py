"""Common names in every language (issue 8, item 2): the authority loaders keep every vernacular with its
language mapped by taxonomy/languages.csv, the taxonomy stage writes `common_names(taxon_id, language,
name, source, preferred)`, and `[text] languages` is checked at load. Real DuckDB files through the real
loaders and the real stage, on fixtures in the authorities' formats (tests/test_taxonomy_fixtures.py)."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import duckdb
import pytest

from test_taxonomy_fixtures import (DH_PAGES, DH_PATHS, GBIF_PATHS, GBIF_SYNONYMS, INAT_MAPPING, ITIS_SPECIES,
                                    PROVIDER_ROWS, run_stage, write_manifests)
from tol_builder import catalog
from tol_builder.config import load_workflow
from tol_builder.errors import ConfigError
from tol_builder.taxonomy import authorities as auth
from tol_builder.taxonomy import curation, languages, project_taxonomy_dir, writers

KSYN = curation.read_kingdom_synonyms(project_taxonomy_dir() / "kingdom_synonyms.csv")
ORDER = ["itis", "inaturalist", "eol_preferred", "eol", "gbif"]
HOSTILE = "en'); DROP TABLE vernacular_names; --"  # a language value that must stay a value

# ITIS: names and their languages' English names, paired by position
ITIS_NAMES = {
    "Pica hudsonia": [("pie d'Amérique", "French"), ("black-billed magpie", "English"),
                      ("urraca de Hudson", "Spanish"), ("American magpie", "English")],
    "Marmota flaviventris": [("yellow-bellied marmot", "English"), ("marmotte à ventre jaune", "French"),
                             ("Gelbbauchmurmeltier", "Martian")],
}
# GBIF: ISO 639-1, upper case, empty, unknown; a name given twice beats one given once
GBIF_NAMES = [("Asian bush mosquito", "en"), ("Japanische Buschmücke", "de"), ("Japanische Buschmücke", "de"),
              ("Asiatische Buschmücke", "de"), ("moustique japonais", "FR"), ("Asian rock pool mosquito", ""),
              ("mosquito x", "qaa"), ("mosquito y", HOSTILE)]
# EOL: ISO 639-2 both French forms, a region subtag, empty, unknown; `True` = preferred by EOL
LEO, PICA = ("328672", "Panthera leo"), ("45511123", "Pica hudsonia")
EOL_NAMES = [(*LEO, "lion", "eng", True), (*LEO, "African lion", "eng", False), (*LEO, "león", "spa", True),
             (*LEO, "león africano", "spa", False), (*LEO, "lion", "fre", True), (*LEO, "leão", "pt-BR", True),
             (*LEO, "lion d'Afrique", "", False), (*LEO, "liun", "xyz", False),
             (*PICA, "pie d'Amérique", "fra", True), (*PICA, "urraca de pico negro", "spa", True)]


def write_multilingual(dest: Path, shuffle_seed: int | None = None) -> Path:
    """The fixture authorities with vernaculars in many languages; with a seed, the rows of every input
    file in another order (ITIS chains, VernacularName.tsv, vernacularnames.csv)."""
    rnd = random.Random(shuffle_seed)

    def order(rows):
        rows = list(rows)
        if shuffle_seed is not None:
            rnd.shuffle(rows)
        return rows

    d = dest / "authorities"
    writers.write_itis_chains(d / "files" / "species_level_taxonomy_chains.csv", order(ITIS_SPECIES), ITIS_NAMES)
    rows = writers.gbif_rows(GBIF_PATHS, GBIF_SYNONYMS)
    aedes = next(r["taxonID"] for r in rows if r["canonicalName"] == "Aedes japonicus")
    writers.write_gbif_backbone(d / "files" / "backbone.zip", rows, order(
        {"taxonID": aedes, "vernacularName": n, "language": lang} for n, lang in GBIF_NAMES))
    writers.write_dh_taxon_tab(d / "files" / "taxon.tab", writers.dh_rows(DH_PATHS, DH_PAGES))
    flag = {True: "preferred", False: ""}
    writers.write_eol_vernaculars(d / "files" / "vernacularnames.csv", order(
        {"page_id": page, "canonical_form": f"<i>{sci}</i>", "vernacular_string": name, "language_code": lang,
         "resource_name": "test", "is_preferred_by_resource": flag[pref], "is_preferred_by_eol": flag[pref]}
        for page, sci, name, lang, pref in EOL_NAMES))
    writers.write_provider_ids(d / "files" / "provider_ids.csv.gz", PROVIDER_ROWS)
    (d / "files" / "common-names-mapping.json").write_text(json.dumps(INAT_MAPPING))
    write_manifests(d)
    return d


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """One stage run on the multilingual fixtures, GBIF last in the common-name order."""
    tmp = tmp_path_factory.mktemp("names")
    d = write_multilingual(tmp)
    out, counters = run_stage(tmp, d, common_name_order=ORDER)
    return d, out, counters


def vernacular_names(out: Path, name: str) -> set[tuple]:
    con = duckdb.connect(str(auth.authority_db(out, name)), read_only=True)
    try:
        return {tuple(r) for r in con.execute(
            "SELECT key, name, language, language_given, quality FROM vernacular_names").fetchall()}
    finally:
        con.close()


def names_of(out: Path, scientific_name: str) -> list[tuple]:
    return [(r["language"], r["name"], r["source"], r["preferred"]) for r in catalog.query(
        out, f"""SELECT c.* FROM common_names c JOIN taxa t USING (taxon_id)
                 WHERE t.scientific_name = '{scientific_name}' ORDER BY c.language, c.name""").to_pylist()]


# ------------------------------------------------------------------------------------ language codes
def test_each_authority_maps_its_codes(multi):
    _, out, counters = multi
    itis = {(k, n): (lang, given, q) for k, n, lang, given, q in vernacular_names(out, "itis")}
    assert itis[("pica hudsonia", "pie d'Amérique")] == ("fr", "French", 0)
    assert itis[("pica hudsonia", "black-billed magpie")] == ("en", "English", 0)  # first English of the chain
    assert itis[("pica hudsonia", "American magpie")] == ("en", "English", 1)
    assert itis[("pica hudsonia", "urraca de Hudson")] == ("es", "Spanish", 0)
    assert itis[("marmota flaviventris", "Gelbbauchmurmeltier")] == ("und", "Martian", 0)  # unknown name
    gbif = {n: (lang, given) for _, n, lang, given, _ in vernacular_names(out, "gbif")}
    assert gbif == {"Asian bush mosquito": ("en", "en"), "Japanische Buschmücke": ("de", "de"),
                    "Asiatische Buschmücke": ("de", "de"), "moustique japonais": ("fr", "FR"),
                    "Asian rock pool mosquito": ("und", None), "mosquito x": ("und", "qaa"),
                    "mosquito y": ("und", HOSTILE)}
    eol = {(n, given): lang for k, n, lang, given, _ in vernacular_names(out, "eol") if k == "328672"}
    assert eol == {("lion", "eng"): "en", ("African lion", "eng"): "en", ("león", "spa"): "es",
                   ("león africano", "spa"): "es", ("lion", "fre"): "fr", ("leão", "pt-BR"): "pt",
                   ("lion d'Afrique", None): "und", ("liun", "xyz"): "und"}
    assert {lang for k, _, lang, given, _ in vernacular_names(out, "eol") if given == "fra"} == {"fr"}
    assert {(lang, given) for *_, lang, given, _ in vernacular_names(out, "inaturalist")} == {("en", None)}
    # a value the table does not know is counted (by its rows: EOL keys each name by page and by name)
    assert counters["itis_vernaculars_language_unknown"] == 1
    assert counters["gbif_vernaculars_language_unknown"] == 2
    assert counters["eol_vernaculars_language_unknown"] == 2
    assert counters["eol_vernaculars"] == 4  # English rows, page and name keys: the English view
    # the English view keeps its old columns
    con = duckdb.connect(str(auth.authority_db(out, "eol")), read_only=True)
    assert [c[0] for c in con.execute("DESCRIBE vernaculars").fetchall()] == [
        "kind", "key", "kingdom", "common_name", "quality"]
    con.close()


def test_language_rule_of_the_curated_table():
    langs = languages.read_languages()
    for given, code in [("eng", "en"), ("en", "en"), ("English", "en"), (" ENGLISH ", "en"), ("spa", "es"),
                        ("es", "es"), ("Spanish", "es"), ("fre", "fr"), ("fra", "fr"), ("French", "fr"),
                        ("ger", "de"), ("deu", "de"), ("German", "de"), ("zh-Hant", "zh"), ("pt_BR", "pt"),
                        ("haw", "haw"), ("Hawaiian", "haw"), ("Unspecified", "und")]:
        assert langs.code_of(given) == code, given
    for unknown in ("", None, "xyz", "Martian", "qaa", HOSTILE):
        assert langs.lookup(unknown) is None and langs.code_of(unknown) == "und"
    assert langs.lookup("Ga") == "ga"  # codes first: Irish, not the Ga language's name


def test_bad_language_table_names_the_line(tmp_path):
    p = tmp_path / "languages.csv"
    p.write_text("code,codes,name,aliases\nen,eng,English,\nund,,Undetermined,\nes,spa,Spanish,English\n")
    with pytest.raises(ConfigError, match=r"line 4, aliases.*already 'en'"):
        languages.read_languages(p)
    p.write_text("code,codes,name,aliases\nen,eng,English,\nund,,Undetermined,\nES_x,,Bad,\n")
    with pytest.raises(ConfigError, match=r"line 4, code"):
        languages.read_languages(p)
    # the table is part of every authority's fingerprint: a change reloads them
    other = tmp_path / "other.csv"
    other.write_text("code,codes,name,aliases\nen,eng,English,\nund,,Undetermined,\n")
    assert auth.curated_extra(KSYN, other) != auth.curated_extra(KSYN, languages.default_path())


# ------------------------------------------------------------------------------------ the common_names table
def test_one_preferred_per_taxon_and_language_and_english_is_taxa_common_name(multi):
    _, out, counters = multi
    bad = catalog.query(out, """SELECT taxon_id, language, count(*) FILTER (WHERE preferred) AS p
                                FROM common_names GROUP BY ALL HAVING p <> 1""").to_pylist()
    assert bad == []
    dups = catalog.query(out, """SELECT taxon_id, language, name FROM common_names GROUP BY ALL
                                 HAVING count(*) > 1""").to_pylist()
    assert dups == []
    # for every taxon: its preferred English name is taxa.common_name (and no English name: none)
    mismatch = catalog.query(out, """SELECT t.taxon_id FROM taxa t
        LEFT JOIN common_names c ON c.taxon_id = t.taxon_id AND c.language = 'en' AND c.preferred
        WHERE c.name IS DISTINCT FROM t.common_name OR c.source IS DISTINCT FROM t.common_name_source""").to_pylist()
    assert mismatch == []
    assert catalog.query(out, "SELECT count(*) AS n FROM common_names WHERE taxon_id NOT IN "
                              "(SELECT taxon_id FROM taxa)").to_pylist() == [{"n": 0}]
    n_en = catalog.query(out, "SELECT count(*) AS n FROM taxa WHERE common_name IS NOT NULL").to_pylist()[0]["n"]
    assert counters["common_names_lang_en"] == n_en
    # French: Pica and Marmota (ITIS), Panthera (EOL), Aedes (GBIF); German: Aedes
    assert counters["common_names_lang_fr"] == 4 and counters["common_names_lang_de"] == 1
    assert counters["common_names_rows"] == catalog.query(out, "SELECT count(*) AS n FROM common_names"
                                                          ).to_pylist()[0]["n"]


def test_names_in_every_language_by_the_order(multi):
    _, out, _ = multi
    assert names_of(out, "Pica hudsonia") == [
        ("en", "American magpie", "itis", False),
        ("en", "black-billed magpie", "itis", True),  # the chain's first English name, not alphabetical
        ("es", "urraca de Hudson", "itis", True),  # ITIS before EOL
        ("es", "urraca de pico negro", "eol_preferred", False),
        ("fr", "pie d'Amérique", "itis", True)]  # ITIS and EOL (fra) give it: kept once, from ITIS
    leo = names_of(out, "Panthera leo")
    assert ("en", "lion", "eol_preferred", True) in leo and ("en", "African lion", "eol", False) in leo
    assert ("es", "león", "eol_preferred", True) in leo and ("es", "león africano", "eol", False) in leo
    assert ("fr", "lion", "eol_preferred", True) in leo  # same string as the English name, another language
    assert ("pt", "leão", "eol_preferred", True) in leo
    # empty and unknown languages: 'und'; equal on everything else, the alphabetical first is preferred
    assert {(n, p) for lang, n, _, p in leo if lang == "und"} == {("lion d'Afrique", True), ("liun", False)}
    aedes = names_of(out, "Aedes japonicus")
    # GBIF: the name given most often is preferred (not the alphabetical first)
    assert ("de", "Japanische Buschmücke", "gbif", True) in aedes and ("de", "Asiatische Buschmücke", "gbif",
                                                                         False) in aedes
    assert ("en", "Asian bush mosquito", "gbif", True) in aedes and ("fr", "moustique japonais", "gbif", True) in aedes
    marmota = names_of(out, "Marmota flaviventris")
    assert ("en", "yellow-bellied marmot", "itis", True) in marmota  # ITIS before the iNat21 JSON
    assert ("en", "Yellow-bellied Marmot", "inaturalist", False) in marmota  # another string: kept
    assert names_of(out, "Cecidomyiidae") == []


def test_dedup_keeps_the_earlier_source_of_the_order(tmp_path):
    d = write_multilingual(tmp_path)
    out, _ = run_stage(tmp_path, d, common_name_order=["eol", "itis"])
    pica = names_of(out, "Pica hudsonia")
    assert ("fr", "pie d'Amérique", "eol", True) in pica  # EOL first now: the same name comes from EOL
    assert ("es", "urraca de pico negro", "eol", True) in pica and ("es", "urraca de Hudson", "itis", False) in pica
    assert ("en", "black-billed magpie", "itis", True) in pica  # EOL gives it no English name
    assert not any(lang == "de" for lang, *_ in names_of(out, "Aedes japonicus"))  # GBIF is not in the order


def test_same_tables_whatever_the_input_row_order(multi, tmp_path):
    _, out, counters = multi
    d2 = write_multilingual(tmp_path, shuffle_seed=3)
    out2, counters2 = run_stage(tmp_path, d2, common_name_order=ORDER, shuffle_seed=5, parts=2)
    q = "SELECT * FROM common_names ORDER BY taxon_id, language, name"
    assert catalog.query(out2, q).to_pylist() == catalog.query(out, q).to_pylist()
    q = "SELECT taxon_id, common_name, common_name_source FROM taxa ORDER BY taxon_id"
    assert catalog.query(out2, q).to_pylist() == catalog.query(out, q).to_pylist()
    assert {k: v for k, v in counters2.items() if k.startswith("common_names")} == \
        {k: v for k, v in counters.items() if k.startswith("common_names")}


def test_common_names_documented_in_the_catalog(multi):
    _, out, _ = multi
    docs = {r["name"]: r for r in catalog.query(out, "SELECT * FROM tables").to_pylist()}
    cols = json.loads(docs["common_names"]["columns"])
    assert list(cols) == ["taxon_id", "language", "name", "source", "preferred"]
    assert catalog.query(out, "SELECT * FROM common_names LIMIT 0").column_names == list(cols)


# ------------------------------------------------------------------------------------ the demo
def test_demo_build_has_names_in_several_languages(tmp_path):
    from test_taxonomy_demo import _records
    from tol_builder.demo.authorities import write_demo_authorities
    from tol_builder.demo.taxa import TAXA

    write_demo_authorities(TAXA, tmp_path / "auth")
    demo_order = load_workflow(project_taxonomy_dir().parent / "workflows" / "demo.toml").taxonomy.common_name_order
    assert "gbif" in demo_order
    out, counters = run_stage(tmp_path, tmp_path / "auth", records=_records(), common_name_order=demo_order)
    by = {}
    for r in catalog.query(out, """SELECT t.scientific_name, c.language, c.name, c.source FROM common_names c
                                   JOIN taxa t USING (taxon_id) WHERE c.preferred""").to_pylist():
        by.setdefault(r["scientific_name"], {})[r["language"]] = (r["name"], r["source"])
    assert by["Panthera leo"]["de"] == ("Löwe", "eol_preferred")
    assert by["Panthera leo"]["fr"] == ("lion", "eol_preferred")
    assert by["Coccinella septempunctata"]["es"] == ("mariquita de siete puntos", "itis")
    assert by["Coleomegilla maculata"] == {"fr": ("coccinelle maculée", "gbif"), "und": ("pink lady beetle", "gbif")}
    assert set(by["Marmota flaviventris"]) == {"en"}  # some taxa have no name in another language
    assert {"en", "es", "fr", "de", "und"} <= {lang for names in by.values() for lang in names}
    # English is what the demo has always had: BioCLIP's iNat21 mapping, EOL's preferred name, none for BIOSCAN
    english = {r["scientific_name"]: r["common_name"] for r in catalog.query(out, "SELECT * FROM taxa").to_pylist()}
    for t in TAXA:
        sci = t.scientific_name if t.source != "bioscan1m" else None
        if t.source == "inat21":
            assert english[sci] == t.vernacular["bioclip_inat21_mapping"], t.key
        elif t.source == "eol" and t.scientific_name != "Marmota flaviventris":  # iNat21's name wins for it
            assert english[sci] == t.vernacular["eol_preferred"], t.key
    assert english["Coleomegilla maculata"] is None and counters["common_names_lang_und"] == 1


# ------------------------------------------------------------------------------------ [text] languages
def _workflow(tmp_path: Path, text: str) -> Path:
    (tmp_path / "m.toml").write_text('source = "eol"\n[[files]]\nname = "media_manifest.tgz"\nrole = "metadata"\n')
    p = tmp_path / "wf.toml"
    p.write_text(textwrap.dedent(f"""\
        name = "x"
        out = "o"
        [[sources]]
        name = "eol"
        manifest = "m.toml"
        {text}
        """))
    return p


@pytest.mark.parametrize("text,expected", [
    ("", ["en"]),
    ("[text]\nlanguages = []", ["en"]),
    ("[text]\nlanguages = [\"es\", \"fr\"]", ["en", "es", "fr"]),
    ("[text]\nlanguages = [\"de\", \"en\", \"zh\"]", ["en", "de", "zh"]),
])
def test_text_languages_english_implied_and_first(tmp_path, text, expected):
    assert load_workflow(_workflow(tmp_path, text)).text.languages == expected


@pytest.mark.parametrize("value,key,hint", [
    ('["es", "klingonese"]', r"text\.languages\[1\]", "klingonese"),
    ('["spa"]', r"text\.languages\[0\]", "did you mean 'es'"),
    ('["Spanish"]', r"text\.languages\[0\]", "did you mean 'es'"),
    ('["und"]', r"text\.languages\[0\]", "not und"),
    ('["fr", "fr"]', r"text\.languages\[1\]", "each language once"),
    ('"es"', r"text\.languages", "a list"),
])
def test_bad_text_language_fails_at_load_naming_the_key(tmp_path, value, key, hint):
    p = _workflow(tmp_path, f"[text]\nlanguages = {value}")
    with pytest.raises(ConfigError, match=key) as e:
        load_workflow(p)
    assert hint in str(e.value) and str(p) in str(e.value)

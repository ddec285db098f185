"""Name parsing (tol_builder.taxonomy.names): gnparser on this machine, authorship, infraspecific names,
hybrids, sp./cf., interim names, and the fast path agreeing with gnparser."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tol_builder.taxonomy import names

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


@pytest.fixture(params=["gnparser", "rules"])
def parser(request, monkeypatch):
    """Each rule runs with gnparser and with the rule-based fallback used where gnparser cannot load."""
    if request.param == "rules":
        monkeypatch.setattr(names, "_parser", lambda: names._RuleParser())
    return request.param


def test_gnparser_library_runs_here():
    assert isinstance(names._parser(), names._GnParser)  # not the fallback: gnparser loads on this machine
    p = names.gnparse("Pica hudsonia (Sabine, 1823)")
    assert p["parsed"] and p["canonical"]["simple"] == "Pica hudsonia" and p["cardinality"] == 2
    assert names.gnparser_version().startswith("v")


@pytest.mark.parametrize("genus, raw, binomial, note", [
    ("Pica", "hudsonia", "Pica hudsonia", ""),  # iNat21: the epithet only
    ("Zygiella", "x-notata", "Zygiella x-notata", ""),  # hyphenated epithet (iNat21 zygiella_x-notata)
    (None, "Pica hudsonia", "Pica hudsonia", "genus_from_name"),  # BIOSCAN without genus: genus = first word
    (None, "Pica hudsonia (Sabine, 1823)", "Pica hudsonia", "authorship"),
    ("Amanita", "Amanita muscaria (L.) Lam., 1783", "Amanita muscaria", "authorship"),
    ("Canis", "lupus familiaris", "Canis lupus", "infraspecific"),
    (None, "Ranunculus acris subsp. friesianus", "Ranunculus acris", "infraspecific"),
    (None, "Laelia anceps var. dawsonii", "Laelia anceps", "infraspecific"),
    ("Aedes", "Ochlerotatus japonicus", "Ochlerotatus japonicus", "genus_mismatch"),
])
def test_species_names_taken(parser, genus, raw, binomial, note):
    s = names.species(genus, raw)
    assert s.binomial == binomial and s.note == note
    assert s.epithet == binomial.split()[1]


@pytest.mark.parametrize("genus, raw, out_genus, note", [
    (None, "Salix × rubens", "Salix", "hybrid"),
    (None, "Salix alba × Salix fragilis", "Salix", "hybrid"),
    ("Carex", "Carex sp.", "Carex", "approximate"),
    ("Megaselia", "Megaselia sp. BOLD:AAA1234", "Megaselia", "approximate"),
    ("Monomorium", "Monomorium indet", "Monomorium", "approximate"),
    (None, "Aedes cf. aegypti", "Aedes", "comparison"),
    (None, "Aedes aff. aegypti", "Aedes", "approximate"),  # gnparser: aff. is an approximation
    (None, "phyMalaise01 Malaise2939", None, "interim"),  # first word is no genus
    ("Chelonus", "Chelonus Malaise2690", "Chelonus", "interim"),
    ("Aprostocetus", "Aprostocetus aproMalaise5232", "Aprostocetus", "interim"),
    (None, "Psychodidae gen. sp.", None, "no_epithet"),  # a family name is not taken as the genus
])
def test_labels_that_are_not_species(parser, genus, raw, out_genus, note):
    s = names.species(genus, raw)
    assert s.epithet is None and s.binomial is None
    assert s.genus == out_genus and s.note == note


@pytest.mark.parametrize("raw, name, note", [
    ("Corvidae", "Corvidae", ""), ("CORVIDAE", "Corvidae", ""), ("corvidae", "Corvidae", ""),
    ("  Corvidae ", "Corvidae", ""), ("Laelia Lindl.", "Laelia", "authorship"),
    ("not_classified", None, ""), ("Incertae sedis", None, ""), ("", None, ""), (None, None, ""),
    ("Malaise01", None, "interim"), ("encyrMalaise01", None, "interim"), ("ChrysSA", None, "interim"),
])
def test_uninomials(parser, raw, name, note):
    assert names.uninomial(raw) == (name, note)


def test_names_of_unknown_rank(parser):
    assert names.scientific("Carex sp.") == ("Carex", None, "approximate")
    assert names.scientific("Diptera") == ("Diptera", None, "")
    assert names.scientific("Pica hudsonia Forster") == (None, "Pica hudsonia", "authorship")


_genus = st.from_regex(r"[A-Z][a-z]{2,12}", fullmatch=True)
_epithet = st.from_regex(r"[a-z]{3,14}(-[a-z]{2,6})?", fullmatch=True).filter(
    lambda e: e not in names.SURROGATE_WORDS and e not in names.MISSING)  # 'nan', 'none': no value


@settings(max_examples=300, deadline=None)
@given(_genus, _epithet)
def test_fast_path_agrees_with_gnparser(genus, epithet):
    """Plain binomials skip gnparser; they must get exactly what gnparser would give."""
    fast = names.species(genus, epithet)
    p = names.gnparse(f"{genus} {epithet}")
    if p.get("parsed") and p.get("cardinality") == 2 and not p.get("surrogate") and not p.get("hybrid"):
        assert fast.binomial == p["canonical"]["simple"]
    else:  # gnparser reads some random words as something else (e.g. a rank marker): both say "not plain"
        assert fast.binomial == f"{genus} {epithet}"


def test_real_meta_album_names_lose_their_authorship(parser):
    f = REALDATA / "meta_album" / "FNG_Mini_metadata.csv"
    if not f.exists():
        pytest.skip("../shared/realdata is not present")
    classes = sorted({r["class"] for r in csv.DictReader(open(f, encoding="utf-8"))})
    assert len(classes) == 25
    for c in classes:  # 'Amanita muscaria (L.) Lam., 1783' -> 'Amanita muscaria'
        s = names.species(None, c)
        assert s.binomial == " ".join(c.split()[:2]), c
        assert s.note in ("authorship", "genus_from_name")


def test_real_bioscan_labels(parser):
    f = REALDATA / "bioscan1m" / "prerelease_small_dataset_validation_metadata_with_genus_species.tsv"
    if not f.exists():
        pytest.skip("../shared/realdata is not present")
    rows = list(csv.DictReader(open(f, encoding="utf-8"), delimiter="\t"))
    taken, refused = set(), set()
    for r in rows:
        if not r["species"]:
            continue
        g, _ = names.uninomial(r["genus"])
        s = names.species(g, r["species"])
        (taken if s.epithet else refused).add(r["species"])
    assert {"Coleomegilla maculata", "Xyleborus ferrugineus", "Cortinicara gibbosa"} <= taken
    assert {"Chelonus Malaise2690", "Bactridium sp. BYU CO898", "ChrysSA sp. 55", "Monomorium indet",
            "tetraMalaise01 Malaise245", "Palmistichus ixtlilxochitliDHJ01"} <= refused
    assert all(" " in t and not any(ch.isdigit() for ch in t) for t in taken)

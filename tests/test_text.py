"""The text module: BioCLIP's exact strings, and no degenerate string for any lineage, common name or language."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tol_builder.text import LANGUAGE_TYPES, NAME_TYPES, TEXT_TYPES, text_keys, taxon_texts

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
MAGPIE = dict(zip(RANKS, ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia")))
TAG = ("kingdom Animalia phylum Chordata class Aves order Passeriformes family Corvidae genus Pica "
       "species hudsonia")
# ../shared/SOURCES.md, "BioCLIP text strings" (its taxonTag_com row abbreviates the tagged lineage)
BIOCLIP_MAGPIE = {
    "scientific_name": "Pica hudsonia",
    "taxonomic_name": "Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia",
    "common_name": "black-billed magpie",
    "sci": "a photo of Pica hudsonia.",
    "com": "a photo of black-billed magpie.",
    "taxon": "a photo of Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia.",
    "taxonTag": f"a photo of {TAG}.",
    "sci_com": "a photo of Pica hudsonia with common name black-billed magpie.",
    "taxon_com": "a photo of Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia with common name "
                 "black-billed magpie.",
    "taxonTag_com": f"a photo of {TAG} with common name black-billed magpie.",
}
MIDGES = {"kingdom": "Animalia", "phylum": "Arthropoda", "class": "Insecta", "order": "Diptera",
          "family": "Cecidomyiidae", "genus": None, "species": None}


def test_full_taxon_gives_bioclip_strings_exactly():
    t = taxon_texts(MAGPIE, "black-billed magpie")
    assert t.captions == BIOCLIP_MAGPIE
    assert list(t.captions) == list(TEXT_TYPES) == text_keys()
    assert t.names["taxon_com"] == ("Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia "
                                    "with common name black-billed magpie")
    assert t.names["taxonTag"] == TAG and t.names["common_name"] == "black-billed magpie"
    assert (t.lowest_rank, t.rank_status, t.fallback_languages) == ("species", None, ())
    assert t.to_json() == {"texts": BIOCLIP_MAGPIE, "lowest_rank": "species", "rank_status": None,
                           "fallback_languages": []}


def test_family_only_taxon_names_its_family():
    t = taxon_texts(MIDGES, None)
    assert t.captions["sci"] == t.captions["com"] == t.captions["sci_com"] == "a photo of Cecidomyiidae."
    assert t.captions["scientific_name"] == t.captions["common_name"] == "Cecidomyiidae"
    lineage = "Animalia Arthropoda Insecta Diptera Cecidomyiidae"
    assert t.captions["taxon"] == t.captions["taxon_com"] == f"a photo of {lineage}."
    assert t.captions["taxonTag_com"] == ("a photo of kingdom Animalia phylum Arthropoda class Insecta order Diptera "
                                          "family Cecidomyiidae.")
    assert (t.lowest_rank, t.fallback_languages) == ("family", ("en",))


def test_genus_only_taxon_is_named_by_its_genus():
    t = taxon_texts({**MAGPIE, "species": ""}, "magpies")
    assert t.captions["scientific_name"] == "Pica"
    assert t.captions["sci_com"] == "a photo of Pica with common name magpies."
    assert t.captions["taxonTag"] == "a photo of " + TAG.removesuffix(" species hudsonia") + "."
    assert t.lowest_rank == "genus" and t.fallback_languages == ()


def test_epithet_without_genus_is_left_out_and_alone_is_an_error():
    t = taxon_texts({"family": "Corvidae", "species": "hudsonia"}, None)
    assert not any("hudsonia" in c for c in t.captions.values())
    assert t.captions["taxonTag"] == "a photo of family Corvidae." and t.lowest_rank == "family"
    with pytest.raises(ValueError, match="only a species epithet"):
        taxon_texts({"species": "hudsonia"})


@pytest.mark.parametrize("common", [None, "", "   \t", float("nan"), "None", "nan", "NULL", " . "])
def test_missing_common_name_falls_back_without_with_common_name(common):
    t = taxon_texts(MAGPIE, common)
    assert t.captions["common_name"] == "Pica hudsonia" and t.captions["com"] == "a photo of Pica hudsonia."
    for combined, plain in (("sci_com", "sci"), ("taxon_com", "taxon"), ("taxonTag_com", "taxonTag")):
        assert t.captions[combined] == t.captions[plain] == BIOCLIP_MAGPIE[plain]
    assert t.fallback_languages == ("en",)


@pytest.mark.parametrize("common", ["pica hudsonia", "PICA  HUDSONIA", " Pica\thudsonia. ", "Pica Hudsonia",
                                    "animalia chordata aves passeriformes corvidae pica hudsonia"])
def test_common_name_equal_to_a_scientific_form_counts_as_missing(common):
    t = taxon_texts(MAGPIE, common)
    assert t.captions["sci_com"] == "a photo of Pica hudsonia."
    assert t.captions["taxon_com"] == BIOCLIP_MAGPIE["taxon"]
    assert "with common name" not in " ".join(t.captions.values()) and t.fallback_languages == ("en",)


def test_extra_languages_with_and_without_a_name():
    t = taxon_texts(MAGPIE, "black-billed magpie", common_names={"es": "urraca de pico negro", "fr": None},
                    languages=("en", "es", "fr"))
    assert list(t.captions) == text_keys(("en", "es", "fr")) == [
        *TEXT_TYPES, *(f"{k}_es" for k in LANGUAGE_TYPES), *(f"{k}_fr" for k in LANGUAGE_TYPES)]
    assert {k: v for k, v in t.captions.items() if k in TEXT_TYPES} == BIOCLIP_MAGPIE
    assert t.captions["common_name_es"] == "urraca de pico negro"
    assert t.captions["com_es"] == "a photo of urraca de pico negro."
    assert t.captions["sci_com_es"] == "a photo of Pica hudsonia with common name urraca de pico negro."
    assert t.captions["taxonTag_com_es"] == f"a photo of {TAG} with common name urraca de pico negro."
    assert t.captions["common_name_fr"] == "Pica hudsonia" and t.captions["com_fr"] == BIOCLIP_MAGPIE["sci"]
    assert t.captions["taxon_com_fr"] == BIOCLIP_MAGPIE["taxon"]
    assert t.fallback_languages == ("fr",) and t.to_json()["fallback_languages"] == ["fr"]


def test_english_from_common_names_when_common_name_is_missing():
    t = taxon_texts(MAGPIE, None, common_names={"en": "black-billed magpie"})
    assert t.captions == BIOCLIP_MAGPIE


def test_language_keys_keep_one_order():
    assert text_keys(("es", "en", "es", "zh-Hant")) == text_keys(("en", "es", "zh-Hant"))
    assert text_keys(("es",))[len(TEXT_TYPES):] == [f"{k}_es" for k in LANGUAGE_TYPES]
    t = taxon_texts(MAGPIE, "black-billed magpie", languages=("fra",))  # English keys stay without "en"
    assert list(t.captions) == text_keys(("fra",)) and t.fallback_languages == ("fra",)


@pytest.mark.parametrize("code", ["", "EN", "english", "e", "es_ES", "es-", " es", None])
def test_bad_language_code_is_refused(code):
    with pytest.raises(ValueError, match="language code"):
        taxon_texts(MAGPIE, languages=("en", code))
    with pytest.raises(ValueError, match="language code"):
        text_keys((code,))


def test_whitespace_missing_values_and_casing_are_cleaned():
    pd = pytest.importorskip("pandas")
    ranks = {"kingdom": "  animalia ", "phylum": float("nan"), "class": pd.NA, "order": "None",
             "family": "corvidae.", "genus": "pica", "species": "  Hudsonia\t"}
    t = taxon_texts(ranks, "  black-billed \n magpie.  ")
    assert t.captions["taxon_com"] == "a photo of Animalia Corvidae Pica hudsonia with common name black-billed magpie."
    assert t.captions["taxonTag"] == "a photo of kingdom Animalia family Corvidae genus Pica species hudsonia."
    # only the first character is raised (BioCLIP's str.capitalize() also lowered the rest)
    assert taxon_texts({"genus": "mcGregoria"}).captions["sci"] == "a photo of McGregoria."


@pytest.mark.parametrize("ranks", [{}, dict.fromkeys(RANKS), {"genus": " ", "family": float("nan")}])
def test_no_rank_is_an_error(ranks):
    with pytest.raises(ValueError, match="no rank at all"):
        taxon_texts(ranks, "magpie")


def test_unknown_keys_and_values_are_errors():
    with pytest.raises(ValueError, match="klass"):
        taxon_texts({"klass": "Aves", "genus": "Pica"})
    with pytest.raises(ValueError, match="confirmed_rank 'tribe'"):
        taxon_texts(MAGPIE, confirmed_rank="tribe")
    with pytest.raises(TypeError, match="genus"):
        taxon_texts({"genus": 42})


@pytest.mark.parametrize("confirmed, lowest_known, status", [
    ("species", "species", "confirmed"), ("genus", "species", "source_asserted"),
    ("species", "family", "confirmed"), ("order", "family", "source_asserted"), ("kingdom", "kingdom", "confirmed")])
def test_rank_status_compares_lowest_rank_with_confirmed_rank(confirmed, lowest_known, status):
    ranks = {r: v for r, v in MAGPIE.items() if RANKS.index(r) <= RANKS.index(lowest_known)}
    t = taxon_texts(ranks, confirmed_rank=confirmed)
    assert (t.lowest_rank, t.rank_status) == (lowest_known, status)


# ----------------------------------------------------------------------------------------------- properties
WORD = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).filter(
    lambda w: w not in ("none", "nan", "null"))
SPACE = st.sampled_from([" ", "  ", "\t", " \n "])
EDGE = st.sampled_from(["", " ", "  ", "\t"])
MISSING = st.sampled_from([None, "", "   ", float("nan"), "None", "nan"])
LANGUAGES = ("en", "es", "fr", "de", "zh-Hant", "pt-BR")


@st.composite
def noisy(draw, words):
    """`words` joined by random whitespace, padded, maybe with a final "."."""
    gaps = [draw(SPACE) for _ in words[1:]]
    body = words[0] + "".join(g + w for g, w in zip(gaps, words[1:]))
    return draw(EDGE) + body + draw(st.sampled_from(["", ".", " ."])) + draw(EDGE)


@st.composite
def lineages(draw):
    """(ranks as given, the clean name of each known rank) with any subset of ranks missing, one at least."""
    known = draw(st.sets(st.sampled_from(RANKS[:-1]), min_size=1))
    ranks, clean = {}, {}
    for rank in RANKS:
        if rank in known or (rank == "species" and draw(st.booleans())):
            words = draw(st.lists(WORD, min_size=1, max_size=2 if rank == "species" else 1))
            if rank == "species":
                clean[rank] = " ".join(words)
                words = [w.upper() if draw(st.booleans()) else w for w in words]
            else:
                words[0] = draw(st.sampled_from([words[0], words[0].capitalize()]))
                clean[rank] = " ".join(words)
                clean[rank] = clean[rank][0].upper() + clean[rank][1:]
            ranks[rank] = draw(noisy(words))
        elif draw(st.booleans()):
            ranks[rank] = draw(MISSING)
    return ranks, clean


@st.composite
def common_name_for(draw, scientific_forms):
    """(the name as given, its clean form or None when the text must fall back to the scientific name)."""
    kind = draw(st.sampled_from(["missing", "same", "name"]))
    if kind == "missing":
        return draw(MISSING), None
    if kind == "same":  # a scientific form in another case and spacing
        words = draw(st.sampled_from(scientific_forms)).split()
        return draw(noisy([w.swapcase() if draw(st.booleans()) else w for w in words])), None
    words = draw(st.lists(WORD, min_size=2, max_size=4))  # "a-b ..." never equals a rank name (no "-")
    words[:2] = [f"{words[0]}-{words[1]}"]
    return draw(noisy(words)), " ".join(words)


@st.composite
def taxa(draw):
    ranks, clean = draw(lineages())
    parts = [clean[r] for r in RANKS[:-1] if r in clean]
    binomial = "genus" in clean and "species" in clean
    sci = f"{clean['genus']} {clean['species']}" if binomial else parts[-1]
    taxon = " ".join(parts + ([clean["species"]] if binomial else []))
    languages = tuple(draw(st.lists(st.sampled_from(LANGUAGES), max_size=4)))
    commons = {code: draw(common_name_for([sci, taxon])) for code in dict.fromkeys(("en", *languages))}
    return ranks, clean, sci, taxon, languages, commons


def squash(name: str) -> str:
    return "".join(name.split()).casefold()


@given(taxa(), st.sampled_from((None, *RANKS)))
def test_every_lineage_gives_every_key_and_no_degenerate_string(taxon_case, confirmed):
    ranks, clean, sci, taxon, languages, commons = taxon_case
    en_given = commons.pop("en")[0]
    t = taxon_texts(ranks, en_given, common_names={c: g for c, (g, _) in commons.items()}, languages=languages,
                    confirmed_rank=confirmed)
    assert list(t.captions) == list(t.names) == text_keys(languages)
    lowest = "species" if "genus" in clean and "species" in clean else [r for r in RANKS[:-1] if r in clean][-1]
    assert t.lowest_rank == lowest
    assert t.rank_status == (None if confirmed is None else
                             "confirmed" if RANKS.index(lowest) <= RANKS.index(confirmed) else "source_asserted")
    assert t.names["scientific_name"] == t.names["sci"] == sci and t.names["taxonomic_name"] == taxon

    for key, caption in t.captions.items():
        name = t.names[key]
        assert caption == name if key.startswith(NAME_TYPES) else caption == f"a photo of {name}."
        assert name and name == name.strip() and "  " not in name and not name.endswith(".")
        assert "None" not in name.split() and "nan" not in name.split() and "\t" not in name
        if " with common name " in name:
            before, after = name.split(" with common name ")
            assert after and squash(before) != squash(after)
    assert not any(c.startswith("a photo of .") or c.endswith("..") for c in t.captions.values())


@given(taxa())
def test_fallback_languages_say_where_the_scientific_form_was_used(taxon_case):
    ranks, clean, sci, taxon, languages, commons = taxon_case
    en_given, en_clean = commons.pop("en")
    t = taxon_texts(ranks, en_given, common_names={c: g for c, (g, _) in commons.items()}, languages=languages)
    expected = {"en": en_clean, **{c: name for c, (_, name) in commons.items() if c != "en"}}
    assert t.fallback_languages == tuple(c for c, name in expected.items() if name is None)
    for code, name in expected.items():
        suffix = "" if code == "en" else f"_{code}"
        if name is None:
            assert t.names[f"common_name{suffix}"] == t.names[f"com{suffix}"] == t.names[f"sci_com{suffix}"] == sci
            assert t.names[f"taxon_com{suffix}"] == taxon and t.names[f"taxonTag_com{suffix}"] == t.names["taxonTag"]
        else:
            assert t.names[f"common_name{suffix}"] == name
            assert t.names[f"taxon_com{suffix}"] == f"{taxon} with common name {name}"


@given(st.dictionaries(st.sampled_from(RANKS), MISSING), st.one_of(st.none(), WORD))
def test_no_known_rank_is_an_error(ranks, epithet):
    if epithet is not None:
        ranks["species"] = epithet
    with pytest.raises(ValueError, match="no rank at all|only a species epithet"):
        taxon_texts(ranks, "magpie")

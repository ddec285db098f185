"""Scientific names: canonical forms through gnparser, with the decisions the taxonomy stage needs.

This module owns name parsing only (no tables, no authorities). It turns a raw label into what may be looked
up: authorship and years removed, `subsp.`/`var.`/trinomials reduced to the species, and hybrids, `sp.`/`cf.`
and interim names (BIOSCAN's `Malaise2939`) recognised and *not* taken as species.

gnparser (Global Names parser, Go, through the `gnparser` Python wrapper) does the parsing. Names that are
already plain (`Pica hudsonia`, `Corvidae`) take a fast path that gives the same answer without the call:
`tests/test_taxonomy_names.py` checks the two agree. Each distinct string is parsed once per build.
Where gnparser cannot load (no wheel for the platform), `rule_parse` stands in, with a warning: a small
documented rule set that handles the forms this stage meets (authorship, rank markers, sp./cf., ×).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
from dataclasses import dataclass

# Values that mean "no value" in the sources (BIOSCAN writes not_classified, BioCLIP met the others in EOL).
MISSING = frozenset({"", "not_classified", "not classified", "unknown", "unidentified", "(unidentified)",
                     "pleasehelp", "incertae sedis", "incertae_sedis", "none", "null", "na", "n/a", "nan", "-"})

# Words that stand for an unnamed species rather than an epithet (gnparser calls these surrogates).
SURROGATE_WORDS = frozenset({"sp", "sp.", "spp", "spp.", "sp.nov", "sp.nov.", "cf", "cf.", "aff", "aff.", "nr",
                             "nr.", "indet", "indet.", "gen", "gen.", "ssp", "ssp.", "x", "×", "var", "var.",
                             "subsp", "subsp.", "f", "f.", "forma", "complex", "group", "agg", "agg."})

_UNINOMIAL = re.compile(r"^[A-Za-z][a-z]+$|^[A-Z]+$")
_GENUS = re.compile(r"^[A-Z][a-z]+$")
_EPITHET = re.compile(r"^[a-z]+(-[a-z]+)*$")
_DIGIT = re.compile(r"\d")
# Endings of names above genus (family, subfamily, tribe, superfamily, order): such a first word of a
# label like "Psychodidae gen. sp." is not a genus.
_ABOVE_GENUS_ENDINGS = ("idae", "inae", "aceae", "oideae", "oidea", "ini", "ales")


# ------------------------------------------------------------------------------------------ gnparser
class _GnParser:
    """The gnparser shared library, called through ctypes so that each result's memory is freed.

    (The wrapper's own `parse_to_string` leaks the returned C string; its library is the same file.)"""

    def __init__(self) -> None:
        try:
            import gnparser  # noqa: F401  (the Python wrapper ships libgnparser.so/.dylib/.dll)
        except Exception as e:  # pragma: no cover - depends on the installation
            raise ImportError("gnparser is needed by the taxonomy stage: pip install gnparser "
                              f"(Python wrapper of the Go Global Names parser) [{e}]") from e
        import platform

        lib_name = {"linux": "libgnparser.so", "darwin": "libgnparser.dylib",
                    "windows": "libgnparser.dll"}[platform.system().lower()]
        self._lib = ctypes.CDLL(os.path.join(os.path.dirname(gnparser.__file__), lib_name))
        self._parse = self._lib.ParseToString
        self._parse.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
        self._parse.restype = ctypes.c_void_p
        self._free = self._lib.FreeMemory
        self._free.argtypes = [ctypes.c_void_p]
        self._free.restype = None

    def parse(self, name: str) -> dict:
        ptr = self._parse(name.encode("utf-8"), b"compact", None, 0, 0)
        try:
            return json.loads(ctypes.string_at(ptr).decode("utf-8"))
        finally:
            self._free(ptr)


@functools.lru_cache(maxsize=1)
def _parser():
    """gnparser when it loads on this machine; else the documented rule-based fallback (with a warning)."""
    try:
        return _GnParser()
    except Exception as e:  # no wheel for this platform, library missing: parse by rules
        import warnings

        warnings.warn(f"gnparser is not usable here ({e}); names are parsed by tol_builder's rule-based "
                      "fallback (names.rule_parse), which knows fewer name forms", RuntimeWarning, stacklevel=3)
        return _RuleParser()


def gnparse(name: str) -> dict:
    """gnparser's compact JSON for one name, as a dict (keys: parsed, canonical, cardinality, hybrid,
    surrogate, rank, quality, qualityWarnings, ...)."""
    return _parser().parse(name)


# ------------------------------------------------------------------------- rule-based fallback parser
_RANK_MARKERS = frozenset({"subsp.", "subsp", "ssp.", "ssp", "var.", "var", "f.", "forma", "subvar.", "fo.",
                           "morph", "nothosubsp.", "nothovar.", "cv."})
_APPROX = frozenset({"sp", "sp.", "spp", "spp.", "sp.nov", "sp.nov.", "aff", "aff.", "nr", "nr.", "indet", "indet."})
_PARTICLES = frozenset({"de", "van", "von", "der", "den", "du", "da", "di", "del", "la", "le", "ex", "et", "in",
                        "d'", "y", "al.", "non", "sensu", "emend."})
_GENUS_WORD = re.compile(r"^[A-Z][a-z]+$")
_EPITHET_WORD = re.compile(r"^[a-z]+(-[a-z]+)*$")


def rule_parse(name: str) -> dict:
    """A small rule-based stand-in for gnparser's compact output, used only when gnparser cannot load.

    Rules: a hybrid sign (× or a lone x between names) makes a hybrid; cf. is a comparison; sp./spp./
    aff./nr./indet. an approximation (as gnparser classifies them); the name is the capitalised genus
    word, then lower-case epithets, skipping rank markers (subsp., var., f.) and a parenthesised subgenus;
    the first word that is none of these starts the authorship, which is dropped."""
    words = " ".join(name.replace("×", " × ").split()).split()
    out: dict = {"parsed": False, "verbatim": name, "cardinality": 0, "parserVersion": "rule-based"}
    if not words or not _GENUS_WORD.match(words[0] if words[0] != "×" else "X"):
        if words and words[0] == "×" and len(words) > 1 and _GENUS_WORD.match(words[1]):
            out.update(parsed=True, hybrid="NAMED_HYBRID", canonical={"simple": " ".join(words[1:3]),
                                                                      "full": "× " + " ".join(words[1:3])},
                       cardinality=min(2, len(words) - 1))
        return out
    lw = [w.lower() for w in words]
    canonical = [words[0]]
    i = 1
    if i < len(words) and words[i].startswith("(") and words[i].endswith(")") and _GENUS_WORD.match(words[i][1:-1]):
        i += 1  # subgenus
    surrogate = None
    while i < len(words):
        w, wl = words[i], lw[i]
        if wl in ("cf.", "cf"):
            surrogate = "COMPARISON"
        elif wl in _APPROX:
            surrogate = surrogate or "APPROXIMATION"
            break
        elif wl in _RANK_MARKERS:
            pass
        elif w in ("×", "x"):
            out.update(parsed=True, hybrid="NAMED_HYBRID" if len(canonical) == 1 else "HYBRID_FORMULA",
                       canonical={"simple": " ".join(canonical + [x for x in words[i + 1:i + 2]
                                                                  if _EPITHET_WORD.match(x)]),
                                  "full": " ".join(words)}, cardinality=len(canonical) + 1)
            return out
        elif _EPITHET_WORD.match(w) and wl not in _PARTICLES and len(canonical) < 3:
            canonical.append(w)
        else:
            break  # authorship (or an unparsed tail)
        i += 1
    simple = " ".join(canonical)
    out.update(parsed=True, canonical={"simple": simple, "full": simple},
               cardinality=0 if surrogate == "APPROXIMATION" else len(canonical))
    if surrogate:
        out["surrogate"] = surrogate
    return out


class _RuleParser:
    def parse(self, name: str) -> dict:
        return rule_parse(name)


def gnparser_version() -> str:
    return gnparse("Pica pica").get("parserVersion", "")


# ------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Species:
    """What a raw species label gives: the record's genus and, when it names a species, the binomial.

    `genus` is the record's genus (given, or taken from the name when the record has none); `name_genus`
    is the genus word of the species name itself (they differ when a source pairs a genus with a species
    filed under another genus); `epithet` is None when the label does not name a species.
    `note` says what was done or why no species was taken: "" (plain), "authorship" (removed),
    "infraspecific" (reduced to the species), "genus_from_name" (genus taken from the name),
    "genus_mismatch" (the name's genus differs from the record's), "hybrid", "approximate" (sp./spp.),
    "comparison" (cf./aff.), "interim" (a placeholder such as Malaise2939), "no_epithet", "unparsed"."""

    genus: str | None
    epithet: str | None
    note: str = ""
    name_genus: str | None = None

    @property
    def binomial(self) -> str | None:
        g = self.name_genus or self.genus
        return f"{g} {self.epithet}" if g and self.epithet else None


NOT_SPECIES_NOTES = frozenset({"hybrid", "approximate", "comparison", "interim", "no_epithet", "unparsed"})


def clean(value: str | None) -> str | None:
    """Whitespace collapsed, missing markers (not_classified, unknown, ...) turned into None."""
    if value is None:
        return None
    v = " ".join(str(value).split())
    return None if v.lower() in MISSING else v


def _capital(word: str) -> str:
    return word[:1].upper() + word[1:].lower()


def uninomial(value: str | None) -> tuple[str | None, str]:
    """A name above species (kingdom to genus): (canonical name or None, note).

    `Corvidae` stays; `CORVIDAE`/`corvidae` become `Corvidae`; `Laelia Lindl.` loses its authorship; a
    placeholder with digits (`Malaise01`) or anything that is not one word gives None."""
    v = clean(value)
    if v is None:
        return None, ""
    if _UNINOMIAL.match(v):
        return _capital(v), ""
    first = v.split()[0]
    if _DIGIT.search(first) or (any(ch.isupper() for ch in first[1:]) and not first.isupper()):
        return None, "interim"  # placeholders: Malaise01, ChrysSA, encyrMalaise01
    p = gnparse(v)
    if p.get("parsed") and p.get("cardinality") == 1 and not p.get("surrogate") and not p.get("hybrid"):
        name = p["canonical"]["simple"]
        return _capital(name), ("authorship" if name != v else "")
    return None, "unparsed"


def species(genus: str | None, value: str | None) -> Species:
    """Parse a raw species label, given the (already normalised) genus of the same record.

    The label may be an epithet (`hudsonia`, iNat21), a binomial (`Pica hudsonia`, BIOSCAN), a name with
    authorship (`Pica hudsonia (Sabine, 1823)`), a trinomial or an infraspecific name (reduced to the
    species), or not a species at all (hybrid, `sp.`, `cf.`, an interim name): then `epithet` is None."""
    v = clean(value)
    if v is None:
        return Species(genus, None, "")
    words = v.split()
    if len(words) == 1 or not (words[0][:1].isupper() or words[0][:1] == "×"):
        # an epithet, or epithet + infraspecific parts: the genus comes from the record
        if genus is None:
            return Species(None, None, "interim" if _DIGIT.search(v) else "no_epithet")
        full = f"{genus} {v}"
    else:
        full = v
    fw = full.split()
    if len(fw) == 2 and _GENUS.match(fw[0]) and _EPITHET.match(fw[1]) and fw[1] not in SURROGATE_WORDS:
        # fast path: a plain binomial, which gnparser returns unchanged
        return _with_genus(genus, fw[0], fw[1], "")
    p = gnparse(full)
    has_digit = bool(_DIGIT.search(full))
    if not p.get("parsed"):
        first = fw[0]
        g = genus or (first if _GENUS.match(first) else None)
        return Species(g, None, "interim" if has_digit else "unparsed")
    g = _genus_of(p, genus)
    if p.get("hybrid"):
        return Species(g, None, "hybrid")
    surrogate = p.get("surrogate")
    if surrogate:
        return Species(g, None, "comparison" if surrogate == "COMPARISON" else
                       ("interim" if has_digit and surrogate != "APPROXIMATION" else "approximate"))
    card = p.get("cardinality") or 0
    simple = p["canonical"]["simple"].split()
    if card < 2 or len(simple) < 2:
        return Species(g, None, "interim" if has_digit else "no_epithet")
    epithet = simple[1].lower()
    if epithet in SURROGATE_WORDS or epithet.rstrip(".") in SURROGATE_WORDS:
        return Species(g, None, "approximate")  # "Monomorium indet": gnparser takes indet for an epithet
    if not _EPITHET.match(epithet) or any(ch.isupper() for ch in simple[1]):
        return Species(g, None, "interim")
    note = "infraspecific" if card > 2 else ("authorship" if p["canonical"]["simple"] != full else "")
    return _with_genus(genus, _capital(simple[0]), epithet, note)


def _with_genus(genus: str | None, name_genus: str, epithet: str, note: str) -> Species:
    if genus is None:
        return Species(name_genus, epithet, note or "genus_from_name", name_genus)
    if genus.lower() != name_genus.lower():
        return Species(genus, epithet, note or "genus_mismatch", name_genus)
    return Species(genus, epithet, note, genus)


def _genus_of(p: dict, genus: str | None) -> str | None:
    """The record's genus if it has one, else the first word of the parsed name (not a hybrid genus)."""
    if genus:
        return genus
    canonical = (p.get("canonical") or {}).get("simple", "")
    full = (p.get("canonical") or {}).get("full", "")
    if not canonical or full.startswith("×"):
        return None
    first = _capital(canonical.split()[0])
    return first if _GENUS.match(first) and not first.endswith(_ABOVE_GENUS_ENDINGS) else None


def scientific(value: str | None) -> tuple[str | None, str | None, str]:
    """A scientific name of unknown rank: (uninomial or None, binomial or None, note).

    Used for records that give a name but no ranks (EOL provider names, generic table sources)."""
    v = clean(value)
    if v is None:
        return None, None, ""
    words = v.split()
    if len(words) == 1:
        u, note = uninomial(v)
        return u, None, note
    s = species(None, v)
    if s.binomial:
        return None, s.binomial, s.note
    if s.genus and s.note in ("approximate", "comparison", "no_epithet", "hybrid", "interim"):
        return s.genus, None, s.note  # "Carex sp." names the genus
    u, note = uninomial(v)
    return u, None, note or s.note

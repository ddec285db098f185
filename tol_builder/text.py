"""Text strings of a resolved taxon: every BioCLIP caption type, its bare name, and extra languages.

Owns the strings only (no I/O, no torch, no catalog access). The shard writer (one `<uid>.<key>.txt` member per
key of `text_keys`), the trainer (picks a type per batch) and zero-shot evaluation (wraps `names[key]` in its
own templates) all call `taxon_texts`, once per distinct taxon or once per sample: it is plain string work.

For a full taxon with a common name the strings are exactly BioCLIP's (scripts/evobio10m/make_wds.py, see
../shared/SOURCES.md). Where BioCLIP wrote degenerate strings, these rules apply instead:

* Never a degenerate string. The scientific name is "Genus epithet" when both are known, else the name of the
  lowest known rank (a family-only BIOSCAN taxon gives "a photo of Cecidomyiidae.", never "a photo of .").
  An epithet without a genus names nothing on its own and reads as a binomial when appended to a family, so
  it is left out of every string (lowest_rank is then the rank above it); an epithet alone is an error.
* No "X with common name X". A missing or blank common name falls back to the scientific name, as in BioCLIP,
  and then `sci_com`, `taxon_com` and `taxonTag_com` equal `sci`, `taxon` and `taxonTag`. The same holds when
  the common name equals the scientific, taxonomic or tagged name ignoring case and spacing.
* Clean names. Control characters (ESC, NUL, the C0 and C1 controls but whitespace) and the bidirectional
  formatting characters (U+061C, U+200E/F, U+202A-202E, U+2066-2069: they reorder what a reader sees) are
  removed and counted (`stripped`; the dataset card reports the total), whitespace is collapsed, no
  leading/trailing spaces, a name ending in "." is trimmed before wrapping (no ".." at the end). None, NaN,
  pandas.NA and the strings "None", "nan", "null", "<NA>" (what str() makes of a missing value) count as
  missing, never as a name.
* Casing as BioCLIP: kingdom to genus get a capital first character (the rest is kept: BioCLIP's
  str.capitalize() lower-cased it), the epithet is lower case. Common names are kept as given.
* Each result records `lowest_rank` (the most specific rank its text names) and `rank_status`: "confirmed"
  when lowest_rank is at or above `confirmed_rank`, "source_asserted" below it, None without confirmed_rank.
* Extra languages: `languages` such as ("en", "es"). English is always the plain keys (common_name, com, ...)
  exactly as BioCLIP; each other language L adds f"{t}_{L}" for t in LANGUAGE_TYPES, with the same rules.
  A taxon without a name in L gets its scientific form (the key always exists) and L is listed in
  `fallback_languages` ("en" too when English was missing or equal to the scientific name).
* `names[key]` is the bare name of each type: captions[k] == f"a photo of {names[k]}." for caption types and
  captions[k] == names[k] for the name types (scientific_name, taxonomic_name, common_name[_L]).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

from .records import RANKS

TEXT_TYPES = ("scientific_name", "taxonomic_name", "common_name", "sci", "com", "taxon", "taxonTag",
              "sci_com", "taxon_com", "taxonTag_com")          # BioCLIP's keys, in this order
MIXED_TYPES = ("sci", "com", "taxon", "sci_com", "taxon_com")   # BioCLIP's per-batch training mix
LANGUAGE_TYPES = ("common_name", "com", "sci_com", "taxon_com", "taxonTag_com")  # get a `_<lang>` twin
NAME_TYPES = ("scientific_name", "taxonomic_name", "common_name")  # bare names: not wrapped in "a photo of"

_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]+)?")
# controls that are not whitespace (whitespace ones are collapsed to a space), and the bidi formatting marks
_UNSAFE = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_MISSING_STRINGS = frozenset({"none", "nan", "null", "<na>"})
_RANK_INDEX = {rank: i for i, rank in enumerate(RANKS)}


@dataclass(frozen=True)
class TaxonTexts:
    captions: dict[str, str]   # key -> the exact string of `<key>.txt` in a shard, for every text_keys() key
    names: dict[str, str]      # key -> the bare name of each caption type (no "a photo of", no final ".")
    lowest_rank: str | None    # most specific rank the text names
    rank_status: str | None    # "confirmed" / "source_asserted" (vs confirmed_rank) / None when unknown
    fallback_languages: tuple[str, ...]  # languages whose common name was missing (scientific form used)
    stripped: int = 0          # control and bidi characters removed from the names this taxon's texts used

    def to_json(self) -> dict:
        return {"texts": dict(self.captions), "lowest_rank": self.lowest_rank, "rank_status": self.rank_status,
                "fallback_languages": list(self.fallback_languages)}


@lru_cache(maxsize=64)
def _extra_languages(languages: tuple[str, ...]) -> tuple[str, ...]:
    """The validated languages other than "en", in the given order, each once."""
    for code in languages:
        if not isinstance(code, str) or not _LANGUAGE_CODE.fullmatch(code):
            raise ValueError(f"text language code {code!r} is not like 'es', 'fra' or 'zh-Hant'")
    return tuple(code for code in dict.fromkeys(languages) if code != "en")


@lru_cache(maxsize=64)
def _keys(languages: tuple[str, ...]) -> tuple[str, ...]:
    return TEXT_TYPES + tuple(f"{t}_{code}" for code in _extra_languages(languages) for t in LANGUAGE_TYPES)


def text_keys(languages: Sequence[str] = ("en",)) -> list[str]:
    """Every key a sample carries: TEXT_TYPES, then LANGUAGE_TYPES as f"{t}_{L}" per extra language L."""
    return list(_keys(tuple(languages)))


def _clean(value: object, field: str, stripped: list[int]) -> str:
    """A name without control or bidi characters (each one removed adds to stripped[0]), whitespace collapsed
    and a final "." trimmed; "" when missing."""
    if not isinstance(value, str):
        try:
            if value is None or value != value:  # None, NaN
                return ""
        except TypeError:  # pandas.NA: its comparisons have no truth value
            return ""
        raise TypeError(f"{field} must be a string or missing, got {type(value).__name__} {value!r}")
    value, n = _UNSAFE.subn("", value)
    stripped[0] += n
    name = " ".join(value.split()).rstrip(". ")
    return "" if name.lower() in _MISSING_STRINGS else name


def _squash(name: str) -> str:
    return "".join(name.split()).casefold()


def taxon_texts(ranks: Mapping[str, str | None], common_name: str | None = None, *,
                common_names: Mapping[str, str | None] | None = None,
                languages: Sequence[str] = ("en",),
                confirmed_rank: str | None = None) -> TaxonTexts:
    """Every text type of one taxon (see the module docstring for the rules).

    ranks: kingdom..genus and species (the lower-case epithet); None, "" or absent = unknown.
    common_name: the English common name; common_names["en"] is used when it is missing.
    common_names: extra languages, code -> name (only the codes in `languages` are used).
    """
    unknown = set(ranks) - _RANK_INDEX.keys()
    if unknown:
        raise ValueError(f"unknown rank key(s) {sorted(unknown)}; expected some of {list(RANKS)}")
    if confirmed_rank is not None and confirmed_rank not in _RANK_INDEX:
        raise ValueError(f"confirmed_rank {confirmed_rank!r} is not one of {list(RANKS)}")
    extra = _extra_languages(tuple(languages))

    stripped = [0]           # control and bidi characters removed (_clean)
    tagged: list[str] = []   # "kingdom Animalia", ...
    parts: list[str] = []    # "Animalia", ...
    lowest = None
    for rank in RANKS[:-1]:
        name = _clean(ranks.get(rank), rank, stripped)
        if name:
            name = name[0].upper() + name[1:]
            parts.append(name)
            tagged.append(f"{rank} {name}")
            lowest = rank
    epithet = _clean(ranks.get("species"), "species", stripped).lower()
    if lowest is None:
        what = f"only a species epithet ({epithet!r}) without a genus" if epithet else "no rank at all"
        raise ValueError(f"taxon has {what}: {dict(ranks)!r}")
    if epithet and lowest == "genus":
        sci = f"{parts[-1]} {epithet}"
        parts.append(epithet)
        tagged.append(f"species {epithet}")
        lowest = "species"
    else:
        sci = parts[-1]
    taxon, tag = " ".join(parts), " ".join(tagged)

    if confirmed_rank is None:
        status = None
    elif _RANK_INDEX[lowest] <= _RANK_INDEX[confirmed_rank]:
        status = "confirmed"
    else:
        status = "source_asserted"

    names = {"scientific_name": sci, "taxonomic_name": taxon, "sci": sci, "taxon": taxon, "taxonTag": tag}
    scientific_forms = {_squash(sci), _squash(taxon), _squash(tag)}
    common_names = common_names or {}
    fallbacks = []
    for code in ("en", *extra):
        given = common_name if code == "en" else None
        common = _clean(given, "common_name", stripped) or \
            _clean(common_names.get(code), f"common_names[{code!r}]", stripped)
        suffix = "" if code == "en" else f"_{code}"
        if common and _squash(common) not in scientific_forms:
            names.update({f"common_name{suffix}": common, f"com{suffix}": common,
                          f"sci_com{suffix}": f"{sci} with common name {common}",
                          f"taxon_com{suffix}": f"{taxon} with common name {common}",
                          f"taxonTag_com{suffix}": f"{tag} with common name {common}"})
        else:  # BioCLIP's fallback (the scientific name), without "X with common name X"
            fallbacks.append(code)
            names.update({f"common_name{suffix}": sci, f"com{suffix}": sci, f"sci_com{suffix}": sci,
                          f"taxon_com{suffix}": taxon, f"taxonTag_com{suffix}": tag})

    keys = _keys(tuple(languages))
    names = {key: names[key] for key in keys}
    # name keys are the NAME_TYPES and their language twins (common_name_es): no caption key starts with one
    captions = {key: name if key.startswith(NAME_TYPES) else f"a photo of {name}." for key, name in names.items()}
    return TaxonTexts(captions, names, lowest, status, tuple(fallbacks), stripped[0])

"""Languages of common names: the codes and names each source writes -> one code per language.

Sources disagree on how to say a name's language: EOL's vernacularnames.csv writes ISO 639-2 (`eng`,
`spa`, `fre` or `fra`), GBIF's VernacularName.tsv ISO 639-1 (`en`, `es`; often nothing), ITIS chains the
language's English name (`English`, `French`). The curated table taxonomy/languages.csv (data, not code:
see its header) lists each language once with its `code` and every code and name sources use for it.

The rule (`Languages.code_of`), applied by the authority loaders to each distinct value a file gives:

1. empty or missing -> `und` (ISO 639-2 "undetermined");
2. trimmed, case and repeated spaces ignored: one of the table's codes (its `code` or `codes`) -> that
   language; else one of its names or aliases -> that language (codes first: the name "Ga" of the Ga
   language does not hide the code `ga` of Irish);
3. a value with a region or script subtag (`pt-BR`, `zh_Hant`) that is not itself in the table -> the
   language of its first subtag (`pt`, `zh`);
4. anything else -> `und` too; the value itself stays in the authority's `vernacular_names.language_given`
   and the loader counts such rows (`<authority>_vernaculars_language_unknown`), so a missing code can be
   found and added to taxonomy/languages.csv.

A language's code is its ISO 639-1 code where it has one, else its ISO 639-2 or 639-3 code: always two or
three lower-case letters (checked on reading, since codes end up in shard member names like `com_es`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..resources import project_path
from .curation import _rows

UNDETERMINED = "und"
# codes that name no language a caption could be written in: never a text language
NOT_A_LANGUAGE = frozenset({"und", "mis", "mul", "zxx"})
_CODE = re.compile(r"[a-z]{2,3}")
_SUBTAG = re.compile(r"[-_]")


def default_path() -> Path:
    """taxonomy/languages.csv of the project (the checkout's, or the installed package data's)."""
    return project_path("taxonomy") / "languages.csv"


def _key(value: str) -> str:
    return " ".join(value.casefold().split())


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split("|") if v.strip()]


@dataclass(frozen=True)
class Languages:
    """The table of taxonomy/languages.csv: `names` {code: English name}, `by_code` and `by_name`
    {lower-case value: code}."""

    path: Path
    names: dict[str, str] = field(default_factory=dict)
    by_code: dict[str, str] = field(default_factory=dict)
    by_name: dict[str, str] = field(default_factory=dict)

    def lookup(self, given: str | None) -> str | None:
        """The code of a language as a source wrote it; None when empty or unknown (rules 1-3)."""
        key = _key(given or "")
        if not key:
            return None
        found = self.by_code.get(key) or self.by_name.get(key)
        if found is None and _SUBTAG.search(key):
            primary = _SUBTAG.split(key, 1)[0]
            found = self.by_code.get(primary)
        return found

    def code_of(self, given: str | None) -> str:
        """The code of a language as a source wrote it, `und` when empty or unknown."""
        return self.lookup(given) or UNDETERMINED

    def suggest(self, value: str) -> str | None:
        """For a configuration error: the code meant by another code or a name (`spa`, `Spanish` -> es)."""
        code = self.lookup(value)
        return code if code and code != value else None


def read_languages(path: str | Path | None = None) -> Languages:
    """Read and check taxonomy/languages.csv (or `path`). A bad row raises ConfigError naming its line."""
    path = Path(path) if path else default_path()
    names: dict[str, str] = {}
    by_code: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for lineno, row in _rows(path, ["code", "codes", "name", "aliases"]):
        code = row["code"]
        if not _CODE.fullmatch(code):
            raise ConfigError(path, f"line {lineno}, code", "two or three lower-case letters", code)
        if code in names:
            raise ConfigError(path, f"line {lineno}, code", "a code not listed before", code)
        names[code] = row["name"]
        for column, table, values in (("codes", by_code, [code, *_split(row["codes"])]),
                                      ("aliases", by_name, [row["name"], *_split(row["aliases"])])):
            for v in values:
                k = _key(v)
                if k and table.setdefault(k, code) != code:
                    raise ConfigError(path, f"line {lineno}, {column}", f"a value of one language only "
                                      f"({v!r} is already '{table[k]}')", v)
    for needed in (UNDETERMINED, "en"):
        if needed not in names:
            raise ConfigError(path, "code", f"a row for '{needed}'", "none")
    return Languages(path, names, by_code, by_name)


__all__ = ["Languages", "read_languages", "default_path", "UNDETERMINED", "NOT_A_LANGUAGE"]

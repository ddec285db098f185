"""Curated taxonomy data: kingdom synonyms, known homonym fixes, manual overrides (CSV files in taxonomy/).

Data, not code: a user corrects the build by editing these files (lines starting with '#' are comments).
This module only reads and validates them; reconcile.py applies them.

* `kingdom_synonyms.csv` — `name,kingdom,note`: a kingdom name as an authority or source writes it, and the
  kingdom it means (Metazoa -> Animalia). Applied to given kingdoms and to every authority's lineages; an
  unranked node with such a name (DH clades) counts as the kingdom.
* `homonym_fixes.csv` — `rank,name,context,kingdom,phylum,class,order,family,note`: for a name known to
  belong to several taxa, the higher ranks to assume when a raw lineage gives `name` at `rank` and the
  `context` holds (`key=value` pairs separated by ';', keys `source` or a rank; empty = always). The fix
  only fills ranks the lineage lacks, and does not apply when a rank it gives contradicts the lineage.
  Rows are tried most specific context first, then in file order; the first that applies wins.
* `overrides.csv` — `source,taxon_ref,name,kingdom,phylum,class,order,family,genus,species,note`: a
  resolved lineage set by hand for the raw lineages of `source` (empty = any source) whose taxon reference
  (EOL page id) is `taxon_ref` and/or whose most specific name is `name` (species = epithet). Overrides
  come first; a rank they change is recorded in `conflicts` with decision `override`.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from ..errors import ConfigError
from ..records import RANKS


def _rows(path: Path, required: list[str]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV with a header, comments and blank lines skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "an existing CSV file", "not found") from None
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines())
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(path, "(header)", "a header line: " + ",".join(required), "empty file")
    reader = csv.reader([line for _, line in lines])
    header = [h.strip() for h in next(reader)]
    missing = [c for c in required if c not in header]
    if missing:
        raise ConfigError(path, "(header)", "columns " + ", ".join(required), ",".join(header))
    out = []
    for (lineno, _), values in zip(lines[1:], reader):
        if len(values) > len(header):
            raise ConfigError(path, f"line {lineno}", f"at most {len(header)} fields", len(values))
        row = {h: (values[i].strip() if i < len(values) else "") for i, h in enumerate(header)}
        out.append((lineno, row))
    return out


def read_kingdom_synonyms(path: Path) -> dict[str, str]:
    """{name: kingdom}. Each name once."""
    found: dict[str, str] = {}
    for lineno, row in _rows(path, ["name", "kingdom"]):
        name, kingdom = row["name"], row["kingdom"]
        if not name or not kingdom:
            raise ConfigError(path, f"line {lineno}", "a name and a kingdom", row)
        if name in found and found[name] != kingdom:
            raise ConfigError(path, f"line {lineno}", f"one kingdom for {name!r}", f"{found[name]} and {kingdom}")
        found[name] = kingdom
    return found


FIX_RANKS = RANKS[:5]  # kingdom .. family: the context a homonym fix supplies


def read_homonym_fixes(path: Path) -> list[dict]:
    fixes = []
    for lineno, row in _rows(path, ["rank", "name", "context", *FIX_RANKS]):
        rank, name = row["rank"].lower(), row["name"]
        if rank not in RANKS[1:6] or not name:
            raise ConfigError(path, f"line {lineno}", "rank one of phylum..genus and a name", row)
        context: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in row["context"].split(";"))):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in ("source", *RANKS) or not value.strip():
                raise ConfigError(path, f"line {lineno}, context", "key=value pairs (keys: source or a rank)", part)
            context[key] = value.strip()
        lineage = {r: row[r] for r in FIX_RANKS if row[r]}
        if not lineage:
            raise ConfigError(path, f"line {lineno}", "at least one of " + ", ".join(FIX_RANKS), row)
        if any(RANKS.index(r) >= RANKS.index(rank) for r in lineage):
            raise ConfigError(path, f"line {lineno}", f"only ranks above {rank}", row)
        fixes.append({"line": lineno, "rank": rank, "name": name, "context": context, "lineage": lineage,
                      "note": row.get("note", "")})
    # most specific context first, then file order
    return sorted(fixes, key=lambda f: (-len(f["context"]), f["line"]))


def read_overrides(path: Path) -> list[dict]:
    rows = []
    for lineno, row in _rows(path, ["source", "taxon_ref", "name", *RANKS]):
        if not row["taxon_ref"] and not row["name"]:
            raise ConfigError(path, f"line {lineno}", "a taxon_ref or a name to match", row)
        lineage = {r: row[r] or None for r in RANKS}
        if not any(lineage.values()):
            raise ConfigError(path, f"line {lineno}", "at least one rank of the resolved lineage", row)
        rows.append({"line": lineno, "source": row["source"], "taxon_ref": row["taxon_ref"], "name": row["name"],
                     "lineage": lineage, "note": row.get("note", "")})
    # both keys before one, then file order
    return sorted(rows, key=lambda o: (-(bool(o["taxon_ref"]) + bool(o["name"])), o["line"]))


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes() if Path(p).exists() else b"-")
    return h.hexdigest()

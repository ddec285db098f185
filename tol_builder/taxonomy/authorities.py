"""Taxonomic authorities: pinned files, loaded once per build into one DuckDB file each.

An authority is declared by a manifest `<name>.toml` (taxonomy/authorities/ by default): its format, and
each file's role, URL, size and checksum. `load_task` retrieves the files (verifying size and checksums;
members of a zip archive are extracted once), parses them and writes `<out>/cache/taxonomy/<name>.duckdb`
atomically. Every authority gives the same tables, whatever its format:

* `lineages(auth_id, rank, name, kingdom, phylum, class, "order", family, genus, species)`: one row per
  accepted taxon at one of the seven ranks, with its seven-rank lineage (`species` = epithet, `name` =
  the canonical name, the binomial for a species);
* `names(nk, rank, auth_id, accepted_id, status)`: the lookup key (lower case, accents stripped) of every
  accepted name and synonym at the seven ranks, pointing to the accepted taxon in `lineages`;
* `vernacular_names(kind, key, kingdom, name, language, language_given, quality)`: every common name the
  authority gives, in every language, keyed by scientific name (`kind` = 'sci', `key` = lookup key), EOL
  page ('page') or category id ('category'); `language` is the code of languages.py's rule (taxonomy/
  languages.csv; `und` when empty or unknown), `language_given` the value as the file wrote it; lower
  quality = better (ITIS: 0 = the chain's first name in that language, as BioCLIP took the first English
  one; EOL: 0 preferred by EOL, 1 by the resource, 2 other; GBIF: 1);
* `vernaculars(kind, key, kingdom, common_name, quality)`: a view of its English names (language 'en');
* `eol_dh` only: `pages(page_id, auth_id, exact)` (EOL page -> nearest ranked DH taxon; exact = the page's
  own node is ranked) and `page_names(page_id,
  name)` (provider_ids' preferred canonical name of pages the DH does not hold);
* `info(key, value)`.

Parent-link authorities (GBIF Taxon.tsv, EOL DH taxon.tab) get their seven-rank lineages by walking parent
links in DuckDB (`materialise`): intermediate ranks (clade, infraorder, subfamily ...) are dropped, and an
unranked node whose name is a kingdom or a kingdom synonym (Metazoa) counts as the kingdom.
This module does not reconcile anything; reconcile.py reads these tables.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..config import from_dict, read_toml
from ..errors import ConfigError, InputError
from ..fileio import atomic_path, inside, retrieve
from ..manifest import check_digests, check_file_names, is_single_name, resolve_ref
from ..records import RANKS
from ..sql import ident, literal
from . import languages

LOADER_VERSION = "2"  # part of every authority's fingerprint: bump when the tables change meaning
# 2: vernacular_names in every language (vernaculars became its English view)

# an authority's name names its folders in the cache (downloads/<name>, extracted/<name>) and its database
PLAIN_NAME = "a plain name (no / or \\, not . or .., no control characters)"

RANK_INDEX = {r: i for i, r in enumerate(RANKS)}
# rank names of the authorities -> one of the seven (botanical "division" is the phylum)
RANK_ALIASES = {**{r: r for r in RANKS}, "division": "phylum", "classis": "class", "ordo": "order",
                "familia": "family"}
MISSING_SQL = ("'', 'not_classified', 'not classified', 'unknown', 'unidentified', '(unidentified)', "
               "'incertae sedis', 'incertae_sedis', 'none', 'null', 'na', 'n/a', 'nan', '-'")

# format -> {role: required}
FORMATS: dict[str, dict[str, bool]] = {
    "itis_chains": {"chains": True},
    "gbif_dwca": {"taxon": True, "vernacular": False},
    "eol_dh": {"taxon": True, "vernacular": False, "provider_ids": False},
    "inat_common_names": {"common_names": True},
}


@dataclass
class AuthorityFile:
    role: str  # what the loader reads it as (see FORMATS)
    name: str  # file name as published
    url: str = ""  # absolute URL or path; relative = beside the manifest; "" = name
    member: str = ""  # path of the file inside the zip archive at url (GBIF's backbone.zip: Taxon.tsv)
    md5: str = ""
    sha256: str = ""
    bytes: int = 0  # exact size when known (verified); 0 = unknown
    size: str = ""  # size as the publisher states it, informative
    optional: bool = False  # a local file that may be absent (then skipped); never for a required role


@dataclass
class AuthorityManifest:
    name: str  # the name workflows use: itis, gbif, eol, inaturalist
    format: str  # one of FORMATS
    files: list[AuthorityFile]
    title: str = ""
    version: str = ""
    homepage: str = ""
    licence: str = ""
    citation: str = ""
    notes: str = ""
    path: Path = field(default=Path("."), metadata={"toml": False})

    def file(self, role: str) -> AuthorityFile | None:
        found = [f for f in self.files if f.role == role]
        return found[0] if found else None

    def url(self, f: AuthorityFile) -> str:
        return resolve_ref(f.url or f.name, self.path)


def load_manifest(path: str | Path) -> AuthorityManifest:
    path = Path(path).resolve()
    m = from_dict(AuthorityManifest, read_toml(path), path)
    m.path = path
    if not is_single_name(m.name):
        raise ConfigError(path, "name", PLAIN_NAME, m.name)
    if m.format not in FORMATS:
        raise ConfigError(path, "format", "one of " + ", ".join(sorted(FORMATS)), m.format)
    roles = FORMATS[m.format]
    for i, f in enumerate(m.files):
        if f.role not in roles:
            raise ConfigError(path, f"files[{i}].role", f"one of {', '.join(roles)} (format {m.format})", f.role)
    check_file_names(path, m.files)
    check_digests(path, m.files)
    for i, f in enumerate(m.files):
        if f.optional and roles[f.role]:
            raise ConfigError(path, f"files[{i}].optional", f"false (role '{f.role}' is required)", True)
    for role, required in roles.items():
        if required and m.file(role) is None:
            raise ConfigError(path, "files", f"a file with role '{role}' (format {m.format})", "none")
    return m


def discover(directory: str | Path) -> dict[str, Path]:
    """Authority manifests in a folder: {name: path}, the name read from each manifest."""
    found: dict[str, Path] = {}
    d = Path(directory)
    if not d.is_dir():
        return found
    for p in sorted(d.glob("*.toml")):
        name = read_toml(p).get("name", p.stem)
        if not is_single_name(name):
            raise ConfigError(p, "name", PLAIN_NAME, name)
        if name in found:
            raise ConfigError(p, "name", f"a name not used by {found[name]}", name)
        found[name] = p
    return found


def curated_extra(kingdom_synonyms: dict[str, str], languages_csv: str | Path = "") -> str:
    """The curated data a load depends on, for `fingerprint`: kingdom synonyms and languages.csv's bytes."""
    langs = Path(languages_csv) if languages_csv else languages.default_path()
    digest = hashlib.sha256(langs.read_bytes()).hexdigest() if langs.exists() else "-"
    return json.dumps(kingdom_synonyms, sort_keys=True) + f"\nlanguages:{digest}"


def fingerprint(manifest_path: str | Path, extra: str = "") -> str:
    """Identifies what a loaded authority was built from: manifest text, local files' size and mtime,
    the curated data (extra: `curated_extra`) and the loader version."""
    m = load_manifest(manifest_path)
    h = hashlib.sha256()
    h.update(Path(manifest_path).read_bytes())
    h.update(LOADER_VERSION.encode())
    h.update(extra.encode())
    for f in m.files:
        u = m.url(f)
        p = Path(urllib.parse.urlparse(u).path) if u.startswith("file:") else Path(u)
        if p.exists():
            st = p.stat()
            h.update(f"{f.role}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def local_files(m: AuthorityManifest, cache: Path) -> dict[str, Path]:
    """Verified local copies of the manifest's files, {role: path}; zip members extracted once."""
    out: dict[str, Path] = {}
    for f in m.files:
        dest = inside(cache, "downloads", m.name, f.name)
        if f.optional and "://" not in m.url(f) and not Path(m.url(f)).exists():
            continue  # e.g. EOL vernacularnames.csv, which has no stable URL: common names go without it
        path = retrieve(m.url(f), dest, md5=f.md5 or None, sha256=f.sha256 or None, size=f.bytes or None)
        if f.member:
            path = _extract(path, f.member, inside(cache, "extracted", m.name))
        out[f.role] = path
    return out


def _extract(archive: Path, member: str, dest_dir: Path) -> Path:
    if ".." in Path(member).parts or Path(member).is_absolute():
        raise InputError(archive, "unsafe member path", member=member)
    dest = inside(dest_dir, member)
    try:
        with zipfile.ZipFile(archive) as z:
            try:
                info = z.getinfo(member)
            except KeyError:
                raise InputError(archive, "member not in the archive", member=member) from None
            if dest.exists() and dest.stat().st_size == info.file_size:
                return dest
            with atomic_path(dest) as tmp, z.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    except zipfile.BadZipFile as e:
        raise InputError(archive, f"not a readable zip archive ({e})") from None
    return dest


# ----------------------------------------------------------------------------------------- loading
def load_task(out: str, name: str, manifest_path: str, kingdom_synonyms: dict[str, str], threads: int = 1,
              memory_limit: str = "4GB", languages_csv: str = "") -> dict[str, int]:
    """Runner task: load one authority into `<out>/cache/taxonomy/<name>.duckdb` (atomically).
    languages_csv: the languages table ("" = the project's taxonomy/languages.csv)."""
    import duckdb

    m = load_manifest(manifest_path)
    langs = languages.read_languages(languages_csv or None)
    cache = Path(out) / "cache" / "taxonomy"
    files = local_files(m, cache)
    dest = authority_db(out, name)
    tmpdir = cache / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            con.execute(f"SET threads={max(1, int(threads))}")
            con.execute("SET memory_limit = ?", [memory_limit])  # validated at load (sql.MEMORY_LIMIT)
            con.execute("SET temp_directory = ?", [str(tmpdir)])
            con.execute("SET preserve_insertion_order=false")
            _kingdom_table(con, kingdom_synonyms)
            loader = {"itis_chains": _load_itis, "gbif_dwca": _load_gbif, "eol_dh": _load_eol,
                      "inat_common_names": _load_inat_names}[m.format]
            con.execute(f"CREATE TEMP TABLE vraw ({VERNACULAR_COLUMNS})")
            counters = loader(con, files, langs)
            _ensure_common_tables(con)
            counters.update(_vernacular_tables(con))
            con.execute("CREATE TABLE info (key VARCHAR, value VARCHAR)")
            con.executemany("INSERT INTO info VALUES (?, ?)", [
                ("name", name), ("format", m.format), ("version", m.version),
                ("fingerprint", fingerprint(manifest_path, curated_extra(kingdom_synonyms, languages_csv))),
                *[(f"count.{k}", str(v)) for k, v in counters.items()]])
            con.execute("CHECKPOINT")
        finally:
            con.close()
        wal = Path(str(tmp) + ".wal")
        if wal.exists():
            wal.unlink()
    return {f"{name}_{k}": v for k, v in counters.items()}


def authority_db(out: str | Path, name: str) -> Path:
    return Path(out) / "cache" / "taxonomy" / f"{name}.duckdb"


def _kingdom_table(con, kingdom_synonyms: dict[str, str]) -> None:
    con.execute("CREATE TEMP TABLE ksyn (name VARCHAR, kingdom VARCHAR)")
    rows = sorted({**{v: v for v in kingdom_synonyms.values()}, **kingdom_synonyms}.items())
    if rows:
        con.executemany("INSERT INTO ksyn VALUES (?, ?)", rows)


def _columns(con, relation_sql: str) -> dict[str, str]:
    """{lower-case column name: column name as in the file}"""
    return {r[0].lower(): r[0] for r in con.execute(f"DESCRIBE {relation_sql}").fetchall()}


def _need(cols: dict[str, str], names: list[str], file: Path) -> dict[str, str]:
    missing = [n for n in names if n.lower() not in cols]
    if missing:
        raise InputError(file, f"missing column(s) {', '.join(missing)} (found: {', '.join(cols.values())})",
                         field=missing[0])
    return {n: '"' + cols[n.lower()].replace('"', '""') + '"' for n in names}


def _opt(cols: dict[str, str], name: str) -> str:
    return ('"' + cols[name.lower()].replace('"', '""') + '"') if name.lower() in cols else "NULL"


def _tsv(path: Path) -> str:
    # DwC-A text files of GBIF and EOL use no quoting: a quote character is data
    return (f"read_csv({literal(str(path))}, delim='\t', header=true, quote='', escape='', all_varchar=true, "
            "null_padding=true, auto_detect=true, strict_mode=false)")


def _csv(path: Path) -> str:
    return f"read_csv({literal(str(path))}, header=true, all_varchar=true, null_padding=true, strict_mode=false)"


def _clean_sql(expr: str) -> str:
    """A name column as NULL when missing, trimmed otherwise."""
    return f"CASE WHEN lower(trim({expr})) IN ({MISSING_SQL}) THEN NULL ELSE trim({expr}) END"


def _rank_sql(expr: str) -> str:
    cases = " ".join(f"WHEN '{alias}' THEN {RANK_INDEX[r]}" for alias, r in RANK_ALIASES.items())
    return f"CASE lower(trim(coalesce({expr}, ''))) {cases} END"


def _ensure_common_tables(con) -> None:
    con.execute("CREATE TABLE IF NOT EXISTS lineages (auth_id VARCHAR, rank VARCHAR, name VARCHAR, kingdom VARCHAR, "
                "phylum VARCHAR, class VARCHAR, \"order\" VARCHAR, family VARCHAR, genus VARCHAR, species VARCHAR)")
    con.execute("CREATE TABLE IF NOT EXISTS names (nk VARCHAR, rank VARCHAR, auth_id VARCHAR, accepted_id VARCHAR, "
                "status VARCHAR)")


# the loaders' common-name rows, before `_vernacular_tables` keeps them
VERNACULAR_COLUMNS = ("kind VARCHAR, key VARCHAR, kingdom VARCHAR, name VARCHAR, language VARCHAR, "
                      "language_given VARCHAR, quality INTEGER")


def _language_map(con, langs: languages.Languages, values_sql: str) -> None:
    """Temp table `langmap(language_given, language, known)` for the distinct values `values_sql` selects
    (NULL = empty): each looked up once by languages.py's rule, and handed to DuckDB as an Arrow table,
    never pasted into SQL. Join with `LEFT JOIN langmap USING (language_given)` and
    `coalesce(language, 'und')`."""
    import pyarrow as pa

    given = sorted({r[0] for r in con.execute(values_sql).fetchall() if r[0] is not None})
    codes = [langs.lookup(g) for g in given]
    con.register("_langmap_in", pa.table({
        "language_given": pa.array(given, pa.string()),
        "language": pa.array([c or languages.UNDETERMINED for c in codes], pa.string()),
        "known": pa.array([c is not None for c in codes], pa.bool_())}))
    con.execute("CREATE OR REPLACE TEMP TABLE langmap AS SELECT * FROM _langmap_in")
    con.unregister("_langmap_in")


def _vernacular_tables(con) -> dict[str, int]:
    """`vernacular_names` from the loader's rows in temp table `vraw` (blank names and keys dropped) and
    its English view `vernaculars`. Counters: English rows (`vernaculars`, as before), all rows, languages,
    and rows whose language the file gave but languages.csv does not know (recorded as 'und')."""
    con.execute(f"CREATE TABLE vernacular_names ({VERNACULAR_COLUMNS})")
    con.execute("""INSERT INTO vernacular_names SELECT kind, key, kingdom, name, language, language_given, quality
                   FROM vraw WHERE coalesce(name, '') <> '' AND coalesce(key, '') <> ''""")
    con.execute("""CREATE VIEW vernaculars AS SELECT kind, key, kingdom, name AS common_name, quality
                   FROM vernacular_names WHERE language = 'en'""")
    english, total, langs_ = con.execute("""SELECT count(*) FILTER (WHERE language = 'en'), count(*),
        count(DISTINCT language) FROM vernacular_names""").fetchall()[0]
    unknown = 0
    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'langmap' AND temporary").fetchall()[0][0]:
        unknown = con.execute("""SELECT count(*) FROM vernacular_names v JOIN langmap m USING (language_given)
                                 WHERE NOT m.known""").fetchall()[0][0]
    return {"vernaculars": english, "vernacular_names": total, "vernacular_languages": langs_,
            "vernaculars_language_unknown": unknown}


NK = "lower(strip_accents({}))"  # the lookup key of a name


def nk(expr: str) -> str:
    return NK.format(expr)


# ------------------------------------------------------------------------------- ITIS chains CSV
def _load_itis(con, files: dict[str, Path], langs: languages.Languages) -> dict[str, int]:
    path = files["chains"]
    rel = _csv(path)
    cols = _columns(con, f"SELECT * FROM {rel}")
    c = _need(cols, ["hierarchy_string_tsn", "hierarchy_string_ranks", "terminal_tsn", "Kingdom", "Phylum",
                     "Class", "Order", "Family", "Genus", "Species"], path)
    vern, vlang = _opt(cols, "terminal_vernacular"), _opt(cols, "terminal_vernacular_lang")
    con.execute(f"""CREATE TEMP TABLE chains AS
        SELECT {c['terminal_tsn']} AS tsn,
               string_split({c['hierarchy_string_tsn']}, '-') AS tsns,
               string_split(lower(replace({c['hierarchy_string_ranks']}, ' ', '')), '->') AS ranks,
               {_clean_sql(c['Kingdom'])} AS k0, {_clean_sql(c['Phylum'])} AS p, {_clean_sql(c['Class'])} AS c,
               {_clean_sql(c['Order'])} AS o, {_clean_sql(c['Family'])} AS f, {_clean_sql(c['Genus'])} AS g,
               {_clean_sql(c['Species'])} AS s, {vern} AS vern, {vlang} AS vlang
        FROM {rel}""")
    con.execute("""CREATE TEMP TABLE ch AS
        SELECT ch.*, coalesce(ks.kingdom, ch.k0) AS k,
               split_part(s, ' ', 1) || ' ' || lower(split_part(s, ' ', 2)) AS binomial,
               lower(split_part(s, ' ', 2)) AS epithet
        FROM chains ch LEFT JOIN ksyn ks ON ks.name = ch.k0""")
    return _chains_to_tables(con, "ch", id_of_rank=lambda r: (
        "coalesce(tsns[list_position(ranks, 'phylum')], tsns[list_position(ranks, 'division')])"
        if r == "phylum" else f"tsns[list_position(ranks, '{r}')]"), langs=langs)


def _chains_to_tables(con, table: str, id_of_rank, langs: languages.Languages | None = None,
                      prefix: str = "itis") -> dict:
    """Lineages and names from a table of denormalised chains (k, p, c, o, f, g, binomial, epithet, tsn);
    with `langs`, the chains' vernaculars (vern, vlang) into `vraw`."""
    cols = ["k", "p", "c", "o", "f", "g"]
    parts = [f"""SELECT tsn AS auth_id, 'species' AS rank, binomial AS name, k, p, c, o, f,
                    coalesce(g, split_part(binomial, ' ', 1)) AS g, epithet AS s
                 FROM {table} WHERE binomial IS NOT NULL AND epithet <> '' AND tsn IS NOT NULL"""]
    for i, rank in enumerate(RANKS[:6]):
        keep = cols[: i + 1]
        path = "concat_ws('|', " + ", ".join(f"coalesce({x}, '')" for x in keep) + ")"
        nulls = ", ".join(["NULL"] * (6 - i - 1))
        sel = ", ".join(keep) + (", " + nulls if nulls else "")
        parts.append(f"""SELECT coalesce(min({id_of_rank(rank)}), '{prefix}:{rank}:' || {path}) AS auth_id,
                            '{rank}' AS rank, {cols[i]} AS name, {sel}, NULL AS s
                         FROM {table} WHERE {cols[i]} IS NOT NULL GROUP BY {", ".join(keep)}""")
    con.execute("CREATE TEMP TABLE chain_lineages AS " + " UNION ALL ".join(parts))
    con.execute("""CREATE TABLE lineages AS
        SELECT DISTINCT ON (auth_id) auth_id, rank, name, k AS kingdom, p AS phylum, c AS class, o AS "order",
               f AS family, g AS genus, s AS species
        FROM chain_lineages ORDER BY auth_id, rank, name, kingdom, phylum, class, "order", family, genus""")
    con.execute(f"""CREATE TABLE names AS SELECT DISTINCT {nk('name')} AS nk, rank, auth_id, auth_id AS accepted_id,
        'accepted' AS status FROM lineages""")
    if langs is not None:
        # terminal_vernacular and terminal_vernacular_lang: names and their languages' English names, both
        # comma-separated ("pie d'Amérique, black-billed magpie" / "French, English"), paired by position.
        # BioCLIP took the first English one: the first name of each language gets quality 0, later ones 1
        con.execute(f"""CREATE TEMP TABLE chain_vern AS
            SELECT chain, key, kingdom, trim(names[i]) AS name, nullif(trim(langs[i]), '') AS language_given, i AS pos
            FROM (SELECT *, unnest(generate_series(1, len(names))) AS i
                  FROM (SELECT row_number() OVER () AS chain, {nk('binomial')} AS key, k AS kingdom,
                               string_split(vern, ', ') AS names, string_split(coalesce(vlang, ''), ',') AS langs
                        FROM {table} WHERE binomial IS NOT NULL AND vern IS NOT NULL AND vern <> ''))""")
        _language_map(con, langs, "SELECT DISTINCT language_given FROM chain_vern")
        con.execute("""INSERT INTO vraw
            SELECT 'sci', key, kingdom, name, coalesce(m.language, 'und'), v.language_given,
                   CASE WHEN row_number() OVER (PARTITION BY chain, coalesce(m.language, 'und') ORDER BY pos) = 1
                        THEN 0 ELSE 1 END
            FROM chain_vern v LEFT JOIN langmap m USING (language_given)""")
    return {"taxa": con.execute("SELECT count(*) FROM lineages").fetchall()[0][0]}


# --------------------------------------------------------------------------- parent-link authorities
def materialise(con, max_iterations: int = 64) -> None:
    """Seven-rank lineages of a tree by walking parent links, in DuckDB.

    Input: temp table `nodes(id, parent, r, name)` of accepted taxa, `r` the rank index (0 kingdom ..
    6 species) or NULL for any other rank. Output: `ranked_of(id, rid)` (the node itself when ranked, else
    its nearest ranked ancestor) and temp table `walked(id, r, c0 .. c6)` for ranked nodes: c_i the name
    of the nearest ancestor-or-self at rank i. Only ranks above the last one filled are taken, so a
    misplaced rank (a family under a genus) cannot overwrite the lineage.

    Pointer jumping first skips unranked nodes (clades, infraorders: O(log depth) joins), then the ranked
    chain (at most a few steps) is walked with one join per step. Dangling parents end the walk; cycles
    end at `max_iterations`."""
    con.execute("CREATE OR REPLACE TEMP TABLE ptr AS SELECT id, parent AS p FROM nodes")
    for _ in range(max_iterations):
        left = con.execute("SELECT count(*) FROM ptr a JOIN nodes n ON n.id = a.p WHERE n.r IS NULL").fetchall()[0][0]
        if left == 0:
            break
        con.execute("""CREATE OR REPLACE TEMP TABLE ptr AS
            SELECT a.id, CASE WHEN n.id IS NULL THEN NULL WHEN n.r IS NOT NULL THEN a.p ELSE b.p END AS p
            FROM ptr a LEFT JOIN nodes n ON n.id = a.p LEFT JOIN ptr b ON b.id = a.p""")
    else:  # a cycle of unranked nodes: cut it
        con.execute("""UPDATE ptr SET p = NULL WHERE p IN (SELECT id FROM nodes WHERE r IS NULL)""")
    con.execute("""CREATE OR REPLACE TABLE ranked_of AS
        SELECT n.id, CASE WHEN n.r IS NOT NULL THEN n.id ELSE a.p END AS rid FROM nodes n JOIN ptr a USING (id)""")
    cs = ", ".join(f"CASE WHEN n.r = {i} THEN n.name END AS c{i}" for i in range(7))
    con.execute(f"""CREATE OR REPLACE TEMP TABLE walk_active AS
        SELECT n.id, n.r, n.r AS floor, a.p AS cur, {cs} FROM nodes n JOIN ptr a USING (id) WHERE n.r IS NOT NULL""")
    con.execute("CREATE OR REPLACE TEMP TABLE walked AS SELECT * EXCLUDE (floor, cur) FROM walk_active WHERE false")
    for _ in range(max_iterations):
        con.execute("INSERT INTO walked SELECT * EXCLUDE (floor, cur) FROM walk_active WHERE cur IS NULL")
        if con.execute("SELECT count(*) FROM walk_active WHERE cur IS NOT NULL").fetchall()[0][0] == 0:
            break
        upd = ", ".join(f"CASE WHEN m.r = {i} AND m.r < w.floor THEN m.name ELSE w.c{i} END AS c{i}" for i in range(7))
        con.execute(f"""CREATE OR REPLACE TEMP TABLE walk_active AS
            SELECT w.id, w.r, CASE WHEN m.r < w.floor THEN m.r ELSE w.floor END AS floor, a.p AS cur, {upd}
            FROM walk_active w LEFT JOIN nodes m ON m.id = w.cur LEFT JOIN ptr a ON a.id = w.cur
            WHERE w.cur IS NOT NULL""")
    else:
        con.execute("INSERT INTO walked SELECT * EXCLUDE (floor, cur) FROM walk_active")


def _walked_to_lineages(con) -> None:
    """`lineages` from `walked`: kingdom synonyms applied, species = epithet, genus from the binomial when
    the tree gives none."""
    con.execute("""CREATE TABLE lineages AS
        SELECT w.id AS auth_id, ['kingdom','phylum','class','order','family','genus','species'][w.r + 1] AS rank,
               CASE WHEN w.r = 6 THEN w.c6 ELSE [w.c0, w.c1, w.c2, w.c3, w.c4, w.c5][w.r + 1] END AS name,
               coalesce(ks.kingdom, w.c0) AS kingdom, w.c1 AS phylum, w.c2 AS class, w.c3 AS "order", w.c4 AS family,
               coalesce(w.c5, CASE WHEN w.c6 IS NOT NULL THEN split_part(w.c6, ' ', 1) END) AS genus,
               CASE WHEN w.c6 IS NOT NULL THEN lower(split_part(w.c6, ' ', 2)) END AS species
        FROM walked w LEFT JOIN ksyn ks ON ks.name = w.c0""")
    con.execute("UPDATE lineages SET kingdom = ks.kingdom FROM ksyn ks WHERE lineages.rank = 'kingdom' "
                "AND lineages.name = ks.name")
    con.execute("UPDATE lineages SET name = kingdom WHERE rank = 'kingdom'")


def _parse_missing_canonicals(con, table: str) -> int:
    """Rows of `table` (id, sci, canon) at the seven ranks without a canonical name: parse `sci` with
    gnparser (the DH and GBIF give canonicalName for almost every row)."""
    from . import names as gn

    rows = con.execute(f"SELECT DISTINCT sci FROM {table} WHERE canon IS NULL AND sci IS NOT NULL AND r IS NOT NULL").fetchall()
    if not rows:
        return 0
    parsed = []
    for (sci,) in rows:
        p = gn.gnparse(sci)
        if p.get("parsed") and not p.get("surrogate") and not p.get("hybrid"):
            parsed.append((sci, p["canonical"]["simple"]))
    con.execute("CREATE TEMP TABLE parsed_canon (sci VARCHAR, canon VARCHAR)")
    if parsed:
        con.executemany("INSERT INTO parsed_canon VALUES (?, ?)", parsed)
    con.execute(f"UPDATE {table} SET canon = pc.canon FROM parsed_canon pc WHERE {table}.canon IS NULL "
                f"AND {table}.sci = pc.sci")
    return len(parsed)


def _tree_tables(con, raw: str, status_expr: str) -> dict[str, int]:
    """From temp table `raw` (id, parent, accepted, rank, sci, canon, status): nodes, walk, lineages, names.

    A row is a synonym when it names an accepted taxon other than itself (acceptedNameUsageID)."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE rows AS
        SELECT id, nullif(trim(parent), '') AS parent, nullif(trim(accepted), '') AS accepted,
               {_rank_sql('rank')} AS r, sci, {_clean_sql('canon')} AS canon, {status_expr} AS status
        FROM {raw} WHERE id IS NOT NULL AND id <> ''""")
    con.execute("UPDATE rows SET accepted = NULL WHERE accepted = id")
    parsed = _parse_missing_canonicals(con, "rows")
    # species names: the binomial only (the DH/GBIF canonical of a species is already one)
    con.execute("""UPDATE rows SET canon = CASE WHEN r = 6 THEN
            CASE WHEN length(string_split(canon, ' ')) >= 2 THEN split_part(canon, ' ', 1) || ' ' ||
                 lower(split_part(canon, ' ', 2)) END
        ELSE split_part(canon, ' ', 1) END WHERE canon IS NOT NULL AND r IS NOT NULL""")
    # accepted nodes; an unranked node named as a kingdom (Metazoa, Viridiplantae) is the kingdom
    con.execute("""CREATE OR REPLACE TEMP TABLE nodes AS
        SELECT id, parent, CASE WHEN r IS NULL AND canon IN (SELECT name FROM ksyn) THEN 0
                                WHEN canon IS NULL THEN NULL ELSE r END AS r, canon AS name, status
        FROM rows WHERE accepted IS NULL""")
    con.execute("UPDATE nodes SET name = split_part(name, ' ', 1) WHERE r = 0")
    materialise(con)
    _walked_to_lineages(con)
    con.execute(f"""CREATE TABLE names AS
        SELECT {nk('l.name')} AS nk, l.rank, l.auth_id, l.auth_id AS accepted_id, coalesce(n.status, 'accepted') AS status
        FROM lineages l JOIN nodes n ON n.id = l.auth_id
        UNION ALL
        SELECT {nk('s.canon')} AS nk, ['kingdom','phylum','class','order','family','genus','species'][s.r + 1] AS rank,
               s.id AS auth_id, ro.rid AS accepted_id, 'synonym' AS status
        FROM rows s JOIN ranked_of ro ON ro.id = s.accepted
        WHERE s.accepted IS NOT NULL AND s.r IS NOT NULL AND s.canon IS NOT NULL AND ro.rid IS NOT NULL""")
    # a synonym pointing to an accepted taxon of a lower rank (a species name that is now a subspecies)
    # resolves to that taxon's nearest ranked ancestor: keep it only when the ranks agree
    con.execute("""DELETE FROM names WHERE status = 'synonym' AND rank <> (SELECT l.rank FROM lineages l
                   WHERE l.auth_id = names.accepted_id)""")
    return {"rows": con.execute("SELECT count(*) FROM rows").fetchall()[0][0],
            "taxa": con.execute("SELECT count(*) FROM lineages").fetchall()[0][0],
            "synonyms": con.execute("SELECT count(*) FROM names WHERE status = 'synonym'").fetchall()[0][0],
            "parsed_canonicals": parsed}


_STATUS_SQL = ("CASE WHEN lower(coalesce(status, '')) IN ('doubtful') THEN 'doubtful' ELSE 'accepted' END")


def _load_gbif(con, files: dict[str, Path], langs: languages.Languages) -> dict[str, int]:
    path = files["taxon"]
    rel = _tsv(path)
    cols = _columns(con, f"SELECT * FROM {rel}")
    c = _need(cols, ["taxonID", "parentNameUsageID", "acceptedNameUsageID", "taxonRank", "taxonomicStatus"], path)
    canon, sci = _opt(cols, "canonicalName"), _opt(cols, "scientificName")
    con.execute(f"""CREATE TEMP TABLE raw AS SELECT {c['taxonID']} AS id, {c['parentNameUsageID']} AS parent,
        {c['acceptedNameUsageID']} AS accepted, {c['taxonRank']} AS rank, {sci} AS sci, {canon} AS canon,
        {c['taxonomicStatus']} AS status FROM {rel}""")
    counters = _tree_tables(con, "raw", _STATUS_SQL)
    vpath = files.get("vernacular")
    if vpath is not None:
        vrel = _tsv(vpath)
        vc = _need(_columns(con, f"SELECT * FROM {vrel}"), ["taxonID", "vernacularName", "language"], vpath)
        # no preference flag in the backbone: the name most often given for the taxon wins (quality 1);
        # `language` is ISO 639-1 (en, es ...) and often empty
        con.execute(f"""CREATE TEMP TABLE gbif_vern AS
            SELECT {nk('l.name')} AS key, l.kingdom, trim(v.{vc['vernacularName']}) AS name,
                   nullif(trim(v.{vc['language']}), '') AS language_given
            FROM {vrel} v JOIN ranked_of ro ON ro.id = v.{vc['taxonID']} JOIN lineages l ON l.auth_id = ro.rid
            WHERE l.auth_id = ro.id AND trim(v.{vc['vernacularName']}) <> ''""")
        _language_map(con, langs, "SELECT DISTINCT language_given FROM gbif_vern")
        con.execute("""INSERT INTO vraw SELECT 'sci', key, kingdom, name, coalesce(m.language, 'und'),
                       v.language_given, 1 FROM gbif_vern v LEFT JOIN langmap m USING (language_given)""")
    return counters


def _load_eol(con, files: dict[str, Path], langs: languages.Languages) -> dict[str, int]:
    path = files["taxon"]
    rel = _tsv(path)
    cols = _columns(con, f"SELECT * FROM {rel}")  # some DH dumps lack `authority`: read by header
    c = _need(cols, ["taxonID", "parentNameUsageID", "acceptedNameUsageID", "taxonRank", "eolID"], path)
    canon, sci, status = _opt(cols, "canonicalName"), _opt(cols, "scientificName"), _opt(cols, "taxonomicStatus")
    con.execute(f"""CREATE TEMP TABLE raw AS SELECT {c['taxonID']} AS id, {c['parentNameUsageID']} AS parent,
        {c['acceptedNameUsageID']} AS accepted, {c['taxonRank']} AS rank, {sci} AS sci, {canon} AS canon,
        {status} AS status, nullif(trim({c['eolID']}), '') AS page FROM {rel}""")
    counters = _tree_tables(con, "raw", "'accepted'")
    # EOL pages: eolID of accepted rows, then provider_ids rows whose resource_pk is a DH taxonID
    con.execute("""CREATE TABLE pages AS
        SELECT DISTINCT ON (r.page) r.page AS page_id, ro.rid AS auth_id, ro.rid = r.id AS exact
        FROM raw r JOIN ranked_of ro ON ro.id = r.id
        WHERE r.page IS NOT NULL AND nullif(trim(r.accepted), '') IS NULL AND ro.rid IS NOT NULL
        ORDER BY r.page, ro.rid""")
    con.execute("CREATE TABLE page_names (page_id VARCHAR, name VARCHAR)")
    ppath = files.get("provider_ids")
    if ppath is not None:
        prel = _csv(ppath)
        pc = _need(_columns(con, f"SELECT * FROM {prel}"), ["resource_pk", "page_id"], ppath)
        pref = _opt(_columns(con, f"SELECT * FROM {prel}"), "preferred_canonical_for_page")
        con.execute(f"""CREATE TEMP TABLE prov AS SELECT trim({pc['page_id']}) AS page_id,
            trim({pc['resource_pk']}) AS pk, {_clean_sql(pref)} AS name FROM {prel}""")
        con.execute("""INSERT INTO pages
            SELECT DISTINCT ON (p.page_id) p.page_id, ro.rid, ro.rid = p.pk FROM prov p JOIN ranked_of ro ON ro.id = p.pk
            WHERE ro.rid IS NOT NULL AND p.page_id NOT IN (SELECT page_id FROM pages) ORDER BY p.page_id, ro.rid""")
        con.execute("""INSERT INTO page_names SELECT page_id, min(name) FROM prov WHERE name IS NOT NULL
            AND page_id NOT IN (SELECT page_id FROM pages) GROUP BY page_id""")
    counters["pages"] = con.execute("SELECT count(*) FROM pages").fetchall()[0][0]
    counters["page_names"] = con.execute("SELECT count(*) FROM page_names").fetchall()[0][0]
    vpath = files.get("vernacular")
    if vpath is not None:
        vrel = _csv(vpath)
        vcols = _columns(con, f"SELECT * FROM {vrel}")
        vc = _need(vcols, ["page_id", "canonical_form", "vernacular_string", "language_code"], vpath)
        by_eol, by_res = _opt(vcols, "is_preferred_by_eol"), _opt(vcols, "is_preferred_by_resource")
        yes = "NOT (lower(trim(coalesce({}, ''))) IN ('', 'false', 'f', '0', 'no'))"
        quality = f"CASE WHEN {yes.format(by_eol)} THEN 0 WHEN {yes.format(by_res)} THEN 1 ELSE 2 END"
        strip = "trim(regexp_replace(regexp_replace({}, '<[^>]*>', '', 'g'), '\\s+', ' ', 'g'))"
        # language_code: ISO 639-2 (eng, spa, fre or fra ...), mapped by languages.py's rule
        con.execute(f"""CREATE TEMP TABLE vn AS SELECT trim({vc['page_id']}) AS page_id,
                {strip.format(vc['canonical_form'])} AS canon, {strip.format(vc['vernacular_string'])} AS name,
                {quality} AS quality, nullif(trim({vc['language_code']}), '') AS language_given
            FROM {vrel}""")
        _language_map(con, langs, "SELECT DISTINCT language_given FROM vn")
        con.execute("""CREATE TEMP TABLE vnl AS SELECT vn.*, coalesce(m.language, 'und') AS language
                       FROM vn LEFT JOIN langmap m USING (language_given)""")
        con.execute("""INSERT INTO vraw SELECT 'page', page_id, NULL, name, language, language_given, quality
                       FROM vnl""")
        con.execute(f"""INSERT INTO vraw SELECT 'sci', {nk('canon')}, NULL, name, language, language_given, quality
                        FROM vnl""")
    return counters


def _load_inat_names(con, files: dict[str, Path], langs: languages.Languages) -> dict[str, int]:
    """BioCLIP's iNat21 common names: a JSON object {category index: English name} (from iNaturalist's
    DwC-A taxonomy; data/inat/common-names-mapping.json in Imageomics/bioclip)."""
    path = files["common_names"]
    try:
        mapping = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(path, f"not a JSON object of category -> common name ({e})") from None
    if not isinstance(mapping, dict):
        raise InputError(path, "not a JSON object of category -> common name")
    _ensure_common_tables(con)
    rows = [("category", str(int(k)), None, " ".join(str(v).split()), "en", None, 0)  # English names
            for k, v in sorted(mapping.items()) if str(k).strip().lstrip("-").isdigit() and v and str(v).strip()]
    if rows:
        con.executemany("INSERT INTO vraw VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    return {}


def open_authority(con, out: str | Path, name: str) -> None:
    """Attach a loaded authority read-only to `con` under its name."""
    path = authority_db(out, name)
    if not path.exists():
        raise InputError(path, f"authority '{name}' is not loaded (run the taxonomy stage)")
    con.execute(f"ATTACH {literal(str(path))} AS {ident(name)} (READ_ONLY)")

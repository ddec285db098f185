"""Reconciliation: every distinct raw lineage of the records -> one seven-rank taxon, with provenance.

Works on distinct raw lineages (a few hundred thousand), never on images, in DuckDB. One runner task
(`reconcile_task`) reads the records parquet and the loaded authorities (authorities.py) and writes
`<out>/taxonomy/{lineage_map,taxa,conflicts,common_names}.parquet` (common names: common_names.py), then
the `images` table, each record with its taxon, once (`<out>/taxonomy/images/`: images.py).

The rules, in the order they apply (taxonomy/README.md says the same, shorter, for users):

1. **Raw lineage.** (source, the seven raw ranks, scientific_name, and for EOL-style sources the
   source_taxon_id = EOL page id). Its key is the md5 of those values (`lineage_key_sql`), so the
   `images` table finds each record's lineage with the same expression.
2. **Normalising** (names.py, gnparser): missing markers dropped, uninomials capitalised, authorship
   removed, infraspecific names reduced to the species, hybrids / sp. / cf. / interim names not taken as a
   species (the genus stays), kingdom synonyms applied (Metazoa -> Animalia).
3. **Given and context ranks.** Ranks the source gives are *given*. An EOL page resolves through the DH
   (eolID, then provider_ids) to a DH node whose lineage is the *context*; a page the DH lacks may still
   have a name (provider_ids' preferred canonical name) looked up with unknown rank.
4. **Homonym fixes** (taxonomy/homonym_fixes.csv) add higher ranks to given lineages; **overrides**
   (taxonomy/overrides.csv) set the result outright.
5. **Candidates.** Every given or context name is looked up by (rank, name) in every authority of the
   workflow's order (names and synonyms). The `source` authority offers a source's own lineage when it is
   full (all seven ranks and a real species). The EOL page itself is a candidate of the `eol` authority.
6. **Scoring against the higher ranks.** For a candidate anchored at rank R, each given rank above R is
   compared with the candidate's: equal = agreement, both present and different = contradiction.
   A candidate is *acceptable* when it contradicts no given rank, does not contradict the context's
   kingdom, and agrees with at least as many context ranks as it contradicts. This keeps homonyms apart:
   Laelia under Erebidae is the moth, not the orchid; Pterygota under Insecta is not the plant genus.
7. **Choice** among acceptable candidates, in this order (the tie-break rule, never input order):
   a. the most specific anchor (species before genus before family ...: fill upward from the most
      specific trusted match);
   b. the authority earlier in `authority_order`;
   c. more given/context ranks agreeing;
   d. accepted name before doubtful before synonym;
   e. **bare homonyms are not guessed**: when another acceptable candidate at the anchor's rank lies in
      another kingdom and no given or context rank above the name *supports* either (agrees with it; a
      species' own genus does not count, it is part of the binomial), nothing tells them apart: the
      lineage stays unresolved, reason `ambiguous_homonym` (a bare `Laelia`: orchid or moth; conflicts
      lists each kingdom's best candidate, decision `ambiguous_homonym`);
   f. — a *tie* from here on, recorded in `conflicts` (decision `tie`) — the more complete lineage
      (more of the seven ranks filled down to the anchor);
   g. the kingdom earlier in `kingdom_priority` (default Animalia, Plantae, Fungi, ...). After (e) it
      only decides between kingdoms when higher ranks were given (or came from the EOL context), agree
      with both candidates alike and still tie (an order name used in two kingdoms);
   h. the lexicographically smallest lineage string, then the smallest authority id.
8. **Result and confirmed rank.** Ranks down to the anchor come from the authority (a gap in the authority
   is filled from a given rank); the anchor is the lineage's `confirmed_rank`: the most specific rank an
   authority (or, for the `source` authority, the source's own full lineage; for an override, the curator)
   confirmed. Ranks below it keep the given (or context) names, as BioCLIP kept BIOSCAN-1M's expert
   identifications: a species unknown to the authorities stays under its confirmed genus, and is reported
   as *source-asserted* (`rank_status` = `source_asserted` when lowest_rank is below confirmed_rank, else
   `confirmed`). Nothing acceptable: the lineage stays unresolved (taxon_id NULL) with its reason, counted
   and listed — never forced.
9. **Suspected misspellings** (`suspect_misspellings`). The first given name below the confirmed rank that
   no authority of the order knows at its rank, but that is within `taxonomy.misspelling_max_distance`
   (default 2) Damerau-Levenshtein edits of an authority name at that rank *under the confirmed name*
   (same kingdom), with at least 5 letters per edit in the part that may be misspelt (a species' epithet
   when the genus is the same; short names differ by design), is a suspected misspelling: `Felidae /
   Pantherra / Pantherra leo` is Panthera's neighbour under Felidae. It is recorded in `conflicts` (decision
   `suspected_misspelling`, `suggestion` = the nearest name) and the result stops at the confirmed rank
   (rule `+suspected_misspelling:<rank>`) instead of minting a genus and species no authority knows. With
   `taxonomy.accept_suggestions`, a suggestion that is the only nearest name replaces the given name
   (a corrected genus carries its epithet: Panthera leo) and those lineages are matched again (rule
   `+corrected:<rank>`, conflicts rule `accepted:...`). Done in DuckDB on the few lineages concerned:
   each is compared only with the authority names under its confirmed parent.
10. **Conflicts.** A refused candidate more specific than (or preferred to) the chosen one is recorded per
   contradicted rank (decision `kept_given` / `kept_context`); an accepted candidate that outvoted context
   ranks (`used_authority`, rule `context_outvoted`), a synonym replaced by its accepted name
   (`used_authority`, rule `synonym`), ties, overrides, suspected misspellings and ambiguous homonyms
   likewise.
11. **taxon_id** = first 16 hex digits of md5 of the resolved lineage `kingdom|phylum|...|species`:
   the same lineage always gets the same id, whatever the input order. Several raw lineages may share a
   taxon: `taxa.confirmed_rank` is the most specific rank any of them confirmed (build_taxa says why);
   each record's own stays in lineage_map and the `images` view.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError
from ..fileio import atomic_path
from ..records import RANKS
from ..sql import in_list as _in, literal, literal_list
from . import authorities as auth
from . import names as gn

RANK_INDEX = {r: i for i, r in enumerate(RANKS)}
G = ["g_kingdom", "g_phylum", "g_class", "g_order", "g_family", "g_genus"]  # given, kingdom..genus
C = ["c_kingdom", "c_phylum", "c_class", "c_order", "c_family", "c_genus"]  # context
A = ["a0", "a1", "a2", "a3", "a4", "a5", "a6"]  # candidate (authority) lineage; a6 = epithet
OUT_COLS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]
RANK_LIST_SQL = "['kingdom','phylum','class','order','family','genus','species']"
NAME_AUTHORITIES = ("inat21", "itis", "gbif", "eol")
KNOWN_AUTHORITIES = ("source", *NAME_AUTHORITIES)


@dataclass
class Settings:
    """Everything the reconcile task needs, as plain data (it may run on a Dask worker)."""

    authority_order: list[str] = field(default_factory=lambda: ["source", "itis", "gbif", "eol"])
    common_name_order: list[str] = field(default_factory=lambda: ["itis", "inaturalist", "eol_preferred", "eol"])
    kingdom_priority: list[str] = field(default_factory=list)
    resolve_synonyms: bool = True
    accept_suggestions: bool = False  # a suspected misspelling is corrected to the suggestion (else: stop above it)
    misspelling_max_distance: int = 2  # edits (Damerau-Levenshtein) for a suspected misspelling; 0 = no check
    page_sources: list[str] = field(default_factory=list)  # source ids whose source_taxon_id is an EOL page id
    inat_sources: list[str] = field(default_factory=list)  # source ids read by the iNat21 reader
    kingdom_synonyms: dict = field(default_factory=dict)
    homonym_fixes: list = field(default_factory=list)
    overrides: list = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)  # authorities loaded in <out>/cache/taxonomy/
    threads: int = 0  # 0 = all cores
    memory_limit: str = "4GB"
    records_glob: str = "records/*/*.parquet"
    output_dir: str = "taxonomy"  # relative to the build; evaluation sets reconcile into evalsets/taxonomy


def lineage_key_sql(page_sources: list[str], alias: str = "", ref: str | None = None) -> str:
    """SQL of a record's raw lineage key (over RECORD_SCHEMA columns). The `images` view uses it too.
    `ref`: an expression already holding the EOL page id (NULL for other sources), instead of
    source_taxon_id."""
    a = f"{alias}." if alias else ""
    parts = [f"{a}source"] + [f'coalesce({a}"{c}", \'\')' for c in (*RANKS, "scientific_name")]
    if ref is None:
        ref = f"CASE WHEN {_in(a + 'source', page_sources)} THEN coalesce({a}source_taxon_id, '') ELSE '' END"
    else:
        ref = f"coalesce({ref}, '')"
    return "md5(concat_ws(chr(31), " + ", ".join(parts) + ", " + ref + "))"


def _connect(out: Path, s: Settings):
    import duckdb

    con = duckdb.connect()
    tmp = out / "cache" / "taxonomy" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET threads={s.threads or os.cpu_count() or 1}")
    con.execute("SET memory_limit = ?", [s.memory_limit])  # validated at load (sql.MEMORY_LIMIT)
    con.execute("SET temp_directory = ?", [str(tmp)])
    con.execute("SET preserve_insertion_order=false")
    con.execute("SET file_search_path = ?", [str(out)])
    return con


# ------------------------------------------------------------------------------------------- task
def reconcile_task(out: str, settings: dict) -> dict[str, int]:
    """Runner task: reconcile all distinct raw lineages; write taxonomy/*.parquet. Returns counters."""
    s = Settings(**settings)
    out_p = Path(out).resolve()
    con = _connect(out_p, s)
    timings: dict[str, float] = {}
    try:
        for name in s.loaded:
            auth.open_authority(con, out_p, name)
        t = time.time()
        extract(con, out_p, s)
        timings["extract"] = time.time() - t
        t = time.time()
        prepare(con, s)
        timings["prepare"] = time.time() - t
        t = time.time()
        candidates(con, s)
        choose(con, s)
        timings["match"] = time.time() - t
        t = time.time()
        suspect_misspellings(con, s)
        corrected = correct_misspellings(con, s) if s.accept_suggestions else 0
        if corrected:
            suspect_misspellings(con, s)  # what the corrected lineages still leave unknown stops them
        else:
            con.execute("CREATE OR REPLACE TABLE corrections AS SELECT * FROM suspects LIMIT 0")
        finish_choice(con, s)
        timings["confirm"] = time.time() - t
        t = time.time()
        from .common_names import assign_common_names

        build_taxa(con)
        cn = assign_common_names(con, s)
        conflicts(con, s)
        timings["finish"] = time.time() - t
        counters = write_outputs(con, out_p / s.output_dir)
        counters.update(cn)
        t = time.time()
        from .images import write_images

        counters.update(write_images(con, out_p, s.records_glob, s.output_dir, s.page_sources))
        timings["images"] = time.time() - t
        counters.update({f"ms_{k}": int(v * 1000) for k, v in timings.items()})
        return counters
    finally:
        con.close()


# ----------------------------------------------------------------------------------- 1. extract
def extract(con, out: Path, s: Settings) -> int:
    """Table `raw`: one row per distinct raw lineage, with its image count."""
    files = sorted(out.glob(s.records_glob))
    if not files:
        raise InputError(out / s.records_glob, "no records: run the ingest stage first")
    ranks = ", ".join(f'"{r}"' for r in RANKS)
    ref = f"CASE WHEN {_in('source', s.page_sources)} THEN source_taxon_id END"
    con.execute(f"""CREATE TABLE raw AS
        SELECT {lineage_key_sql(s.page_sources, ref='taxon_ref')} AS lineage_key, *
        FROM (SELECT source, {ranks}, scientific_name, {ref} AS taxon_ref, count(*) AS images,
                     min(source_taxon_id) AS example_taxon_id, min(common_name) AS example_common_name
              FROM read_parquet('{s.records_glob}', union_by_name=true) GROUP BY ALL)""")
    return con.execute("SELECT count(*) FROM raw").fetchall()[0][0]


# ----------------------------------------------------------------------------------- 2. prepare
def _mapping_table(con, name: str, columns: list[str], rows: list[tuple]) -> None:
    import pyarrow as pa

    cols = list(zip(*rows)) if rows else [[] for _ in columns]
    con.register(f"_{name}_in", pa.table({c: pa.array(list(v), pa.string()) for c, v in zip(columns, cols)}))
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _{name}_in")
    con.unregister(f"_{name}_in")


def prepare(con, s: Settings) -> None:
    """Table `L`: one row per raw lineage with normalised given ranks (g_*), context ranks (c_*) from the
    EOL DH, names of unknown rank (name_any), notes, and the curated fixes applied."""
    _mapping_table(con, "ksyn", ["name", "kingdom"], sorted(s.kingdom_synonyms.items()))
    # uninomials above species, each distinct value parsed once
    values = [r[0] for r in con.execute("""SELECT DISTINCT v FROM (SELECT unnest([kingdom, phylum, class, "order",
        family, genus]) AS v FROM raw) WHERE v IS NOT NULL""").fetchall()]
    rows = []
    for v in values:
        name, note = gn.uninomial(v)
        rows.append((v, name, note or None))
    _mapping_table(con, "uni", ["raw", "name", "note"], rows)
    joins, sel, notes = [], [], []
    for i, r in enumerate(RANKS[:6]):
        joins.append(f'LEFT JOIN uni u{i} ON u{i}.raw = r."{r}"')
        notes.append(f"CASE WHEN u{i}.note IS NOT NULL THEN '{r}:' || u{i}.note END")
        sel.append(f"u{i}.name AS {G[i]}" if i else f"coalesce(ks.kingdom, u0.name) AS {G[0]}")
    con.execute(f"""CREATE TEMP TABLE L0 AS
        SELECT r.lineage_key, r.source, r.images, r.taxon_ref, r.example_taxon_id, r.example_common_name,
               r.species AS species_raw, r.scientific_name AS sci_raw, {", ".join(sel)},
               concat_ws(',', {", ".join(notes)}) AS rank_notes
        FROM raw r {" ".join(joins)} LEFT JOIN ksyn ks ON ks.name = u0.name""")
    # species labels, parsed with the record's genus
    pairs = con.execute("SELECT DISTINCT g_genus, species_raw FROM L0 WHERE species_raw IS NOT NULL").fetchall()
    rows = []
    for genus, raw in pairs:
        sp = gn.species(genus, raw)
        rows.append((genus or "", raw, sp.genus, sp.binomial, sp.epithet, sp.note or None))
    _mapping_table(con, "sp", ["genus_in", "raw", "genus", "binomial", "epithet", "note"], rows)
    # names of unknown rank: scientific_name when no rank is given
    sci = con.execute("""SELECT DISTINCT sci_raw FROM L0 WHERE sci_raw IS NOT NULL AND species_raw IS NULL AND
        g_kingdom IS NULL AND g_phylum IS NULL AND g_class IS NULL AND g_order IS NULL AND g_family IS NULL
        AND g_genus IS NULL""").fetchall()
    rows = []
    for (v,) in sci:
        u, b, note = gn.scientific(v)
        rows.append((v, u, b, note or None))
    _mapping_table(con, "sci", ["raw", "uninomial", "binomial", "note"], rows)
    has_eol = "eol" in s.loaded
    page_join = ""
    page_cols = ("NULL AS page_auth_id, NULL AS page_exact, NULL AS page_name, " +
                 ", ".join(f"NULL AS {c}" for c in C) + ", NULL AS c_binomial, NULL AS c_epithet")
    if has_eol:
        page_join = """LEFT JOIN eol.pages pg ON pg.page_id = l.taxon_ref
                       LEFT JOIN eol.lineages el ON el.auth_id = pg.auth_id
                       LEFT JOIN eol.page_names pn ON pn.page_id = l.taxon_ref AND pg.page_id IS NULL"""
        page_cols = ("pg.auth_id AS page_auth_id, pg.exact AS page_exact, pn.name AS page_name, "
                     "el.kingdom AS c_kingdom, el.phylum AS c_phylum, el.class AS c_class, "
                     "el.\"order\" AS c_order, el.family AS c_family, el.genus AS c_genus, "
                     "CASE WHEN el.rank = 'species' THEN el.name END AS c_binomial, el.species AS c_epithet")
    con.execute(f"""CREATE TEMP TABLE L1 AS
        SELECT l.* EXCLUDE (g_genus), coalesce(sp.genus, l.g_genus, split_part(sc.binomial, ' ', 1)) AS g_genus,
               coalesce(sp.binomial, sc.binomial) AS g_binomial,
               coalesce(sp.epithet, split_part(sc.binomial, ' ', 2)) AS g_epithet,
               sc.uninomial AS sci_uninomial,
               concat_ws(',', nullif(l.rank_notes, ''), CASE WHEN sp.note IS NOT NULL THEN 'species:' || sp.note END,
                         CASE WHEN sc.note IS NOT NULL THEN 'name:' || sc.note END) AS notes,
               {page_cols}
        FROM L0 l LEFT JOIN sp ON sp.genus_in = coalesce(l.g_genus, '') AND sp.raw = l.species_raw
        LEFT JOIN sci sc ON sc.raw = l.sci_raw {page_join}""")
    # EOL pages the DH lacks, named by provider_ids: a binomial is context species, else a name of any rank
    pn = [r[0] for r in con.execute("SELECT DISTINCT page_name FROM L1 WHERE page_name IS NOT NULL").fetchall()]
    rows = []
    for v in pn:
        u, b, note = gn.scientific(v)
        rows.append((v, u, b))
    _mapping_table(con, "pname", ["raw", "uninomial", "binomial"], rows)
    full = " AND ".join(f"{g} IS NOT NULL" for g in G) + " AND g_binomial IS NOT NULL"
    con.execute(f"""CREATE TABLE L AS
        SELECT l.* EXCLUDE (c_genus, c_binomial, c_epithet, page_name),
               coalesce(l.c_genus, split_part(p.binomial, ' ', 1)) AS c_genus,
               coalesce(l.c_binomial, p.binomial) AS c_binomial,
               coalesce(l.c_epithet, split_part(p.binomial, ' ', 2)) AS c_epithet,
               coalesce(l.sci_uninomial, p.uninomial) AS name_any,
               CASE WHEN l.taxon_ref IS NULL THEN NULL WHEN l.page_auth_id IS NOT NULL THEN 'dh'
                    WHEN p.raw IS NOT NULL THEN 'provider_name' ELSE 'not_found' END AS page_status,
               ({full}) AS is_full, NULL::VARCHAR AS fix, NULL::INTEGER AS override,
               NULL::VARCHAR AS corrected
        FROM L1 l LEFT JOIN pname p ON p.raw = l.page_name""")
    for t in ("L0", "L1"):
        con.execute(f"DROP TABLE {t}")
    apply_homonym_fixes(con, s)
    apply_overrides(con, s)


def apply_homonym_fixes(con, s: Settings) -> None:
    for f in s.homonym_fixes:  # already most specific first
        col = G[RANK_INDEX[f["rank"]]]
        conds = ["L.fix IS NULL", f"lower(L.{col}) = lower(?)"]
        params: list = [f["name"]]
        for key, value in f["context"].items():
            if key == "source":
                conds.append("L.source = ?")
            elif key == "species":
                conds.append("lower(L.g_binomial) = lower(?)")
            else:
                conds.append(f"lower(L.{G[RANK_INDEX[key]]}) = lower(?)")
            params.append(value)
        sets = []
        set_params: list = []
        for r, value in f["lineage"].items():
            g = G[RANK_INDEX[r]]
            conds.append(f"(L.{g} IS NULL OR lower(L.{g}) = lower(?))")
            params.append(value)
            sets.append(f"{g} = coalesce(L.{g}, ?)")
            set_params.append(value)
        con.execute(f"UPDATE L SET {', '.join(sets)}, fix = ? WHERE {' AND '.join(conds)}",
                    set_params + [f"homonym_fix:{f['line']}"] + params)


def _most_specific_name_sql() -> str:
    return ("coalesce(g_binomial, g_genus, g_family, g_order, g_class, g_phylum, g_kingdom, c_binomial, c_genus, "
            "c_family, c_order, c_class, c_phylum, c_kingdom, name_any)")


def apply_overrides(con, s: Settings) -> None:
    import pyarrow as pa

    rows = [{"idx": i, "line": o["line"], **{r: o["lineage"][r] for r in RANKS}} for i, o in enumerate(s.overrides)]
    con.register("_ovr", pa.Table.from_pylist(rows, schema=pa.schema(
        [("idx", pa.int32()), ("line", pa.int32())] + [(r, pa.string()) for r in RANKS])))
    con.execute("CREATE TEMP TABLE ovr AS SELECT * FROM _ovr")
    con.unregister("_ovr")
    for i, o in enumerate(s.overrides):
        conds, params = ["override IS NULL"], []
        if o["source"]:
            conds.append("source = ?")
            params.append(o["source"])
        if o["taxon_ref"]:
            conds.append("taxon_ref = ?")
            params.append(o["taxon_ref"])
        if o["name"]:
            conds.append(f"lower({_most_specific_name_sql()}) = lower(?)")
            params.append(o["name"])
        con.execute(f"UPDATE L SET override = {i} WHERE {' AND '.join(conds)}", params)


# --------------------------------------------------------------------------------- 5. candidates
def _rank_idx_sql(expr: str) -> str:
    return f"(list_position({RANK_LIST_SQL}, {expr}) - 1)"


def _in_scope(col: str, scope: str | None) -> str:
    """SQL condition: `col` is a lineage of the table `scope` (always true without a scope)."""
    return f"{col} IN (SELECT lineage_key FROM {scope})" if scope else "true"


def _rows(con, table: str, select: str, scope: str | None) -> None:
    """Create `table` from `select`; with a scope, replace only the scope's lineages' rows (the select is
    already limited to them): the second matching pass of accepted suggestions (`correct_misspellings`)."""
    if scope is None:
        con.execute(f"CREATE OR REPLACE TABLE {table} AS {select}")
    else:
        con.execute(f"DELETE FROM {table} WHERE {_in_scope('lineage_key', scope)}")
        con.execute(f"INSERT INTO {table} BY NAME {select}")


def candidates(con, s: Settings, scope: str | None = None) -> None:
    """Tables `probes` (name lookups) and `scored` (every candidate with its agreement and acceptability).
    scope: a table of lineage keys to match again (their rows are replaced), None = every lineage."""
    order = {a: i for i, a in enumerate(s.authority_order)}
    decided_by_source = "source" in order and order["source"] == 0
    skip = "L.override IS NOT NULL" + (" OR L.is_full" if decided_by_source else "")
    where = f"NOT ({skip}) AND {_in_scope('lineage_key', scope)}"
    parts = []
    for i, r in enumerate(RANKS[:6]):
        parts.append(f"SELECT lineage_key, '{r}' AS rank, {G[i]} AS name, 'given' AS basis FROM L WHERE {where}")
        parts.append(f"SELECT lineage_key, '{r}', {C[i]}, 'context' FROM L WHERE {where}")
    parts.append(f"SELECT lineage_key, 'species', g_binomial, 'given' FROM L WHERE {where}")
    parts.append(f"SELECT lineage_key, 'species', c_binomial, 'context' FROM L WHERE {where}")
    parts.append(f"SELECT lineage_key, '*', name_any, 'name' FROM L WHERE {where}")
    _rows(con, "probes", f"""
        SELECT DISTINCT ON (lineage_key, rank, nk) lineage_key, rank, {auth.nk('name')} AS nk, name, basis
        FROM ({" UNION ALL ".join(parts)}) WHERE name IS NOT NULL
        ORDER BY lineage_key, rank, nk, CASE basis WHEN 'given' THEN 0 WHEN 'context' THEN 1 ELSE 2 END""", scope)
    if "inat21" in order and scope is None:
        _inat21_authority(con, s)
    con.execute(f"""CREATE OR REPLACE TABLE cands (lineage_key VARCHAR, authority VARCHAR, a_order INTEGER,
        basis VARCHAR, status VARCHAR, matched_id VARCHAR, anchor INTEGER, anchor_name VARCHAR, probe_name VARCHAR,
        {", ".join(f"{a} VARCHAR" for a in A)})""")
    a_sel = 'l.kingdom, l.phylum, l.class, l."order", l.family, l.genus, l.species'
    for name in s.authority_order:
        oi = order[name]
        if name == "source":
            con.execute(f"""INSERT INTO cands SELECT lineage_key, 'source', {oi}, 'full', 'accepted',
                example_taxon_id, 6, g_binomial, g_binomial, {", ".join(G)}, g_epithet FROM L
                WHERE is_full AND override IS NULL AND {_in_scope('lineage_key', scope)}""")
            continue
        if name not in s.loaded and name != "inat21":
            continue
        basis_filter = "AND p.basis <> 'context'" if name == "eol" else ""
        con.execute(f"""INSERT INTO cands
            SELECT p.lineage_key, '{name}', {oi}, p.basis, n.status, n.auth_id, {_rank_idx_sql('l.rank')},
                   l.name, p.name, {a_sel}
            FROM probes p JOIN "{name}".names n ON n.nk = p.nk AND (n.rank = p.rank OR (p.rank = '*' AND n.rank <> 'species'))
            JOIN "{name}".lineages l ON l.auth_id = n.accepted_id
            WHERE {_in_scope('p.lineage_key', scope)} {basis_filter}""")
        if name == "eol":
            con.execute(f"""INSERT INTO cands
                SELECT L.lineage_key, 'eol', {oi}, 'page', 'accepted', L.page_auth_id, {_rank_idx_sql('l.rank')},
                       l.name, NULL, {a_sel}
                FROM L JOIN eol.lineages l ON l.auth_id = L.page_auth_id
                WHERE L.override IS NULL AND {_in_scope('L.lineage_key', scope)}""")
    _score(con, s, scope)


def _inat21_authority(con, s: Settings) -> None:
    """iNat21's own categories (full lineages of the iNat21-reader sources) as a name authority."""
    con.execute("CREATE SCHEMA IF NOT EXISTS inat21")
    con.execute(f"""CREATE TEMP TABLE inat_chains AS SELECT example_taxon_id AS tsn, g_kingdom AS k,
        g_phylum AS p, g_class AS c, g_order AS o, g_family AS f, g_genus AS g, g_binomial AS binomial,
        g_epithet AS epithet FROM L WHERE is_full AND {_in('source', s.inat_sources)}""")
    con.execute("USE memory.inat21")
    try:
        auth._chains_to_tables(con, "memory.main.inat_chains", id_of_rank=lambda r: "NULL", prefix="inat21")
    finally:
        con.execute("USE memory.main")


def _score(con, s: Settings, scope: str | None = None) -> None:
    g_contra, g_agree, c_contra, c_agree = [], [], [], []
    for i in range(6):
        exempt = ""
        if i == 5:  # a species synonym may move the species to another genus: not a contradiction
            exempt = " AND NOT (c.status = 'synonym' AND c.anchor = 6)"
        g_contra.append(f"(c.anchor > {i} AND L.{G[i]} IS NOT NULL AND c.{A[i]} IS NOT NULL "
                        f"AND lower(L.{G[i]}) <> lower(c.{A[i]}){exempt})::INT")
        g_agree.append(f"coalesce(c.anchor > {i} AND lower(L.{G[i]}) = lower(c.{A[i]}), false)::INT")
        c_contra.append(f"(c.anchor > {i} AND L.{C[i]} IS NOT NULL AND c.{A[i]} IS NOT NULL "
                        f"AND lower(L.{C[i]}) <> lower(c.{A[i]}){exempt})::INT")
        c_agree.append(f"coalesce(c.anchor > {i} AND lower(L.{C[i]}) = lower(c.{A[i]}), false)::INT")
    complete = " + ".join(f"(c.anchor >= {i} AND c.{A[i]} IS NOT NULL)::INT" for i in range(7))
    lin = "concat_ws('|', " + ", ".join(
        f"CASE WHEN c.anchor >= {i} THEN coalesce(c.{A[i]}, '') ELSE '' END" for i in range(7)) + ")"
    kpri = f"coalesce(list_position({literal_list(s.kingdom_priority)}, c.a0), 999)" if s.kingdom_priority else "999"
    synonyms_ok = "true" if s.resolve_synonyms else "status <> 'synonym'"
    _rows(con, "scored", f"""
        SELECT * EXCLUDE (genus_agree), g_contra = 0 AND NOT c_kcontra AND c_contra <= c_agree AND {synonyms_ok}
               AS acceptable,
               -- agreement above the name itself: a species' genus is part of its binomial, so tells nothing
               g_agree + c_agree - CASE WHEN anchor = 6 THEN genus_agree ELSE 0 END AS support
        FROM (SELECT c.*, {" + ".join(g_contra)} AS g_contra, {" + ".join(g_agree)} AS g_agree,
               {g_agree[5]} + {c_agree[5]} AS genus_agree,
               {" + ".join(c_contra)} AS c_contra, {" + ".join(c_agree)} AS c_agree,
               coalesce(c.anchor > 0 AND L.c_kingdom IS NOT NULL AND c.a0 IS NOT NULL
                        AND lower(L.c_kingdom) <> lower(c.a0), false) AS c_kcontra,
               {complete} AS completeness, {kpri} AS kpri, {lin} AS lin,
               CASE c.status WHEN 'accepted' THEN 0 WHEN 'doubtful' THEN 1 ELSE 2 END AS status_rank
              FROM cands c JOIN L USING (lineage_key))""", scope)
    con.execute("DROP TABLE cands")


CHOICE_ORDER = ("anchor DESC, a_order, (g_agree + c_agree) DESC, status_rank, completeness DESC, kpri, lin, "
                "matched_id")


# ------------------------------------------------------------------------------------- 7. choose
def choose(con, s: Settings, scope: str | None = None) -> None:
    """Tables `best` (the chosen candidate per lineage), `ambiguous` (bare cross-kingdom homonyms, taken out
    of `best`) and `ties`. scope: as for `candidates`."""
    _rows(con, "best", f"""SELECT * EXCLUDE (rn) FROM (
        SELECT *, row_number() OVER (PARTITION BY lineage_key ORDER BY {CHOICE_ORDER}) AS rn
        FROM scored WHERE acceptable AND {_in_scope('lineage_key', scope)}) WHERE rn = 1""", scope)
    # rule 7e: another acceptable candidate at the same rank in another kingdom, and no given or context rank
    # above the name supports either (a bare "Laelia": orchid or moth): nothing tells them apart, so the
    # lineage stays unresolved instead of taking the first kingdom of kingdom_priority
    _rows(con, "ambiguous", f"""SELECT b.lineage_key, b.anchor, count(DISTINCT lower(o.a0)) + 1 AS kingdoms
        FROM best b JOIN scored o ON o.lineage_key = b.lineage_key AND o.acceptable AND o.anchor = b.anchor
             AND o.support = 0 AND lower(o.a0) <> lower(b.a0)
        WHERE b.support = 0 AND {_in_scope('b.lineage_key', scope)} GROUP BY ALL""", scope)
    con.execute("DELETE FROM best WHERE lineage_key IN (SELECT lineage_key FROM ambiguous)")
    # a tie: another acceptable candidate equal on a-d with a different lineage; which criterion decided
    _rows(con, "ties", f"""SELECT * EXCLUDE (rn) FROM (
        SELECT b.lineage_key, o.lin AS other_lin, o.matched_id AS other_id,
               CASE WHEN o.completeness < b.completeness THEN 'more_complete'
                    WHEN o.kpri > b.kpri THEN 'kingdom_priority' ELSE 'lineage_order' END AS criterion,
               row_number() OVER (PARTITION BY b.lineage_key ORDER BY o.completeness DESC, o.kpri, o.lin,
                                  o.matched_id) AS rn
        FROM best b JOIN scored o ON o.lineage_key = b.lineage_key AND o.acceptable AND o.anchor = b.anchor
             AND o.a_order = b.a_order AND o.g_agree + o.c_agree = b.g_agree + b.c_agree
             AND o.status_rank = b.status_rank AND o.lin <> b.lin
        WHERE {_in_scope('b.lineage_key', scope)}) WHERE rn = 1""", scope)


# ------------------------------------------------------------------------ 8. suspected misspellings
GIVEN_NAMES = [*G, "g_binomial"]  # the given name at each of the seven ranks (a binomial for the species)
MIN_CHARS_PER_EDIT = 5  # letters per edit for a name to count as misspelt (short names differ by design)


def suspect_misspellings(con, s: Settings) -> None:
    """Table `suspects`: lineages whose first given name below the confirmed rank (the chosen candidate's
    anchor) is unknown to every authority of the order at that rank, but within a few edits of an authority
    name at that rank under the confirmed name (Felidae: Pantherra ~ Panthera): one row per lineage with
    the nearest such name (`suggestion`), its distance and how many names are that near.

    Done in DuckDB on the few lineages concerned: the authorities' names are only compared, by
    damerau_levenshtein, with the given names that have the same confirmed parent, the same kingdom and
    a length within the distance."""
    order = {a: i for i, a in enumerate(s.authority_order)}
    pool = [a for a in s.authority_order if a == "inat21" or (a in s.loaded and a in NAME_AUTHORITIES)]
    con.execute("""CREATE OR REPLACE TABLE suspects (lineage_key VARCHAR, anchor INTEGER, parent VARCHAR,
        target INTEGER, given VARCHAR, suggestion VARCHAR, authority VARCHAR, auth_id VARCHAR, distance INTEGER,
        n_suggestions BIGINT)""")
    max_d = int(s.misspelling_max_distance)
    if max_d <= 0 or not pool:
        return
    first = "CASE " + " ".join(f"WHEN b.anchor < {i} AND L.{GIVEN_NAMES[i]} IS NOT NULL THEN {i}"
                               for i in range(1, 7)) + " END"
    given = "[" + ", ".join(f"L.{g}" for g in GIVEN_NAMES) + "]"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE need AS
        SELECT n.*, {RANK_LIST_SQL}[n.target + 1] AS target_rank, {auth.nk('n.given')} AS given_nk
        FROM (SELECT b.lineage_key, b.anchor, b.anchor_name AS parent, {auth.nk('b.anchor_name')} AS parent_nk,
                     lower(b.a0) AS kingdom_lc, {first} AS target, {given}[{first} + 1] AS given
              FROM best b JOIN L USING (lineage_key) WHERE b.anchor < 6) n
        WHERE n.target IS NOT NULL AND NOT EXISTS (  -- a name an authority knows at that rank is no misspelling
            SELECT 1 FROM scored k
            WHERE k.lineage_key = n.lineage_key AND k.anchor = n.target AND k.basis = 'given')""")
    anchors = [r[0] for r in con.execute("SELECT DISTINCT anchor FROM need ORDER BY 1").fetchall()]
    if not anchors:
        return
    parts = []
    for name in pool:
        for a in anchors:  # the confirmed parent's column of the authority's lineages: one equi-join each
            parts.append(f"""SELECT n.lineage_key, n.anchor, n.parent, n.target, n.given, n.given_nk, l.name,
                    l.auth_id, '{name}' AS authority, {order[name]} AS a_order
                FROM need n JOIN "{name}".lineages l ON n.anchor = {a} AND l.rank = n.target_rank
                     AND {auth.nk(f'l."{OUT_COLS[a]}"')} = n.parent_nk
                WHERE abs(length(l.name) - length(n.given)) <= {max_d}
                  AND (n.kingdom_lc IS NULL OR l.kingdom IS NULL OR lower(l.kingdom) = n.kingdom_lc)""")
    # the letters that may be misspelt: a species' epithet when its genus is the given one, else the whole name
    part_len = ("CASE WHEN target = 6 AND split_part(given_nk, ' ', 1) = split_part(name_nk, ' ', 1) "
                "THEN length(split_part(given_nk, ' ', 2)) ELSE length(given_nk) END")
    con.execute(f"""INSERT INTO suspects
        WITH near AS (
            SELECT * FROM (SELECT *, damerau_levenshtein(given_nk, name_nk) AS distance
                           FROM (SELECT *, {auth.nk('name')} AS name_nk FROM ({" UNION ALL ".join(parts)})))
            WHERE distance BETWEEN 1 AND {max_d} AND distance * {MIN_CHARS_PER_EDIT} <= {part_len}),
        nearest AS (
            SELECT *, min(distance) OVER (PARTITION BY lineage_key) AS d_min FROM near)
        SELECT lineage_key, anchor, parent, target, given, name, authority, auth_id, distance, n_suggestions FROM (
            SELECT *, count(DISTINCT name_nk) OVER (PARTITION BY lineage_key) AS n_suggestions,
                   row_number() OVER (PARTITION BY lineage_key ORDER BY a_order, name_nk, auth_id) AS rn
            FROM nearest WHERE distance = d_min) WHERE rn = 1""")


def correct_misspellings(con, s: Settings) -> int:
    """taxonomy.accept_suggestions: replace each suspected misspelling that has one nearest name by that name
    in the lineage's given ranks (a corrected genus carries its species' epithet along) and match those
    lineages again. Table `corrections`; returns how many lineages were corrected."""
    con.execute("""CREATE OR REPLACE TABLE corrections AS
        SELECT * FROM suspects WHERE n_suggestions = 1""")
    n = con.execute("SELECT count(*) FROM corrections").fetchall()[0][0]
    if not n:
        return 0
    sets = [f"{G[i]} = CASE WHEN c.target = {i} THEN c.suggestion ELSE L.{G[i]} END" for i in range(5)]
    sets.append(f"""g_genus = CASE WHEN c.target = 5 THEN c.suggestion
                                  WHEN c.target = 6 THEN split_part(c.suggestion, ' ', 1) ELSE L.g_genus END""")
    sets.append("""g_binomial = CASE WHEN c.target = 6 THEN c.suggestion
                                     WHEN c.target = 5 AND L.g_epithet IS NOT NULL
                                          THEN c.suggestion || ' ' || L.g_epithet
                                     ELSE L.g_binomial END""")
    sets.append("g_epithet = CASE WHEN c.target = 6 THEN split_part(c.suggestion, ' ', 2) ELSE L.g_epithet END")
    sets.append(f"corrected = {RANK_LIST_SQL}[c.target + 1]")
    con.execute(f"UPDATE L SET {', '.join(sets)} FROM corrections c WHERE c.lineage_key = L.lineage_key")
    candidates(con, s, scope="corrections")
    choose(con, s, scope="corrections")
    return n


def finish_choice(con, s: Settings) -> None:
    """Table `final`: the resolved lineage of every raw lineage, its confirmed rank and rule."""
    res = []
    for i in range(6):
        res.append(f"""CASE WHEN L.override IS NOT NULL THEN ov."{OUT_COLS[i]}" WHEN b.anchor IS NULL THEN NULL
            WHEN b.anchor >= {i} THEN coalesce(b.{A[i]}, L.{G[i]}) WHEN sp.lineage_key IS NOT NULL THEN NULL
            ELSE coalesce(L.{G[i]}, L.{C[i]}) END AS "{OUT_COLS[i]}\"""")
    res.append("""CASE WHEN L.override IS NOT NULL THEN ov.species WHEN b.anchor IS NULL THEN NULL
        WHEN b.anchor = 6 THEN coalesce(b.a6, L.g_epithet) WHEN sp.lineage_key IS NOT NULL THEN NULL
        ELSE coalesce(L.g_epithet, L.c_epithet) END AS species""")
    con.execute(f"""CREATE TEMP TABLE final0 AS
        SELECT L.lineage_key, L.source, L.images, L.taxon_ref, L.example_taxon_id, L.example_common_name, L.notes,
               L.fix, L.override, L.corrected, L.page_status, L.page_auth_id, L.page_exact,
               CASE WHEN L.override IS NOT NULL THEN 'override' ELSE b.authority END AS authority,
               CASE WHEN L.override IS NOT NULL THEN 'overrides.csv:' || ov.line ELSE b.matched_id END AS authority_id,
               CASE WHEN L.override IS NULL THEN {RANK_LIST_SQL}[b.anchor + 1] END AS anchor_rank,
               CASE WHEN sp.lineage_key IS NOT NULL THEN {RANK_LIST_SQL}[sp.target + 1] END AS misspelt_rank,
               b.basis, b.status, t.criterion AS tie, {", ".join(res)}
        FROM L LEFT JOIN best b USING (lineage_key) LEFT JOIN ties t USING (lineage_key)
        LEFT JOIN suspects sp USING (lineage_key) LEFT JOIN ovr ov ON ov.idx = L.override""")
    lineage = "concat_ws('|', " + ", ".join(f"coalesce(\"{c}\", '')" for c in OUT_COLS) + ")"
    lowest = "CASE " + " ".join(f"WHEN \"{c}\" IS NOT NULL THEN '{c}'" for c in reversed(OUT_COLS)) + " END"
    con.execute(f"""CREATE TABLE final AS
        SELECT f.*, CASE WHEN f.authority IS NOT NULL THEN substr(md5({lineage}), 1, 16) END AS taxon_id,
               {lowest} AS lowest_rank,
               CASE WHEN f.authority = 'override' THEN {lowest} ELSE f.anchor_rank END AS confirmed_rank,
               CASE WHEN f.authority IS NOT NULL THEN NULL
                    WHEN am.lineage_key IS NOT NULL THEN 'ambiguous_homonym'
                    WHEN coalesce(pr.n, 0) = 0 AND f.page_status = 'not_found' THEN 'page_not_found'
                    WHEN coalesce(pr.n, 0) = 0 THEN 'no_names'
                    WHEN coalesce(sc.n, 0) = 0 THEN 'no_match' ELSE 'conflicting_only' END AS unresolved_reason
        FROM final0 f
        LEFT JOIN ambiguous am USING (lineage_key)
        LEFT JOIN (SELECT lineage_key, count(*) AS n FROM probes GROUP BY ALL) pr USING (lineage_key)
        LEFT JOIN (SELECT lineage_key, count(*) AS n FROM scored GROUP BY ALL) sc USING (lineage_key)""")
    con.execute("DROP TABLE final0")
    con.execute("ALTER TABLE final ADD COLUMN rule VARCHAR")
    con.execute("ALTER TABLE final ADD COLUMN rank_status VARCHAR")
    con.execute("""UPDATE final SET rank_status = CASE WHEN taxon_id IS NULL THEN NULL
                                                      WHEN lowest_rank = confirmed_rank THEN 'confirmed'
                                                      ELSE 'source_asserted' END,
        rule = CASE
        WHEN authority = 'override' THEN 'override'
        WHEN authority IS NULL THEN 'unresolved:' || unresolved_reason
        ELSE authority || ':' || basis || ':' || anchor_rank
             || CASE WHEN status = 'synonym' THEN '+synonym' ELSE '' END
             || CASE WHEN fix IS NOT NULL THEN '+' || fix ELSE '' END
             || CASE WHEN tie IS NOT NULL THEN '+tie:' || tie ELSE '' END
             || CASE WHEN corrected IS NOT NULL THEN '+corrected:' || corrected ELSE '' END
             || CASE WHEN misspelt_rank IS NOT NULL THEN '+suspected_misspelling:' || misspelt_rank ELSE '' END END""")


def build_taxa(con) -> None:
    """Table `taxa`: the distinct resolved lineages (common names are added by common_names.py).

    Several raw lineages may resolve to one taxon, each with its own confirmed rank: the taxon's
    `confirmed_rank` is the most specific one any of them reached. Its seven ranks are one string: once an
    authority (or a source's full lineage) confirmed that string down to a rank, the taxon exists there, and a
    record whose own label was confirmed less far is no less that taxon. What each record's own label was
    confirmed to stays per record (lineage_map, the `images` view), and `images_confirmed` counts the records
    whose own lineage confirmed the taxon down to its lowest rank."""
    sci = ("CASE WHEN genus IS NOT NULL AND species IS NOT NULL THEN genus || ' ' || species ELSE "
           "coalesce(genus, family, \"order\", class, phylum, kingdom) END")
    ci = _rank_idx_sql("confirmed_rank")
    con.execute(f"""CREATE TABLE taxa AS
        SELECT *, CASE WHEN confirmed_rank = lowest_rank THEN 'confirmed' ELSE 'source_asserted' END AS rank_status
        FROM (SELECT taxon_id, kingdom, phylum, class, "order", family, genus, species, {sci} AS scientific_name,
                     NULL::VARCHAR AS common_name, NULL::VARCHAR AS common_name_source, lowest_rank,
                     sum(images)::BIGINT AS images, {RANK_LIST_SQL}[max({ci}) + 1] AS confirmed_rank,
                     sum(CASE WHEN confirmed_rank = lowest_rank THEN images ELSE 0 END)::BIGINT AS images_confirmed
              FROM final WHERE taxon_id IS NOT NULL
              GROUP BY taxon_id, kingdom, phylum, class, "order", family, genus, species, lowest_rank)""")


# ----------------------------------------------------------------------------------- 9. conflicts
def conflicts(con, s: Settings) -> None:
    """Table `conflicts`: every decision where an authority and a given (or context) rank disagreed."""
    cols = ("lineage_key, source, authority, authority_id, anchor_rank, anchor_name, rank, basis, value_kept, "
            "value_refused, decision, rule, images")
    con.execute("""CREATE TABLE conflicts (lineage_key VARCHAR, source VARCHAR, authority VARCHAR,
        authority_id VARCHAR, anchor_rank VARCHAR, anchor_name VARCHAR, rank VARCHAR, basis VARCHAR,
        value_kept VARCHAR, value_refused VARCHAR, decision VARCHAR, rule VARCHAR, images BIGINT,
        suggestion VARCHAR)""")
    # refused candidates more specific than, or preferred by order to, the chosen one: best per authority
    con.execute(f"""CREATE TEMP TABLE refused AS SELECT * EXCLUDE (rn) FROM (
        SELECT *, row_number() OVER (PARTITION BY lineage_key, authority ORDER BY {CHOICE_ORDER}) AS rn
        FROM (SELECT s.* FROM scored s LEFT JOIN best b USING (lineage_key)
              WHERE NOT s.acceptable AND (b.anchor IS NULL OR s.anchor > b.anchor
                    OR (s.anchor = b.anchor AND s.a_order < b.a_order)))) WHERE rn = 1""")
    parts = []
    for i in range(6):
        for basis, cols_, decision in (("given", G, "kept_given"), ("context", C, "kept_context")):
            parts.append(f"""SELECT x.lineage_key, L.source, x.authority, x.matched_id, {RANK_LIST_SQL}[x.anchor + 1],
                x.anchor_name, '{RANKS[i]}', '{basis}', L.{cols_[i]}, x.{A[i]}, '{decision}', 'contradiction', L.images
                FROM refused x JOIN L USING (lineage_key)
                WHERE x.anchor > {i} AND L.{cols_[i]} IS NOT NULL AND x.{A[i]} IS NOT NULL
                  AND lower(L.{cols_[i]}) <> lower(x.{A[i]})
                  AND NOT ({i} = 5 AND x.status = 'synonym' AND x.anchor = 6)""")
            if basis == "context":  # accepted candidates that outvoted the context
                parts.append(f"""SELECT b.lineage_key, L.source, b.authority, b.matched_id, {RANK_LIST_SQL}[b.anchor + 1],
                    b.anchor_name, '{RANKS[i]}', 'context', b.{A[i]}, L.{C[i]}, 'used_authority',
                    'context_outvoted', L.images
                    FROM best b JOIN L USING (lineage_key)
                    WHERE b.anchor > {i} AND L.{C[i]} IS NOT NULL AND b.{A[i]} IS NOT NULL
                      AND lower(L.{C[i]}) <> lower(b.{A[i]}) AND NOT ({i} = 5 AND b.status = 'synonym' AND b.anchor = 6)""")
    parts.append(f"""SELECT b.lineage_key, L.source, b.authority, b.matched_id, {RANK_LIST_SQL}[b.anchor + 1],
        b.anchor_name, {RANK_LIST_SQL}[b.anchor + 1], b.basis, b.anchor_name, b.probe_name, 'used_authority',
        'synonym', L.images FROM best b JOIN L USING (lineage_key) WHERE b.status = 'synonym'""")
    parts.append(f"""SELECT b.lineage_key, L.source, b.authority, b.matched_id, {RANK_LIST_SQL}[b.anchor + 1],
        b.anchor_name, {RANK_LIST_SQL}[b.anchor + 1], b.basis, b.lin, t.other_lin, 'tie', 'tie:' || t.criterion,
        L.images FROM best b JOIN ties t USING (lineage_key) JOIN L USING (lineage_key)""")
    for i, c in enumerate(OUT_COLS):
        given = G[i] if i < 6 else "g_epithet"
        parts.append(f"""SELECT f.lineage_key, f.source, 'override', f.authority_id, NULL, NULL, '{RANKS[i]}', 'given',
            f."{c}", L.{given}, 'override', 'override', f.images FROM final f JOIN L USING (lineage_key)
            WHERE f.authority = 'override' AND L.{given} IS NOT NULL AND f."{c}" IS DISTINCT FROM L.{given}""")
    con.execute(f"INSERT INTO conflicts ({cols}) " + " UNION ALL ".join(parts))
    # suspected misspellings: stopped at the confirmed rank (value_kept NULL), or corrected (accept_suggestions)
    for table, kept, outcome in (("suspects", "NULL", "stopped"), ("corrections", "x.suggestion", "accepted")):
        con.execute(f"""INSERT INTO conflicts ({cols}, suggestion)
            SELECT x.lineage_key, L.source, x.authority, x.auth_id, {RANK_LIST_SQL}[x.anchor + 1], x.parent,
                   {RANK_LIST_SQL}[x.target + 1], 'given', {kept}, x.given, 'suspected_misspelling',
                   '{outcome}:edit_distance=' || x.distance
                   || CASE WHEN x.n_suggestions > 1 THEN ',names=' || x.n_suggestions ELSE '' END,
                   L.images, x.suggestion
            FROM {table} x JOIN L USING (lineage_key)""")
    # bare cross-kingdom homonyms: the best candidate of each kingdom, none taken
    con.execute(f"""INSERT INTO conflicts ({cols})
        SELECT o.lineage_key, L.source, o.authority, o.matched_id, {RANK_LIST_SQL}[o.anchor + 1], o.anchor_name,
               {RANK_LIST_SQL}[o.anchor + 1], o.basis, NULL, o.lin, 'ambiguous_homonym', 'unresolved', L.images
        FROM (SELECT s.*, row_number() OVER (PARTITION BY s.lineage_key, lower(s.a0) ORDER BY {CHOICE_ORDER}) AS rn
              FROM scored s SEMI JOIN ambiguous a ON a.lineage_key = s.lineage_key AND s.anchor = a.anchor
              WHERE s.acceptable AND s.support = 0) o JOIN L USING (lineage_key) WHERE o.rn = 1""")


# ------------------------------------------------------------------------------------- outputs
LINEAGE_MAP_COLUMNS = {
    "source": "source id of the records",
    "lineage_key": "md5 of the raw lineage (source, seven raw ranks, scientific_name, EOL page id)",
    "taxon_id": "the resolved taxon (taxa.taxon_id); NULL = unresolved",
    "authority": "authority of the decisive match: source, inat21, itis, gbif, eol, override; NULL if unresolved",
    "rule": "authority:basis:anchor rank (+synonym, +homonym_fix:LINE, +tie:criterion, +corrected:RANK, "
            "+suspected_misspelling:RANK), or unresolved:reason (no_names, no_match, conflicting_only, "
            "page_not_found, ambiguous_homonym)",
    "authority_id": "matched id in that authority (ITIS TSN, GBIF taxonID, DH taxonID, iNat21 category id)",
    "anchor_rank": "rank of the matched name (ranks above it come from the authority)",
    "lowest_rank": "most specific rank of the resolved lineage",
    "notes": "name notes (species:interim, species:infraspecific, genus:authorship, ...)",
    "images": "records with this raw lineage",
    **{f"raw_{r}": f"raw {r} as given" for r in RANKS},
    "raw_scientific_name": "raw scientific name as given",
    "taxon_ref": "EOL page id (sources whose taxon ids are EOL pages)",
    "page_status": "EOL page: dh (found in the DH), provider_name (named by provider_ids), not_found",
    "confirmed_rank": "most specific rank an authority (or the source's own full lineage; override: the curator) "
                      "confirmed: the anchor rank; ranks below it are the source's own labels; NULL if unresolved",
    "rank_status": "confirmed (lowest_rank = confirmed_rank), source_asserted (ranks below confirmed_rank kept "
                   "from the source), NULL if unresolved",
}
TAXA_COLUMNS = {
    "taxon_id": "first 16 hex digits of md5('kingdom|phylum|class|order|family|genus|species')",
    **{c: f"{c} (resolved)" for c in OUT_COLS[:6]},
    "species": "species epithet (lower case); scientific_name holds the binomial",
    "scientific_name": "'Genus epithet' when the species is known, else the most specific name",
    "common_name": "English common name, by the workflow's common_name_order (common_names' preferred 'en' row)",
    "common_name_source": "authority that gave the common name (itis, inaturalist, eol_preferred, eol, gbif, source)",
    "lowest_rank": "most specific rank present",
    "images": "records resolved to this taxon",
    "confirmed_rank": "most specific rank confirmed by any raw lineage of this taxon (lineage_map.confirmed_rank)",
    "rank_status": "confirmed (confirmed_rank = lowest_rank) or source_asserted (ranks below confirmed_rank "
                   "only as sources gave them)",
    "images_confirmed": "records whose own raw lineage confirmed the taxon down to lowest_rank",
}
CONFLICT_COLUMNS = {
    "lineage_key": "raw lineage (lineage_map.lineage_key)", "source": "source id",
    "authority": "authority whose candidate was involved", "authority_id": "its id in that authority",
    "anchor_rank": "rank of the candidate's matched name", "anchor_name": "the candidate's name at that rank",
    "rank": "rank where the values differ", "basis": "given (by the source), context (EOL DH lineage of the page)",
    "value_kept": "value in the result", "value_refused": "value not used",
    "decision": "kept_given, kept_context, used_authority, tie, override, suspected_misspelling, ambiguous_homonym",
    "rule": "contradiction, context_outvoted, synonym, tie:<criterion>, override, "
            "stopped|accepted:edit_distance=N[,names=K] (suspected_misspelling), unresolved (ambiguous_homonym)",
    "images": "records affected",
    "suggestion": "suspected_misspelling: the nearest authority name under the confirmed parent",
}


def write_outputs(con, d: Path) -> dict[str, int]:
    raw_cols = ", ".join(f'r."{c}" AS raw_{c}' for c in RANKS)
    queries = {
        "lineage_map": f"""SELECT f.source, f.lineage_key, f.taxon_id, f.authority, f.rule, f.authority_id,
                f.anchor_rank, f.lowest_rank, nullif(f.notes, '') AS notes, f.images, {raw_cols},
                r.scientific_name AS raw_scientific_name, f.taxon_ref, f.page_status, f.confirmed_rank,
                f.rank_status
            FROM final f JOIN raw r USING (lineage_key) ORDER BY f.source, f.lineage_key""",
        "taxa": """SELECT taxon_id, kingdom, phylum, class, "order", family, genus, species, scientific_name,
                common_name, common_name_source, lowest_rank, images, confirmed_rank, rank_status,
                images_confirmed FROM taxa ORDER BY taxon_id""",
        "conflicts": """SELECT * FROM conflicts ORDER BY lineage_key, authority, rank, decision, rule, value_refused""",
        "common_names": """SELECT taxon_id, language, name, source, preferred FROM common_names
                ORDER BY taxon_id, language, preferred DESC, name""",
    }
    for name, q in queries.items():
        with atomic_path(d / f"{name}.parquet") as tmp:
            con.execute(f"COPY ({q}) TO {literal(str(tmp))} (FORMAT parquet, COMPRESSION zstd)")
    c: dict[str, int] = {}
    row = con.execute("""SELECT count(*), count(taxon_id), sum(images), sum(CASE WHEN taxon_id IS NOT NULL THEN images END)
                     FROM final""").fetchall()[0]
    c["lineages"], c["lineages_resolved"] = row[0], row[1]
    c["lineages_unresolved"] = row[0] - row[1]
    c["images"], c["images_resolved"] = int(row[2] or 0), int(row[3] or 0)
    c["images_unresolved"] = c["images"] - c["images_resolved"]
    c["taxa"] = con.execute("SELECT count(*) FROM taxa").fetchall()[0][0]
    c["conflicts"] = con.execute("SELECT count(*) FROM conflicts").fetchall()[0][0]
    c["ties"] = con.execute("SELECT count(*) FROM ties").fetchall()[0][0]
    for a, n in con.execute("SELECT authority, count(*) FROM final WHERE authority IS NOT NULL GROUP BY ALL").fetchall():
        c[f"resolved_by_{a}"] = n
    for r, n in con.execute("SELECT lowest_rank, sum(images) FROM final WHERE taxon_id IS NOT NULL GROUP BY ALL").fetchall():
        c[f"images_to_{r}"] = int(n)
    for r, n in con.execute("SELECT unresolved_reason, count(*) FROM final WHERE taxon_id IS NULL GROUP BY ALL").fetchall():
        c[f"unresolved_{r}"] = n
    c["homonym_fixes_applied"] = con.execute("SELECT count(*) FROM final WHERE fix IS NOT NULL").fetchall()[0][0]
    c["overrides_applied"] = con.execute("SELECT count(*) FROM final WHERE override IS NOT NULL").fetchall()[0][0]
    row = con.execute("""SELECT count(*) FILTER (WHERE rank_status = 'source_asserted'),
        coalesce(sum(images) FILTER (WHERE rank_status = 'source_asserted'), 0),
        count(*) FILTER (WHERE misspelt_rank IS NOT NULL), count(*) FILTER (WHERE corrected IS NOT NULL)
        FROM final""").fetchall()[0]
    c["lineages_source_asserted"], c["images_source_asserted"] = row[0], int(row[1])
    c["suspected_misspellings"], c["suggestions_accepted"] = row[2], row[3]
    return c


def settings_dict(s: Settings) -> dict:
    return asdict(s)

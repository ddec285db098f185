"""Common names: every name of every resolved taxon in every language, one preferred per language, and
the English one in taxa.common_name, by a configurable authority order, with its origin.

The default order is BioCLIP's (src/imageomics/naming.py, CommonNameLookup): ITIS, iNaturalist, EOL names
preferred by EOL, then any EOL name. Names available (the authority loaders keep every language, mapped to
one code per language by taxonomy/languages.csv: see languages.py):

* `itis`: the names of an ITIS chain's terminal_vernacular in their terminal_vernacular_lang, keyed by the
  binomial (and kingdom); per language, the chain's first name is preferred (BioCLIP took the first
  English one);
* `inaturalist`: for taxa resolved from iNat21 records: BioCLIP's mapping of iNat21 class index to the
  iNaturalist English name (an `inaturalist` authority manifest, format inat_common_names) when loaded,
  then the category's own `common_name` from the iNat21 JSON (English);
* `eol_preferred` / `eol`: EOL vernacularnames.csv (every language_code), by the EOL page of EOL records
  (when the page is the taxon itself), then by canonical name; `eol_preferred` only takes names preferred
  by EOL;
* `gbif`: the backbone's VernacularName.tsv (every language; an empty one is `und`), the name given most
  often;
* `source`: whatever common name a source's records carry (taken as English: records have no language).

Tables (on the reconcile task's connection):

* `common_names(taxon_id, language, name, source, preferred)`: names are whitespace-normalised; a name
  given by several authorities (or ways) for one taxon and language is kept once, with the best source;
  exactly one row per (taxon, language) is `preferred`. "Best" and "preferred" follow one order, the same
  in every language and the one that has always chosen the English name: the authority earlier in
  `common_name_order`; then, within one authority, names keyed by page or category before names keyed by
  scientific name; then the authority's preference (EOL-preferred, the first ITIS name of the language);
  then the name given most often; then alphabetical order. Never input order.
* `taxa.common_name` / `common_name_source`: the preferred English ('en') row, so for English the
  preferred row of common_names equals taxa.common_name.

Names whose language was empty or unknown (`und`) are kept too: they are names of the taxon, and a user
can see which source gave them.
"""

from __future__ import annotations

from . import authorities as auth

COMMON_NAME_AUTHORITIES = ("itis", "inaturalist", "eol_preferred", "eol", "gbif", "source")
ENGLISH = "en"
COUNTED_LANGUAGES = 24  # languages with their own counter (most taxa first); the rest in common_names_lang_other

COMMON_NAMES_COLUMNS = {
    "taxon_id": "taxa.taxon_id",
    "language": "language code of taxonomy/languages.csv: ISO 639-1 where the language has one (en, es, fr, de, "
                "zh), else ISO 639-2/639-3; 'und' when the authority gave none or one the table does not know",
    "name": "the common name (whitespace-normalised)",
    "source": "authority that gave it (itis, inaturalist, eol_preferred, eol, gbif, source): the earliest in "
              "taxonomy.common_name_order of those that did",
    "preferred": "the name to use for this taxon and language (exactly one per taxon_id, language); for 'en' "
                 "it is taxa.common_name",
}


def _candidates(s) -> list[str]:
    """SELECTs of every (taxon_id, language, common_name, src, o, via, q) the authorities of the order give:
    o = position in the order, via = 0 keyed by page/category, 1 by scientific name, q = the authority's
    quality (lower = better)."""
    from .reconcile import _in

    parts = []
    sci_key = auth.nk("t.scientific_name")
    for oi, name in enumerate(s.common_name_order):
        if name in ("itis", "gbif") and name in s.loaded:
            parts.append(f"""SELECT t.taxon_id, v.language, v.name AS common_name, '{name}' AS src, {oi} AS o,
                1 AS via, v.quality AS q
                FROM taxa t JOIN "{name}".vernacular_names v ON v.kind = 'sci' AND v.key = {sci_key}
                AND (v.kingdom IS NULL OR t.kingdom IS NULL OR lower(v.kingdom) = lower(t.kingdom))""")
        elif name in ("eol_preferred", "eol") and "eol" in s.loaded:
            q = "AND v.quality = 0" if name == "eol_preferred" else ""
            parts.append(f"""SELECT f.taxon_id, v.language, v.name AS common_name, '{name}' AS src, {oi} AS o,
                0 AS via, v.quality AS q
                FROM final f JOIN eol.vernacular_names v ON v.kind = 'page' AND v.key = f.taxon_ref
                WHERE f.taxon_id IS NOT NULL AND f.page_exact {q}""")
            parts.append(f"""SELECT t.taxon_id, v.language, v.name AS common_name, '{name}' AS src, {oi} AS o,
                1 AS via, v.quality AS q
                FROM taxa t JOIN eol.vernacular_names v ON v.kind = 'sci' AND v.key = {sci_key} {q}""")
        elif name == "inaturalist":
            inat = _in("f.source", s.inat_sources)
            if "inaturalist" in s.loaded:
                parts.append(f"""SELECT f.taxon_id, v.language, v.name AS common_name, 'inaturalist' AS src,
                    {oi} AS o, 0 AS via, 0 AS q
                    FROM final f JOIN inaturalist.vernacular_names v ON v.kind = 'category'
                    AND v.key = CAST(TRY_CAST(f.example_taxon_id AS BIGINT) AS VARCHAR)
                    WHERE f.taxon_id IS NOT NULL AND {inat}""")
            parts.append(f"""SELECT f.taxon_id, '{ENGLISH}' AS language, f.example_common_name AS common_name,
                'inaturalist' AS src, {oi} AS o, 0 AS via, 1 AS q FROM final f
                WHERE f.taxon_id IS NOT NULL AND {inat} AND f.example_common_name IS NOT NULL""")
        elif name == "source":
            parts.append(f"""SELECT taxon_id, '{ENGLISH}' AS language, example_common_name AS common_name,
                'source' AS src, {oi} AS o, 0 AS via, 1 AS q FROM final
                WHERE taxon_id IS NOT NULL AND example_common_name IS NOT NULL""")
    return parts


def assign_common_names(con, s) -> dict[str, int]:
    """Table `common_names`; fill taxa.common_name and taxa.common_name_source from its preferred English
    rows. Counters: common_names_<authority> (taxa whose English name it gave), common_names_lang_<code>
    (taxa with a name in that language, for the COUNTED_LANGUAGES languages with most), common_names_lang_other
    (the others' taxon-language pairs), common_names_languages, common_names_rows."""
    con.execute("""CREATE TABLE common_names (taxon_id VARCHAR, language VARCHAR, name VARCHAR, source VARCHAR,
                   preferred BOOLEAN)""")
    parts = _candidates(s)
    if not parts:
        return {}
    # n = how often this authority (and way) gives the name for the taxon; one row per name, source and way
    con.execute(f"""CREATE TEMP TABLE cn_given AS
        SELECT taxon_id, language, name, src, o, via, q, count(*) AS n
        FROM (SELECT taxon_id, language, trim(regexp_replace(common_name, '\\s+', ' ', 'g')) AS name, src, o, via, q
              FROM ({" UNION ALL ".join(parts)}) WHERE common_name IS NOT NULL)
        WHERE name <> '' GROUP BY ALL""")
    # the same order ranks a name's sources (keep the best) and a language's names (prefer the first)
    con.execute("""INSERT INTO common_names
        SELECT taxon_id, language, name, src, pref = 1 FROM (
            SELECT *, row_number() OVER (PARTITION BY taxon_id, language ORDER BY o, via, q, n DESC, name) AS pref,
                      row_number() OVER (PARTITION BY taxon_id, language, name ORDER BY o, via, q, n DESC, src) AS best
            FROM cn_given)
        WHERE best = 1""")
    con.execute(f"""UPDATE taxa SET common_name = c.name, common_name_source = c.source FROM common_names c
                    WHERE taxa.taxon_id = c.taxon_id AND c.language = '{ENGLISH}' AND c.preferred""")
    counters = {f"common_names_{src}": n for src, n in con.execute(
        f"SELECT source, count(*) FROM common_names WHERE language = '{ENGLISH}' AND preferred GROUP BY ALL").fetchall()}
    per_language = con.execute("""SELECT language, count(*) AS taxa FROM common_names WHERE preferred
                                  GROUP BY ALL ORDER BY taxa DESC, language""").fetchall()
    for language, n in per_language[:COUNTED_LANGUAGES]:
        counters[f"common_names_lang_{language}"] = n
    if len(per_language) > COUNTED_LANGUAGES:
        counters["common_names_lang_other"] = sum(n for _, n in per_language[COUNTED_LANGUAGES:])
    counters["common_names_languages"] = len(per_language)
    counters["common_names_rows"] = con.execute("SELECT count(*) FROM common_names").fetchall()[0][0]
    return counters

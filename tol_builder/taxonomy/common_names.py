"""Common names: one English name per resolved taxon, by a configurable authority order, with its origin.

The default order is BioCLIP's (src/imageomics/naming.py, CommonNameLookup): ITIS, iNaturalist, EOL names
preferred by EOL, then any English EOL name. Names available:

* `itis`: the first English name of an ITIS chain's terminal_vernacular, keyed by the binomial (and kingdom);
* `inaturalist`: for taxa resolved from iNat21 records: BioCLIP's mapping of iNat21 class index to the
  iNaturalist English name (an `inaturalist` authority manifest, format inat_common_names) when loaded,
  then the category's own `common_name` from the iNat21 JSON;
* `eol_preferred` / `eol`: EOL vernacularnames.csv (language eng), by the EOL page of EOL records (when the
  page is the taxon itself), then by canonical name; `eol_preferred` only takes names preferred by EOL;
* `gbif`: the backbone's VernacularName.tsv (English), the name given most often;
* `source`: whatever common name a source's records carry.

Within one authority: names keyed by page or category before names keyed by scientific name, then
preferred before others, then the name given most often, then alphabetical order. Never input order.
"""

from __future__ import annotations

from . import authorities as auth

COMMON_NAME_AUTHORITIES = ("itis", "inaturalist", "eol_preferred", "eol", "gbif", "source")


def assign_common_names(con, s) -> dict[str, int]:
    """Fill taxa.common_name and taxa.common_name_source. Returns counters common_names_<authority>."""
    from .reconcile import _in

    parts = []
    sci_key = auth.nk("t.scientific_name")
    for oi, name in enumerate(s.common_name_order):
        if name in ("itis", "gbif") and name in s.loaded:
            parts.append(f"""SELECT t.taxon_id, v.common_name, '{name}' AS src, {oi} AS o, 1 AS via, v.quality AS q
                FROM taxa t JOIN "{name}".vernaculars v ON v.kind = 'sci' AND v.key = {sci_key}
                AND (v.kingdom IS NULL OR t.kingdom IS NULL OR lower(v.kingdom) = lower(t.kingdom))""")
        elif name in ("eol_preferred", "eol") and "eol" in s.loaded:
            q = "AND v.quality = 0" if name == "eol_preferred" else ""
            parts.append(f"""SELECT f.taxon_id, v.common_name, '{name}' AS src, {oi} AS o, 0 AS via, v.quality AS q
                FROM final f JOIN eol.vernaculars v ON v.kind = 'page' AND v.key = f.taxon_ref
                WHERE f.taxon_id IS NOT NULL AND f.page_exact {q}""")
            parts.append(f"""SELECT t.taxon_id, v.common_name, '{name}' AS src, {oi} AS o, 1 AS via, v.quality AS q
                FROM taxa t JOIN eol.vernaculars v ON v.kind = 'sci' AND v.key = {sci_key} {q}""")
        elif name == "inaturalist":
            inat = _in("f.source", s.inat_sources)
            if "inaturalist" in s.loaded:
                parts.append(f"""SELECT f.taxon_id, v.common_name, 'inaturalist' AS src, {oi} AS o, 0 AS via, 0 AS q
                    FROM final f JOIN inaturalist.vernaculars v ON v.kind = 'category'
                    AND v.key = CAST(TRY_CAST(f.example_taxon_id AS BIGINT) AS VARCHAR)
                    WHERE f.taxon_id IS NOT NULL AND {inat}""")
            parts.append(f"""SELECT f.taxon_id, f.example_common_name AS common_name, 'inaturalist' AS src, {oi} AS o, 0 AS via,
                1 AS q FROM final f
                WHERE f.taxon_id IS NOT NULL AND {inat} AND f.example_common_name IS NOT NULL""")
        elif name == "source":
            parts.append(f"""SELECT taxon_id, example_common_name AS common_name, 'source' AS src, {oi} AS o, 0 AS via, 1 AS q
                FROM final
                WHERE taxon_id IS NOT NULL AND example_common_name IS NOT NULL""")
    if not parts:
        return {}
    con.execute(f"""CREATE TEMP TABLE cn AS
        SELECT taxon_id, common_name, src FROM (
            SELECT taxon_id, common_name, src, row_number() OVER (PARTITION BY taxon_id
                   ORDER BY o, via, q, n DESC, common_name) AS rn
            FROM (SELECT taxon_id, trim(regexp_replace(common_name, '\\s+', ' ', 'g')) AS common_name, src, o, via, q,
                         count(*) AS n
                  FROM ({" UNION ALL ".join(parts)}) WHERE common_name IS NOT NULL AND trim(common_name) <> ''
                  GROUP BY ALL))
        WHERE rn = 1""")
    con.execute("""UPDATE taxa SET common_name = cn.common_name, common_name_source = cn.src FROM cn
                   WHERE taxa.taxon_id = cn.taxon_id""")
    return {f"common_names_{src}": n for src, n in con.execute("SELECT src, count(*) FROM cn GROUP BY ALL").fetchall()}

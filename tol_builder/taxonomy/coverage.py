"""Coverage: how much of the dataset is resolved, to which rank, per source; as views, tables and a picture.

The views live in `catalog.duckdb` (created by `create_views` when the taxonomy stage registers its
outputs); `coverage_table`, `rank_summary` and `plot_coverage` read them through a read-only connection
for `tol coverage DIR [--rank R] [--plot FILE.png]`. Counts come from `lineage_map` (images per raw
lineage), so no view has to scan the 10M records; `images` (the table the taxonomy stage writes once,
images.py) is the per-record one for everything else.

Confirmed against source-asserted: every count of a rank is split by the raw lineage's `confirmed_rank`
(lineage_map; the most specific rank an authority or the source's full lineage confirmed). A record has a
rank *confirmed* when that rank is at or above its lineage's confirmed rank, *source-asserted* when the
rank is below it (the source's own label, kept: BIOSCAN-1M's expert species under a confirmed genus).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ..errors import TolError
from ..columns import CONTEXT_DOCS
from ..records import RANKS
from ..sql import ident, literal

RANK_SQL = "['kingdom','phylum','class','order','family','genus','species']"

VIEW_DOCS: dict[str, tuple[str, dict[str, str]]] = {
    "images": ("every record with its resolved taxon, written once by the taxonomy stage (taxonomy/images/, "
               "sorted by genus and species; unresolved records: taxon_id and ranks NULL)",
               {"uid": "image id", "source": "source id", "source_id": "id in the source",
                "taxon_id": "taxa.taxon_id", **{r: f"resolved {r}" for r in RANKS[:6]},
                "species": "species epithet", "scientific_name": "taxa.scientific_name",
                "common_name": "taxa.common_name", "lowest_rank": "most specific rank resolved",
                "confirmed_rank": "most specific rank confirmed for this record's own raw lineage "
                                  "(lineage_map.confirmed_rank)",
                "rank_status": "confirmed or source_asserted (this record's ranks below confirmed_rank are the "
                               "source's own labels); NULL when unresolved",
                **{c: f"the record's {c}: {d}" for c, d in CONTEXT_DOCS.items()}}),
    "coverage_ranks": ("images and taxa per rank and per source ('all' = every source)",
                       {"source": "source id or 'all'", "rank": "one of the seven ranks",
                        "rank_index": "0 kingdom .. 6 species", "images": "records",
                        "images_with_rank": "records resolved down to at least this rank",
                        "share": "images_with_rank / images", "taxa": "distinct names at this rank",
                        "images_confirmed": "records with this rank confirmed (at or above their lineage's "
                                            "confirmed_rank)",
                        "images_source_asserted": "records with this rank only as the source gave it (below "
                                                  "their lineage's confirmed_rank)",
                        "share_confirmed": "images_confirmed / images"}),
    "coverage_lowest_rank": ("images per source by the most specific rank resolved ('unresolved' = none)",
                             {"source": "source id", "lowest_rank": "rank or 'unresolved'",
                              "images": "records", "lineages": "raw lineages",
                              "images_confirmed": "records whose lowest rank is confirmed",
                              "images_source_asserted": "records whose lowest rank is source-asserted (below "
                                                        "the confirmed rank)"}),
    "taxon_images": ("images per taxon and source",
                     {"taxon_id": "taxa.taxon_id", "source": "source id", "images": "records"}),
    "taxa_few_images": ("taxa with fewer images than the workflow's taxonomy.min_images, all sources together",
                        {"taxon_id": "taxa.taxon_id", "scientific_name": "name", "lowest_rank": "rank",
                         "images": "records", "sources": "sources holding it"}),
    "unresolved_lineages": ("raw lineages left unresolved, most images first, with the reason",
                            {"source": "source id", "lineage_key": "lineage_map.lineage_key",
                             "rule": "unresolved:<reason>", "images": "records", "notes": "name notes",
                             "raw_lineage": "raw ranks as given, '|'-joined", "raw_scientific_name": "as given",
                             "taxon_ref": "EOL page id"}),
}


def create_views(con, page_sources: list[str], min_images: int, images: bool = True, tables: bool = False) -> None:
    """The coverage views, and with `images` the `images` view computed from records, lineage_map and taxa
    (a connection without the table the taxonomy stage writes: images.py), on a writable connection.

    `tables`: the coverage results computed once and stored as tables (the catalog: at full size
    coverage_ranks alone takes seconds over 500,000 lineages, every query; the stage re-registers them after
    each reconciliation, so they never outlive their inputs)."""
    from .images import images_sql

    if images:
        _replace(con, "images", images_sql(page_sources), False)

    def create(name: str, sql: str) -> None:
        _replace(con, name, sql, tables)

    confirmed_index = f"coalesce(list_position({RANK_SQL}, m.confirmed_rank) - 1, -1)"
    per_rank = " UNION ALL ".join(
        f"""SELECT m.source, '{r}' AS rank, {i} AS rank_index, m.images,
                   t."{r}" IS NOT NULL AS has_rank, t."{r}" IS NOT NULL AND {confirmed_index} >= {i} AS confirmed,
                   {"t.genus || ' ' || t.species" if r == "species" else f't."{r}"'} AS name
            FROM lineage_map m LEFT JOIN taxa t USING (taxon_id)""" for i, r in enumerate(RANKS))
    create("coverage_ranks", f"""
        SELECT coalesce(source, 'all') AS source, rank, rank_index, sum(images)::BIGINT AS images,
               sum(CASE WHEN has_rank THEN images ELSE 0 END)::BIGINT AS images_with_rank,
               round(sum(CASE WHEN has_rank THEN images ELSE 0 END) / sum(images), 4) AS share,
               count(DISTINCT name) AS taxa,
               sum(CASE WHEN confirmed THEN images ELSE 0 END)::BIGINT AS images_confirmed,
               sum(CASE WHEN has_rank AND NOT confirmed THEN images ELSE 0 END)::BIGINT AS images_source_asserted,
               round(sum(CASE WHEN confirmed THEN images ELSE 0 END) / sum(images), 4) AS share_confirmed
        FROM ({per_rank}) GROUP BY GROUPING SETS ((source, rank, rank_index), (rank, rank_index))
        ORDER BY source = 'all', source, rank_index""")
    create("coverage_lowest_rank", """
        SELECT source, coalesce(lowest_rank, 'unresolved') AS lowest_rank, sum(images)::BIGINT AS images,
               count(*) AS lineages,
               sum(CASE WHEN rank_status = 'confirmed' THEN images ELSE 0 END)::BIGINT AS images_confirmed,
               sum(CASE WHEN rank_status = 'source_asserted' THEN images ELSE 0 END)::BIGINT AS images_source_asserted
        FROM lineage_map GROUP BY source, lowest_rank
        ORDER BY source, coalesce(list_position(['species','genus','family','order','class','phylum','kingdom'],
                                                any_value(lowest_rank)), 99)""")
    create("taxon_images", """
        SELECT taxon_id, source, sum(images)::BIGINT AS images FROM lineage_map WHERE taxon_id IS NOT NULL
        GROUP BY ALL ORDER BY taxon_id, source""")
    create("taxa_few_images", f"""
        SELECT t.taxon_id, t.scientific_name, t.lowest_rank, sum(m.images)::BIGINT AS images,
               string_agg(DISTINCT m.source, ',' ORDER BY m.source) AS sources
        FROM taxa t JOIN lineage_map m USING (taxon_id)
        GROUP BY ALL HAVING sum(m.images) < {int(min_images)} ORDER BY images, t.scientific_name""")
    raw = "concat_ws('|', " + ", ".join(f"coalesce(raw_{r}, '')" for r in RANKS) + ")"
    create("unresolved_lineages", f"""
        SELECT source, lineage_key, rule, images, notes, {raw} AS raw_lineage, raw_scientific_name, taxon_ref
        FROM lineage_map WHERE taxon_id IS NULL ORDER BY images DESC, source, lineage_key""")


def _replace(con, name: str, sql: str, table: bool) -> None:
    """(Re)create `name` as a view, or as a table holding the result; whatever held the name before goes."""
    kinds = {r[0] for r in con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = ? "
                                       "AND table_schema = 'main'", [name]).fetchall()}
    if "VIEW" in kinds:
        con.execute(f"DROP VIEW {ident(name)}")
    elif kinds:
        con.execute(f"DROP TABLE {ident(name)}")
    con.execute(f"CREATE {'TABLE' if table else 'VIEW'} {ident(name)} AS {sql}")


def check_rank(rank: str) -> None:
    if rank not in RANKS:
        raise TolError(f"--rank: expected one of {', '.join(RANKS)}, got {rank!r}")


def _query(out: Path, sql: str) -> pa.Table:
    from ..catalog import query

    try:
        return query(out, sql)
    except TolError:
        raise
    except Exception as e:  # a catalog without the taxonomy stage's views
        if "lineage_map" in str(e) or "coverage" in str(e) or "taxa" in str(e):
            raise TolError(f"{out}: no taxonomy in the catalog yet (run the taxonomy stage: "
                           "tol build WORKFLOW --stages taxonomy)") from None
        raise


def rank_summary(out: Path) -> pa.Table:
    """Images and taxa per rank and source (the `coverage_ranks` view)."""
    return _query(Path(out), "SELECT source, rank, images, images_with_rank, share, taxa, images_confirmed, "
                             "images_source_asserted, share_confirmed FROM coverage_ranks "
                             "ORDER BY source = 'all', source, rank_index")


def coverage_table(out: Path, rank: str = "class", top: int | None = None) -> pa.Table:
    """Images per name at `rank`, one column per source plus `images`, `taxa` (distinct taxa below it) and
    `images_source_asserted` (of `images`, those whose name at `rank` is below their lineage's confirmed rank).

    Records without that rank are counted under '(no <rank>)', unresolved ones under '(unresolved)'."""
    check_rank(rank)
    out = Path(out)
    sources = [r["source"] for r in _query(out, "SELECT DISTINCT source FROM lineage_map ORDER BY source").to_pylist()]
    name = "t.genus || ' ' || t.species" if rank == "species" else f't."{rank}"'
    per_source = ", ".join(f"sum(CASE WHEN m.source = {literal(s)} THEN m.images ELSE 0 END)::BIGINT AS {ident(s)}"
                           for s in sources)
    limit = f"LIMIT {int(top)}" if top else ""
    sql = f"""SELECT CASE WHEN m.taxon_id IS NULL THEN '(unresolved)' ELSE coalesce({name}, '(no {rank})') END
                     AS "{rank}", {per_source + ',' if per_source else ''} sum(m.images)::BIGINT AS images,
                     count(DISTINCT m.taxon_id) AS taxa,
                     sum(CASE WHEN {name} IS NOT NULL AND list_position({RANK_SQL}, m.confirmed_rank) - 1
                                   < {RANKS.index(rank)} THEN m.images ELSE 0 END)::BIGINT AS images_source_asserted
              FROM lineage_map m LEFT JOIN taxa t USING (taxon_id) GROUP BY 1 ORDER BY images DESC, 1 {limit}"""
    return _query(out, sql)


def _asserted_by_source(out: Path, rank: str) -> dict[tuple[str, str], int]:
    """{(name at `rank`, source): images whose name at `rank` is below their lineage's confirmed rank}."""
    name = "t.genus || ' ' || t.species" if rank == "species" else f't."{rank}"'
    rows = _query(out, f"""SELECT {name} AS name, m.source, sum(m.images)::BIGINT AS images
        FROM lineage_map m JOIN taxa t USING (taxon_id)
        WHERE {name} IS NOT NULL AND list_position({RANK_SQL}, m.confirmed_rank) - 1 < {RANKS.index(rank)}
        GROUP BY ALL""").to_pylist()
    return {(r["name"], r["source"]): r["images"] for r in rows}


SOURCE_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
LOWEST_ORDER = ["species", "genus", "family", "order", "class", "phylum", "kingdom", "unresolved"]


def plot_coverage(out: Path, rank: str = "class", path: Path | str = "coverage.png", top: int = 25) -> Path:
    """A PNG of coverage: left, images per name at `rank` (the `top` largest, the rest as 'other'),
    stacked by source, the source-asserted part of each bar hatched; right, for each source, the share of
    its images resolved down to each rank, confirmed (solid) against source-asserted (hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_rank(rank)
    out, path = Path(out), Path(path)
    t = coverage_table(out, rank)
    sources = [c for c in t.column_names if c not in (rank, "images", "taxa", "images_source_asserted")]
    table = t.to_pylist()
    special = [r for r in table if r[rank].startswith("(")]  # (no <rank>), (unresolved): listed last
    named = [r for r in table if not r[rank].startswith("(")]
    head, rest = named[:top], named[top:]
    members = {r[rank]: [r[rank]] for r in head}  # the names each bar stands for
    if rest:
        head.append({rank: f"other ({len(rest)} names)", **{s: sum(r[s] for r in rest) for s in sources}})
        members[head[-1][rank]] = [r[rank] for r in rest]
    head += sorted(special, key=lambda r: r[rank])
    lowest = _query(out, "SELECT source, lowest_rank, images, images_source_asserted FROM coverage_lowest_rank"
                    ).to_pylist()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, max(4.5, 0.32 * len(head) + 1.5)),
                                   gridspec_kw={"width_ratios": [3, 2]})
    labels = [r[rank] for r in head][::-1]
    asserted = _asserted_by_source(out, rank)
    left, legend_done = [0] * len(head), False
    for i, s in enumerate(sources):
        vals = [r[s] for r in head][::-1]
        ax1.barh(labels, vals, left=left, color=SOURCE_COLOURS[i % len(SOURCE_COLOURS)], label=s)
        # the source-asserted images of this source: hatched, from the start of its own segment
        hatched = [sum(asserted.get((n, s), 0) for n in members.get(label, ())) for label in labels]
        if any(hatched):
            ax1.barh(labels, hatched, left=left, fill=False, hatch="//", edgecolor="#333333", linewidth=0,
                     label=None if legend_done else "source-asserted")
            legend_done = True
        left = [a + b for a, b in zip(left, vals)]
    ax1.set_xlabel("images")
    ax1.set_title(f"images per {rank}, by source")
    handles, names_ = ax1.get_legend_handles_labels()  # the sources, then what the hatching means
    order = sorted(range(len(names_)), key=lambda k: names_[k] == "source-asserted")
    ax1.legend([handles[k] for k in order], [names_[k] for k in order], loc="lower right", frameon=False)
    ax1.grid(axis="x", alpha=0.3)
    totals = {s: sum(r["images"] for r in lowest if r["source"] == s) or 1 for s in sources}
    cmap = plt.get_cmap("viridis")
    bottom = [0.0] * len(sources)
    for j, lr in enumerate(LOWEST_ORDER):  # each rank: confirmed part solid, source-asserted part hatched
        rows = {s: [r for r in lowest if r["source"] == s and r["lowest_rank"] == lr] for s in sources}
        asserted = [sum(r["images_source_asserted"] for r in rows[s]) / totals[s] for s in sources]
        confirmed = [sum(r["images"] for r in rows[s]) / totals[s] - a for s, a in zip(sources, asserted)]
        colour = "#BBBBBB" if lr == "unresolved" else cmap(j / (len(LOWEST_ORDER) - 1))
        ax2.bar(sources, confirmed, bottom=bottom, color=colour, label=lr)
        bottom = [a + b for a, b in zip(bottom, confirmed)]
        if any(asserted):
            ax2.bar(sources, asserted, bottom=bottom, color=colour, alpha=0.55, hatch="//", edgecolor="white")
            bottom = [a + b for a, b in zip(bottom, asserted)]
    from matplotlib.patches import Patch

    handles, labels_ = ax2.get_legend_handles_labels()
    handles.append(Patch(facecolor="#DDDDDD", hatch="//", edgecolor="#666666"))
    labels_.append("hatched: source-asserted\n(below the confirmed rank)")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("share of the source's images")
    ax2.set_title("most specific rank resolved (solid: confirmed)")
    ax2.legend(handles, labels_, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

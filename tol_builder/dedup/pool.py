"""Duplicates inside the pool: byte-exact copies and near copies (PDQ) across and within sources.

EOL re-hosts iNaturalist photos, but iNat21 re-encoded its files to at most 500 px: most such copies are near,
not exact. `pool_task` (one runner task; it needs every pool hash at once) finds both kinds:

* exact: media rows with the same sha256 (DuckDB, GROUP BY: no Python object per image);
* near: PDQ Hamming distance <= `dedup.pdq_max_distance` between trusted hashes, through the index's
  within-set search (index.near_pairs: never N x N);
* clusters: connected components of those links (index.components), so a chain of near copies is one
  cluster. `pool_duplicates(uid, cluster_id, method, distance)` lists every image in a cluster of two or
  more: cluster_id = the smallest uid of the cluster (deterministic), method = sha256 when the image has a
  byte-exact copy else pdq, distance = its smallest distance to another member. The shard stage keeps a
  cluster in one split; an image in no cluster is its own.

Which copy stays (the same on every run, whatever the order of the inputs): among byte-exact copies
(`dedup.drop_pool_exact`, default on), and among a near cluster's members when `dedup.drop_pool_near` is
on, the survivor is the image
  1. resolved to a taxon (over unresolved),
  2. with the more specific resolved rank (species before genus ...),
  3. from the source listed earlier in the workflow's [[sources]],
  4. with the smallest uid.
The others become exclusions with reason `pool_duplicate`, eval_uid = the survivor's uid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..records import RANKS, arrow_of
from .match import EXCLUSION_SCHEMA, _con, conform, _files, _trusted_codes, _write

POOL_DUPLICATE_SCHEMA = pa.schema([("uid", pa.string()), ("cluster_id", pa.string()), ("method", pa.string()),
                                   ("distance", pa.int32())])


def _read_pool(con, files: list[str], settings: dict) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """uids of every fetched pool image (sorted), their PDQ codes and the trusted mask.

    Read a file at a time (no 10M-row sort in DuckDB: ~1 GB less at full size), then sorted by uid in Arrow."""
    codes, trusted, uids = [], [], []
    for f in files:
        t = arrow_of(con.sql("SELECT uid, pdq, pdq_quality FROM read_parquet(?) WHERE status = 'ok'", params=[f]))
        c, ok = _trusted_codes(t, settings)
        codes.append(c)
        trusted.append(ok)
        uids.append(t.column("uid").combine_chunks())
    if not uids:
        return pa.array([], pa.string()), np.zeros((0, 32), np.uint8), np.zeros(0, bool)
    uid_arr = pa.concat_arrays(uids)
    order = pc.sort_indices(uid_arr).to_numpy()
    return uid_arr.take(pa.array(order)), np.concatenate(codes)[order], np.concatenate(trusted)[order]


def _survivors(con, members: pa.Table, out: Path, sources: list[str], page_sources: list[str]) -> pa.Table:
    """For each group (column `grp`) of `members` (column uid): the uid that stays, by the module's rule."""
    from ..taxonomy.reconcile import lineage_key_sql

    con.register("members", members)
    con.register("src_order", pa.table({"source": sources, "source_rank": list(range(len(sources)))}))
    lm = out / "taxonomy" / "lineage_map.parquet"
    taxon = "NULL::VARCHAR AS taxon_id, NULL::VARCHAR AS lowest_rank"
    join = ""
    params: dict = {"records": _files(out, "records")}
    if lm.exists():
        taxon = "lm.taxon_id, lm.lowest_rank"
        join = f"LEFT JOIN read_parquet($lineage_map) lm ON lm.source = r.source AND lm.lineage_key = " \
               f"{lineage_key_sql(page_sources, 'r')}"
        params["lineage_map"] = str(lm)
    ranks = "[" + ", ".join(f"'{r}'" for r in RANKS) + "]"
    return arrow_of(con.sql(f"""
        WITH info AS (SELECT m.grp, r.uid, r.source, {taxon}
                      FROM read_parquet($records, union_by_name=true) r JOIN members m USING (uid) {join})
        SELECT grp, arg_min(uid, (taxon_id IS NULL, -coalesce(list_position({ranks}, lowest_rank), 0),
                                  coalesce(s.source_rank, 1000000), uid)) AS survivor
        FROM info LEFT JOIN src_order s USING (source) GROUP BY grp""", params=params))


def pool_task(out: str, work: str, sources: list[str], page_sources: list[str], settings: dict,
              threads: int = 1) -> dict[str, int]:
    """Within-pool clusters -> pool_duplicates.parquet and pool_exclusions.parquet (see the module doc)."""
    from .index import components, near_pairs

    out_p, work_p = Path(out), Path(work)
    con = _con(out_p, threads)
    files = _files(out_p, "media")
    empty = {"pool_images": 0}
    if not files:
        _write(work_p / "pool_duplicates.parquet", POOL_DUPLICATE_SCHEMA.empty_table())
        _write(work_p / "pool_exclusions.parquet", EXCLUSION_SCHEMA.empty_table())
        return empty
    uids, codes, trusted = _read_pool(con, files, settings)
    n = len(uids)
    # exact: groups of equal sha256, as (group, position) pairs
    groups = arrow_of(con.sql("""SELECT sha256, uid FROM read_parquet(?) WHERE status = 'ok' AND sha256 IN (
            SELECT sha256 FROM read_parquet(?) WHERE status = 'ok' GROUP BY sha256 HAVING count(*) > 1)
        ORDER BY sha256, uid""", params=[files, files]))
    ex_pos = pc.index_in(groups.column("uid"), value_set=uids).to_numpy(zero_copy_only=False).astype(np.int64)
    ex_grp = pc.dictionary_encode(groups.column("sha256")).combine_chunks().indices.to_numpy().astype(np.int64)
    same = np.flatnonzero(ex_grp[1:] == ex_grp[:-1]) if len(ex_grp) else np.array([], np.int64)
    ex_i, ex_j = ex_pos[same], ex_pos[same + 1]  # consecutive members of a group: a chain joins them all
    # near: trusted hashes only
    pairs = near_pairs(codes, trusted, max_distance=settings["pdq_max_distance"], threads=threads)
    del codes
    nr_i, nr_j, nr_d = pairs.i, pairs.j, pairs.distance.astype(np.int64)
    i = np.concatenate([ex_i, nr_i]).astype(np.int64)
    j = np.concatenate([ex_j, nr_j]).astype(np.int64)
    d = np.concatenate([np.zeros(len(ex_i), np.int64), nr_d])
    labels = components(n, i, j)  # per row, the smallest row of its cluster: uids are sorted, so the smallest uid
    size = np.bincount(labels, minlength=n)
    in_cluster = np.flatnonzero(size[labels] > 1)
    best = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(best, i, d)
    np.minimum.at(best, j, d)
    exact_member = np.zeros(n, dtype=bool)
    exact_member[ex_pos] = True
    dup = pa.table({"uid": uids.take(pa.array(in_cluster)),
                    "cluster_id": uids.take(pa.array(labels[in_cluster])),
                    "method": pa.array(np.where(exact_member[in_cluster], "sha256", "pdq")),
                    "distance": pa.array(best[in_cluster].astype(np.int32))}, schema=POOL_DUPLICATE_SCHEMA)
    _write(work_p / "pool_duplicates.parquet", dup)
    # exclusions: one survivor per exact group (and per near cluster when asked)
    excl = []
    if settings["drop_pool_exact"] and groups.num_rows:
        excl.append(_excluded(con, groups.select(["uid"]).append_column("grp", groups.column("sha256")), "sha256",
                              out_p, sources, page_sources))
    if settings["drop_pool_near"] and len(in_cluster):
        members = pa.table({"uid": dup.column("uid"), "grp": dup.column("cluster_id")})
        excl.append(_excluded(con, members, "pdq", out_p, sources, page_sources))
    rows = pa.concat_tables(excl) if excl else EXCLUSION_SCHEMA.empty_table()
    con.register("ex", rows)
    rows = conform(arrow_of(con.sql("""SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY uid ORDER BY method DESC)
        AS k FROM ex) WHERE k = 1 ORDER BY uid""")).drop_columns(["k"]))
    _write(work_p / "pool_exclusions.parquet", rows)
    con.close()
    return {"pool_images": n, "pool_pdq_untrusted": int(n - trusted.sum()), "pool_exact_groups": int(ex_grp.max() + 1)
            if len(ex_grp) else 0, "pool_near_pairs": len(nr_i), "pool_clusters": int((size > 1).sum()),
            "pool_clustered_images": len(in_cluster), "pool_largest_cluster": int(size.max()) if n else 0,
            "pool_excluded": rows.num_rows}


def _excluded(con, members: pa.Table, method: str, out: Path, sources: list[str], page_sources: list[str]) -> pa.Table:
    """Exclusion rows for every member of a group but its survivor."""
    surv = _survivors(con, members, out, sources, page_sources)
    con.register("surv", surv)
    con.register("mem", members)
    return conform(arrow_of(con.sql(f"""SELECT m.uid, 'pool_duplicate' AS reason, NULL::VARCHAR AS eval_set,
            s.survivor AS eval_id, s.survivor AS eval_uid, '{method}' AS method,
            CASE WHEN '{method}' = 'sha256' THEN 0 END::INTEGER AS distance
        FROM mem m JOIN surv s USING (grp) WHERE m.uid <> s.survivor""")))


__all__ = ["pool_task", "POOL_DUPLICATE_SCHEMA", "pq"]

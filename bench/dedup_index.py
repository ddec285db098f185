"""Benchmark of the PDQ index core (tol_builder.dedup.index): evaluation index x pool, and pool x pool.

    python bench/dedup_index.py                      # 100K eval x 10M pool, within-pool at 10.4M, 2 threads
    python bench/dedup_index.py --pool 1000000 --within 1000000 --brute 5000     # a quick run

Hashes from bench/synth_pdq.py (clustered like real PDQ: families a few bits apart, compositions; planted
near duplicates at exactly 0..10 bits, decoys at 11..14, hard negatives at 15..40). Each part runs in its
own child process; its peak RSS is the child's own (os.wait4: it starts no processes of its own, faiss and
numpy use threads, so that is the process tree's peak).

* match: build the index of the evaluation hashes, save it (one .npz), load it back as a match task would,
  decode the pool's 10M hex strings from an Arrow array (`pdq_codes`), range-search the pool in 1M-row
  partitions; recall of planted duplicates, decoys and hard negatives matched, every reported distance
  re-computed; then a vectorised numpy brute force (XOR + np.bitwise_count, the hardware popcount: a
  stronger baseline than a lookup table; each query against all codes held as word columns) on a subset
  holding every planted and decoy row, which must give exactly the index's pairs on those rows; the
  speed ratio per query.
* design: on a 1M-row slice of the same pool, faiss IndexBinaryMultiHash with other substring layouts,
  and multi-index hashing of our own in numpy (sorted keys + searchsorted), to justify the choice.
* within: `near_pairs` over 10.4M hashes (pool_with_duplicates: 3% exact copies, a blank hash repeated
  20,000 times, 5,000 near-blank hashes); pairs found, and exactness on a random sample of 20,000 rows
  (all their pairs by brute force must be implied by the result, outside the near-blank cluster).

Prints a table and writes bench/results/dedup_index.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import synth_pdq  # noqa: E402
from tol_builder.dedup.index import (PDQIndex, clusters, code_distances, hamming, near_pairs,  # noqa: E402
                                     pdq_codes, substring_keys, substrings, _words)

MAX_DISTANCE = 10


def hex_array(codes: np.ndarray):
    """The codes as a pyarrow string array of 64 lower-case hex digits, built without a loop per row."""
    import pyarrow as pa

    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    chars = np.empty((len(codes), 64), np.uint8)
    chars[:, 0::2], chars[:, 1::2] = digits[codes >> 4], digits[codes & 15]
    offsets = np.arange(0, 64 * len(codes) + 1, 64, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_string(), len(codes), [None, pa.py_buffer(offsets), pa.py_buffer(chars)])


def brute_force(queries: np.ndarray, codes: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, code) pair within r: each query XORed with all codes, popcounts summed, compared.

    The codes are held as four contiguous columns of 64-bit words and each query is done in place on
    them (8 passes over 8 bytes x n): 8-10x faster than broadcasting blocks of queries, so the baseline
    is as strong as numpy gets."""
    qw, cw = _words(queries), np.ascontiguousarray(_words(codes).T)
    n = cw.shape[1]
    acc, part, tmp = np.empty(n, np.uint8), np.empty(n, np.uint8), np.empty(n, np.uint64)
    out_q, out_i = [], []
    for k in range(len(qw)):
        np.bitwise_count(np.bitwise_xor(cw[0], qw[k, 0], out=tmp), out=acc)
        for w in range(1, 4):
            acc += np.bitwise_count(np.bitwise_xor(cw[w], qw[k, w], out=tmp), out=part)
        hit = np.flatnonzero(acc <= r)
        out_q.append(np.full(hit.size, k, np.int64))
        out_i.append(hit)
    return np.concatenate(out_q), np.concatenate(out_i)


class NumpyMIH:
    """Multi-index hashing of our own for the evaluation side (measured against faiss, not used by the
    stage): per substring the evaluation keys sorted once; a query's candidates are found by searchsorted."""

    def __init__(self, codes: np.ndarray, r: int):
        self.r, self.words, self.spans = r, _words(codes), substrings(r)
        self.tables = []
        for span in self.spans:
            keys = substring_keys(self.words, span).astype(np.uint32)
            order = np.argsort(keys)
            self.tables.append((keys[order], order))

    def range_search(self, queries: np.ndarray, batch: int = 1 << 17) -> tuple[np.ndarray, np.ndarray, int]:
        out_q, out_i, candidates = [], [], 0
        n = len(self.words)
        for lo in range(0, len(queries), batch):
            qw = _words(queries[lo:lo + batch])
            parts_q, parts_i = [], []
            for span, (sorted_keys, order) in zip(self.spans, self.tables):
                keys = substring_keys(qw, span).astype(np.uint32)
                left = np.searchsorted(sorted_keys, keys, "left")
                count = np.searchsorted(sorted_keys, keys, "right") - left
                hit = np.flatnonzero(count)
                c = count[hit]
                parts_q.append(np.repeat(hit, c))
                parts_i.append(order[np.repeat(left[hit], c) + np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)])
            q, i = np.concatenate(parts_q), np.concatenate(parts_i)
            candidates += q.size
            near = hamming(qw[q], self.words[i]) <= self.r
            key = np.unique(q[near] * np.int64(n) + i[near])  # a pair found under several substrings once
            out_q.append(key // n + lo)
            out_i.append(key % n)
        return np.concatenate(out_q), np.concatenate(out_i), candidates


# ------------------------------------------------------------------------------------------------ parts
def part_match(args) -> dict:
    res: dict = {}
    t = time.perf_counter()
    b = synth_pdq.evaluation_benchmark(args.eval, args.pool, args.seed, per_distance=args.per_distance,
                                       hard_negatives=args.hard_negatives)
    res["generate_s"] = time.perf_counter() - t
    ev, pool = b["eval"], b["pool"]
    # the build task: index the evaluation hashes once and save them
    import psutil

    rss = psutil.Process().memory_info().rss
    t = time.perf_counter()
    built = PDQIndex(ev, max_distance=MAX_DISTANCE, threads=args.threads)
    res["build_s"] = time.perf_counter() - t
    res["index_rss_mb"] = (psutil.Process().memory_info().rss - rss) / 1e6  # the index's own memory
    path = Path(args.workdir) / "eval_index.npz"
    t = time.perf_counter()
    built.save(path)
    res["save_s"], res["index_file_mb"] = time.perf_counter() - t, path.stat().st_size / 1e6
    del built
    # a match task: load the index, decode its partition's hex column, search
    t = time.perf_counter()
    index = PDQIndex.load(path, threads=args.threads)
    res["load_s"] = time.perf_counter() - t
    hexes = hex_array(pool)
    t = time.perf_counter()
    decoded, valid = pdq_codes(hexes)
    res["decode_hex_s"] = time.perf_counter() - t
    assert valid.all() and (decoded == pool).all()
    del hexes, decoded
    t = time.perf_counter()
    parts = [index.range_search(pool[lo:lo + args.partition]) for lo in range(0, len(pool), args.partition)]
    res["search_s"] = time.perf_counter() - t
    query = np.concatenate([p.query + k * args.partition for k, p in enumerate(parts)])
    indexed = np.concatenate([p.indexed for p in parts])
    dist = np.concatenate([p.distance for p in parts])
    candidates = sum(p.candidates for p in parts)
    res.update(pool=len(pool), eval=len(ev), threads=args.threads, matches=int(query.size),
               candidates_per_query=candidates / len(pool),
               search_us_per_query=res["search_s"] / len(pool) * 1e6)
    res["reported_distances_correct"] = bool((code_distances(pool[query], ev[indexed]) == dist).all()
                                             and (dist <= MAX_DISTANCE).all())
    found = set(zip(query.tolist(), indexed.tolist()))
    hit = np.array([(p, e) in found for p, e in zip(b["pool_row"].tolist(), b["eval_row"].tolist())])
    kind, d = b["kind"], b["distance"]
    res["planted"] = int((kind == 0).sum())
    res["planted_recall"] = float(hit[kind == 0].mean())
    res["planted_recall_by_distance"] = {int(k): float(hit[(kind == 0) & (d == k)].mean()) for k in range(11)}
    res["decoys"], res["decoys_matched"] = int((kind == 1).sum()), int(hit[kind == 1].sum())
    res["hard_negatives"], res["hard_negatives_matched"] = int((kind == 2).sum()), int(hit[kind == 2].sum())
    # any match of a decoy / hard-negative row with any evaluation hash (not only its own)
    matched_rows = np.zeros(len(pool), bool)
    matched_rows[query] = True
    res["decoy_rows_matching_anything"] = int(matched_rows[b["pool_row"][kind == 1]].sum())
    res["hard_negative_rows_matching_anything"] = int(matched_rows[b["pool_row"][kind == 2]].sum())
    # brute force on a subset: every planted and decoy row, then random others
    rng = np.random.default_rng(args.seed)
    special = b["pool_row"][kind < 2]
    others = np.setdiff1d(rng.choice(len(pool), size=min(len(pool), 2 * args.brute), replace=False), special)
    subset = np.sort(np.concatenate([special, others[:max(0, args.brute - special.size)]]))
    t = time.perf_counter()
    bq, bi = brute_force(pool[subset], ev, MAX_DISTANCE)
    res["brute_s"] = time.perf_counter() - t
    res["brute_queries"] = int(subset.size)
    res["brute_us_per_query"] = res["brute_s"] / subset.size * 1e6
    res["speed_ratio_per_query"] = res["brute_us_per_query"] / res["search_us_per_query"]
    in_subset = np.isin(query, subset)
    index_pairs = set(zip(query[in_subset].tolist(), indexed[in_subset].tolist()))
    res["brute_pairs"] = int(bq.size)
    res["index_equals_brute_on_subset"] = index_pairs == set(zip(subset[bq].tolist(), bi.tolist()))
    return res


def part_design(args) -> dict:
    """faiss layouts and numpy multi-index hashing, on a slice of the same pool. The two m = 11 contenders
    (faiss, numpy) run in alternation for `--design-rounds` rounds and the best round of each counts (other
    work on a shared machine slows them unevenly); the other layouts, several times slower, run once."""
    import faiss

    b = synth_pdq.evaluation_benchmark(args.eval, args.pool, args.seed, per_distance=args.per_distance,
                                       hard_negatives=args.hard_negatives)
    ev, pool = b["eval"], b["pool"][:args.design_queries]
    contenders = {}

    def faiss_contender(m: int, bits: int, nflip: int, threads: int):
        t = time.perf_counter()
        index = faiss.IndexBinaryMultiHash(256, m, bits)
        index.nflip = nflip
        index.add(ev)
        build = time.perf_counter() - t

        def run():
            faiss.omp_set_num_threads(threads)
            stats = faiss.cvar.indexBinaryHash_stats
            stats.reset()
            lims, _, _ = index.range_search(pool, MAX_DISTANCE + 1)
            return int(lims[-1]), stats.ndis
        contenders[f"faiss IndexBinaryMultiHash m={m} b={bits} nflip={nflip}|{threads}"] = (build, run)

    # exact for max_distance <= m (nflip + 1) - 1
    for m, bits, nflip in [(11, 23, 0), (12, 21, 0), (16, 16, 0), (8, 32, 1), (6, 42, 1)]:
        faiss_contender(m, bits, nflip, 1)
    faiss_contender(11, 23, 0, args.threads)
    t = time.perf_counter()
    mih = NumpyMIH(ev, MAX_DISTANCE)
    build = time.perf_counter() - t

    def run_numpy():
        q, _, cand = mih.range_search(pool)
        return int(q.size), cand
    contenders["numpy multi-index hashing m=11 (sorted keys + searchsorted)|1"] = (build, run_numpy)
    best: dict = {}
    rounds: dict = {}
    for round_ in range(args.design_rounds):
        for name, (build, run) in contenders.items():
            if round_ and "m=11" not in name:
                continue  # the layouts not chosen are measured once: they are several times slower
            t = time.perf_counter()
            matches, cand = run()
            el = time.perf_counter() - t
            if name not in best or el < best[name]["seconds"]:
                best[name] = {"seconds": el, "matches": matches, "candidates": cand, "build_s": build}
            rounds.setdefault(name, []).append(round(el, 2))
    rows = []
    for name, r in best.items():
        method, threads = name.split("|")
        rows.append({"method": method, "threads": int(threads), "build_s": r["build_s"],
                     "us_per_query": r["seconds"] / len(pool) * 1e6, "rounds_s": rounds[name],
                     "candidates_per_query": r["candidates"] / len(pool), "matches": r["matches"]})
    return {"queries": len(pool), "eval": len(ev), "rounds": args.design_rounds, "rows": rows}


def part_within(args) -> dict:
    t = time.perf_counter()
    codes, blank = synth_pdq.pool_with_duplicates(args.within, args.seed, return_blank=True)
    res: dict = {"generate_s": time.perf_counter() - t, "codes": len(codes), "threads": args.within_threads}
    t = time.perf_counter()
    pairs = near_pairs(codes, max_distance=MAX_DISTANCE, threads=args.within_threads)
    res["search_s"] = time.perf_counter() - t
    exact = pairs.distance == 0
    res.update(pairs=len(pairs), exact_pairs=int(exact.sum()), near_pairs=int((~exact).sum()),
               distinct=pairs.distinct, candidates=pairs.candidates,
               candidates_per_distinct_code=pairs.candidates / max(1, pairs.distinct),
               dense_codes=pairs.dense_codes, dense_buckets=pairs.dense_buckets,
               near_distance_histogram=np.bincount(pairs.distance[~exact], minlength=11)[1:].tolist())
    t = time.perf_counter()
    label = clusters(pairs)
    res["clusters_s"] = time.perf_counter() - t
    sizes = np.bincount(label[label >= 0])
    sizes = sizes[sizes > 1]
    res.update(clusters_with_copies=int(sizes.size), rows_in_clusters=int(sizes.sum()),
               largest_cluster=int(sizes.max(initial=0)))
    res["reported_distances_correct"] = bool((code_distances(codes[pairs.i], codes[pairs.j]) == pairs.distance).all())
    # exactness on a random sample: all pairs among the sample rows by brute force must be implied
    rng = np.random.default_rng(args.seed + 1)
    sample = np.sort(rng.choice(len(codes), size=min(len(codes), args.within_sample), replace=False))
    bq, bi = brute_force(codes[sample], codes[sample], MAX_DISTANCE)
    keep = bq < bi
    a, c = sample[bq[keep]], sample[bi[keep]]
    ra, rc = pairs.rep[a], pairs.rep[c]
    lo, hi = np.minimum(ra, rc), np.maximum(ra, rc)
    n = np.int64(len(codes))
    implied = (ra == rc) | np.isin(lo * n + hi, pairs.i * n + pairs.j)
    near_blank = (code_distances(codes[a], np.repeat(blank, a.size, 0)) <= 3) | (
        code_distances(codes[c], np.repeat(blank, c.size, 0)) <= 3)
    res.update(sample=int(sample.size), sample_pairs=int(a.size), sample_pairs_missing=int((~implied).sum()),
               sample_pairs_missing_outside_dense_cluster=int((~implied & ~near_blank).sum()))
    return res


PARTS = {"match": part_match, "design": part_design, "within": part_within}


def run_part(name: str, argv: list[str]) -> dict:
    """One part in a child process; its result and its own peak RSS and CPU time."""
    p = subprocess.Popen([sys.executable, __file__, *argv, "--part", name], stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"part {name} failed")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
    res["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
    return res


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval", type=int, default=100_000)
    ap.add_argument("--pool", type=int, default=10_000_000)
    ap.add_argument("--within", type=int, default=10_400_000)
    ap.add_argument("--threads", type=int, default=2, help="faiss threads of the match part")
    ap.add_argument("--within-threads", type=int, default=2)
    ap.add_argument("--partition", type=int, default=1_000_000, help="pool rows per range_search call")
    ap.add_argument("--per-distance", type=int, default=500, help="planted duplicates per distance 0..14")
    ap.add_argument("--hard-negatives", type=int, default=100_000)
    ap.add_argument("--brute", type=int, default=20_000, help="pool rows of the brute-force subset")
    ap.add_argument("--design-queries", type=int, default=1_000_000)
    ap.add_argument("--design-rounds", type=int, default=3)
    ap.add_argument("--within-sample", type=int, default=20_000)
    ap.add_argument("--parts", default="match,design,within")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/tol-bench-dedup")
    ap.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.part:  # child
        print(json.dumps(PARTS[args.part](args), default=float))
        return
    report = {"args": {k: v for k, v in vars(args).items() if k != "part"}, "cpus": os.cpu_count(),
              "load_before": os.getloadavg()}
    for name in args.parts.split(","):
        t = time.perf_counter()
        report[name] = run_part(name, argv)
        report[name]["wall_s"] = round(time.perf_counter() - t, 1)
        print(name, json.dumps(report[name], default=float), flush=True)
    report["load_after"] = os.getloadavg()
    print_table(report)
    out = HERE / "results" / "dedup_index.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float))
    print(f"written {out}")


def print_table(report: dict) -> None:
    print(f"\nload average before {report['load_before'][0]:.2f}, after {report['load_after'][0]:.2f} "
          f"({report['cpus']} cpus)")
    if "match" in report:
        m = report["match"]
        print(f"\n## evaluation index x pool: {m['eval']:,} x {m['pool']:,}, distance <= {MAX_DISTANCE}, "
              f"{m['threads']} threads")
        rows = [("part wall (generate + all below)", f"{m['wall_s']:.1f} s"),
                ("peak RSS (part process: includes the bench's own 10M codes and hex)", f"{m['peak_rss_mb']} MB"),
                ("build / save / load index", f"{m['build_s']:.2f} / {m['save_s']:.2f} / {m['load_s']:.2f} s "
                                             f"({m['index_file_mb']:.1f} MB file, {m['index_rss_mb']:.0f} MB "
                                             "in memory)"),
                ("decode 10M hex (pdq_codes)", f"{m['decode_hex_s']:.2f} s"),
                ("range search, whole pool", f"{m['search_s']:.1f} s ({m['search_us_per_query']:.2f} us/query)"),
                ("matches", f"{m['matches']:,}"),
                ("candidates checked per query", f"{m['candidates_per_query']:.3f}"),
                ("planted recall (0..10)", f"{m['planted_recall']:.4f} of {m['planted']:,}"),
                ("decoys matched (11..14)", f"{m['decoys_matched']} of {m['decoys']:,} "
                                            f"(rows matching anything: {m['decoy_rows_matching_anything']})"),
                ("hard negatives matched", f"{m['hard_negatives_matched']} of {m['hard_negatives']:,}"),
                ("brute force subset", f"{m['brute_queries']:,} queries, {m['brute_s']:.1f} s "
                                       f"({m['brute_us_per_query']:.0f} us/query, 100% candidates)"),
                ("index == brute force on subset", str(m["index_equals_brute_on_subset"])),
                ("speed ratio per query (brute / index)", f"{m['speed_ratio_per_query']:.0f}x")]
        for k, v in rows:
            print(f"| {k} | {v} |")
    if "design" in report:
        d = report["design"]
        print(f"\n## design: {d['queries']:,} queries x {d['eval']:,} evaluation hashes, best of {d['rounds']} "
              "alternating rounds")
        print("| method | threads | build s | us/query (best) | rounds, s | candidates/query | matches |")
        for r in d["rows"]:
            print(f"| {r['method']} | {r['threads']} | {r['build_s']:.2f} | {r['us_per_query']:.2f} | "
                  f"{r['rounds_s']} | {r['candidates_per_query']:.3f} | {r['matches']} |")
    if "within" in report:
        w = report["within"]
        print(f"\n## within pool: {w['codes']:,} hashes, {w['threads']} threads")
        for k, v in [("near_pairs time", f"{w['search_s']:.1f} s"),
                     ("peak RSS (part process)", f"{w['peak_rss_mb']} MB"),
                     ("clusters (connected components)", f"{w['clusters_s']:.1f} s: {w['clusters_with_copies']:,} "
                                                         f"clusters of >1 row holding {w['rows_in_clusters']:,} rows, "
                                                         f"largest {w['largest_cluster']:,}"),
                     ("distinct codes", f"{w['distinct']:,}"),
                     ("pairs: exact (vs group's first row) / near", f"{w['exact_pairs']:,} / {w['near_pairs']:,}"),
                     ("candidates per distinct code", f"{w['candidates_per_distinct_code']:.2f}"),
                     ("dense-cluster codes (leaders)", f"{w['dense_codes']:,} in {w['dense_buckets']} buckets"),
                     ("sample pairs missing (outside dense cluster)",
                      f"{w['sample_pairs_missing']} ({w['sample_pairs_missing_outside_dense_cluster']}) "
                      f"of {w['sample_pairs']:,} among {w['sample']:,} rows")]:
            print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()

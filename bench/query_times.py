"""Benchmark of interactive SQL: typical coverage questions on a build's catalog, timed through `tol query`
as a user runs it (a new process each time: interpreter start-up, imports, opening the catalog read-only,
the query, printing the table) and in-process (one read-only connection already open, the query alone).

    python bench/query_times.py DIR [--scale 1.0]             # DIR/build; generated first when missing
    python bench/query_times.py DIR --code /tmp/wt-base --label old   # the same with another checkout's code
    python bench/query_times.py DIR --materialise              # first (re)write the `images` table, timed

DIR is a directory of bench/taxonomy_reconcile.py (synthetic TreeOfLife-10M metadata: 10.4M records at scale
1.0 over 500,000 raw lineages, an EOL DH of 2M taxa and ITIS chains, the taxonomy stage run); when DIR/build
has no catalog yet, that script generates it at --scale with the code of --code. `--code` picks the checkout
whose tol_builder runs everything (default: this one), so the same build can be timed with main's computed
`images` view and with the written table. `--materialise` runs the taxonomy stage's images step
(taxonomy/images.py: one COPY per records file) and the catalog registration on the existing taxonomy outputs,
in a child process, and reports its seconds, peak RSS and bytes written: the stage's extra cost.

Each query: best of --repeat (default 3) runs, both ways; `SELECT 1` through `tol query` is the start-up alone.
The load average (/proc/loadavg) is recorded with each figure: the machine is shared. Results go to
bench/results/query_times_<label>_scale<S>.json; figures and method in bench/README_query.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, SQL); {genus} is a genus of the build, quoted with tol_builder.sql.literal
QUERIES = [
    ("startup", "SELECT 1"),
    ("records_count", "SELECT count(*) FROM records"),
    ("images_count", "SELECT count(*) FROM images"),
    ("class_counts", "SELECT class, count(*) FROM images GROUP BY 1"),
    ("source_kingdom", "SELECT source, kingdom, count(*) AS images FROM images GROUP BY ALL ORDER BY ALL"),
    ("species_under_10", "SELECT genus, species, count(*) AS images FROM images WHERE species IS NOT NULL "
                         "GROUP BY ALL HAVING count(*) < 10 ORDER BY images, genus, species LIMIT 20"),
    ("species_under_10_count", "SELECT count(*) AS species FROM (SELECT genus, species FROM images "
                               "WHERE species IS NOT NULL GROUP BY ALL HAVING count(*) < 10)"),
    ("species_under_10_by_taxon", "SELECT t.genus, t.species, sum(i.images) AS images FROM taxon_images i "
                                  "JOIN taxa t USING (taxon_id) WHERE t.species IS NOT NULL GROUP BY ALL "
                                  "HAVING sum(i.images) < 10 ORDER BY images, genus, species LIMIT 20"),
    ("to_species_per_source", "SELECT source, count(*) FILTER (WHERE lowest_rank = 'species') AS to_species, "
                              "count(*) AS images FROM images GROUP BY 1 ORDER BY 1"),
    ("top20_families", "SELECT family, count(*) AS images FROM images WHERE family IS NOT NULL GROUP BY 1 "
                       "ORDER BY images DESC, family LIMIT 20"),
    ("one_genus", "SELECT uid, source, species, common_name, rank_status FROM images WHERE genus = {genus} "
                  "ORDER BY uid LIMIT 50"),
    ("coverage_ranks", "SELECT * FROM coverage_ranks"),
    ("coverage_lowest_rank", "SELECT * FROM coverage_lowest_rank"),
    ("taxa_few_images_count", "SELECT count(*) FROM taxa_few_images"),
]

COMMANDS = [("tol_coverage_class", ("coverage", "--rank", "class"))]  # (tol status needs markers: bench builds have none)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def code_env(code: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def child_rusage(code: Path, *args: str) -> tuple[dict, int, float]:
    """This script as a child under `code`'s tol_builder: (its last JSON line, its peak RSS in MiB, its CPU
    seconds; os.wait4 gives the child's own)."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"query_times.{os.getpid()}.out"
    with open(log, "w") as fout:
        p = subprocess.Popen([sys.executable, __file__, *args], stdout=fout, stderr=subprocess.STDOUT,
                             env=code_env(code))
        _, status, usage = os.wait4(p.pid, 0)
    text = log.read_text()
    log.unlink()
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"child {args} failed:\n{text[-4000:]}")
    return json.loads(text.strip().splitlines()[-1]), round(usage.ru_maxrss / 1024), \
        round(usage.ru_utime + usage.ru_stime, 1)


# ------------------------------------------------------------------------------------------ children
def child_materialise(build: Path) -> dict:
    """The taxonomy stage's images step on the existing outputs, then the catalog registration."""
    import duckdb

    from tol_builder.taxonomy import images, register

    t0 = time.time()
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET memory_limit = '4GB'")
    con.execute("SET preserve_insertion_order = false")
    # as the reconcile task does it (bench/taxonomy_reconcile.py's workflow: EOL pages come from source 'eol')
    counters = images.write_images(con, build, "records/*/*.parquet", "taxonomy", ["eol"])
    con.close()
    t1 = time.time()
    register(build, ["eol"], 1)
    return {"write_seconds": round(t1 - t0, 2), "register_seconds": round(time.time() - t1, 2), **counters}


def child_inprocess(build: Path, queries: list[list[str]], repeat: int) -> dict:
    """Each query on one read-only connection opened once (what a notebook user holds)."""
    from tol_builder import catalog
    from tol_builder.records import arrow_of

    t0 = time.time()
    con = catalog.connect(build, read_only=True)
    times = {"connect": round(time.time() - t0, 4)}
    rows = {}
    for name, sql in queries:
        best = float("inf")
        for _ in range(repeat):
            t = time.time()
            catalog.check_read_statements(sql)
            result = arrow_of(con.sql(sql))
            best = min(best, time.time() - t)
        times[name] = round(best, 4)
        rows[name] = result.num_rows
    con.close()
    import tol_builder

    return {"seconds": times, "rows": rows, "tol_builder": str(Path(tol_builder.__file__).parent)}


# ------------------------------------------------------------------------------------------ parent
def time_cli(code: Path, build: Path, sql: str | None, repeat: int, command: tuple[str, ...] = ()) -> float:
    """Best wall time of `tol query BUILD SQL` (or `tol COMMAND BUILD ...`) in a new process, as the console
    script runs it."""
    args = ["query", str(build), sql] if sql is not None else [command[0], str(build), *command[1:]]
    cmd = [sys.executable, "-c", "import sys; from tol_builder.cli import main; sys.exit(main())", *args]
    best = float("inf")
    for _ in range(repeat):
        t = time.time()
        p = subprocess.run(cmd, env=code_env(code), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        dt = time.time() - t
        if p.returncode:
            sys.exit(f"tol {' '.join(args[:1] + args[2:])} failed:\n{p.stderr[-2000:]}")
        best = min(best, dt)
    return round(best, 3)


def pick_genus(build: Path) -> str:
    """A genus with a middling number of images (one user looking up one taxon)."""
    import duckdb

    con = duckdb.connect()
    try:
        return con.execute("""SELECT genus FROM read_parquet(?) WHERE genus IS NOT NULL GROUP BY genus
                              ORDER BY sum(images) DESC, genus LIMIT 1 OFFSET 100""",
                           [str(build / "taxonomy" / "taxa.parquet")]).fetchall()[0][0]
    finally:
        con.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="benchmark directory (the build is DIR/build)")
    ap.add_argument("--scale", type=float, default=1.0, help="generate at this scale when DIR/build is missing")
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose tol_builder to run")
    ap.add_argument("--label", default="new")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--materialise", action="store_true", help="(re)write the images table first, timed")
    ap.add_argument("--only", nargs="*", help="query names to run (default: all)")
    ap.add_argument("--child", choices=["materialise", "inprocess"], help=argparse.SUPPRESS)
    ap.add_argument("--queries", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    d = args.dir.resolve()
    build = d / "build"
    if args.child == "materialise":
        print(json.dumps(child_materialise(build)))
        return
    if args.child == "inprocess":
        print(json.dumps(child_inprocess(build, json.loads(args.queries), args.repeat)))
        return
    code = args.code.resolve()
    report: dict = {"dir": str(d), "code": str(code), "label": args.label, "cpus": os.cpu_count(),
                    "repeat": args.repeat}
    if not (build / "catalog.duckdb").exists():
        t = time.time()
        subprocess.run([sys.executable, str(code / "bench" / "taxonomy_reconcile.py"), str(d), "--scale",
                        str(args.scale)], check=True, env=code_env(code))
        report["generate_seconds"] = round(time.time() - t, 1)
    import pyarrow.parquet as pq

    report["scale"] = args.scale
    report["records"] = sum(pq.ParquetFile(p).metadata.num_rows for p in (build / "records").glob("*/*.parquet"))
    if args.materialise:
        la = loadavg()
        res, rss, cpu = child_rusage(code, str(d), "--child", "materialise")
        res.update(peak_rss_mb=rss, cpu_seconds=cpu, loadavg=la)
        report["materialise"] = res
        print("materialise", json.dumps(res), flush=True)
    sys.path.insert(0, str(code))
    from tol_builder.sql import literal

    genus = pick_genus(build)
    queries = [(n, q.format(genus=literal(genus))) for n, q in QUERIES if not args.only or n in args.only]
    report["genus"] = genus
    la = loadavg()
    inproc, _, _ = child_rusage(code, str(d), "--child", "inprocess", "--queries", json.dumps(queries),
                                "--repeat", str(args.repeat))
    report["inprocess"] = {**inproc, "loadavg": la}
    report["cli"] = {}
    print(f"{'query':26} {'tol query s':>11} {'in-process s':>12} {'rows':>6}  loadavg", flush=True)
    for name, sql in queries:
        la = loadavg()
        s = time_cli(code, build, sql, args.repeat)
        report["cli"][name] = {"seconds": s, "loadavg": la}
        print(f"{name:26} {s:11.3f} {inproc['seconds'][name]:12.3f} {inproc['rows'][name]:6}  {la}", flush=True)
    for name, cmd in COMMANDS:  # other commands a user runs on the catalog, through the CLI only
        if args.only and name not in args.only:
            continue
        la = loadavg()
        s = time_cli(code, build, None, args.repeat, cmd)
        report["cli"][name] = {"seconds": s, "loadavg": la}
        print(f"{name:26} {s:11.3f} {'':>12} {'':>6}  {la}", flush=True)
    report["sql"] = dict(queries)
    scale = args.scale
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"query_times_{args.label}_scale{scale}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()

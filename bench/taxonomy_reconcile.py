"""Benchmark of the taxonomy stage: a synthetic authority of 2,000,000 taxa and 500,000 distinct raw
lineages standing for 10.4M records (the TreeOfLife-10M scale). Target: reconcile in under 2 minutes on
2 cores with peak memory under 6 GB.

    python bench/taxonomy_reconcile.py DIR [--scale 1.0] [--threads 2]      # generate, load, reconcile
    python bench/taxonomy_reconcile.py DIR --skip-generate                   # again on the same files

Generated (deterministic), in the real formats:

* `DIR/authorities/files/taxon.tab`: an EOL Dynamic Hierarchy of 2,000,000 ranked taxa (6 kingdoms under
  DH names such as Metazoa, 60 phyla, 400 classes, 3,000 orders, 25,000 families, 300,000 genera,
  1,671,540 species) plus unranked clades / suborders / subfamilies between them, with eolIDs;
  2% of the genus names are homonyms across kingdoms; `provider_ids.csv.gz` names 3% more pages that
  the DH lacks; `vernacularnames.csv` for 100,000 pages;
* `DIR/authorities/files/species_level_taxonomy_chains.csv`: ITIS chains for a quarter of the species
  (1% with another class than the DH's, to exercise context conflicts), with English vernaculars;
* `DIR/build/records/{inat21,bioscan1m,eol}/*.parquet`: 10.4M records (RECORD_SCHEMA) over 500,000
  distinct raw lineages: 10,000 full iNat21 lineages (2,686,843 images), 40,000 BIOSCAN-1M lineages
  (1,128,313 images; phylum to family given, then genus-only, binomials or interim names), 450,000 EOL
  pages (the rest: 95% in the DH, 3% named by provider_ids only, 2% unknown).

Each step runs in its own process (the parent reports the child's peak RSS): load = both authorities
loaded into DuckDB (`taxonomy.load`, once per build), reconcile = the `taxonomy` task on the distinct
lineages, views = catalog registration. Figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEVELS = [  # (rank, count at scale 1, DH names of the first few kingdoms)
    ("kingdom", 6), ("phylum", 60), ("class", 400), ("order", 3000), ("family", 25000), ("genus", 300000),
    ("species", 1671534),
]
DH_KINGDOMS = ["Metazoa", "Archaeplastida", "Fungi", "Chromista", "Protozoa", "Bacteria"]
ITIS_KINGDOMS = ["Animalia", "Plantae", "Fungi", "Chromista", "Protozoa", "Bacteria"]
INTERMEDIATE = {"class": "clade", "family": "suborder", "genus": "subfamily"}  # unranked level above a rank
CONS, VOWS = "bcdfghjklmnprstvz", "aeiou"
SYL = [c + v for c in CONS for v in VOWS]  # 85 syllables


def word(n: int, minlen: int = 2) -> str:
    out = []
    while n or len(out) < minlen:
        n, r = divmod(n, len(SYL))
        out.append(SYL[r])
    return "".join(out)


SUFFIX = {"phylum": "phyta", "class": "opsida", "order": "ales", "family": "idae"}


def name_of(rank: str, i: int) -> str:
    if rank == "kingdom":
        return DH_KINGDOMS[i]
    if rank == "genus":
        return word(i, 3).capitalize()
    return (word(i, 2) + SUFFIX[rank]).capitalize()


def build_tree(scale: float):
    """Parent index and name of every taxon, level by level (arrays of ints / lists of str)."""
    counts = [(r, max(1, int(c * scale)) if r != "kingdom" else c) for r, c in LEVELS]
    rng = random.Random(7)
    levels = []
    for li, (rank, n) in enumerate(counts):
        if li == 0:
            parents = [-1] * n
        else:
            n_up = counts[li - 1][1]
            parents = [min(n_up - 1, i * n_up // n) for i in range(n)]  # contiguous blocks: a real tree
        if rank == "species":
            names = None  # epithet per species, binomial made with the genus
        else:
            names = [name_of(rank, i) for i in range(n)]
        levels.append((rank, parents, names))
    # 2% of the genera reuse the name of a genus in another kingdom (homonyms across kingdoms)
    genus_names = levels[5][2]
    ng = len(genus_names)
    for i in rng.sample(range(ng), ng // 50):
        genus_names[i] = genus_names[(i + ng // 2) % ng]
    return levels


def lineage_indices(levels):
    """For each level, the index of its ancestor at every level above (list of lists)."""
    anc = [[list(range(len(levels[0][1])))]]
    for li in range(1, len(levels)):
        parents = levels[li][1]
        rows = [[anc[li - 1][k][p] for p in parents] for k in range(li)]
        rows.append(list(range(len(parents))))
        anc.append(rows)
    return anc


def epithet(i: int) -> str:
    return word(i * 7919 % 1000003, 3)


def generate(d: Path, scale: float) -> dict:
    from tol_builder.taxonomy import writers

    t0 = time.time()
    files = d / "authorities" / "files"
    files.mkdir(parents=True, exist_ok=True)
    levels = build_tree(scale)
    anc = lineage_indices(levels)
    n_species = len(levels[6][1])
    genus_names = levels[5][2]
    # ---- DH taxon.tab: ranked taxa plus one unranked level above class, family and genus
    ids: dict[tuple, str] = {}
    counter = [0]

    def new_id() -> str:
        counter[0] += 1
        return f"EOL-{counter[0]:012d}"

    page_of_species = {}
    with open(files / "taxon.tab", "w", encoding="utf-8") as f:
        f.write("\t".join(writers.DH_COLUMNS) + "\n")
        root = new_id()
        f.write(f"{root}\ttrunk:1\t\t\t\tLife\t\taccepted\ttrunk\tLife\t\t2913056\t3\t\n")
        for li, (rank, parents, names) in enumerate(levels):
            inter = INTERMEDIATE.get(rank)
            inter_ids = {}
            if inter:  # one unranked node per parent
                for p in sorted(set(parents)):
                    iid = new_id()
                    inter_ids[p] = iid
                    pid = ids[(li - 1, p)]
                    nm = f"{name_of(levels[li - 1][0], p) if li - 1 else 'K'}{inter}{p}".capitalize()
                    nm = "".join(ch for ch in nm if ch.isalpha()).capitalize()
                    f.write(f"{iid}\tdemo:{iid}\t\t\t{pid}\t{nm}\t{inter}\taccepted\tdemo\t{nm}\t\t\t\t\n")
            buf = []
            for i in range(len(parents)):
                tid = new_id()
                ids[(li, i)] = tid
                p = parents[i]
                pid = root if li == 0 else (inter_ids[p] if inter else ids[(li - 1, p)])
                if rank == "species":
                    nm = f"{genus_names[p]} {epithet(i)}"
                    page = 10_000_000 + i
                    page_of_species[i] = page
                else:
                    nm = names[i]
                    page = 1_000_000 + counter[0] if rank in ("genus", "family") else ""
                buf.append(f"{tid}\tdemo:{tid}\t\t\t{pid}\t{nm}\t{rank}\taccepted\tdemo\t{nm}\t\t{page}\t\t")
                if len(buf) >= 100_000:
                    f.write("\n".join(buf) + "\n")
                    buf = []
            if buf:
                f.write("\n".join(buf) + "\n")
    n_dh_rows = counter[0]
    # ---- provider_ids: names of pages the DH lacks; vernaculars of 100k pages
    rng = random.Random(11)
    extra_pages = {}
    import gzip

    with gzip.open(files / "provider_ids.csv.gz", "wt", encoding="utf-8", compresslevel=1) as f:
        f.write(",".join(writers.PROVIDER_COLUMNS) + "\n")
        for j, i in enumerate(rng.sample(range(n_species), int(0.03 * 450_000 * scale) + 1)):
            page = 90_000_000 + j
            extra_pages[page] = i
            f.write(f"{50_000_000 + j},x-{j},99,{page},{genus_names[levels[6][1][i]]} {epithet(i)}\n")
    with open(files / "vernacularnames.csv", "w", encoding="utf-8") as f:
        f.write(",".join(writers.EOL_VERNACULAR_COLUMNS) + "\n")
        for i in range(0, n_species, max(1, n_species // 100_000)):
            f.write(f"{page_of_species[i]},{genus_names[levels[6][1][i]]} {epithet(i)},common {word(i)},eng,demo,"
                    f"preferred,preferred\n")
    # ---- ITIS chains for a quarter of the species
    itis_species = range(0, n_species, 4)
    with open(files / "species_level_taxonomy_chains.csv", "w", encoding="utf-8") as f:
        f.write(",".join(writers.ITIS_COLUMNS) + "\n")
        buf = []
        for i in itis_species:
            a = [anc[6][k][i] for k in range(7)]
            names = [ITIS_KINGDOMS[a[0]]] + [levels[k][2][a[k]] for k in range(1, 6)]
            if i % 100 == 0:
                names[2] = name_of("class", (a[2] + 1) % len(levels[2][2]))  # another class than the DH's
            binom = f"{genus_names[a[5]]} {epithet(i)}"
            tsns = "-".join(str(200_000 + k * 10_000_000 + a[k]) for k in range(6)) + f"-{i}"
            buf.append(f"{tsns},{'->'.join(names + [binom])},{i},{binom},common {word(i)},English,"
                       f"Kingdom->Phylum->Class->Order->Family->Genus->Species,{','.join(names)},{binom}")
            if len(buf) >= 100_000:
                f.write("\n".join(buf) + "\n")
                buf = []
        if buf:
            f.write("\n".join(buf) + "\n")
    writers.write_manifest(d / "authorities" / "itis.toml", "itis", "itis_chains",
                           [{"role": "chains", "path": "files/species_level_taxonomy_chains.csv"}])
    writers.write_manifest(d / "authorities" / "eol.toml", "eol", "eol_dh",
                           [{"role": "taxon", "path": "files/taxon.tab"},
                            {"role": "vernacular", "path": "files/vernacularnames.csv"},
                            {"role": "provider_ids", "path": "files/provider_ids.csv.gz"}])
    t_auth = time.time() - t0
    n_records = write_records(d / "build", levels, anc, page_of_species, extra_pages, scale)
    return {"dh_rows": n_dh_rows, "taxa_ranked": sum(len(l[1]) for l in levels), "itis_rows": len(itis_species),
            "records": n_records, "generate_authorities_s": round(t_auth, 1),
            "generate_total_s": round(time.time() - t0, 1)}


def write_records(out: Path, levels, anc, page_of_species, extra_pages, scale: float) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tol_builder.records import RECORD_SCHEMA

    rng = random.Random(5)
    n_species = len(levels[6][1])
    genus_names = levels[5][2]
    itis_k = ITIS_KINGDOMS

    def names_at(i):
        a = [anc[6][k][i] for k in range(7)]
        return [itis_k[a[0]]] + [levels[k][2][a[k]] for k in range(1, 6)] + [epithet(i)]

    spec = {"inat21": (int(10_000 * scale), int(2_686_843 * scale)),
            "bioscan1m": (int(40_000 * scale), int(1_128_313 * scale)),
            "eol": (int(450_000 * scale), int(10_400_000 * scale) - int(2_686_843 * scale) - int(1_128_313 * scale))}
    # "insects": the species under 20 classes (5% of the species), as BIOSCAN-1M labels only insects
    insect_species = [i for i in range(n_species) if 3 <= anc[6][2][i] < 23]
    total = 0
    for source, (n_lin, n_img) in spec.items():
        lin = {c: [] for c in ("kingdom", "phylum", "class", "order", "family", "genus", "species",
                               "scientific_name", "source_taxon_id", "common_name")}

        def add(**kw):
            for c in lin:
                lin[c].append(kw.get(c))

        if source == "inat21":
            for j, i in enumerate(rng.sample(range(n_species), n_lin)):
                k, p, c, o, f, g, s = names_at(i)
                add(kingdom=k, phylum=p, **{"class": c}, order=o, family=f, genus=g, species=s,
                    scientific_name=f"{g} {s}", source_taxon_id=str(j), common_name=f"Common {j}")
        elif source == "bioscan1m":
            seen = set()
            while len(lin["family"]) < n_lin:
                i = rng.choice(insect_species)
                k, p, c, o, f, g, s = names_at(i)
                kind = rng.random()
                if kind < 0.1:
                    row = (p, c, o, f, None, None)
                elif kind < 0.4:
                    row = (p, c, o, f, g, None)
                elif kind < 0.75:
                    row = (p, c, o, f, g, f"{g} {s}")
                else:
                    row = (p, c, o, f, None, f"phyMalaise{rng.randrange(10):02d} Malaise{rng.randrange(100000)}")
                if row in seen:
                    continue
                seen.add(row)
                p, c, o, f, g, s = row
                add(phylum=p, **{"class": c}, order=o, family=f, genus=g, species=s,
                    scientific_name=s or g or f, source_taxon_id=f"BOLD:A{len(seen):06d}")
        else:
            pages = rng.sample(sorted(page_of_species.values()), int(n_lin * 0.95))
            pages += list(extra_pages)[: n_lin - len(pages) - int(n_lin * 0.02)]
            pages += [80_000_000 + j for j in range(n_lin - len(pages))]  # unknown pages
            for pg in pages:
                add(source_taxon_id=str(pg))
        n = len(lin["family"])
        reps = np.full(n, n_img // n)
        reps[: n_img % n] += 1
        idx = np.repeat(np.arange(n), reps)
        np.random.default_rng(3).shuffle(idx)
        base = pa.table({c: pa.array(v, pa.string()) for c, v in lin.items()})
        parts = 8 if source == "eol" else 4
        for part, chunk in enumerate(np.array_split(idx, parts)):
            t = base.take(pa.array(chunk))
            ids = pa.array(np.char.add(f"{source}-{part}-", np.arange(len(chunk)).astype(str)).astype(object),
                           pa.string())
            cols = {"uid": pa.compute.binary_join_element_wise(pa.scalar(source), ids, "/"), "source":
                    pa.array([source] * len(chunk), pa.string()), "source_id": ids,
                    "media_uri": pa.compute.binary_join_element_wise(pa.scalar("https://x.invalid"), ids, "/")}
            arrays = []
            for f in RECORD_SCHEMA:
                if f.name in cols:
                    arrays.append(cols[f.name])
                elif f.name in t.column_names:
                    arrays.append(t.column(f.name))
                else:
                    arrays.append(pa.nulls(len(chunk), f.type))
            path = out / "records" / source / f"part-{part:02d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_arrays(arrays, schema=RECORD_SCHEMA), path, compression="zstd")
        total += len(idx)
    return total


# ----------------------------------------------------------------------------------------- running
def _workflow(d: Path, threads: int):
    from tol_builder.config import SourceConfig, TaxonomyConfig, Workflow

    (d / "workflow.toml").write_text("# benchmark\n")
    return Workflow(name="bench", out=str(d / "build"), path=d / "workflow.toml", sources=[
        SourceConfig(name="inat21", manifest="-"), SourceConfig(name="bioscan1m", manifest="-"),
        SourceConfig(name="eol", manifest="-")], taxonomy=TaxonomyConfig(
        authorities_dir=str(d / "authorities"), authority_order=["source", "itis", "eol"],
        common_name_order=["itis", "inaturalist", "eol_preferred", "eol"], threads=threads, memory_limit="4GB"))


def step(d: Path, what: str, threads: int) -> dict:
    """One measured step, run in this (child) process."""
    from tol_builder.taxonomy import authorities, plan, reconcile, register

    wf = _workflow(d, threads)
    needed, settings = plan(wf)
    out = d / "build"
    t0 = time.time()
    if what == "load":
        counters = {}
        for name, manifest in sorted(needed.items()):
            counters.update(authorities.load_task(str(out), name, str(manifest), settings.kingdom_synonyms,
                                                  threads=threads, memory_limit="4GB"))
    elif what == "reconcile":
        counters = reconcile.reconcile_task(str(out), reconcile.settings_dict(settings))
    else:
        from tol_builder import catalog

        catalog.register_parquet(out, "records", "records/*/*.parquet")
        register(out, settings.page_sources, wf.taxonomy.min_images)
        t1 = time.time()
        n = catalog.query(out, "SELECT count(*) AS n, count(taxon_id) AS resolved FROM images").to_pylist()[0]
        counters = {"images_view_rows": n["n"], "images_view_resolved": n["resolved"],
                    "images_view_query_ms": int((time.time() - t1) * 1000)}
    return {"seconds": round(time.time() - t0, 2), "counters": counters}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--step", choices=["load", "reconcile", "views"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    d = args.dir.resolve()
    if args.step:  # child
        print(json.dumps(step(d, args.step, args.threads)))
        return
    report = {"scale": args.scale, "threads": args.threads, "cpus": os.cpu_count()}
    if not args.skip_generate:
        report["generate"] = generate(d, args.scale)
        print(json.dumps(report["generate"]), flush=True)
    for what in ("load", "reconcile", "views"):
        log = d / f".bench-{what}.out"
        with open(log, "w") as fout:
            p = subprocess.Popen([sys.executable, __file__, str(d), "--threads", str(args.threads), "--step", what],
                                 stdout=fout, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(p.pid, 0)  # this child's own peak RSS (KiB on Linux)
            p.returncode = os.waitstatus_to_exitcode(status)
        text = log.read_text()
        if p.returncode:
            sys.exit(f"step {what} failed:\n{text[-4000:]}")
        res = json.loads(text.strip().splitlines()[-1])
        res["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
        res["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)  # what other users of the cores don't change
        report[what] = res
        print(what, json.dumps(res), flush=True)
    rc = report["reconcile"]
    lineages = rc["counters"]["lineages"]
    report["lineages_per_second"] = round(lineages / rc["seconds"])
    print(json.dumps({"lineages": lineages, "records": rc["counters"]["images"],
                      "reconcile_seconds": rc["seconds"], "lineages_per_second": report["lineages_per_second"],
                      "reconcile_peak_rss_mb": rc["peak_rss_mb"], "reconcile_cpu_seconds": rc["cpu_seconds"],
                      "load_seconds": report["load"]["seconds"],
                      "load_peak_rss_mb": report["load"]["peak_rss_mb"]}))
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"taxonomy_reconcile_scale{args.scale}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Synthetic inputs of the full-scale dry run (bench/dry_run.py), all in the real formats and all drawn from
ONE synthetic tree of life, so that the sources' labels resolve against the authorities as real ones mostly do.

    python bench/synth_dryrun.py DIR [--scale 1.0]

At scale 1 (every count is multiplied by --scale; the evaluation set keeps its real size at every scale):

* the tree (bench/taxonomy_reconcile.py's shape and names): 6 kingdoms, 60 phyla, 400 classes, 3,000 orders,
  25,000 families, 300,000 genera, 1,671,534 species (2% of the genus names homonyms across kingdoms);
* `authorities/files/taxon.tab`: EOL Dynamic Hierarchy, ~2.0M rows (the ranked tree, DH kingdom names such
  as Metazoa, an unranked level above class, family and genus, eolIDs), `provider_ids.csv.gz` (pages the DH
  lacks), `vernacularnames.csv` (one species in four, eng / spa / fre);
* `authorities/files/backbone.zip`: GBIF backbone DwC-A (`Taxon.tsv`, `VernacularName.tsv`, `meta.xml`),
  7.8M Taxon rows: the ranked tree (2.0M, denormalised classification) + 1.2M species the DH lacks + 0.8M
  subspecies + 3.0M species synonyms + 0.3M genus synonyms + 0.5M doubtful species; 1.0M vernacular names
  in seven languages (one without a language);
* `authorities/files/species_level_taxonomy_chains.csv`: ITIS chains for EVERY species (1% with another class
  than the DH's), English vernaculars;
* `authorities/files/common-names-mapping.json`: BioCLIP's iNat21 category -> English name (95.5% of the
  categories, as the real 9,551 of 10,000);
* sources, the formats of bench/synth.py: iNat21 `train.json.tar.gz` (2,686,843 images, 10,000 categories =
  species of the tree), BIOSCAN-1M metadata TSV (1,128,313 rows over ~40,000 insect lineages: family for
  98.6%, genus 22.5%, species 7.5%, some interim Malaise names), EOL `media_manifest.tgz` (6,600,000 rows over
  449,000 pages: 95% species pages of the DH, 3% pages only provider_ids names, 2% unknown);
* `evalset/`: a Rare-Species-like evaluation set (its reader `rare_species`): 400 animal species, 11,983 real
  small JPEGs (noise pictures, so their PDQ quality is high) and metadata.csv; 10% of its content ids are
  content ids of the pool's EOL records; `eval_hashes.parquet` keeps each image's sha256 / md5 / PDQ for the
  pool's planted copies (`write_media`).

`write_media(build, data)` then stands in for the fetch stage (not run: no image bytes): it writes the
`media` table in the fetch stage's layout (`media/<source>/<source>.<records file>.<task>.<chunk>.parquet`,
1,000 rows per chunk, tasks of 10,000 records, through fetch/media.py's own writer) with status ok, random
sha256 / md5, clustered PDQ hashes (bench/synth_pdq.py), sizes, and NO jpeg bytes, planting: byte-exact
EOL re-hosts of iNat21 images (1% of EOL), near copies inside the pool (0.5% of EOL), and exact and near
(1..10 bits) copies of evaluation images. Deterministic for a given scale.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
import sys  # noqa: E402

sys.path[:0] = [str(HERE), str(HERE.parent)]
import synth  # noqa: E402
from taxonomy_reconcile import (DH_KINGDOMS, INTERMEDIATE, ITIS_KINGDOMS, LEVELS, name_of,  # noqa: E402
                                word)

RANK_NAMES = [r for r, _ in LEVELS]
GBIF_EXTRA = {"species": 1_200_000, "subspecies": 800_000, "species_synonyms": 3_000_000,
              "genus_synonyms": 300_000, "doubtful": 500_000, "vernacular": 1_000_000}
EVAL_SPECIES, EVAL_IMAGES = 400, 11_983
GBIF_LANGS = ["en", "es", "fr", "de", "", "pt", "nl"]


# ------------------------------------------------------------------------------------------ the tree
class Tree:
    """Parent arrays per level (numpy), names of every non-species node, species epithets, and the
    ancestor index of every species at every level."""

    def __init__(self, scale: float):
        self.counts = [(r, c if r == "kingdom" else max(1, int(c * scale))) for r, c in LEVELS]
        self.parents = []
        for li, (rank, n) in enumerate(self.counts):
            if li == 0:
                self.parents.append(np.full(n, -1, np.int64))
            else:
                up = self.counts[li - 1][1]
                self.parents.append(np.minimum(up - 1, np.arange(n, dtype=np.int64) * up // n))
        self.names = [[name_of(rank, i) for i in range(n)] if rank != "species" else None
                      for rank, n in self.counts]
        rng = random.Random(7)
        g = self.names[5]
        ng = len(g)
        for i in rng.sample(range(ng), ng // 50):  # homonym genera across kingdoms
            g[i] = g[(i + ng // 2) % ng]
        self.n_species = self.counts[6][1]
        # epithets: distinct words (taxonomy_reconcile.epithet repeats beyond 1,000,003 species)
        self.epithets = [word(i * 7919 % 2000003, 3) for i in range(self.n_species)]
        anc = [self.parents[6]]  # ancestor at level 5, 4, ... 0 of each species
        for li in range(5, 0, -1):
            anc.append(self.parents[li][anc[-1]])
        anc.reverse()  # anc[k] = ancestor at level k for k = 0..5
        self.sp_anc = anc + [np.arange(self.n_species)]

    def lineage(self, i: int, kingdoms=ITIS_KINGDOMS) -> list[str]:
        """kingdom .. genus names and the epithet of species i."""
        a = [int(self.sp_anc[k][i]) for k in range(6)]
        return [kingdoms[a[0]]] + [self.names[k][a[k]] for k in range(1, 6)] + [self.epithets[i]]

    def binomial(self, i: int) -> str:
        return f"{self.names[5][int(self.sp_anc[5][i])]} {self.epithets[i]}"


def _lines(f, rows: list[str], force: bool = False) -> None:
    if rows and (force or len(rows) >= 100_000):
        f.write("\n".join(rows) + "\n")
        rows.clear()


# ----------------------------------------------------------------------------------------- authorities
def write_dh(files: Path, t: Tree, scale: float) -> dict:
    from tol_builder.taxonomy import writers

    counter = [0]

    def new_id() -> str:
        counter[0] += 1
        return f"EOL-{counter[0]:012d}"

    ids: list[list[str]] = []
    with open(files / "taxon.tab", "w", encoding="utf-8") as f:
        f.write("\t".join(writers.DH_COLUMNS) + "\n")
        root = new_id()
        f.write(f"{root}\ttrunk:1\t\t\t\tLife\t\taccepted\ttrunk\tLife\t\t2913056\t3\t\n")
        for li, (rank, n) in enumerate(t.counts):
            parents = t.parents[li]
            inter = INTERMEDIATE.get(rank)
            inter_ids = {}
            buf: list[str] = []
            if inter:  # one unranked node per parent
                for p in np.unique(parents).tolist():
                    iid = new_id()
                    inter_ids[p] = iid
                    nm = f"{t.names[li - 1][p]}{inter}"
                    nm = "".join(ch for ch in nm if ch.isalpha()).capitalize()
                    buf.append(f"{iid}\tdemo:{iid}\t\t\t{ids[li - 1][p]}\t{nm}\t{inter}\taccepted\tdemo\t{nm}\t\t\t\t")
                    _lines(f, buf)
            level_ids = []
            plist = parents.tolist()
            for i in range(n):
                tid = new_id()
                level_ids.append(tid)
                p = plist[i]
                pid = root if li == 0 else (inter_ids[p] if inter else ids[li - 1][p])
                if rank == "species":
                    nm, page = t.binomial(i), 10_000_000 + i
                elif rank == "kingdom":
                    nm, page = DH_KINGDOMS[i], ""
                else:
                    nm = t.names[li][i]
                    page = 1_000_000 + counter[0] if rank in ("genus", "family") else ""
                buf.append(f"{tid}\tdemo:{tid}\t\t\t{pid}\t{nm}\t{rank}\taccepted\tdemo\t{nm}\t\t{page}\t\t")
                _lines(f, buf)
            _lines(f, buf, force=True)
            ids.append(level_ids)
    # provider_ids: pages the DH lacks (3% of the EOL pages), named by their preferred canonical
    rng = random.Random(11)
    n_extra = int(0.03 * 449_000 * scale) + 1
    extra = rng.sample(range(t.n_species), n_extra)
    with gzip.open(files / "provider_ids.csv.gz", "wt", encoding="utf-8", compresslevel=1) as f:
        f.write(",".join(writers.PROVIDER_COLUMNS) + "\n")
        for j, i in enumerate(extra):
            f.write(f"{50_000_000 + j},x-{j},99,{90_000_000 + j},{t.binomial(i)}\n")
    langs = ["eng", "spa", "fre"]
    n_vern = 0
    with open(files / "vernacularnames.csv", "w", encoding="utf-8") as f:
        f.write(",".join(writers.EOL_VERNACULAR_COLUMNS) + "\n")
        buf = []
        for i in range(0, t.n_species, 4):
            lang = langs[(i // 4) % 3]
            buf.append(f"{10_000_000 + i},{t.binomial(i)},common {word(i)},{lang},demo,preferred,"
                       f"{'preferred' if lang == 'eng' else ''}")
            n_vern += 1
            _lines(f, buf)
        _lines(f, buf, force=True)
    return {"dh_rows": counter[0], "provider_pages": n_extra, "eol_vernaculars": n_vern}


def write_gbif(files: Path, t: Tree, scale: float) -> dict:
    """backbone.zip: Taxon.tsv + VernacularName.tsv + meta.xml, streamed into the zip."""
    from tol_builder.taxonomy import writers

    cols = writers.GBIF_TAXON_COLUMNS
    ds = "d7dddbf4-2cf0-4f39-9b2a-bb099caae36c"
    rng = np.random.default_rng(13)
    extra = {k: int(v * scale) for k, v in GBIF_EXTRA.items()}
    offs, start = [], 1
    for _, n in t.counts:
        offs.append(start)
        start += n
    next_id = start
    rows = 0
    genus_of = t.sp_anc[5].tolist()

    def classification(level: int, idx: int) -> list[str]:
        """kingdom .. genus names of node idx at `level` (own name included where ranked)."""
        out = [""] * 6
        cur = idx
        for li in range(level, -1, -1):
            if li < 6:
                out[li] = ITIS_KINGDOMS[cur] if li == 0 else t.names[li][cur]
            cur = int(t.parents[li][cur]) if li > 0 else cur
        return out

    def row(tid, parent, accepted, sci, canon, generic, epi, infra, rank, status, cls) -> str:
        vals = {"taxonID": tid, "datasetID": ds, "parentNameUsageID": parent, "acceptedNameUsageID": accepted,
                "scientificName": sci, "canonicalName": canon, "genericName": generic, "specificEpithet": epi,
                "infraspecificEpithet": infra, "taxonRank": rank, "taxonomicStatus": status,
                "kingdom": cls[0], "phylum": cls[1], "class": cls[2], "order": cls[3], "family": cls[4],
                "genus": cls[5]}
        return "\t".join(str(vals.get(c, "")) for c in cols)

    genus_cls = [classification(5, g) for g in range(t.counts[5][1])]
    zpath = files / "backbone.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("Taxon.tsv", "w", force_zip64=True) as raw:
            f = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
            f.write("\t".join(cols) + "\n")
            buf: list[str] = []
            # the ranked tree, classification denormalised as the backbone has it
            for li, (rank, n) in enumerate(t.counts):
                plist = t.parents[li].tolist()
                for i in range(n):
                    parent = "" if li == 0 else offs[li - 1] + plist[i]
                    if rank == "species":
                        g = t.names[5][genus_of[i]]
                        bi = f"{g} {t.epithets[i]}"
                        cls = genus_cls[genus_of[i]]
                        buf.append(row(offs[6] + i, parent, "", f"{bi} Auth., 1900", bi, g, t.epithets[i], "",
                                       "SPECIES", "ACCEPTED", cls))
                    else:
                        nm = ITIS_KINGDOMS[i] if li == 0 else t.names[li][i]
                        cls = genus_cls[i] if li == 5 else classification(li, i)
                        buf.append(row(offs[li] + i, parent, "", nm, nm, "", "", "", rank.upper(), "ACCEPTED", cls))
                    rows += 1
                    _lines(f, buf)
            _lines(f, buf, force=True)
            # species the DH lacks, subspecies, synonyms, doubtful names
            kinds = [("species", "SPECIES", "ACCEPTED"), ("doubtful", "SPECIES", "DOUBTFUL"),
                     ("subspecies", "SUBSPECIES", "ACCEPTED"), ("species_synonyms", "SPECIES", "SYNONYM"),
                     ("genus_synonyms", "GENUS", "SYNONYM")]
            for kind, rank, status in kinds:
                n = extra[kind]
                target = rng.integers(0, t.n_species if kind != "genus_synonyms" else t.counts[5][1], n).tolist()
                for j in range(n):
                    tid = next_id
                    next_id += 1
                    x = target[j]
                    if kind == "genus_synonyms":
                        nm = (word(j + 7_000_003, 3) + "ia").capitalize()
                        cls = genus_cls[x][:5] + [""]
                        buf.append(row(tid, offs[4] + int(t.parents[5][x]), offs[5] + x, nm, nm, "", "", "",
                                       rank, status, cls))
                    else:
                        g = t.names[5][genus_of[x]]
                        cls = genus_cls[genus_of[x]]
                        if kind == "subspecies":
                            nm = f"{g} {t.epithets[x]} {word(j, 3)}"
                            buf.append(row(tid, offs[6] + x, "", nm, nm, g, t.epithets[x], word(j, 3), rank,
                                           status, cls))
                        else:
                            ep = word(j + 3_000_017 * (1 + len(kind)), 3)
                            nm = f"{g} {ep}"
                            acc = offs[6] + x if status == "SYNONYM" else ""
                            buf.append(row(tid, offs[5] + genus_of[x], acc, f"{nm} Auth., 1950", nm, g, ep, "",
                                           rank, status, cls))
                    rows += 1
                    _lines(f, buf)
                _lines(f, buf, force=True)
            f.flush()
            f.detach()
        with z.open("VernacularName.tsv", "w", force_zip64=True) as raw:
            f = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
            f.write("\t".join(writers.GBIF_VERNACULAR_COLUMNS) + "\n")
            buf = []
            n_v = extra["vernacular"]
            step = max(1, t.n_species // max(1, n_v))
            for j in range(n_v):
                i = (j * step) % t.n_species
                lang = GBIF_LANGS[j % len(GBIF_LANGS)]
                buf.append(f"{offs[6] + i}\tcommon {word(i)} {lang or 'x'}\t{lang}\t\t\t\t\tsynthetic")
                _lines(f, buf)
            _lines(f, buf, force=True)
            f.flush()
            f.detach()
        z.writestr("meta.xml", writers.GBIF_META)
    return {"gbif_taxon_rows": rows, "gbif_vernacular_rows": extra["vernacular"]}


def write_itis(files: Path, t: Tree) -> dict:
    from tol_builder.taxonomy import writers

    n_class = t.counts[2][1]
    with open(files / "species_level_taxonomy_chains.csv", "w", encoding="utf-8") as f:
        f.write(",".join(writers.ITIS_COLUMNS) + "\n")
        buf: list[str] = []
        anc = [a.tolist() for a in t.sp_anc]
        for i in range(t.n_species):
            a = [anc[k][i] for k in range(6)]
            names = [ITIS_KINGDOMS[a[0]]] + [t.names[k][a[k]] for k in range(1, 6)]
            if i % 100 == 0:
                names[2] = name_of("class", (a[2] + 1) % n_class)  # another class than the DH's
            binom = f"{names[5]} {t.epithets[i]}"
            tsns = "-".join(str(200_000 + k * 10_000_000 + a[k]) for k in range(6)) + f"-{i}"
            buf.append(f"{tsns},{'->'.join(names + [binom])},{i},{binom},common {word(i)},English,"
                       f"Kingdom->Phylum->Class->Order->Family->Genus->Species,{','.join(names)},{binom}")
            _lines(f, buf)
        _lines(f, buf, force=True)
    return {"itis_chains": t.n_species}


# ------------------------------------------------------------------------------------------- sources
def write_inat21(out: Path, t: Tree, scale: float, files: Path) -> dict:
    d = out / "inat21"
    d.mkdir(parents=True, exist_ok=True)
    n_img, n_cat = int(synth.INAT_IMAGES * scale), max(10, int(synth.INAT_CATEGORIES * scale))
    rng = random.Random(21)
    species = sorted(rng.sample(range(t.n_species), n_cat))
    cats = []
    for c, i in enumerate(species):
        k, p, cl, o, fam, g, ep = t.lineage(i)
        cats.append(dict(id=c, name=f"{g} {ep}", common_name=f"Common {c}", supercategory=k, kingdom=k, phylum=p,
                         cls=cl, order=o, family=fam, genus=g, epithet=ep,
                         dir=f"{c:05d}_{k}_{p}_{cl}_{o}_{fam}_{g}_{ep}"))
    synth.inat21(out, scale, cats=cats)  # the same writer as the ingest bench, with the tree's categories
    # BioCLIP's iNat21 common-name mapping: 95.5% of the categories
    mapping = {str(c): f"Inat common {c}" for c in range(n_cat) if c % 200 >= 9}
    (files / "common-names-mapping.json").write_text(json.dumps(mapping, indent=1, sort_keys=True) + "\n")
    return {"inat21_images": n_img, "inat21_categories": n_cat}


def write_bioscan(out: Path, t: Tree, scale: float) -> dict:
    n = int(synth.BIOSCAN_ROWS * scale)
    rng = random.Random(1)
    # insects: the species under 20 classes, as BIOSCAN-1M labels only insects
    cls = t.sp_anc[2]
    insects = np.nonzero((cls >= 3) & (cls < 23))[0].tolist()
    nc = "not_classified"
    n_lin = max(50, int(40_000 * scale))
    lineages, seen = [], set()
    while len(lineages) < n_lin:
        i = rng.choice(insects)
        _, p, c, o, fam, g, ep = t.lineage(i)
        u = rng.random()
        if u < 0.014:
            lin = (p, c, o, nc, nc, nc)
        elif u < 0.775:
            lin = (p, c, o, fam, nc, nc)
        elif u < 0.925:
            lin = (p, c, o, fam, g, nc)
        elif u < 0.97:
            lin = (p, c, o, fam, g, f"{g} {ep}")
        else:
            lin = (p, c, o, fam, nc, f"phyMalaise{rng.randrange(10):02d} Malaise{rng.randrange(100000)}")
        if lin not in seen:
            seen.add(lin)
            lineages.append(lin)
    synth.bioscan1m(out, scale, lineages=lineages)  # the same writer as the ingest bench, with these lineages
    return {"bioscan_rows": n, "bioscan_lineages": n_lin}


def eol_pages(t: Tree, scale: float) -> list[int]:
    """The pool's EOL pages: 95% DH species pages, 3% provider_ids-only pages, 2% unknown."""
    n_pages = max(100, int(449_000 * scale))
    rng = random.Random(3)
    n_dh = int(n_pages * 0.95)
    pages = [10_000_000 + i for i in rng.sample(range(t.n_species), n_dh)]
    n_prov = min(int(0.03 * 449_000 * scale) + 1, int(n_pages * 0.03))
    pages += [90_000_000 + j for j in range(n_prov)]
    pages += [80_000_000 + j for j in range(n_pages - len(pages))]
    return pages


def write_eol(out: Path, t: Tree, scale: float) -> dict:
    pages = eol_pages(t, scale)
    n = int(synth.EOL_ROWS * scale)
    synth.eol(out, scale, pages=pages)  # the same writer as the ingest bench, over the tree's pages
    return {"eol_rows": n, "eol_pages": len(pages)}


# ------------------------------------------------------------------------------------- evaluation set
def eval_images(folder: Path, n: int) -> list[tuple[bytes, str, str, str, int]]:
    """n small noise JPEGs (deterministic), cached in `folder`: (bytes, sha256, md5, pdq, quality)."""
    from PIL import Image

    from tol_builder.fetch.imaging import pdq_of_bytes

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(400)
    out = []
    for k in range(n):
        p = folder / f"{k:05d}.jpg"
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        if not p.exists():
            img = Image.fromarray(small).resize((160, 120), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            p.write_bytes(buf.getvalue())
        data = p.read_bytes()
        pdq, q = pdq_of_bytes(data)
        out.append((data, hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest(), pdq, q))
    return out


def write_evalset(out: Path, t: Tree, scale: float, cache: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = out / "evalset"
    img_dir = d / "rare_species" / "images" / "2024-03-20"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(400)
    animals = np.nonzero(t.sp_anc[0] == 0)[0].tolist()
    species = rng.sample(animals, min(EVAL_SPECIES, len(animals)))
    n_eol = int(synth.EOL_ROWS * scale)
    imgs = eval_images(cache / "eval-images", EVAL_IMAGES)
    lines = [",kingdom,phylum,cls,order,family,genus,species,common_name,filepath,class"]
    hashes = {"content_id": [], "sha256": [], "md5": [], "pdq": [], "pdq_quality": []}
    for k, (data, sha, md5, pdq, q) in enumerate(imgs):
        i = species[k % len(species)]
        kg, p, c, o, fam, g, ep = t.lineage(i)
        # 10% are media of the pool's EOL records (their content ids), as Rare Species images are EOL media
        cid = 10_000_000 + rng.randrange(n_eol) if k % 10 == 0 else 60_000_000 + k
        name = f"{cid}_{10_000_000 + i}_eol-full-size-copy.jpg"
        target = img_dir / name
        if not target.exists():
            target.write_bytes(data)
        lines.append(f"{k},{kg},{p},{c},{o},{fam},{g},{ep},rare common {k % len(species)},2024-03-20/{name},{g} {ep}")
        for key, v in (("content_id", str(cid)), ("sha256", sha), ("md5", md5), ("pdq", pdq), ("pdq_quality", q)):
            hashes[key].append(v)
    meta = d / "rare_species" / "metadata.csv"
    meta.write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table(hashes), d / "eval_hashes.parquet")
    (d / "rare_species.toml").write_text(
        'source = "rare_species"\ntitle = "Rare-Species-like synthetic evaluation set"\n'
        '[evalset]\nname = "rare_species"\nhold_images = true\nhold_species = "all"\nsame_ids_as = "eol"\n'
        f'[[files]]\nname = "metadata.csv"\nrole = "metadata"\nurl = "rare_species/metadata.csv"\n'
        f'md5 = "{synth._md5(meta)}"\n[[files]]\nname = "images"\nrole = "media"\nurl = "rare_species/images"\n')
    return {"eval_species": len(species), "eval_images": len(imgs)}


# -------------------------------------------------------------------------------------------- all of it
def generate(out: Path, scale: float, cache: Path) -> dict:
    """Every input file; returns counts and the seconds of each part."""
    from tol_builder.taxonomy import writers

    out.mkdir(parents=True, exist_ok=True)
    files = out / "authorities" / "files"
    files.mkdir(parents=True, exist_ok=True)
    report: dict = {"seconds": {}}

    def part(name, fn, *a):
        t0 = time.time()
        report.update(fn(*a) or {})
        report["seconds"][name] = round(time.time() - t0, 1)
        print(f"  generated {name} in {report['seconds'][name]:.0f} s", flush=True)

    t0 = time.time()
    t = Tree(scale)
    report["seconds"]["tree"] = round(time.time() - t0, 1)
    report["tree_ranked_taxa"] = sum(n for _, n in t.counts)
    part("eol_dh", write_dh, files, t, scale)
    part("gbif", write_gbif, files, t, scale)
    part("itis", write_itis, files, t)
    part("inat21", write_inat21, out / "sources", t, scale, files)
    part("bioscan1m", write_bioscan, out / "sources", t, scale)
    part("eol", write_eol, out / "sources", t, scale)
    part("evalset", write_evalset, out, t, scale, cache)
    t0 = time.time()
    writers.write_authority_manifests(out / "authorities")
    report["seconds"]["manifests"] = round(time.time() - t0, 1)
    return report


# --------------------------------------------------------------------------- media (in place of fetch)
def write_media(build: Path, data: Path, seed: int = 0) -> dict:
    """The `media` table of every records file, as the fetch stage lays it out (see the module doc)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dedup_stage import hex_strings
    from synth_pdq import background, flip_exact
    from tol_builder import catalog
    from tol_builder.fetch.media import MEDIA_SCHEMA, write_table

    files = sorted((build / "records").glob("*/*.parquet"))
    sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
    n = sum(sizes)
    starts = np.cumsum([0] + sizes)
    src_of = [f.parent.name for f in files]
    rows_of = {s: np.concatenate([np.arange(starts[k], starts[k + 1]) for k in range(len(files)) if src_of[k] == s])
               for s in sorted(set(src_of))}
    rng = np.random.default_rng([seed, 77])
    pdq = background(n, seed, "dryrun")
    sha = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    md5 = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    quality = np.full(n, 100, np.int32)
    quality[rng.random(n) < 0.01] = 30  # featureless pictures: PDQ not trusted
    planted = {}
    inat, eol = rows_of.get("inat21", np.empty(0, np.int64)), rows_of.get("eol", np.empty(0, np.int64))
    if len(inat) and len(eol):
        # EOL re-hosts iNaturalist photos: byte-exact copies (1% of EOL), and near copies (0.5%: re-encoded)
        k = len(eol) // 100
        dst, src = rng.choice(eol, k, replace=False), rng.choice(inat, k)
        sha[dst], md5[dst], pdq[dst] = sha[src], md5[src], pdq[src]
        k2 = len(eol) // 200
        dst2, src2 = rng.choice(eol, k2, replace=False), rng.choice(inat, k2)
        pdq[dst2] = flip_exact(pdq[src2], rng.integers(1, 9, k2), rng)
        planted.update(pool_exact_copies=int(k), pool_near_copies=int(k2))
    ev = pq.read_table(data / "evalset" / "eval_hashes.parquet")
    ev_sha = np.frombuffer(bytes.fromhex("".join(ev.column("sha256").to_pylist())), np.uint8).reshape(-1, 32)
    ev_md5 = np.frombuffer(bytes.fromhex("".join(ev.column("md5").to_pylist())), np.uint8).reshape(-1, 16)
    ev_pdq = np.frombuffer(bytes.fromhex("".join(ev.column("pdq").to_pylist())), np.uint8).reshape(-1, 32)
    k = min(1000, n // 200)
    dst, src = rng.choice(n, 2 * k, replace=False), rng.integers(0, len(ev_sha), 2 * k)
    sha[dst[:k]], md5[dst[:k]], pdq[dst[:k]] = ev_sha[src[:k]], ev_md5[src[:k]], ev_pdq[src[:k]]
    pdq[dst[k:]] = flip_exact(ev_pdq[src[k:]], rng.integers(1, 11, k), rng)
    quality[dst] = 100
    planted.update(eval_exact_copies=int(k), eval_near_copies=int(k))
    written = 0
    for fi, f in enumerate(files):
        rec = pq.read_table(f, columns=["uid", "source", "media_uri", "media_member"])
        lo = int(starts[fi])
        source, stem = f.parent.name, f.stem
        out_dir = build / "media" / source
        out_dir.mkdir(parents=True, exist_ok=True)
        for a in range(0, rec.num_rows, 1000):
            b = min(rec.num_rows, a + 1000)
            m = b - a
            g = slice(lo + a, lo + b)
            part = rec.slice(a, m)
            null_s = pa.nulls(m, pa.string())
            w = rng.integers(300, 2000, m).astype(np.int32)
            h = (w * 3 // 4).astype(np.int32)
            scale = np.minimum(1.0, 720 / np.maximum(w, h))
            orig = rng.integers(40_000, 900_000, m)
            cols = {"uid": part.column("uid"), "source": part.column("source"), "status": pa.repeat(pa.scalar("ok"), m),
                    "error_class": null_s, "error_message": null_s, "http_status": pa.array(np.full(m, 200, np.int32)),
                    "media_uri": part.column("media_uri"), "media_member": part.column("media_member"),
                    "final_url": part.column("media_uri"), "attempts": pa.array(np.ones(m, np.int32)),
                    "pass": pa.array(np.zeros(m, np.int32)), "original_bytes": pa.array(orig),
                    "sha256": hex_strings(sha[g]), "md5": hex_strings(md5[g]), "pdq": hex_strings(pdq[g]),
                    "pdq_quality": pa.array(quality[g]), "format": pa.repeat(pa.scalar("JPEG"), m),
                    "width": pa.array(w), "height": pa.array(h),
                    "stored_width": pa.array(np.round(w * scale).astype(np.int32)),
                    "stored_height": pa.array(np.round(h * scale).astype(np.int32)),
                    "stored_bytes": pa.array((orig * 0.4).astype(np.int64)),
                    "kept_original": pa.array(np.zeros(m, bool)), "jpeg": pa.nulls(m, pa.binary())}
            table = pa.table(cols, schema=MEDIA_SCHEMA)
            task, chunk = a // 10_000, (a % 10_000) // 1000
            write_table(out_dir / f"{source}.{stem}.{task:05d}.{chunk:05d}.parquet", table)
            written += 1
    catalog.register_parquet(build, "media", "media/*/*.parquet")  # what the fetch stage registers
    return {"media_rows": n, "media_files": written, **planted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    print(json.dumps(generate(args.out, args.scale, args.out.parent), indent=1))


if __name__ == "__main__":
    main()

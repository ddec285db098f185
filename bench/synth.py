"""Synthetic source files in the real formats, at TreeOfLife-10M metadata size (for benchmarks).

    python bench/synth.py DIR [--scale 1.0]

writes DIR/inat21/train.json.tar.gz (2,686,843 images, 10,000 categories), DIR/bioscan1m/
BIOSCAN_Insect_Dataset_metadata.tsv (1,128,313 rows, final 27-column schema, `not_classified` for missing
ranks at the published coverage: 98.6% family, 22.5% genus, 7.5% species) and DIR/eol/media_manifest.tgz
(6,600,000 rows in 66 chunks of 100,000, header only in the first), plus a manifest TOML for each with md5
sums. Deterministic for a given scale. Media archives are not generated (ingest reads metadata only).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import tarfile
import time
import uuid
from pathlib import Path

from tol_builder.fileio import file_digest

INAT_IMAGES, INAT_CATEGORIES = 2_686_843, 10_000
BIOSCAN_ROWS = 1_128_313
EOL_ROWS, EOL_CHUNK = 6_600_000, 100_000

KINGDOMS = [("Animalia", "Chordata", "Aves"), ("Animalia", "Arthropoda", "Insecta"), ("Plantae", "Tracheophyta",
            "Magnoliopsida"), ("Fungi", "Basidiomycota", "Agaricomycetes"), ("Animalia", "Mollusca", "Gastropoda")]


def _md5(path: Path) -> str:
    return file_digest(path, "md5")


def _add_file_to_tgz(tgz: Path, member: str, src: Path) -> None:
    with tarfile.open(tgz, "w:gz", compresslevel=1) as tar:
        tar.add(src, arcname=member)


def inat21(out: Path, scale: float = 1.0, cats: list[dict] | None = None) -> Path:
    """iNat21's train.json.tar.gz and a manifest; `cats`: the categories (dicts as built below), else made up."""
    d = out / "inat21"
    d.mkdir(parents=True, exist_ok=True)
    n_img, n_cat = int(INAT_IMAGES * scale), max(10, int(INAT_CATEGORIES * scale))
    rng = random.Random(21)
    n_cat = len(cats) if cats else n_cat
    cats = list(cats or [])
    for c in range(0 if cats else n_cat):
        k, p, cl = KINGDOMS[c % len(KINGDOMS)]
        order, family, genus, epithet = f"Order{c % 97}", f"Family{c % 1009}", f"Genus{c % 4001}", f"epithet{c}"
        cats.append(dict(id=c, name=f"{genus} {epithet}", common_name=f"Common {c}", supercategory=k,
                         kingdom=k, phylum=p, cls=cl, order=order, family=family, genus=genus, epithet=epithet,
                         dir=f"{c:05d}_{k}_{p}_{cl}_{order}_{family}_{genus}_{epithet}"))
    js = d / "train.json"
    with open(js, "w") as f:
        f.write('{"info": {"year": 2021, "version": "synthetic"}, "images": [')
        buf = []
        for i in range(n_img):
            c = cats[i % n_cat]
            buf.append('{"id": %d, "width": 500, "height": %d, "file_name": "train/%s/%s.jpg", "license": %d, '
                       '"rights_holder": "Observer %d", "date": "2019-06-0%d 10:00:00+00:00", "latitude": %.5f, '
                       '"longitude": %.5f, "location_uncertainty": %s}'
                       % (i, 300 + i % 200, c["dir"], uuid.UUID(int=rng.getrandbits(128)), i % 6, i % 5000, 1 + i % 9,
                          rng.uniform(-60, 70), rng.uniform(-180, 180), "null" if i % 3 else str(i % 500)))
            if len(buf) == 50_000:
                f.write((", " if i >= 50_000 else "") + ", ".join(buf))
                buf = []
        if buf:
            f.write((", " if n_img > len(buf) else "") + ", ".join(buf))
        f.write('], "categories": [')
        f.write(", ".join(
            '{"id": %d, "name": "%s", "common_name": "%s", "supercategory": "%s", "kingdom": "%s", "phylum": "%s", '
            '"class": "%s", "order": "%s", "family": "%s", "genus": "%s", "specific_epithet": "%s", '
            '"image_dir_name": "%s"}' % (c["id"], c["name"], c["common_name"], c["supercategory"], c["kingdom"],
                                         c["phylum"], c["cls"], c["order"], c["family"], c["genus"], c["epithet"],
                                         c["dir"]) for c in cats))
        f.write('], "annotations": [')
        for start in range(0, n_img, 200_000):
            part = ", ".join('{"id": %d, "image_id": %d, "category_id": %d}' % (i, i, i % n_cat)
                             for i in range(start, min(n_img, start + 200_000)))
            f.write((", " if start else "") + part)
        f.write('], "licenses": [' + ", ".join(
            '{"id": %d, "name": "CC BY-NC %d", "url": "http://creativecommons.org/licenses/%d"}' % (i, i, i)
            for i in range(6)) + "]}")
    tgz = d / "train.json.tar.gz"
    _add_file_to_tgz(tgz, "train.json", js)
    js.unlink()
    (d / "inat21.toml").write_text(
        'source = "inat21"\n[[files]]\nname = "train.json.tar.gz"\nrole = "metadata"\nsplit = "train"\n'
        f'md5 = "{_md5(tgz)}"\n[[files]]\nname = "train.tar.gz"\nrole = "media"\nsplit = "train"\n')
    return d / "inat21.toml"


BIOSCAN_COLUMNS = ["sampleid", "processid", "uri", "name", "phylum", "class", "order", "family", "subfamily", "tribe",
                   "genus", "species", "subspecies", "nucraw", "image_file", "large_diptera_family",
                   "medium_diptera_family", "small_diptera_family", "large_insect_order", "medium_insect_order",
                   "small_insect_order", "chunk_number", "copyright_license", "copyright_holder",
                   "copyright_institution", "copyright_contact", "photographer", "author"]


def bioscan1m(out: Path, scale: float = 1.0, lineages: list[tuple] | None = None) -> Path:
    """The BIOSCAN-1M metadata TSV and a manifest; `lineages`: (phylum, class, order, family, genus, species)
    tuples (missing = not_classified) the rows cycle through, else made up."""
    d = out / "bioscan1m"
    d.mkdir(parents=True, exist_ok=True)
    n = int(BIOSCAN_ROWS * scale)
    rng = random.Random(1)
    dna = ["".join(rng.choice("ACGT") for _ in range(658)) for _ in range(512)]
    splits = ["train", "validation", "test", "no_split"]
    nc = "not_classified"
    path = d / "BIOSCAN_Insect_Dataset_metadata.tsv"
    with open(path, "w") as f:
        f.write("\t".join(BIOSCAN_COLUMNS) + "\n")
        lines = []
        for i in range(n):
            if lineages:
                phylum, cls, order, family, genus, species = lineages[(i * 7919) % len(lineages)]
            else:
                r = i % 1000
                phylum, cls, order = "Arthropoda", "Insecta", "Diptera" if r < 794 else f"Order{r % 15}"
                family = f"Family{i % 180}" if r < 986 else nc
                genus = f"Genus{i % 2000}" if r < 225 else nc
                species = (f"{genus} species{i % 7000}" if r < 75 else
                           (f"phyMalaise01 Malaise{i % 3000}" if r < 80 else nc))
            name = next(x for x in (species, genus, family, order) if x != nc)
            pid = f"BIOUG{i:08d}"
            lines.append("\t".join([
                f"BIOUG{i // 96:05d}-{chr(65 + i % 8)}{i % 12:02d}", pid, f"BOLD:A{i % 99991:05d}", name,
                phylum, cls, order, family, nc, nc, genus, species, nc, dna[i % 512],
                f"{4000000 + i}.jpg" if i % 2 else f"{pid}.jpg", splits[i % 4], splits[(i + 1) % 4], splits[(i + 2) % 4],
                splits[i % 4], splits[(i + 3) % 4], splits[i % 3], str(1 + i // 10_000), "CreativeCommons - Attribution",
                "CBG Photography Group", "Centre for Biodiversity Genomics", "ccdbcurator@gmail.com",
                "CBG Photography Group", "CBG"]))
            if len(lines) == 50_000:
                f.write("\n".join(lines) + "\n")
                lines = []
        if lines:
            f.write("\n".join(lines) + "\n")
    (d / "bioscan1m.toml").write_text(
        'source = "bioscan1m"\n[[files]]\nname = "BIOSCAN_Insect_Dataset_metadata.tsv"\nrole = "metadata"\n'
        f'format = "tsv"\nmd5 = "{_md5(path)}"\n[[files]]\nname = "cropped_256.zip"\nrole = "media"\n')
    return d / "bioscan1m.toml"


def eol(out: Path, scale: float = 1.0, pages: list[int] | None = None) -> Path:
    """EOL's media_manifest.tgz and a manifest; `pages`: the EOL page ids to spread the rows over, else made up."""
    d = out / "eol"
    d.mkdir(parents=True, exist_ok=True)
    n = int(EOL_ROWS * scale)
    chunk = max(1000, int(EOL_CHUNK * scale))
    header = "EOL content ID,EOL page ID,Medium Source URL,EOL Full-Size Copy URL,License Name,Copyright Owner\n"
    tgz = d / "media_manifest.tgz"
    with tarfile.open(tgz, "w:gz", compresslevel=1) as tar:
        for ci, start in enumerate(range(0, n, chunk)):
            rows = []
            for i in range(start, min(n, start + chunk)):
                cid = 10_000_000 + i
                page = pages[(i * 7919) % len(pages)] if pages else 1_000_000 + (i * 7919) % 449_000
                h = hashlib.md5(str(cid).encode()).hexdigest()
                rows.append(f'{cid},{page},https://www.inaturalist.org/photos/{30_000_000 + i},'
                            f'https://content.eol.org/data/media/{h[:2]}/{h[2:4]}/{h[4:6]}/{i % 1000}.'
                            f'https___www_inaturalist_org_photos_{30_000_000 + i}.jpg,'
                            f'{"cc-by-nc-4.0" if i % 3 else "cc-by-4.0"},"Observer {i % 9000}, some rights reserved"')
            data = ((header if ci == 0 else "") + "\n".join(rows) + "\n").encode()
            info = tarfile.TarInfo(f"media_manifest_{ci + 1}.csv")
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    (d / "eol.toml").write_text(
        f'source = "eol"\n[[files]]\nname = "media_manifest.tgz"\nrole = "metadata"\nmd5 = "{_md5(tgz)}"\n')
    return d / "eol.toml"


GENERATORS = {"inat21": inat21, "bioscan1m": bioscan1m, "eol": eol}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--sources", default="inat21,bioscan1m,eol")
    args = ap.parse_args()
    for name in args.sources.split(","):
        t0 = time.time()
        manifest = GENERATORS[name](args.out, args.scale)
        print(f"{name}: {manifest} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()

"""The demo's miniature sources, written in their real formats (SOURCES.md) from `demo.taxa`.

* iNat21: `<split>.json.tar.gz` holding `<split>.json` (COCO-like) and `<split>.tar.gz` holding the JPEGs at
  the JSON's `file_name`s, for train and val (val image ids continue after train).
* BIOSCAN-1M: `BIOSCAN_Insect_Dataset_metadata.tsv` in the final schema and `cropped_256.zip` with members
  `bioscan/images/cropped_256/part{chunk_number}/{image_file}`; one row is deliberately broken.
* EOL: the pictures under a content.eol.org-like tree (`content/data/media/..`) to be served over HTTP, and
  `media_manifest.tgz` with CSV chunks `media_manifest_{N}.csv` (N = 2 and 10, header only in the first),
  whose full-size copy URLs point at the server. The manifest can only be written once the server's port is
  known, so EOL is two steps: `render_eol_media`, then `write_eol_manifest(base_url)`.
* A source manifest per source (manifests/<source>.toml, the format of tol_builder.manifest) with the real
  md5 and size of every file.

Everything is a function of the seed: the same seed gives the same bytes (archives carry fixed timestamps
and owners), except the EOL manifest, whose URLs carry the server's port.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import tarfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from ..fileio import file_digest, write_bytes_atomic
from . import images
from .taxa import BIOSCAN1M, BIOSCAN_BAD_ROW, BIOSCAN_COLUMNS, EOL, EOL_INAT_DUPLICATE, INAT21, DemoTaxon

ARCHIVE_MTIME = 1614556800  # 2021-03-01: fixed, so archives are the same bytes every run
ZIP_DATE = (2023, 6, 1, 0, 0, 0)

INAT_SIZES = [(500, 375), (500, 333), (375, 500), (500, 500), (500, 281), (333, 500)]
BIOSCAN_SIZES = [(256, 256), (341, 256), (256, 341), (320, 256), (256, 300)]
EOL_SIZES = [(640, 480), (480, 640), (600, 600), (640, 427), (512, 384)]
BIOSCAN_CHUNKS = (1, 7, 113)
EOL_CHUNKS = (2, 10)  # chunk numbers need not start at 1; 10 sorts before 2 as text
EOL_HEADER = ["EOL content ID", "EOL page ID", "Medium Source URL", "EOL Full-Size Copy URL", "License Name",
              "Copyright Owner"]

PEOPLE = ["Ken-ichi Ueda", "Michelle S. Koo", "megatherium", "rpayne", "Tony Iwane", "Colin Purrington",
          "Sam Kieschnick", "Alison Northup", "Jan Meerman", "105615097470186309865"]
INAT_LICENSES = [
    {"id": 0, "name": "Attribution-NonCommercial License", "url": "http://creativecommons.org/licenses/by-nc/4.0/"},
    {"id": 1, "name": "Attribution License", "url": "http://creativecommons.org/licenses/by/4.0/"},
    {"id": 2, "name": "Attribution-NonCommercial-ShareAlike License",
     "url": "http://creativecommons.org/licenses/by-nc-sa/4.0/"},
    {"id": 3, "name": "No known copyright restrictions", "url": "http://creativecommons.org/publicdomain/zero/1.0/"},
]
EOL_LICENSES = ["cc-by-nc-4.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-sa-3.0", "cc-publicdomain"]
EOL_OWNERS = ["Ken-ichi Ueda", "Brett, Anne", "Jim Conrad", "Dr. Alexey Yakovlev", "Smithsonian Institution, NMNH",
              "Walter Siegmund", "Katja Schulz"]


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()


def _int(n: int, *parts: object) -> int:
    """A stable pseudo-random integer in [0, n) from `parts`."""
    return int.from_bytes(_digest(*parts)[:8], "big") % n


# ------------------------------------------------------------------------------------------ archives
def tar_gz_bytes(members: list[tuple[str, bytes | None]]) -> bytes:
    """A .tar.gz with fixed timestamps and owners; a member whose data is None is a directory."""
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = ARCHIVE_MTIME, 0, 0, "", ""
                if data is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def zip_bytes(members: list[tuple[str, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.create_system = 3  # unix, so that the mode below is meaningful
            if data is None:
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            else:
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
    return raw.getvalue()


# -------------------------------------------------------------------------------------- results
@dataclass
class FileSpec:
    """A generated file, as its source manifest lists it."""

    path: Path
    role: str  # metadata | media
    split: str = ""
    format: str = ""

    def entry(self, manifest_dir: Path) -> dict:
        rel = self.path.relative_to(manifest_dir.parent)
        e = {"name": self.path.name, "role": self.role, "url": f"../{rel.as_posix()}"}
        if self.split:
            e["split"] = self.split
        if self.format:
            e["format"] = self.format
        e["md5"] = file_digest(self.path, "md5")
        e["bytes"] = self.path.stat().st_size
        return e


@dataclass
class SourceFiles:
    source: str
    files: list[FileSpec] = field(default_factory=list)
    images: int = 0  # pictures generated (records expected after ingest)
    rows: int = 0  # metadata rows written (including deliberately broken ones)


MANIFEST_INFO = {
    "inat21": dict(title="iNaturalist 2021 competition dataset (tol demo miniature)",
                   homepage="https://github.com/visipedia/inat_comp/tree/master/2021",
                   licence="demo data: procedurally drawn images, no rights reserved"),
    "bioscan1m": dict(title="BIOSCAN-1M Insect dataset (tol demo miniature)",
                      homepage="https://biodiversitygenomics.net/1M_insects/",
                      licence="demo data: procedurally drawn images, no rights reserved"),
    "eol": dict(title="Encyclopedia of Life media manifest (tol demo miniature)",
                homepage="https://eol.org/docs/what-is-eol/data-services",
                licence="demo data: procedurally drawn images, no rights reserved"),
}


def write_manifest(manifest_dir: Path, generated: SourceFiles) -> Path:
    """manifests/<source>.toml listing the generated files with their md5 and size."""
    path = manifest_dir / f"{generated.source}.toml"
    doc = {"source": generated.source, **MANIFEST_INFO[generated.source],
           "notes": "Generated by `tol demo` (tol_builder.demo); regenerated on every run.",
           "files": [f.entry(manifest_dir) for f in generated.files]}
    write_bytes_atomic(path, tomli_w.dumps(doc).encode("utf-8"))
    return path


# ------------------------------------------------------------------------------------------- iNat21
def inat21_image(seed: int, taxon: DemoTaxon, split: str, index: int) -> tuple[bytes, tuple[int, int]]:
    """The JPEG bytes and size of one iNat21 picture (the EOL duplicate calls this too)."""
    size = images.pick_size(images.rng_for(seed, "inat21-size", taxon.key, split, index), INAT_SIZES)
    return images.render(taxon.style, size, seed, taxon.key, split, index), size


def inat21_uuid(seed: int, taxon: DemoTaxon, split: str, index: int) -> str:
    return str(uuid.UUID(bytes=_digest(seed, "inat21-uuid", taxon.key, split, index)[:16], version=4))


def _inat_category(t: DemoTaxon) -> dict:
    r = t.ranks
    return {"id": t.ids["category_id"], "name": t.scientific_name, "common_name": t.common_name,
            "supercategory": t.extra["supercategory"], "kingdom": r["kingdom"], "phylum": r["phylum"],
            "class": r["class"], "order": r["order"], "family": r["family"], "genus": r["genus"],
            "specific_epithet": r["species"], "image_dir_name": t.ids["image_dir_name"]}


def write_inat21(data_dir: Path, seed: int) -> SourceFiles:
    out = data_dir / "inat21"
    result = SourceFiles("inat21")
    taxa = sorted(INAT21, key=lambda t: t.ids["category_id"])
    image_id = 0
    for split in ("train", "val"):
        imgs, anns, members = [], [], [(f"{split}/", None)]
        for t in taxa:
            members.append((f"{split}/{t.ids['image_dir_name']}/", None))
            for i in range(t.images.get(split, 0)):
                data, (w, h) = inat21_image(seed, t, split, i)
                file_name = f"{split}/{t.ids['image_dir_name']}/{inat21_uuid(seed, t, split, i)}.jpg"
                members.append((file_name, data))
                rng = images.rng_for(seed, "inat21-meta", t.key, split, i)
                located = rng.random() >= 0.15  # latitude, longitude and uncertainty may be null
                uncertainty = int(rng.integers(3, 5000)) if located and rng.random() < 0.7 else None
                if t.ids["category_id"] == 2912 and split == "train" and i == 5:
                    uncertainty = 2_147_483_647  # real files have bogus uncertainties too
                imgs.append({
                    "id": image_id, "width": w, "height": h, "file_name": file_name,
                    "license": int(rng.integers(len(INAT_LICENSES))),
                    "rights_holder": PEOPLE[int(rng.integers(len(PEOPLE)))],
                    "date": f"{int(rng.integers(2008, 2021))}-{int(rng.integers(1, 13)):02d}-"
                            f"{int(rng.integers(1, 29)):02d} {int(rng.integers(0, 24)):02d}:"
                            f"{int(rng.integers(0, 60)):02d}:00+00:00",
                    "latitude": round(float(rng.uniform(25, 55)), 5) if located else None,
                    "longitude": round(float(rng.uniform(-125, -65)), 5) if located else None,
                    "location_uncertainty": uncertainty,
                })
                anns.append({"id": image_id, "image_id": image_id, "category_id": t.ids["category_id"]})
                image_id += 1
        doc = {"info": {"year": 2021, "version": "2021", "description": f"iNat2021 {split} (tol demo miniature)",
                        "contributor": "iNat2021 Competition (demo)", "url":
                            "https://github.com/visipedia/inat_comp/tree/master/2021",
                        "date_created": "2021/03/01"},
               "images": imgs, "categories": [_inat_category(t) for t in taxa], "annotations": anns,
               "licenses": INAT_LICENSES}
        meta = out / f"{split}.json.tar.gz"
        write_bytes_atomic(meta, tar_gz_bytes([(f"{split}.json", json.dumps(doc).encode("utf-8"))]))
        media = out / f"{split}.tar.gz"
        write_bytes_atomic(media, tar_gz_bytes(members))
        result.files += [FileSpec(meta, "metadata", split, "coco-json"), FileSpec(media, "media", split)]
        result.images += len(imgs)
        result.rows += len(imgs)
    return result


# --------------------------------------------------------------------------------------- BIOSCAN-1M
_PROCESS_PREFIXES = ("GMPPO", "SBCFA", "GMCED", "GMMVA", "GMOCA", "BIOSC", "GMGRE")


def _barcode(seed: int, key: str) -> str:
    rng = images.rng_for(seed, "bioscan-nucraw", key)
    bases = "ACGT"
    return "".join(bases[i] for i in rng.integers(0, 4, 658))


def _split_value(rng, allow_no_split: bool) -> str:
    x = rng.random()
    if allow_no_split and x < 0.15:
        return "no_split"
    return "train" if x < 0.75 else ("validation" if x < 0.87 else "test")


def _bioscan_row(seed: int, t: DemoTaxon, i: int, k: int) -> dict:
    rng = images.rng_for(seed, "bioscan-meta", t.key, i)
    r, x = t.ranks, t.extra
    processid = f"{_PROCESS_PREFIXES[k % len(_PROCESS_PREFIXES)]}{1000 + 37 * k + int(rng.integers(0, 30))}-21"
    sampleid = f"BIOUG{66000 + 13 * k + int(rng.integers(0, 10)):05d}-{'ABCDEFGH'[k % 8]}{1 + k % 12:02d}"
    image_file = f"{5100000 + 4099 * k + int(rng.integers(0, 4000))}.jpg" if k % 3 else f"{sampleid}.jpg"
    diptera = r["order"] == "Diptera"
    row = {
        "sampleid": sampleid, "processid": processid, "uri": t.ids["bin"], "name": x["name"],
        "phylum": r["phylum"], "class": r["class"], "order": r["order"], "family": r["family"],
        "subfamily": x["subfamily"], "tribe": x["tribe"], "genus": r["genus"], "species": r["species"],
        "subspecies": x["subspecies"], "nucraw": _barcode(seed, f"{t.key}:{i}"), "image_file": image_file,
        "large_diptera_family": _split_value(rng, False) if diptera else "no_split",
        "medium_diptera_family": _split_value(rng, True) if diptera else "no_split",
        "small_diptera_family": _split_value(rng, True) if diptera else "no_split",
        "large_insect_order": _split_value(rng, False), "medium_insect_order": _split_value(rng, True),
        "small_insect_order": _split_value(rng, True),
        "chunk_number": str(BIOSCAN_CHUNKS[int(rng.integers(len(BIOSCAN_CHUNKS)))]),
        "copyright_license": "CreativeCommons - Attribution", "copyright_holder": "CBG Photography Group",
        "copyright_institution": "Centre for Biodiversity Genomics", "copyright_contact": "ccdbcurator@gmail.com",
        "photographer": "CBG Photography Group", "author": "CBG Photography Group",
    }
    assert set(row) == set(BIOSCAN_COLUMNS)
    return row


def bioscan_member(row: dict) -> str:
    return f"bioscan/images/cropped_256/part{row['chunk_number']}/{row['image_file']}"


def write_bioscan1m(data_dir: Path, seed: int) -> SourceFiles:
    out = data_dir / "bioscan1m"
    result = SourceFiles("bioscan1m")
    rows, pictures = [], {}
    k = 0
    for t in BIOSCAN1M:
        for i in range(t.n_images):
            row = _bioscan_row(seed, t, i, k)
            size = images.pick_size(images.rng_for(seed, "bioscan-size", t.key, i), BIOSCAN_SIZES)
            pictures[bioscan_member(row)] = images.render(t.style, size, seed, t.key, "", i)
            rows.append(row)
            k += 1
    # the real file is not grouped by taxon: a seeded shuffle
    order = images.rng_for(seed, "bioscan-order").permutation(len(rows))
    rows = [rows[j] for j in order]
    # one deliberately broken row, in the middle of the file
    bad_taxon = next(t for t in BIOSCAN1M if t.key == BIOSCAN_BAD_ROW["taxon"])
    bad = _bioscan_row(seed, bad_taxon, 10_000, k)
    bad["processid"] = BIOSCAN_BAD_ROW["processid"]
    bad[BIOSCAN_BAD_ROW["field"]] = BIOSCAN_BAD_ROW["value"]
    rows.insert(len(rows) // 2, bad)
    assert len({r["processid"] for r in rows}) == len(rows), "duplicate BIOSCAN processid"
    assert len({bioscan_member(r) for r in rows}) == len(rows), "duplicate BIOSCAN image member"

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(BIOSCAN_COLUMNS), delimiter="\t", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    meta = out / "BIOSCAN_Insect_Dataset_metadata.tsv"
    write_bytes_atomic(meta, buf.getvalue().encode("utf-8"))

    members: list[tuple[str, bytes | None]] = [("bioscan/", None), ("bioscan/images/", None),
                                               ("bioscan/images/cropped_256/", None)]
    for chunk in BIOSCAN_CHUNKS:
        prefix = f"bioscan/images/cropped_256/part{chunk}/"
        members.append((prefix, None))
        members += sorted((m, b) for m, b in pictures.items() if m.startswith(prefix))
    media = out / "cropped_256.zip"
    write_bytes_atomic(media, zip_bytes(members))
    result.files += [FileSpec(meta, "metadata", "", "tsv"), FileSpec(media, "media")]
    result.images = len(pictures)
    result.rows = len(rows)
    return result


# ------------------------------------------------------------------------------------------------ EOL
@dataclass
class EOLMedium:
    content_id: int
    page_id: int
    source_url: str
    path: str  # below the served root, e.g. data/media/3d/1f/f2/<content_id>.https___..._4536661.jpg
    licence: str
    owner: str


def eol_content_root(data_dir: Path) -> Path:
    """The directory served over HTTP (it plays content.eol.org)."""
    return data_dir / "eol" / "content"


def eol_image(seed: int, taxon: DemoTaxon, index: int) -> bytes:
    """The JPEG bytes of one EOL picture (its size is drawn after the source-URL choice of the same rng)."""
    rng = images.rng_for(seed, "eol-meta", taxon.ids["page_id"], index)
    rng.random()
    return images.render(taxon.style, images.pick_size(rng, EOL_SIZES), seed, taxon.key, "", index)


def render_eol_media(data_dir: Path, seed: int) -> list[EOLMedium]:
    """Draw every EOL picture into the served tree; returns the media rows (without the server's URL)."""
    root = eol_content_root(data_dir)
    media: list[EOLMedium] = []
    used: set[int] = set()
    dup = EOL_INAT_DUPLICATE
    inat_dup = next(t for t in INAT21 if t.ids["category_id"] == dup["inat21_category_id"])
    for t in EOL:
        page = t.ids["page_id"]
        for i in range(t.n_images):
            cid = 8_000_000 + _int(22_000_000, seed, "eol-content-id", page, i)
            while cid in used:
                cid += 1
            used.add(cid)
            rng = images.rng_for(seed, "eol-meta", page, i)
            photo = 1_000_000 + _int(90_000_000, seed, "eol-photo", page, i)
            if rng.random() < 0.8 or (page == dup["eol_page_id"] and i == dup["eol_index"]):
                source_url = f"https://www.inaturalist.org/photos/{photo}"
            else:
                source_url = f"https://www.flickr.com/photos/{photo % 9000 + 1000}@N0{photo % 8}/{photo}"
            if page == dup["eol_page_id"] and i == dup["eol_index"]:
                data, _ = inat21_image(seed, inat_dup, "train", dup["inat21_train_index"])
            else:
                data = eol_image(seed, t, i)
            h = hashlib.md5(str(cid).encode()).hexdigest()
            stem = "".join(c if c.isalnum() else "_" for c in source_url)
            rel = f"data/media/{h[0:2]}/{h[2:4]}/{h[4:6]}/{cid}.{stem}.jpg"
            write_bytes_atomic(root / rel, data)
            media.append(EOLMedium(cid, page, source_url, rel, EOL_LICENSES[int(rng.integers(len(EOL_LICENSES)))],
                                   EOL_OWNERS[int(rng.integers(len(EOL_OWNERS)))]))
    media.sort(key=lambda m: m.content_id)  # the exporter walks media by id
    return media


def write_eol_manifest(data_dir: Path, media: list[EOLMedium], base_url: str) -> SourceFiles:
    """media_manifest.tgz: chunks media_manifest_2.csv (with the header) and media_manifest_10.csv."""
    base_url = base_url.rstrip("/")
    half = (len(media) + 1) // 2
    chunks = {EOL_CHUNKS[0]: media[:half], EOL_CHUNKS[1]: media[half:]}
    members = []
    for n, part in chunks.items():
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if n == EOL_CHUNKS[0]:
            w.writerow(EOL_HEADER)
        for m in part:
            w.writerow([m.content_id, m.page_id, m.source_url, f"{base_url}/{m.path}", m.licence, m.owner])
        members.append((f"media_manifest_{n}.csv", buf.getvalue().encode("utf-8")))
    members.sort()  # as `tar cvzf media_manifest.tgz media_manifest_*.csv` (a shell glob) orders them
    path = data_dir / "eol" / "media_manifest.tgz"
    write_bytes_atomic(path, tar_gz_bytes(members))
    result = SourceFiles("eol", [FileSpec(path, "metadata", "", "csv-chunks")])
    result.images = result.rows = len(media)
    return result

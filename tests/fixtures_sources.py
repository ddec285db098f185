"""Fixture files in the real source formats (SOURCES.md), written into a temporary folder.

Built from the published specifications, never copied from real data: iNat21 `<split>.json.tar.gz` (COCO-like
JSON, keys in any order), BIOSCAN-1M metadata (final 28-column TSV, JSON-LD, and the pre-release 18-column
TSV), EOL `media_manifest.tgz` (CSV chunks, header only in the lowest chunk), and source manifests.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
import zipfile
from pathlib import Path

from tol_builder.manifest import Manifest, load_manifest
from tol_builder.records import RejectLog

# ------------------------------------------------------------------------------------------- manifests


def write_manifest(folder: Path, source: str, files: list[dict], name: str | None = None) -> Manifest:
    """A manifest TOML (source, [[files]] name/role/split/url/format/md5) written and loaded for real."""
    lines = [f'source = "{source}"']
    for f in files:
        lines.append("[[files]]")
        for key, value in f.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path = folder / (name or f"{source}.toml")
    path.write_text("\n".join(lines) + "\n")
    return load_manifest(path)


def read_all(source, partition=None, context: bool = False) -> tuple[list[dict], list[dict], list[str]]:
    """Plan (unless a partition is given) and read a source: (records, rejects, file labels). The records have
    the RAW_SCHEMA columns, and with `context` the context columns the reader gave (tests/test_context.py)."""
    from tol_builder.records import RAW_SCHEMA

    parts = [partition] if partition is not None else source.plan()
    records, rejects, labels = [], [], []
    for p in parts:
        log = RejectLog(source.source_id, p.key)
        for label, table in source.read(p, log):
            labels.append(label)
            records.extend((table if context else table.select(RAW_SCHEMA.names)).to_pylist())
        rejects.extend(log.table().to_pylist())
    return records, rejects, labels


# ---------------------------------------------------------------------------------------------- iNat21
# Real category records (visipedia/inat_comp 2021 README, SOURCES.md): ids and dir names as published.
INAT_CATEGORIES = [
    {"id": 0, "name": "Lumbricus terrestris", "common_name": "Common Earthworm", "supercategory": "Animalia",
     "kingdom": "Animalia", "phylum": "Annelida", "class": "Clitellata", "order": "Haplotaxida",
     "family": "Lumbricidae", "genus": "Lumbricus", "specific_epithet": "terrestris",
     "image_dir_name": "00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris"},
    {"id": 7, "name": "Zygiella x-notata", "common_name": "Missing-sector Orb Weaver", "supercategory": "Arachnids",
     "kingdom": "Animalia", "phylum": "Arthropoda", "class": "Arachnida", "order": "Araneae",
     "family": "Araneidae", "genus": "Zygiella", "specific_epithet": "x-notata",
     "image_dir_name": "00007_Animalia_Arthropoda_Arachnida_Araneae_Araneidae_Zygiella_x-notata"},
]
INAT_LICENSES = [{"id": 1, "name": "Attribution-NonCommercial License",
                  "url": "http://creativecommons.org/licenses/by-nc/4.0/"},
                 {"id": 4, "name": "Attribution License", "url": "http://creativecommons.org/licenses/by/4.0/"}]


def inat_image(image_id: int, category: dict | None, split: str = "train", uuid: str | None = None,
               **over) -> dict:
    uuid = uuid or f"{image_id:08x}-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    d = {"id": image_id, "width": 500, "height": 375,
         "file_name": f"{split}/{category['image_dir_name'] if category else 'unknown'}/{uuid}.jpg",
         "license": 1, "rights_holder": f"Observer {image_id}", "date": "2010-07-14 20:19:00+00:00",
         "latitude": 43.83486, "longitude": -71.22231, "location_uncertainty": None}
    d.update(over)
    return d


def inat_doc(images: list[dict], annotations: list[dict] | None = None, categories: list[dict] | None = None,
             licenses: list[dict] | None = None, order=("info", "images", "categories", "annotations", "licenses"),
             indent: str | None = None, info: dict | None = None) -> str:
    """A COCO-like <split>.json text with its top-level keys in `order` (a key whose value is None is left
    out). indent: like the real files (compact, ', ' / ': ') when None, or e.g. '\\t' like the TFDS ones."""
    values = {"info": info if info is not None else {"year": 2021, "version": "2021-test",
                                                     "description": "iNat2021 test fixture"},
              "images": images, "categories": categories if categories is not None else INAT_CATEGORIES,
              "annotations": annotations, "licenses": licenses if licenses is not None else INAT_LICENSES}
    doc = {k: values[k] for k in order if values.get(k) is not None}
    return json.dumps(doc, indent=indent)


def annotations_for(images: list[dict], category_of) -> list[dict]:
    return [{"id": i, "image_id": img["id"], "category_id": category_of(img)} for i, img in enumerate(images)]


def tar_gz(path: Path, members: dict[str, bytes | str], kinds: dict[str, bytes] | None = None) -> Path:
    """A .tar.gz with the given members (name -> content); kinds maps a name to a tar type (e.g. SYMTYPE)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            if isinstance(data, str):
                data = data.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kinds and name in kinds:
                info.type = kinds[name]
                info.linkname = "elsewhere"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_inat(folder: Path, docs: dict[str, str], member_of=lambda split: f"{split}.json") -> Manifest:
    """<split>.json.tar.gz for each split (+ a media entry <split>.tar.gz) and the inat21 manifest."""
    files = []
    for split, text in docs.items():
        tar_gz(folder / f"{split}.json.tar.gz", {member_of(split): text})
        files.append({"name": f"{split}.json.tar.gz", "role": "metadata", "split": split, "format": "coco-json"})
        files.append({"name": f"{split}.tar.gz", "role": "media", "split": split,
                      "url": f"https://ml-inat-competition-datasets.s3.amazonaws.com/2021/{split}.tar.gz"})
    return write_manifest(folder, "inat21", files)


# ------------------------------------------------------------------------------------------ BIOSCAN-1M
BIOSCAN_COLUMNS = ["sampleid", "processid", "uri", "name", "phylum", "class", "order", "family", "subfamily",
                   "tribe", "genus", "species", "subspecies", "nucraw", "image_file", "large_diptera_family",
                   "medium_diptera_family", "small_diptera_family", "large_insect_order", "medium_insect_order",
                   "small_insect_order", "chunk_number", "copyright_license", "copyright_holder",
                   "copyright_institution", "copyright_contact", "photographer", "author"]
PRERELEASE_COLUMNS = ["processid", "phylum", "class", "order", "family", "subfamily", "genus", "species", "uri",
                      "orgpic_id", "image_name", "sampleid", "image_file", "licence", "licence_holder",
                      "depository", "primary_database", "image_tar"]
NC = "not_classified"


def bioscan_row(processid: str, **over) -> dict:
    """A final-schema row; every rank not given is not_classified."""
    row = {"sampleid": f"BIOUG{processid[-5:]}-A01", "processid": processid, "uri": "BOLD:AER5166",
           "name": NC, "phylum": "Arthropoda", "class": "Insecta", "order": "Diptera", "family": NC,
           "subfamily": NC, "tribe": NC, "genus": NC, "species": NC, "subspecies": NC,
           "nucraw": "AACATTATATTTTATTTTTGGAATTTGAGCAGGAATAGTAGGAACTTC", "image_file": f"{processid}.jpg",
           "large_diptera_family": "no_split", "medium_diptera_family": "no_split",
           "small_diptera_family": "no_split", "large_insect_order": "train", "medium_insect_order": "train",
           "small_insect_order": "test", "chunk_number": "1", "copyright_license": "CreativeCommons - Attribution",
           "copyright_holder": "CBG Photography Group", "copyright_institution": "Centre for Biodiversity Genomics",
           "copyright_contact": "ccdbcurator@gmail.com", "photographer": "CBG Photography Group", "author": "CBG"}
    row.update(over)
    return row


def write_tsv(path: Path, rows: list[dict] | list[list[str]], columns: list[str],
              raw_lines: dict[int, str] | None = None, newline: str = "\n") -> Path:
    """Tab-separated, no quoting (as the published TSV). raw_lines: data row number (1-based) -> a line to
    write instead (a malformed line)."""
    lines = ["\t".join(columns)]
    for i, r in enumerate(rows, 1):
        if raw_lines and i in raw_lines:
            lines.append(raw_lines[i])
        else:
            lines.append("\t".join(r[c] for c in columns) if isinstance(r, dict) else "\t".join(r))
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return path


def write_jsonld(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """A JSON array of flat objects, every value a string (the published .jsonld)."""
    columns = columns or BIOSCAN_COLUMNS
    path.write_text("[\n" + ",\n".join(json.dumps({c: r[c] for c in columns}) for r in rows) + "\n]\n")
    return path


def write_bioscan(folder: Path, metadata_name: str = "BIOSCAN_Insect_Dataset_metadata.tsv", fmt: str = "tsv",
                  extra_media: list[dict] | None = None, more: list[dict] | None = None) -> Manifest:
    files = [{"name": metadata_name, "role": "metadata", "format": fmt}] + (more or []) + [
        {"name": "cropped_256.zip", "role": "media", "url": "https://zenodo.org/records/8030065/files/cropped_256.zip",
         "md5": "fe1175815742db14f7372d505345284a"}] + (extra_media or [])
    return write_manifest(folder, "bioscan1m", files)


# ------------------------------------------------------------------------------------------------- EOL
EOL_HEADER = ["EOL content ID", "EOL page ID", "Medium Source URL", "EOL Full-Size Copy URL", "License Name",
              "Copyright Owner"]


def eol_row(content_id, page_id, n: int | None = None, **over) -> list[str]:
    n = content_id if n is None else n
    row = {"EOL content ID": str(content_id), "EOL page ID": str(page_id),
           "Medium Source URL": f"https://www.inaturalist.org/photos/{n}",
           "EOL Full-Size Copy URL":
               f"https://content.eol.org/data/media/3d/1f/f2/{n}.https___www_inaturalist_org_photos_{n}.jpg",
           "License Name": "cc-by-nc-4.0", "Copyright Owner": f"Observer {n}, some rights reserved"}
    row.update(over)
    return [row[c] for c in EOL_HEADER]


def csv_text(rows: list[list[str]], header: list[str] | None = None, raw_lines: dict[int, str] | None = None) -> str:
    """CSV as Ruby's CSV writes it (quotes only where needed, LF). raw_lines: data row -> line written as is."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(header)
    for i, r in enumerate(rows, 1):
        if raw_lines and i in raw_lines:
            buf.write(raw_lines[i] + "\n")
        else:
            w.writerow(r)
    return buf.getvalue()


def write_eol(folder: Path, chunks: dict[int, str], prefix: str = "", name: str = "media_manifest.tgz",
              extra_members: dict[str, str] | None = None) -> Manifest:
    """media_manifest.tgz with members {prefix}media_manifest_{N}.csv (written in the given order)."""
    members = {f"{prefix}media_manifest_{n}.csv": text for n, text in chunks.items()}
    members.update(extra_members or {})
    tar_gz(folder / name, members)
    return write_manifest(folder, "eol", [{"name": name, "role": "metadata", "format": "csv-chunks"}])


# ------------------------------------------------------------------------------------------------ GBIF
# A GBIF occurrence download (Darwin Core Archive): meta.xml naming each column's term by index, the occurrence
# core and the Multimedia extension, tab-separated, unquoted, one header line (GBIF's DWCA download layout).
DWC, GBIF, DC = "http://rs.tdwg.org/dwc/terms/", "http://rs.gbif.org/terms/1.0/", "http://purl.org/dc/terms/"
GBIF_MM_TERMS = [GBIF + "gbifID", DC + "type", DC + "format", DC + "identifier", DC + "references", DC + "license",
                 DC + "rightsHolder", DC + "creator"]


def write_dwca(path: Path, occ_terms: list[str], occ_rows: list[list[str]], mm_rows: list[list[str]],
               mm_terms: list[str] = GBIF_MM_TERMS) -> Path:
    def fields(terms):
        return "\n".join(f'    <field index="{i}" term="{t}"/>' for i, t in enumerate(terms))

    def table(tag, row_type, location, id_tag, terms):
        return (f'  <{tag} encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
                f'ignoreHeaderLines="1" rowType="{row_type}">\n    <files><location>{location}</location></files>\n'
                f'    <{id_tag} index="0"/>\n{fields(terms)}\n  </{tag}>')

    meta = "\n".join(['<?xml version="1.0" encoding="utf-8"?>',
                      '<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="metadata.xml">',
                      table("core", DWC + "Occurrence", "occurrence.txt", "id", occ_terms),
                      table("extension", GBIF + "Multimedia", "multimedia.txt", "coreid", mm_terms), "</archive>"])

    def tsv(terms, rows):
        return "\n".join(["\t".join(t.rsplit("/", 1)[-1] for t in terms)] + ["\t".join(r) for r in rows]) + "\n"

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("meta.xml", meta)
        zf.writestr("occurrence.txt", tsv(occ_terms, occ_rows))
        zf.writestr("multimedia.txt", tsv(mm_terms, mm_rows))
        zf.writestr("metadata.xml", "<eml/>")
    return path

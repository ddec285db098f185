"""`BUILD/croissant.json`: the shards described in Croissant 1.0 (MLCommons' JSON-LD, what `mlcroissant` loads).

distribution, per split: one FileObject per tar (contentUrl relative to the build, sha256, size), a FileSet of
the tars' `.jpg` members, and the FileObject of `shards_meta/<split>/json.parquet` (every sample's `.json`, a
row each: publish.py). recordSet, per split: a record per sample, the image's uid (from its member name) joined
with that uid's `.json` row: `<split>/uid`, `<split>/jpg` (sc:ImageObject) and one field per column of the
table, its dataType from the column's Arrow type. The fields come from the table's schema, i.e. from the
samples' own `.json` members: a key added to them appears here without an edit.

`mlcroissant` loads the records from the local files (`mlc.Dataset("BUILD/croissant.json").records("train")`);
it extracts the tars into its cache, keyed by contentUrl, so readers point `CROISSANT_CACHE` into the build
(`BUILD/cache/croissant`, which publish clears when the shards change). No date is written: the same shards
give the same file (set SOURCE_DATE_EPOCH to stamp `datePublished`, as reproducible builds do).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..fileio import file_digest, write_text_atomic
from .layout import croissant_path, json_table_path, licences_path, shard_path

# Croissant 1.0's JSON-LD context (as mlcroissant 1.1.1 writes it for 1.0 datasets)
CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"}, "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/", "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract", "field": "cr:field",
    "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet", "format": "cr:format",
    "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset", "jsonPath": "cr:jsonPath", "key": "cr:key",
    "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path", "recordSet": "cr:recordSet",
    "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated", "replace": "cr:replace",
    "samplingRate": "cr:samplingRate", "sc": "https://schema.org/", "separator": "cr:separator",
    "source": "cr:source", "subField": "cr:subField", "transform": "cr:transform"}
CONFORMS_TO = "http://mlcommons.org/croissant/1.0"
CITATION = ("Stevens et al., BioCLIP: A Vision Foundation Model for the Tree of Life, CVPR 2024 "
            "(arXiv 2311.18803): the TreeOfLife-10M layout these shards follow.")
KEY = "uid"  # the samples' key: the .json field that names the sample, and its members' prefix


def data_type(arrow_type: pa.DataType) -> str:
    """The Croissant dataType of a column of the .json table."""
    if pa.types.is_boolean(arrow_type):
        return "sc:Boolean"
    if pa.types.is_integer(arrow_type):
        return "sc:Integer"
    if pa.types.is_floating(arrow_type):
        return "sc:Float"
    return "sc:Text"  # strings (every field of the shards' .json is one), and anything else as its text


def _digests(out: Path, paths: list[Path]) -> dict[str, str]:
    """sha256 of each file, cached by (path, size, mtime) in BUILD/cache/card/shard_checksums.json."""
    cache_file = out / "cache" / "card" / "shard_checksums.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    got = {}
    for p in paths:
        st = p.stat()
        key = f"{p.relative_to(out)}:{st.st_size}:{st.st_mtime_ns}"
        got[str(p)] = cache[key] if key in cache else file_digest(p, "sha256")
        cache[key] = got[str(p)]
    live = {f"{p.relative_to(out)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths}
    write_text_atomic(cache_file, json.dumps({k: v for k, v in cache.items() if k in live}, sort_keys=True))
    return got


def _split_parts(out: Path, split: str, sizes: dict[str, int], digests: dict[str, str]) -> tuple[list, dict]:
    """(distribution entries, record set) of one split."""
    tars = [shard_path(out, split, i) for i in range(len(sizes))]
    table = json_table_path(out, split)
    files = [{"@type": "cr:FileObject", "@id": f"{split}/{t.name}", "name": f"{split}/{t.name}",
              "contentUrl": t.relative_to(out).as_posix(), "encodingFormat": "application/x-tar",
              "contentSize": f"{t.stat().st_size} B", "sha256": digests[str(t)]} for t in tars]
    files.append({"@type": "cr:FileSet", "@id": f"{split}/jpg-members", "name": f"{split}/jpg-members",
                  "description": f"the .jpg member of every sample of {split}",
                  "containedIn": [{"@id": f["@id"]} for f in files], "encodingFormat": "image/jpeg",
                  "includes": "*.jpg"})
    files.append({"@type": "cr:FileObject", "@id": f"{split}/json.parquet", "name": f"{split}/json.parquet",
                  "description": f"the .json member of every sample of {split}, a row each",
                  "contentUrl": table.relative_to(out).as_posix(), "encodingFormat": "application/x-parquet",
                  "contentSize": f"{table.stat().st_size} B", "sha256": digests[str(table)]})
    schema = pq.read_schema(table)
    fields = [{"@type": "cr:Field", "@id": f"{split}/{KEY}", "name": KEY, "dataType": "sc:Text",
               "description": "the sample's uid (webdataset __key__), from its .jpg member's name",
               "source": {"fileSet": {"@id": f"{split}/jpg-members"}, "extract": {"fileProperty": "filename"},
                          "transform": {"regex": r"^([0-9a-zA-Z_-]+)\.jpg$"}},
               "references": {"fileObject": {"@id": f"{split}/json.parquet"}, "extract": {"column": KEY}}},
              {"@type": "cr:Field", "@id": f"{split}/jpg", "name": "jpg", "dataType": "sc:ImageObject",
               "description": "the sample's image (.jpg member)",
               "source": {"fileSet": {"@id": f"{split}/jpg-members"}, "extract": {"fileProperty": "content"}}}]
    fields += [{"@type": "cr:Field", "@id": f"{split}/{col.name}", "name": col.name, "dataType": data_type(col.type),
                "description": f"`{col.name}` of the sample's .json member",
                "source": {"fileObject": {"@id": f"{split}/json.parquet"}, "extract": {"column": col.name}}}
               for col in schema if col.name != KEY]
    record_set = {"@type": "cr:RecordSet", "@id": split, "name": split, "key": {"@id": f"{split}/{KEY}"},
                  "description": f"one record per sample of the split {split}", "field": fields}
    return files, record_set


def croissant(out: Path, wf, counts: dict[str, dict[str, int]]) -> dict:
    """The JSON-LD document for the build in `out` (counts: {split: {tar: samples}})."""
    out = Path(out)
    splits = [split for split, sizes in counts.items() if sizes]
    paths = [shard_path(out, split, i) for split in splits for i in range(len(counts[split]))]
    paths += [json_table_path(out, split) for split in splits]
    digests = _digests(out, paths)
    distribution, record_sets = [], []
    for split in splits:
        files, record_set = _split_parts(out, split, counts[split], digests)
        distribution += files
        record_sets.append(record_set)
    doc = {"@context": CONTEXT, "@type": "sc:Dataset", "name": wf.name, "conformsTo": CONFORMS_TO,
           "description": (f"{wf.name}: webdataset shards of images of the tree of life with their taxonomic "
                           "texts, built by tol_builder (splits: " + ", ".join(
                               f"{s} {sum(counts[s].values()):,}" for s in splits) + "). See README.md."),
           "license": ("Per image: the licence of each image is in "
                       f"{licences_path(out).relative_to(out).as_posix()} and in each sample's .json"),
           "url": "README.md", "citeAs": CITATION, "version": "1.0.0",
           "keywords": ["biology", "biodiversity", "tree of life", "taxonomy", "image-text", "CLIP", "webdataset"],
           "distribution": distribution, "recordSet": record_sets}
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        doc["datePublished"] = datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%d")
    return doc


def write_croissant(out: Path, wf, counts: dict[str, dict[str, int]]) -> Path:
    target = croissant_path(out)
    write_text_atomic(target, json.dumps(croissant(out, wf, counts), indent=1, ensure_ascii=False) + "\n")
    return target

"""`bioscan1m`: BIOSCAN-1M Insect (bioscan-ml/BIOSCAN-1M: README.md, metadata/README.md).

The metadata is one table, `BIOSCAN_Insect_Dataset_metadata.tsv` (or the same as `.jsonld`, a JSON array of
flat objects with string values); the images are members of `cropped_256.zip`,
`bioscan/images/cropped_256/part{chunk_number}/{image_file}`. One partition per metadata file (the TSV is
1.23 GB / 1.1M rows: DuckDB reads it in seconds, so it is not split further).

Records (final schema, 28 columns): source_id = processid, media = cropped_256.zip + member, ranks phylum..species
as given (species is the full binomial or an interim name, raw; BIOSCAN has no kingdom column, so kingdom is
null), scientific_name = `name` (the most specific taxon), source_taxon_id = `uri` (the BIN), licence =
copyright_license, rights_holder = copyright_holder (else copyright_institution), sample_id = sampleid, dna_barcode = nucraw (checked by
records.clean_context: IUPAC letters, gaps and N runs), source_split = the value of
the `split_column` option (default large_insect_order: train/validation/test/no_split). The literal
`not_classified` and empty strings are null. chunk_number must be an integer 1..113.

The pre-release 18-column schema (`processid phylum class order family subfamily genus species uri orgpic_id
image_name sampleid image_file licence licence_holder depository primary_database image_tar`, missing = empty
string; seen in the repository before July 2023) is detected by its header and mapped as follows:
  * media: it has no chunk_number. Its images were packaged in tar files named by `image_tar`. When the manifest
    lists a media file of that name, media_uri is its URL; otherwise media_uri is the manifest's default media
    archive (cropped_256.zip, else the first media file). media_member = `image_file` in both cases (the photo
    id file name, which is also the file name inside cropped_256.zip's part folders).
  * scientific_name: there is no `name` column; the most specific of species, genus, subfamily, family, order,
    class, phylum is used (what `name` holds in the final schema).
  * sample_id = sampleid; it has no nucraw (dna_barcode null).
  * licence = licence, rights_holder = licence_holder (else depository), source_split = split_column when the
    file has it, else null.

`read_delimited` is shared with the `eol` reader: DuckDB CSV/TSV reading with malformed lines rejected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import duckdb
import ijson
import numpy as np
import pyarrow as pa

from ..errors import ConfigError, InputError
from ..fileio import inside, retrieve
from ..manifest import ManifestFile
from ..records import RejectLog, arrow_of, duckdb_connection
from .formats import pick_file, read_delimited, split_rejects, sql_ident, sql_literal, tsv_header
from .base import Partition, Source

CHUNKS = 113  # cropped_256.zip: part1 .. part113
MEMBER_PREFIX = "bioscan/images/cropped_256"

FINAL_COLUMNS = ("processid", "uri", "name", "phylum", "class", "order", "family", "genus", "species",
                 "image_file", "chunk_number", "copyright_license", "copyright_holder")  # required
PRERELEASE_COLUMNS = ("processid", "phylum", "class", "order", "family", "genus", "species", "uri",
                      "image_file", "licence", "licence_holder", "image_tar")  # required
MISSING = ("", "not_classified")  # both mean: no value
# context (issue 23): the specimen's sample id and DNA barcode; BIOSCAN-1M has no place or date
CONTEXT_COLUMNS = ("sampleid", "nucraw")
_CONTEXT_SQL = "v(sampleid) AS sample_id, v(nucraw) AS dna_barcode"


@dataclass
class Bioscan1MOptions:
    split_column: str = "large_insect_order"  # which of the six split columns gives source_split
    format: Literal["auto", "tsv", "jsonld"] = "auto"  # auto: the manifest's format, else the file suffix


class Bioscan1MSource(Source):
    name = "bioscan1m"
    Options = Bioscan1MOptions
    description = "BIOSCAN-1M Insect (metadata TSV or JSON-LD, images in cropped_256.zip)"

    # ------------------------------------------------------------------------------------------ plan
    def plan(self) -> list[Partition]:
        files = self.manifest.files_with("metadata") or [self.manifest.one("metadata")]
        typed = [(f, _format_of(f)) for f in files]
        if self.options.format == "auto":
            # the TSV and the JSON-LD hold the same records: read one of them (the TSV is faster)
            want = "tsv" if any(fmt == "tsv" for _, fmt in typed) else "jsonld"
        else:
            want = self.options.format
        chosen = [f for f, fmt in typed if fmt == want]
        if not chosen:
            raise ConfigError(self.manifest.path, "files", f"a metadata file in format '{want}' (tsv or jsonld, "
                              "by its `format` or its name)", [f.name for f in files])
        media_files = self.manifest.files_with("media")
        default = pick_file(media_files, "cropped_256.zip") or self.manifest.one("media")
        media = {f.name: self.manifest.url(f) for f in media_files}
        parts = []
        for i, f in enumerate(chosen):
            path = retrieve(self.manifest.url(f), inside(self.cache, f.name), md5=f.md5 or None,
                            sha256=f.sha256 or None, size=f.bytes or None)
            parts.append(Partition("metadata" if len(chosen) == 1 else f"metadata-{i:02d}", (
                ("path", str(Path(path).resolve())), ("format", want), ("file", f.name),
                ("media_uri", self.manifest.url(default)), ("media", json.dumps(media, sort_keys=True)))))
        return parts

    # ------------------------------------------------------------------------------------------ read
    def read(self, partition: Partition, rejects: RejectLog) -> Iterator[tuple[str, pa.Table]]:
        path = Path(partition.get("path"))
        label = partition.get("file") or path.name
        fmt = partition.get("format")
        header = tsv_header(path, label) if fmt == "tsv" else _jsonld_keys(path, label)
        if header is None:  # an empty JSON array
            return
        prerelease = "chunk_number" not in header and {"image_tar", "licence"} <= set(header)
        split_col = self.options.split_column
        required = PRERELEASE_COLUMNS if prerelease else FINAL_COLUMNS + (split_col,)
        missing = [c for c in required if c not in header]
        if missing:
            schema = "pre-release" if prerelease else "BIOSCAN-1M"
            raise InputError(label, f"required column(s) {', '.join(repr(c) for c in missing)} not in the header "
                             f"({schema} schema; the header has: {', '.join(header)})", row=0 if fmt == "tsv" else None,
                             field=missing[0])
        optional = ("subfamily", "depository") if prerelease else ("copyright_institution",)
        optional += CONTEXT_COLUMNS  # sampleid in both schemas, nucraw in the final one: null when absent
        wanted = list(required) + [c for c in optional if c in header]
        if prerelease and split_col in header and split_col not in wanted:
            wanted.append(split_col)
        if fmt == "tsv":
            # _row = 1-based data row (the header line is not counted)
            raw = read_delimited(path, header, wanted, label=label, delim="\t", quote="", header=True,
                                 rejects=rejects, threads=self.threads)
        else:
            raw = _read_jsonld(path, wanted, label, self.threads)  # _row = index in the array
        for c in optional + (split_col,):  # absent optional columns: null
            if c not in raw.column_names:
                raw = raw.append_column(c, pa.nulls(raw.num_rows, pa.string()))
        con = duckdb_connection(self.threads)
        con.execute(f"CREATE MACRO v(x) AS CASE WHEN x IN {MISSING} THEN NULL ELSE x END")  # values as given
        con.register("raw", raw)
        sql = self._prerelease_sql(con, partition, split_col) if prerelease else self._final_sql(partition, split_col)
        out = arrow_of(con.sql(sql))
        con.close()
        del raw
        yield label, split_rejects(out, label, rejects, member="media_member")

    @staticmethod
    def _final_sql(partition: Partition, split_col: str) -> str:
        checks = [  # (condition, reason, field, value) in order
            ("_file IS NULL", "missing_field", "image_file", "NULL"),
            ("_chunk IS NULL", "missing_field", "chunk_number", "NULL"),
            ("NOT regexp_full_match(_chunk, '[0-9]+')", "bad_type", "chunk_number", "_chunk"),
            (f"coalesce(TRY_CAST(_chunk AS BIGINT) NOT BETWEEN 1 AND {CHUNKS}, true)", "out_of_range",
             "chunk_number", "_chunk"),
        ]
        reason, field, value = (
            "CASE " + " ".join(f"WHEN {c[0]} THEN {c[i] if i == 3 else sql_literal(c[i])}" for c in checks) + " END"
            for i in (1, 2, 3))
        return f"""SELECT source_id, media_uri,
                CASE WHEN _reason IS NULL
                  THEN '{MEMBER_PREFIX}/part' || CAST(CAST(_chunk AS BIGINT) AS VARCHAR) || '/' || _file
                  ELSE _file END AS media_member,
                kingdom, phylum, "class", "order", family, genus, species, scientific_name, common_name,
                source_taxon_id, licence, rights_holder, source_url, source_split, sample_id, dna_barcode,
                _row, _reason, _field, _value
            FROM (SELECT *, {reason} AS _reason, {field} AS _field, {value} AS _value FROM (SELECT
                v(processid) AS source_id, {sql_literal(partition.get("media_uri"))} AS media_uri,
                v(image_file) AS _file, v(trim(chunk_number)) AS _chunk,
                NULL::VARCHAR AS kingdom, v(phylum) AS phylum, v("class") AS "class", v("order") AS "order",
                v(family) AS family, v(genus) AS genus, v(species) AS species, v(name) AS scientific_name,
                NULL::VARCHAR AS common_name, v(uri) AS source_taxon_id, v(copyright_license) AS licence,
                coalesce(v(copyright_holder), v(copyright_institution)) AS rights_holder,
                NULL::VARCHAR AS source_url, v({sql_ident(split_col)}) AS source_split, {_CONTEXT_SQL}, _row
              FROM raw))"""

    @staticmethod
    def _prerelease_sql(con, partition: Partition, split_col: str) -> str:
        media = json.loads(partition.get("media") or "{}")
        tars = [r[0] for r in con.sql("SELECT DISTINCT v(image_tar) FROM raw WHERE v(image_tar) IS NOT NULL")
                .fetchall()]
        con.register("tar_urls", pa.table({"tar": pa.array(tars, pa.string()),
                                           "url": pa.array([media.get(t) for t in tars], pa.string())}))
        ranks = ("species", "genus", "subfamily", "family", "order", "class", "phylum")
        return f"""SELECT
                v(processid) AS source_id, coalesce(t.url, {sql_literal(partition.get("media_uri"))}) AS media_uri,
                v(image_file) AS media_member,
                NULL::VARCHAR AS kingdom, v(phylum) AS phylum, v("class") AS "class", v("order") AS "order",
                v(family) AS family, v(genus) AS genus, v(species) AS species,
                coalesce({", ".join(f"v({sql_ident(r)})" for r in ranks)}) AS scientific_name,
                NULL::VARCHAR AS common_name, v(uri) AS source_taxon_id, v(licence) AS licence,
                coalesce(v(licence_holder), v(depository)) AS rights_holder,
                NULL::VARCHAR AS source_url, v({sql_ident(split_col)}) AS source_split, {_CONTEXT_SQL}, _row,
                CASE WHEN v(image_file) IS NULL THEN 'missing_field' END AS _reason,
                CASE WHEN v(image_file) IS NULL THEN 'image_file' END AS _field, NULL::VARCHAR AS _value
            FROM raw LEFT JOIN tar_urls t ON t.tar = v(raw.image_tar)"""


# ============================================================================================ helpers
def _format_of(f: ManifestFile) -> str:
    fmt = (f.format or "").lower()
    if fmt in ("tsv", "jsonld"):
        return fmt
    name = f.name.lower()
    if name.endswith((".tsv", ".tab", ".txt")):
        return "tsv"
    if name.endswith((".jsonld", ".json")):
        return "jsonld"
    return fmt or "unknown"


def _jsonld_keys(path: Path, label: str) -> list[str] | None:
    """The keys of the first object of the JSON array (the objects are flat and uniform); None if empty."""
    empty = object()
    try:
        with open(path, "rb") as f:
            first = next(iter(ijson.items(f, "item", use_float=True)), empty)
    except (ijson.JSONError, UnicodeDecodeError) as e:  # ijson lets bad UTF-8 in a key through as the latter
        raise InputError(label, f"invalid JSON: {e}", row=0) from None
    if first is empty:
        return None
    if not isinstance(first, dict):  # null too: it is not an empty array
        raise InputError(label, "expected a JSON array of objects", row=0)
    return list(first)


def _read_jsonld(path: Path, columns: list[str], label: str, threads: int) -> pa.Table:
    con = duckdb_connection(threads)
    cols = "{" + ", ".join(f"{sql_literal(c)}: 'VARCHAR'" for c in columns) + "}"
    try:
        table = arrow_of(con.sql(f"SELECT * FROM read_json({sql_literal(str(path))}, format='array', columns={cols})"))
    except duckdb.Error as e:
        raise InputError(label, f"invalid JSON: {e}") from None
    return table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))



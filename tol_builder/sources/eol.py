"""`eol`: the Encyclopedia of Life media manifest (EOL/publishing: app/models/medium/manifest_exporter.rb).

`media_manifest.tgz` holds CSV chunks `media_manifest_{N}.csv` of 100,000 rows with the columns
`EOL content ID, EOL page ID, Medium Source URL, EOL Full-Size Copy URL, License Name, Copyright Owner`. Only
the first chunk carries the header; chunk numbers need not start at 1. `plan` stream-extracts the chunks into
the cache once (atomically; a rerun keeps what a killed run finished) and makes one partition per chunk, in
numeric order. Whether a chunk starts with a header is decided by its content, so a chunk with or without
one reads the same; a header-less chunk takes its column order from the first chunk's header (or the
published order).

Records: source_id = content id, source_taxon_id = page id (both integers, written without leading zeros;
content ids change between dumps, page ids do not), media_uri = the full-size copy URL (EOL's re-hosted copy,
one URL per image, no archive member), source_url = the medium source URL, licence = License Name,
rights_holder = Copyright Owner. No ranks or names: EOL images are labelled through their page id by the
taxonomy stage. Lines the CSV parser cannot read are rejected as `malformed_csv`; a non-integer id is
`bad_type`, a missing id or URL `missing_field`, each naming the manifest's column.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ..errors import InputError
from ..fileio import inside, retrieve, write_text_atomic
from ..records import RejectLog, arrow_of, duckdb_connection
from .formats import first_line, archive_identity, extract_members, read_delimited, split_rejects, sql_ident, sql_literal
from .base import NoOptions, Partition, Source

CONTENT_ID, PAGE_ID, SOURCE_URL, COPY_URL, LICENSE, OWNER = COLUMNS = (
    "EOL content ID", "EOL page ID", "Medium Source URL", "EOL Full-Size Copy URL", "License Name",
    "Copyright Owner")
_CHUNK = re.compile(r"(?:^|/)media_manifest_(\d+)\.csv$")


def _norm(name: str) -> str:
    return " ".join(name.replace("\ufeff", "").split()).lower()


_CANONICAL = {_norm(c): c for c in COLUMNS}


class EOLSource(Source):
    name = "eol"
    Options = NoOptions
    description = "Encyclopedia of Life media manifest (media_manifest.tgz of CSV chunks, one URL per image)"

    # ------------------------------------------------------------------------------------------ plan
    def plan(self) -> list[Partition]:
        metas = self.manifest.files_with("metadata") or [self.manifest.one("metadata")]
        parts = []
        for i, mf in enumerate(metas):
            archive = retrieve(self.manifest.url(mf), inside(self.cache, mf.name), md5=mf.md5 or None,
                               sha256=mf.sha256 or None, size=mf.bytes or None)
            chunks = self._extract(Path(archive), mf)
            numbers = sorted(chunks)
            first_member, first_path = chunks[numbers[0]]
            columns = detect_header(first_path, first_member) or list(COLUMNS)
            prefix = "" if len(metas) == 1 else f"m{i:02d}-"
            for n in numbers:
                member, path = chunks[n]
                parts.append(Partition(f"{prefix}chunk-{n:06d}", (
                    ("path", str(path)), ("file", member), ("chunk", str(n)), ("columns", json.dumps(columns)))))
        return parts

    def _extract(self, archive: Path, mf) -> dict[int, tuple[str, Path]]:
        """{chunk number: (member name, extracted path)}; extracted once per archive."""
        out = inside(self.cache, re.sub(r"[^A-Za-z0-9._-]", "_", mf.name) + ".chunks").resolve()
        ident = archive_identity(archive, mf)
        ident_file, complete = out / "_archive.json", out / "_complete.json"
        if ident_file.exists() and ident_file.read_text() != ident:
            shutil.rmtree(out)  # chunks of another archive
        if complete.exists():
            done = {int(n): (m, out / f"media_manifest_{int(n)}.csv")
                    for n, m in json.loads(complete.read_text()).items()}
            if all(p.exists() for _, p in done.values()):
                return done
        write_text_atomic(ident_file, ident)
        found: dict[int, str] = {}

        def select(name: str) -> Path | None:
            m = _CHUNK.search(name)
            if not m:
                return None  # directories, a README: not ours
            n = int(m.group(1))
            if n in found and found[n] != name:
                raise InputError(mf.name, f"two members are chunk {n} (also {found[n]})", member=name)
            found[n] = name
            return out / f"media_manifest_{n}.csv"

        extract_members(archive, mf.name, select)
        if not found:
            raise InputError(mf.name, "the archive has no media_manifest_{N}.csv member",
                             member="media_manifest_{N}.csv")
        write_text_atomic(complete, json.dumps({str(n): m for n, m in sorted(found.items())}))
        return {n: (m, out / f"media_manifest_{n}.csv") for n, m in found.items()}

    # ------------------------------------------------------------------------------------------ read
    def read(self, partition: Partition, rejects: RejectLog) -> Iterator[tuple[str, pa.Table]]:
        path = Path(partition.get("path"))
        label = partition.get("file") or path.name
        header = detect_header(path, label)
        columns = header or json.loads(partition.get("columns") or "null") or list(COLUMNS)
        # _row = 1-based data row of the chunk (a header line is not counted)
        raw = read_delimited(path, columns, columns, label=label, delim=",", quote='"', header=header is not None,
                             rejects=rejects, threads=self.threads)
        con = duckdb_connection(self.threads)
        con.execute("CREATE MACRO v(x) AS NULLIF(x, '')")  # values as given ('' = missing)
        con.execute("CREATE MACRO vt(x) AS NULLIF(trim(x), '')")  # ids: surrounding blanks do not count
        con.execute("CREATE MACRO canon_int(x) AS CAST(TRY_CAST(x AS UBIGINT) AS VARCHAR)")  # '007' -> '7'
        con.register("raw", raw)
        cid, pid, url = "_cid", "_pid", "_url"
        checks = [  # (condition, reason, column)
            (f"{cid} IS NULL", "missing_field", CONTENT_ID),
            (f"NOT regexp_full_match({cid}, '[0-9]+') OR TRY_CAST({cid} AS UBIGINT) IS NULL", "bad_type",
             CONTENT_ID),  # digits only, at most 64 bits
            (f"{pid} IS NULL", "missing_field", PAGE_ID),
            (f"NOT regexp_full_match({pid}, '[0-9]+') OR TRY_CAST({pid} AS UBIGINT) IS NULL", "bad_type", PAGE_ID),
            (f"{url} IS NULL", "missing_field", COPY_URL),
        ]
        which = "CASE " + " ".join(f"WHEN {c} THEN {i}" for i, (c, _, _) in enumerate(checks, 1)) + " END"
        reason = f"[{', '.join(sql_literal(r) for _, r, _ in checks)}][_k]"
        field = f"[{', '.join(sql_literal(f) for _, _, f in checks)}][_k]"
        value = "CASE _k " + " ".join(f"WHEN {i} THEN v({sql_ident(f)})" for i, (_, _, f) in enumerate(checks, 1)) + " END"
        scan = (f"(SELECT *, {which} AS _k FROM (SELECT *, vt({sql_ident(CONTENT_ID)}) AS _cid, "
                f"vt({sql_ident(PAGE_ID)}) AS _pid, v({sql_ident(COPY_URL)}) AS _url FROM raw))")
        out = arrow_of(con.sql(f"""SELECT
                canon_int({cid}) AS source_id, {url} AS media_uri, NULL::VARCHAR AS media_member,
                NULL::VARCHAR AS kingdom, NULL::VARCHAR AS phylum, NULL::VARCHAR AS "class",
                NULL::VARCHAR AS "order", NULL::VARCHAR AS family, NULL::VARCHAR AS genus,
                NULL::VARCHAR AS species, NULL::VARCHAR AS scientific_name, NULL::VARCHAR AS common_name,
                canon_int({pid}) AS source_taxon_id, v({sql_ident(LICENSE)}) AS licence,
                v({sql_ident(OWNER)}) AS rights_holder, v({sql_ident(SOURCE_URL)}) AS source_url,
                NULL::VARCHAR AS source_split, _row,
                {reason} AS _reason, {field} AS _field, {value} AS _value
            FROM {scan}"""))
        con.close()
        del raw
        yield label, split_rejects(out, label, rejects)


def _canon(name: str) -> str:
    return _CANONICAL.get(_norm(name), name)


def detect_header(path: Path, label: str) -> list[str] | None:
    """The chunk's column names (canonical spelling, file order) when its first line is a header; None when it
    is a data row. A first line that looks like a header (it names one of the columns, and holds no URL and no
    integer id) but does not name exactly the manifest's columns raises InputError naming the chunk and the
    columns."""
    text = first_line(path, label)
    try:
        fields = next(csv.reader([text]), [])
    except csv.Error:  # a stray carriage return: no header (the CSV reader names the row)
        return None
    if sorted(_norm(x) for x in fields) == sorted(_CANONICAL):
        return [_canon(x) for x in fields]
    # a header with a column renamed or missing (it names some of the columns, and no id or URL) stops the
    # source; a data row (even a damaged one) is read as one
    if any(_norm(x) in _CANONICAL for x in fields) and not any("://" in x or x.strip().isdigit() for x in fields):
        unknown = [x for x in fields if _norm(x) not in _CANONICAL]
        missing = [c for c in COLUMNS if _norm(c) not in {_norm(x) for x in fields}]
        detail = "; ".join(x for x in (f"unknown: {unknown}" if unknown else "",
                                         f"missing: {missing}" if missing else "") if x)
        raise InputError(label, f"unexpected header columns {fields} ({detail}); expected {list(COLUMNS)}",
                         row=0, field=(unknown or missing or [None])[0])
    return None

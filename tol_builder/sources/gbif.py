"""`gbif`: a GBIF occurrence download (Darwin Core Archive), the main source of TreeOfLife-200M.

The download is a zip holding `meta.xml`, the occurrence core (`occurrence.txt`: gbifID, kingdom ... genus,
species (the binomial), scientificName, taxonKey, license, rightsHolder, references, ...) and extensions,
among them `multimedia.txt` (gbifID, type, format, identifier, references, license, rightsHolder, creator).
Columns are found through meta.xml's terms (by index), never by position guesses; delimiters, quoting and
header lines too. One record per StillImage row of the multimedia extension, joined with its occurrence:

* source_id = `<gbifID>:<first 12 hex of md5(identifier)>` (stable whatever the order of the rows);
* media_uri = the image URL (identifier); source_url = references (the image's page, else the occurrence's);
* ranks from the occurrence's interpreted columns (GBIF's backbone names), scientific_name = scientificName,
  source_taxon_id = taxonKey; licence and rights holder of the image, else of the occurrence.

Streamed in bounded memory: the two files are extracted once into the cache and joined by DuckDB (it spills
to disk past its memory limit); `options.partitions` cuts the records into that many ingest tasks by a hash
of gbifID, so no task holds more than its share. A multimedia row whose occurrence is missing, or that is
not a StillImage, is a reject with its row and reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ..errors import InputError
from ..fileio import atomic_path, retrieve, safe_member_name
from ..records import RejectLog, arrow_of, duckdb_connection
from .base import Partition, Source

NS = "{http://rs.tdwg.org/dwc/text/}"
MULTIMEDIA = "http://rs.gbif.org/terms/1.0/Multimedia"
# records column -> term of the occurrence core (local name of the term URI)
CORE_TERMS = {"kingdom": "kingdom", "phylum": "phylum", "class": "class", "order": "order", "family": "family",
              "genus": "genus", "species": "species", "scientific_name": "scientificName",
              "common_name": "vernacularName", "source_taxon_id": "taxonKey", "occ_licence": "license",
              "occ_rights": "rightsHolder", "occ_url": "references", "gbif_id": "gbifID"}
MEDIA_TERMS = {"type": "type", "format": "format", "identifier": "identifier", "references": "references",
               "licence": "license", "rights": "rightsHolder", "creator": "creator", "gbif_id": "gbifID"}


@dataclass
class GBIFOptions:
    partitions: int = 1  # ingest tasks, cut by a hash of gbifID (about one per million images)

    def __post_init__(self) -> None:
        from ..config import FieldValueError

        if self.partitions < 1:
            raise FieldValueError("partitions", "a positive integer", self.partitions)


@dataclass
class Table:
    path: Path
    delimiter: str
    quote: str
    header_lines: int
    columns: dict[str, int]  # term local name -> index
    id_index: int


def _unescape(value: str | None, default: str) -> str:
    if value is None:
        return default
    return value.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r")


def read_meta(meta: Path, label: str) -> tuple[dict, dict | None]:
    """The core and the Multimedia extension of a DwC-A meta.xml: file, delimiter, quote, header lines, terms."""
    try:
        root = ET.parse(meta).getroot()
    except (ET.ParseError, OSError) as e:
        raise InputError(label, f"meta.xml is not readable XML: {e}", member="meta.xml") from None

    def table(el) -> dict:
        loc = el.find(f"{NS}files/{NS}location")
        if loc is None or not (loc.text or "").strip():
            raise InputError(label, "meta.xml: a table without files/location", member="meta.xml")
        ident = el.find(f"{NS}id") if el.tag == f"{NS}core" else el.find(f"{NS}coreid")
        cols = {}
        for f in el.findall(f"{NS}field"):
            if f.get("index") is not None and f.get("term"):
                cols[f.get("term").rstrip("/").rsplit("/", 1)[-1]] = int(f.get("index"))
        return {"location": loc.text.strip(), "delimiter": _unescape(el.get("fieldsTerminatedBy"), ","),
                "quote": _unescape(el.get("fieldsEnclosedBy"), '"'), "header": int(el.get("ignoreHeaderLines") or 0),
                "columns": cols, "id": int(ident.get("index")) if ident is not None else 0,
                "row_type": el.get("rowType", "")}

    core = root.find(f"{NS}core")
    if core is None:
        raise InputError(label, "meta.xml: no <core> table", member="meta.xml")
    media = [e for e in root.findall(f"{NS}extension") if e.get("rowType") == MULTIMEDIA]
    return table(core), (table(media[0]) if media else None)


def _renumber(con, alias: str, header: int) -> None:
    """Rows numbered by their line in the file: DuckDB numbers the lines it parsed, so every line it refused
    before a row shifts that row's number by one."""
    import numpy as np

    bad = np.array(sorted(r[0] for r in con.execute(f"SELECT DISTINCT CAST(line AS BIGINT) FROM {alias}_errors")
                          .fetchall()), dtype=np.int64)
    if not len(bad):
        return
    n = con.execute(f"SELECT max(_row) FROM {alias}").fetchall()[0][0] or 0
    k = np.arange(header + 1, n + 1, dtype=np.int64)  # the numbers given: parsed line + header
    line = k + np.searchsorted(bad - np.arange(1, len(bad) + 1), k, side="left")
    con.register("_renumbered", pa.table({"old": k, "new": line}))
    con.execute(f"UPDATE {alias} SET _row = r.new FROM _renumbered r WHERE {alias}._row = r.old")
    con.unregister("_renumbered")


class GBIFSource(Source):
    name = "gbif"
    Options = GBIFOptions
    description = "a GBIF occurrence download (Darwin Core Archive zip: occurrence core + multimedia extension)"

    def plan(self) -> list[Partition]:
        files = self.manifest.files_with("metadata")
        if not files:
            raise InputError(self.manifest.path, "no [[files]] entry with role = \"metadata\" (the download zip)",
                             field="files")
        parts = []
        for i, f in enumerate(files):
            archive = retrieve(self.manifest.url(f), self.cache / f.name, md5=f.md5 or None, sha256=f.sha256 or None,
                               size=f.bytes or None)
            folder = self.cache / f"dwca-{i:03d}"
            core, media = self._extract(archive, folder, f.name)
            if media is None:
                raise InputError(f.name, "the download has no Multimedia extension (request it with the "
                                 "occurrence download, format DWCA)", member="meta.xml")
            for k in range(self.options.partitions):
                parts.append(Partition(f"dwca-{i:03d}-{k:04d}", (("folder", str(folder)), ("label", f.name),
                                                                ("part", str(k)))))
        return parts

    def _extract(self, archive: Path, folder: Path, label: str):
        """meta.xml and the two tables it names, extracted once (atomic per file) into `folder`."""
        try:
            zf = zipfile.ZipFile(archive)
        except zipfile.BadZipFile as e:
            raise InputError(label, f"not a zip archive: {e}") from None
        with zf:
            names = {safe_member_name(n): n for n in zf.namelist() if safe_member_name(n)}
            if "meta.xml" not in names:
                raise InputError(label, "no meta.xml in the archive", member="meta.xml")
            self._copy(zf, names["meta.xml"], folder / "meta.xml")
            core, media = read_meta(folder / "meta.xml", label)
            for t in (core, media):
                if t is not None:
                    member = safe_member_name(t["location"])
                    if member not in names:
                        raise InputError(label, f"meta.xml names {t['location']!r}, which the archive lacks",
                                         member=t["location"])
                    self._copy(zf, names[member], folder / member)
        return core, media

    @staticmethod
    def _copy(zf: zipfile.ZipFile, member: str, dest: Path) -> None:
        if dest.exists() and dest.stat().st_size == zf.getinfo(member).file_size:
            return
        with atomic_path(dest) as tmp, zf.open(member) as src, open(tmp, "wb") as out:
            while block := src.read(1 << 20):
                out.write(block)

    def read(self, partition: Partition, rejects: RejectLog) -> Iterator[tuple[str, pa.Table]]:
        folder, label = Path(partition.get("folder")), partition.get("label")
        part, parts = int(partition.get("part")), self.options.partitions
        core, media = read_meta(folder / "meta.xml", label)
        for t, what, need in ((core, "occurrence", ("gbifID",)), (media, "multimedia", ("identifier",))):
            missing = [n for n in need if n not in t["columns"] and not (n == "gbifID" and what == "multimedia")]
            if missing:
                raise InputError(label, f"meta.xml: the {what} table has no {missing[0]} field", member="meta.xml",
                                 field=missing[0])
        con = duckdb_connection(self.threads)
        tmp = self.cache / "duckdb-tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        con.execute("SET temp_directory = ?", [str(tmp)])

        def scan(t: dict, alias: str, terms: dict) -> str:
            width = max([*t["columns"].values(), t["id"]]) + 1
            cols = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(width)) + "}"
            pick = ", ".join(f"NULLIF(trim(c{t['columns'][term]}), '') AS {col}" for col, term in terms.items()
                             if term in t["columns"] and col != "gbif_id")
            return (f"(SELECT trim(c{t['id']}) AS gbif_id, {pick}, row_number() OVER () + {t['header']} AS _row "
                    f"FROM read_csv(${alias}, delim=${alias}_d, quote=${alias}_q, escape=${alias}_q, header=false, "
                    f"skip=${alias}_h, columns={cols}, auto_detect=false, null_padding=true, store_rejects=true, "
                    f"rejects_table='{alias}_errors', rejects_scan='{alias}_scans'))")

        params = {"occ": str(folder / safe_member_name(core["location"])), "occ_d": core["delimiter"],
                  "occ_q": core["quote"], "occ_h": core["header"],
                  "mm": str(folder / safe_member_name(media["location"])), "mm_d": media["delimiter"],
                  "mm_q": media["quote"], "mm_h": media["header"], "parts": parts, "part": part}
        core_terms = {k: v for k, v in CORE_TERMS.items() if v in core["columns"] or k == "gbif_id"}
        media_terms = {k: v for k, v in MEDIA_TERMS.items() if v in media["columns"] or k == "gbif_id"}
        mine = "hash(gbif_id) % $parts = $part"
        for alias, t, terms in (("mm", media, media_terms), ("occ", core, core_terms)):
            mine_params = {k: v for k, v in params.items() if k.split("_")[0] in (alias, "parts", "part")}
            con.execute(f"CREATE TEMP TABLE {alias} AS SELECT * FROM {scan(t, alias, terms)} WHERE {mine}", mine_params)
            _renumber(con, alias, t["header"])
        col = lambda t, name: f"{t}.{name}" if name in (media_terms if t == 'm' else core_terms) else "NULL"  # noqa: E731
        bad = arrow_of(con.sql(f"""
            SELECT m._row AS row, CASE WHEN o.gbif_id IS NULL THEN 'gbifID' ELSE 'type' END AS field,
                   CASE WHEN o.gbif_id IS NULL THEN 'occurrence_not_found' ELSE 'not_a_still_image' END AS reason,
                   CASE WHEN o.gbif_id IS NULL THEN m.gbif_id ELSE {col('m', 'type')} END AS value
            FROM mm m LEFT JOIN occ o USING (gbif_id)
            WHERE o.gbif_id IS NULL OR lower(coalesce({col('m', 'type')}, '')) <> 'stillimage' ORDER BY m._row"""))
        rejects.add_table(bad.append_column("file", pa.array([f"{label}:{media['location']}"] * bad.num_rows,
                                                             pa.string())))
        if part == 0:  # lines DuckDB could not split have no gbifID to partition by: the first task reports them
            for alias, t in (("occ", core), ("mm", media)):
                errors = arrow_of(con.sql(f"""SELECT CAST(line AS BIGINT) AS row, arg_min(column_name, column_idx) AS
                        field, 'malformed_line' AS reason, left(any_value(csv_line), 400) AS value
                    FROM {alias}_errors GROUP BY line ORDER BY line"""))
                rejects.add_table(errors.append_column(
                    "file", pa.array([f"{label}:{t['location']}"] * errors.num_rows, pa.string())))
        ranks = ", ".join(f"{col('o', c)} AS \"{c}\"" for c in
                          ("kingdom", "phylum", "class", "order", "family", "genus", "species"))
        table = arrow_of(con.sql(f"""
            SELECT m.gbif_id || ':' || left(md5(coalesce({col('m', 'identifier')}, '')), 12) AS source_id,
                   {col('m', 'identifier')} AS media_uri, NULL::VARCHAR AS media_member, {ranks},
                   {col('o', 'scientific_name')} AS scientific_name, {col('o', 'common_name')} AS common_name,
                   {col('o', 'source_taxon_id')} AS source_taxon_id,
                   coalesce({col('m', 'licence')}, {col('o', 'occ_licence')}) AS licence,
                   coalesce({col('m', 'rights')}, {col('m', 'creator')}, {col('o', 'occ_rights')}) AS rights_holder,
                   coalesce({col('m', 'references')}, {col('o', 'occ_url')}) AS source_url,
                   NULL::VARCHAR AS source_split, m._row::BIGINT AS _row
            FROM mm m JOIN occ o USING (gbif_id)
            WHERE lower(coalesce({col('m', 'type')}, '')) = 'stillimage' ORDER BY m._row"""))
        con.close()
        yield f"{label}:{media['location']}", table

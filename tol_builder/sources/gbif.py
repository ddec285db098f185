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
* context: observed_on = eventDate, latitude / longitude = decimalLatitude / decimalLongitude,
  coordinate_uncertainty_m = coordinateUncertaintyInMeters, country_code = countryCode, basis_of_record,
  occurrence_id = occurrenceID, dataset_id = datasetKey; a coordinate GBIF flags as untrustworthy
  (COORDINATE_FLAGS in `issue`) is nulled with a counted reason.

Streamed in bounded memory: the two files are extracted once into the cache and joined by DuckDB (it spills
to disk past its memory limit); `options.partitions` cuts the records into that many ingest tasks by a hash
of gbifID, so no task holds more than its share. A multimedia row whose occurrence is missing, or that is
not a StillImage, is a reject with its row and reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..fileio import atomic_path, inside, retrieve, safe_member_name
from ..records import RejectLog, arrow_of, duckdb_connection
from .base import Partition, Source
from .formats import _Lines

NS = "{http://rs.tdwg.org/dwc/text/}"
MULTIMEDIA = "http://rs.gbif.org/terms/1.0/Multimedia"
# records column -> term of the occurrence core (local name of the term URI)
CORE_TERMS = {"kingdom": "kingdom", "phylum": "phylum", "class": "class", "order": "order", "family": "family",
              "genus": "genus", "species": "species", "scientific_name": "scientificName",
              "common_name": "vernacularName", "source_taxon_id": "taxonKey", "occ_licence": "license",
              "occ_rights": "rightsHolder", "occ_url": "references", "gbif_id": "gbifID",
              # context (issue 23), as text: records.clean_context parses and checks it
              "observed_on": "eventDate", "latitude": "decimalLatitude", "longitude": "decimalLongitude",
              "coordinate_uncertainty_m": "coordinateUncertaintyInMeters", "country_code": "countryCode",
              "basis_of_record": "basisOfRecord", "occurrence_id": "occurrenceID", "dataset_id": "datasetKey",
              "issue": "issue"}
CONTEXT = ("observed_on", "latitude", "longitude", "coordinate_uncertainty_m", "country_code", "basis_of_record",
           "occurrence_id", "dataset_id")
# GBIF issue flags (the occurrence's `issue` column, ';'-separated) after which its coordinate is not trusted:
# the coordinate (and its uncertainty) is nulled, counted under gbif_<flag in lower case>; the first flag of
# this order names the reason. Flags that only note a rounding or a default datum leave it as it is.
COORDINATE_FLAGS = ("ZERO_COORDINATE", "COORDINATE_INVALID", "COORDINATE_OUT_OF_RANGE",
                    "PRESUMED_SWAPPED_COORDINATE", "PRESUMED_NEGATED_LATITUDE", "PRESUMED_NEGATED_LONGITUDE",
                    "COORDINATE_REPROJECTION_FAILED", "COUNTRY_COORDINATE_MISMATCH")
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
    try:
        core_t, media_t = table(core), (table(media[0]) if media else None)
    except ValueError as e:  # an index or ignoreHeaderLines that is not a number
        raise InputError(label, f"meta.xml: {e}", member="meta.xml") from None
    for t in (core_t, media_t or core_t):
        if len(t["delimiter"]) != 1 or len(t["quote"]) > 1 or min([*t["columns"].values(), t["id"], t["header"]]) < 0:
            raise InputError(label, f"meta.xml: the table {t['location']!r} has a delimiter, quote, index or "
                             "ignoreHeaderLines this reader cannot use (one character; at most one; >= 0)",
                             member="meta.xml")
    return core_t, media_t


def _load_table(con, alias: str, t: dict, terms: dict, folder: Path, label: str, part: int, parts: int) -> pa.Table:
    """Temp table `alias` of this task's rows of one DwC-A table (the `terms` columns, trimmed, '' as NULL, and
    `_row`: the physical line where the row starts, 1 = the first line after the header, as in every reader).
    Returns the lines DuckDB could not split, as rejects. Line ends are checked first (formats._Lines), and
    rows are numbered by the same scan `read_delimited` uses, so blank lines and refused lines shift nothing."""
    member = safe_member_name(t["location"])
    path, file = folder / member, f"{label}:{t['location']}"
    if t["header"] > 1:
        raise InputError(label, f"meta.xml: ignoreHeaderLines = {t['header']} (0 or 1 are read)", member="meta.xml")
    width = max([*t["columns"].values(), t["id"]]) + 1
    term_at = {i: term for term, i in t["columns"].items()}
    names = [term_at.get(i, f"column{i}") for i in range(width)]
    lines = _Lines(path, t["quote"], t["delimiter"], t["header"] > 0)
    lines.check_line_ends(file, names)
    cols = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(width)) + "}"
    picked = [f"trim(c{t['id']}) AS gbif_id"] + [f"NULLIF(trim(c{t['columns'][term]}), '') AS {col}"
                                                 for col, term in terms.items() if col != "gbif_id"]
    con.execute(f"""CREATE TEMP TABLE {alias}_all AS SELECT {', '.join(picked)}, row_number() OVER () AS _k
        FROM read_csv($path, delim=$d, quote=$q, escape=$q, new_line=$nl, header=$h, columns={cols},
                      auto_detect=false, store_rejects=true, rejects_table='{alias}_errors',
                      rejects_scan='{alias}_scans')""",
                {"path": str(path), "d": t["delimiter"], "q": t["quote"], "nl": r"\r\n" if lines.crlf else r"\n",
                 "h": t["header"] > 0})
    n_read = con.execute(f"SELECT count(*) FROM {alias}_all").fetchall()[0][0]
    errors = arrow_of(con.sql(f"""SELECT CAST(line AS BIGINT) AS line, min(line_byte_position) AS pos,
            arg_min(column_name, column_idx) AS field, 'malformed_csv' AS reason,
            arg_min(error_type, column_idx) || ': ' || left(any_value(csv_line), 400) AS value, $file AS file
        FROM {alias}_errors GROUP BY line ORDER BY line""", params={"file": file}))
    rows, errors = lines.number(n_read, errors)
    con.register("_rows", pa.table({"_k": pa.array(range(1, n_read + 1), pa.int64()), "_row": rows}))
    con.execute(f"""CREATE TEMP TABLE {alias} AS SELECT a.* EXCLUDE (_k), r._row FROM {alias}_all a JOIN _rows r
        USING (_k) WHERE hash(a.gbif_id) % $parts = $part""", {"parts": parts, "part": part})
    con.unregister("_rows")
    con.execute(f"DROP TABLE {alias}_all")
    fields = pc.replace_substring_regex(errors.column("field").cast(pa.string()), r"^c(\d+)$", r"\1")
    named = [names[int(f)] if f is not None and f.isdigit() and int(f) < width else f for f in fields.to_pylist()]
    return errors.set_column(errors.schema.get_field_index("field"), "field", pa.array(named, pa.string()))


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
            archive = retrieve(self.manifest.url(f), inside(self.cache, f.name), md5=f.md5 or None,
                               sha256=f.sha256 or None, size=f.bytes or None)
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
        try:
            with zf:
                return self._extract_from(zf, folder, label)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:  # a damaged member
            raise InputError(label, f"unreadable zip archive: {e}") from None

    def _extract_from(self, zf: zipfile.ZipFile, folder: Path, label: str):
        """meta.xml and the tables it names, copied out of the open zip."""
        # files only: a folder entry named like a table is not that table
        names = {safe_member_name(i.filename): i.filename for i in zf.infolist()
                 if safe_member_name(i.filename) and not i.is_dir()}
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
        info = zf.getinfo(member)
        stamp = dest.with_name(dest.name + ".from")  # which member (by CRC and size) the copy was made from
        made_from = f"{info.CRC}:{info.file_size}"
        if dest.exists() and stamp.exists() and stamp.read_text() == made_from:
            return
        with atomic_path(dest) as tmp, zf.open(member) as src, open(tmp, "wb") as out:
            while block := src.read(1 << 20):  # zipfile checks the CRC at the end: a damaged copy is not kept
                out.write(block)
        with atomic_path(stamp) as tmp:
            tmp.write_text(made_from)

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
        core_terms = {k: v for k, v in CORE_TERMS.items() if v in core["columns"] or k == "gbif_id"}
        media_terms = {k: v for k, v in MEDIA_TERMS.items() if v in media["columns"] or k == "gbif_id"}
        try:
            for alias, t, terms in (("mm", media, media_terms), ("occ", core, core_terms)):
                errors = _load_table(con, alias, t, terms, folder, label, part, parts)
                if part == 0:  # lines DuckDB could not split have no gbifID to partition by: the first task says
                    rejects.add_table(errors)
        except duckdb.Error as e:
            raise InputError(label, f"unreadable: {str(e).splitlines()[0]}", member=media["location"]) from None
        col = lambda t, name: f"{t}.{name}" if name in (media_terms if t == 'm' else core_terms) else "NULL"  # noqa: E731
        bad = arrow_of(con.sql(f"""
            SELECT m._row AS row, CASE WHEN o.gbif_id IS NULL THEN 'gbifID' ELSE 'type' END AS field,
                   CASE WHEN o.gbif_id IS NULL THEN 'occurrence_not_found' ELSE 'not_a_still_image' END AS reason,
                   CASE WHEN o.gbif_id IS NULL THEN m.gbif_id ELSE {col('m', 'type')} END AS value
            FROM mm m LEFT JOIN occ o USING (gbif_id)
            WHERE o.gbif_id IS NULL OR lower(coalesce({col('m', 'type')}, '')) <> 'stillimage' ORDER BY m._row"""))
        rejects.add_table(bad.append_column("file", pa.array([f"{label}:{media['location']}"] * bad.num_rows,
                                                             pa.string())))
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
                   NULL::VARCHAR AS source_split, {", ".join(f"CAST({col('o', c)} AS VARCHAR) AS {c}" for c in CONTEXT)},
                   CAST({col('o', 'issue')} AS VARCHAR) AS _issue, m._row::BIGINT AS _row
            FROM mm m JOIN occ o USING (gbif_id)
            WHERE lower(coalesce({col('m', 'type')}, '')) = 'stillimage' ORDER BY m._row"""))
        con.close()
        file = f"{label}:{media['location']}"
        yield file, _flagged_coordinates(table, rejects, file)


def _flagged_coordinates(table: pa.Table, rejects: RejectLog, file: str) -> pa.Table:
    """Null the coordinate (latitude, longitude, uncertainty) of occurrences carrying one of COORDINATE_FLAGS,
    counted in `rejects.nulled` under gbif_<flag>; the `_issue` column is dropped."""
    issue = table.column("_issue")
    table = table.drop_columns(["_issue"])
    null = pa.scalar(None, pa.string())
    reason = pa.nulls(table.num_rows, pa.string())
    for flag in reversed(COORDINATE_FLAGS):  # the first flag of the order wins
        has = pc.fill_null(pc.match_substring_regex(issue, f"(^|;)\\s*{flag}\\s*(;|$)"), False)
        reason = pc.if_else(has, pa.scalar(f"gbif_{flag.lower()}"), reason)
    flagged = pc.and_(pc.is_valid(reason), pc.or_(pc.is_valid(table["latitude"]), pc.is_valid(table["longitude"])))
    if not pc.any(flagged).as_py():
        return table
    bad = table.filter(flagged)
    rejects.nulled(pa.table({
        "file": pa.repeat(pa.scalar(file, pa.string()), bad.num_rows), "row": bad["_row"],
        "field": pa.repeat(pa.scalar("latitude"), bad.num_rows), "reason": reason.filter(flagged),
        "value": pc.binary_join_element_wise(pc.fill_null(bad["latitude"], ""), pc.fill_null(bad["longitude"], ""),
                                             ",")}))
    for c in ("latitude", "longitude", "coordinate_uncertainty_m"):
        table = table.set_column(table.schema.get_field_index(c), c, pc.if_else(flagged, null, table[c]))
    return table

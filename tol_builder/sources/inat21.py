"""`inat21`: the iNaturalist 2021 competition dataset (visipedia/inat_comp, 2021/README.md).

Each split has a metadata archive `<split>.json.tar.gz` holding `<split>.json` (COCO-like: info, images,
categories, annotations, licenses, in any key order) and a media archive `<split>.tar.gz` whose members are
the images' `file_name`s. One partition per split.

`plan` retrieves the metadata archive and stream-extracts `<split>.json` into the cache (atomically; skipped
when the cache already holds it for the same archive). `read` streams the JSON with ijson's C backend, never
holding the images as Python objects: image fields go into Arrow columns in batches, categories, licences and
annotations into small Arrow tables, and Arrow hash lookups join them.

Cost at full size (train.json: 1 GB, 2.7M images): one full tokenising pass for `images` (it also validates
the whole document), then `categories`, `annotations` and `licenses` are parsed from their own byte ranges
only. The ranges are found by searching the bytes outside the images array for the top-level keys; each range
`"key": value,` is parsed as `{"key": value, "_": 0}`, which only succeeds when the cut points lie at the top
level. If anything about that is doubtful (a key found twice, a range that does not parse), the array is read
with a full pass instead: slower, same result.

Records: source_id = the file name's stem (a uuid4 in the real files: unique and stable), media = the split's
media archive + `file_name`, ranks kingdom..genus from the category, species = `specific_epithet` as given
(the epithet only), scientific_name = category `name`, common_name = category `common_name`,
source_taxon_id = the category id, licence = the licence name (the id when the file has no `licenses`).
A file without annotations (public_test) gives unlabelled records; in a file with annotations an image
without one is rejected (an annotation of no image labels nothing: it is not read). A top-level images,
categories, annotations or licenses that is there but not an array is an InputError. The directory names in
`file_name` are not checked against the labels.

Archive extraction (`extract_members`) lives in `sources/formats.py`, shared with the `eol` reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import ijson
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, InputError
from ..fileio import inside, retrieve
from ..records import RejectLog, arrow_of, duckdb_connection
from .formats import ensure_extracted, pick_file
from .base import Partition, Source, raw_table

BATCH = 100_000  # images per Arrow batch
_BUF = 1 << 20  # ijson read size
_TOP_KEYS = ("info", "images", "categories", "annotations", "licenses")
_RANK_KEYS = ("kingdom", "phylum", "class", "order", "family", "genus", "specific_epithet")
_CATEGORY_COLUMNS = ("name", "common_name") + _RANK_KEYS
_INT64 = (-(1 << 63), (1 << 63) - 1)
_JSON_ERRORS = (ijson.JSONError, UnicodeDecodeError)  # ijson lets some bad UTF-8 through as the latter
# images[] context keys -> record columns (as text: records.clean_context parses and checks them)
_IMAGE_CONTEXT = {"date": "observed_on", "latitude": "latitude", "longitude": "longitude",
                  "location_uncertainty": "coordinate_uncertainty_m"}
_IMAGE_SCHEMA = pa.schema([("_row", pa.int64()), ("image_id", pa.int64()), ("file_name", pa.string()),
                           ("license", pa.string()), ("rights_holder", pa.string())]
                          + [(c, pa.string()) for c in _IMAGE_CONTEXT.values()])


@dataclass
class INat21Options:
    splits: list[str] = field(default_factory=lambda: ["train"])  # which <split>.json.tar.gz to ingest


class INat21Source(Source):
    name = "inat21"
    Options = INat21Options
    description = ("iNaturalist 2021 competition (COCO-like <split>.json in <split>.json.tar.gz, "
                   "images in <split>.tar.gz)")

    # ------------------------------------------------------------------------------------------ plan
    def plan(self) -> list[Partition]:
        splits = list(self.options.splits)
        if not splits:
            raise ConfigError(self.manifest.path, "options.splits", "a non-empty list of splits", splits)
        parts = []
        for split in splits:
            meta = pick_file(self.manifest.files_with("metadata", split), f"{split}.json.tar.gz") or \
                self.manifest.one("metadata", split)  # raises ConfigError naming the manifest and split
            media = pick_file(self.manifest.files_with("media", split), f"{split}.tar.gz") or \
                self.manifest.one("media", split)
            archive = retrieve(self.manifest.url(meta), inside(self.cache, meta.name), md5=meta.md5 or None,
                               sha256=meta.sha256 or None, size=meta.bytes or None)
            member = f"{split}.json"
            dest = inside(self.cache, "json", _file_safe(member)).resolve()
            ensure_extracted(archive, meta, member, dest)
            parts.append(Partition(_file_safe(split), (
                ("path", str(dest)), ("split", split), ("archive", meta.name), ("member", member),
                ("media_uri", self.manifest.url(media)))))
        return parts

    # ------------------------------------------------------------------------------------------ read
    def read(self, partition: Partition, rejects: RejectLog) -> Iterator[tuple[str, pa.Table]]:
        path = Path(partition.get("path"))
        member = partition.get("member") or path.name
        doc = CocoJson(path, archive=partition.get("archive") or path.name, member=member)
        label = member  # the `file` of rejects: the JSON file inside the archive

        images = doc.read_images(rejects, label)  # the one full pass: validates the whole document
        if not doc.has_images:
            raise InputError(doc.archive, "no top-level 'images' array", member=member, field="images")
        arrays = doc.read_arrays({"categories": _categories_of, "licenses": _licences_of,
                                  "annotations": _annotations_of})
        # a key that gave nothing may hold a null, an object or a number: an error, not an empty array (an
        # `annotations` that is not an array would silently make every image unlabelled)
        gave = {"images": doc.images_seen, **{k: t.num_rows + len(bad) for k, (t, bad) in arrays.items()}}
        for key, n in gave.items():
            if not n and doc.top_level_type(key) not in (None, "start_array"):
                raise InputError(doc.archive, f"the top-level '{key}' is not an array", member=member, field=key)
        (categories, cat_rejects), (licences, _), (annotations, ann_rejects) = (
            arrays["categories"], arrays["licenses"], arrays["annotations"])
        for r in cat_rejects + ann_rejects:
            rejects.add(file=label, **r)
        labelled = annotations.num_rows > 0 or len(ann_rejects) > 0
        img = pa.concat_tables(images) if images else _IMAGE_SCHEMA.empty_table()
        del images
        yield label, self._records(img, categories, licences, annotations, labelled, partition, rejects, label)

    def _records(self, img: pa.Table, categories: pa.Table, licences: pa.Table, annotations: pa.Table,
                 labelled: bool, partition: Partition, rejects: RejectLog, label: str) -> pa.Table:
        """Join images -> annotation -> category, licence -> name, with Arrow hash lookups (no Python loop)."""
        n = img.num_rows
        ids = img["image_id"]
        if labelled:
            pos = pc.index_in(ids, value_set=annotations["image_id"])  # first annotation of each image
            cat_id = annotations["category_id"].take(pos)
            cpos = pc.index_in(cat_id, value_set=categories["id"])
            conflicts = _conflicting_annotations(annotations, self.threads)
            in_conflict = pc.is_in(ids, value_set=conflicts["image_id"])
            null = pa.scalar(None, pa.string())
            reason = pc.if_else(pc.is_null(pos), "missing_annotation", pc.if_else(
                in_conflict, "conflicting_annotations", pc.if_else(pc.is_null(cpos), "unknown_category", null)))
        else:
            cat_id = pa.nulls(n, pa.int64())
            cpos = pa.nulls(n, pa.int32())
            reason = pa.nulls(n, pa.string())
        lpos = pc.index_in(img["license"], value_set=licences["key"])
        keep = pc.is_null(reason)
        if labelled and not pc.all(keep).as_py():
            bad = pc.invert(keep)
            value = pc.if_else(pc.equal(reason, "conflicting_annotations"),
                               conflicts["cats"].take(pc.index_in(ids, value_set=conflicts["image_id"])),
                               pc.if_else(pc.equal(reason, "unknown_category"), cat_id.cast(pa.string()),
                                          ids.cast(pa.string())))
            rejects.add_table(pa.table({
                "file": pa.repeat(pa.scalar(label, pa.string()), n).filter(bad), "row": img["_row"].filter(bad),
                "member": img["file_name"].filter(bad), "field": pa.repeat(pa.scalar("category_id"), n).filter(bad),
                "reason": reason.filter(bad), "value": value.filter(bad)}))
        cat = {c: categories[c].take(cpos) for c in ("id",) + _CATEGORY_COLUMNS}
        names = img["file_name"]
        columns = {
            "source_id": pc.replace_substring_regex(  # the file name's stem: the uuid
                pc.replace_substring_regex(names, r"^.*/", ""), r"\.[^.]*$", ""),
            "media_uri": pa.repeat(pa.scalar(partition.get("media_uri"), pa.string()), n),
            "media_member": names,
            **{r: cat[r] for r in _RANK_KEYS[:-1]},
            "species": cat["specific_epithet"],  # the epithet only, as given
            "scientific_name": cat["name"], "common_name": cat["common_name"],
            "source_taxon_id": cat["id"].cast(pa.string()),
            "licence": pc.coalesce(licences["name"].take(lpos), img["license"]),
            "rights_holder": img["rights_holder"],
            "source_split": pa.repeat(pa.scalar(partition.get("split"), pa.string()), n),
            "_row": img["_row"],
        }
        table = raw_table(columns, n)
        for c in _IMAGE_CONTEXT.values():  # beside the labels: the context, as text
            table = table.append_column(c, img[c])
        return table if pc.all(keep).as_py() else table.filter(keep)


def _conflicting_annotations(annotations: pa.Table, threads: int) -> pa.Table:
    """Images annotated with more than one category: image_id, cats ('3,17'). Usually none: checked cheaply."""
    empty = pa.table({"image_id": pa.array([], pa.int64()), "cats": pa.array([], pa.string())})
    if annotations.num_rows == 0 or pc.count_distinct(annotations["image_id"]).as_py() == annotations.num_rows:
        return empty
    con = duckdb_connection(threads)
    con.register("ann", annotations)
    return arrow_of(con.sql("""SELECT image_id,
            array_to_string(list_sort(list_distinct(list(category_id))), ',') AS cats
        FROM ann GROUP BY image_id HAVING count(DISTINCT category_id) > 1"""))


# ============================================================================================ the JSON
class CocoJson:
    """Columnar access to a COCO-like JSON file too large for a DOM (see the module docstring)."""

    def __init__(self, path: Path, archive: str, member: str):
        self.path, self.archive, self.member = Path(path), archive, member
        self.size = self.path.stat().st_size
        self.has_images = False
        self.images_seen = 0
        self._head_end: int | None = None  # bytes read when the first image came out: the array starts before
        self._tail_start: int | None = None  # start of the read that produced the last image: it ends after
        self._regions: dict[str, tuple[int, int, bool]] | None = None
        self._regions_done = False
        self.full_passes = 0  # arrays read with a pass over the whole file (the fallback), for tests and stats

    def _error(self, e: Exception, key: str) -> InputError:
        return InputError(self.archive, f"invalid JSON: {e}", member=self.member, field=key)

    # ---------------------------------------------------------------------------------------- images
    def read_images(self, rejects: RejectLog, label: str) -> list[pa.Table]:
        """All of images[] as Arrow batches: _row, image_id, file_name, license (string key), rights_holder.

        Per-image problems are rejected here. This pass tokenises the whole file, so a syntax error anywhere
        raises InputError."""
        out: list[pa.Table] = []
        batch: list = []
        start = 0
        counting = _CountingReader(self.path)
        try:
            with counting:
                for d in ijson.items(counting, "images.item", use_float=True, buf_size=_BUF):
                    if self._head_end is None:
                        self._head_end = counting.pos
                    self._tail_start = counting.pos - counting.last
                    batch.append(d)
                    if len(batch) == BATCH:
                        out.append(_image_batch(batch, start, rejects, label))
                        start += len(batch)
                        batch = []
        except _JSON_ERRORS as e:
            raise self._error(e, "images") from None
        self.images_seen = start + len(batch)  # items of images[], rejected ones too
        if batch:
            out.append(_image_batch(batch, start, rejects, label))
        self.has_images = self._head_end is not None or _contains_key(self.path, "images", [(0, self.size)])
        return out

    def top_level_type(self, key: str) -> str | None:
        """The ijson event that starts the top-level `key`'s value ('start_array', 'start_map', 'null', 'string',
        'number'...), None when there is no such key. From the byte ranges when read_arrays could use them,
        else by parsing up to the key (asked only of a key that gave no item)."""
        if key != "images" and self._regions is not None:  # the ranges parsed: their keys are the top level
            if key not in self._regions:
                return None
            with open(self.path, "rb") as f:
                f.seek(self._regions[key][0] + len(key) + 2)
                head = f.read(256).lstrip(b" \t\r\n")[1:].lstrip(b" \t\r\n")  # after the ':'
            return "start_array" if head[:1] == b"[" else "other"
        try:
            with open(self.path, "rb") as f:
                events = ijson.parse(f, use_float=True, buf_size=_BUF)
                for prefix, event, value in events:
                    if prefix == "" and event == "map_key" and value == key:
                        return next(events)[1]
        except _JSON_ERRORS as e:
            raise self._error(e, key) from None
        return None

    # ---------------------------------------------------------------------------------- other arrays
    def read_arrays(self, converters: dict[str, Callable[[Iterator], tuple[pa.Table, list[dict]]]]) -> dict:
        """{key: converter(items of key[])} for the arrays other than images. Every top-level range is parsed
        (the ones not asked for only to check that the cuts lie at the top level); if one does not parse, all
        arrays are read again with a full pass each."""
        regions = self._find_regions()
        if regions is not None:
            try:
                results = {}
                for key, (start, end, last) in regions.items():
                    if key == "images":
                        continue
                    with _Window(self.path, start, end, b"{", b"" if last else b'"_": 0}') as w:
                        items = ijson.items(w, f"{key}.item", use_float=True, buf_size=_BUF)
                        results[key] = converters[key](items) if key in converters else _drain(items)
                return {k: results[k] if k in results else c(iter(())) for k, c in converters.items()}
            except _JSON_ERRORS:
                self._regions = None  # a cut was not at the top level after all: read the slow way
        results = {}
        for key, convert in converters.items():
            self.full_passes += 1
            try:
                with open(self.path, "rb") as f:
                    results[key] = convert(ijson.items(f, f"{key}.item", use_float=True, buf_size=_BUF))
            except _JSON_ERRORS as e:
                raise self._error(e, key) from None
        return results

    def _find_regions(self) -> dict[str, tuple[int, int, bool]] | None:
        """{top-level key: (start, end, is_last)} for the keys in _TOP_KEYS, or None when unsure."""
        if self._regions_done:
            return self._regions
        self._regions_done = True
        if self._head_end is None:  # no images: search everything (the file is small, or images is empty)
            areas = [(0, self.size)]
        else:
            areas = [(0, self._head_end), (max(self._head_end, self._tail_start), self.size)]
        found: dict[str, list[int]] = {}
        with open(self.path, "rb") as f:
            for key in _TOP_KEYS:
                for pos in _find_all(f, b'"' + key.encode() + b'"', areas):
                    if _is_key_at(f, pos, len(key) + 2):
                        found.setdefault(key, []).append(pos)
            if any(len(v) > 1 for v in found.values()):
                return None
            starts = sorted((v[0], k) for k, v in found.items())
            regions = {}
            for i, (pos, key) in enumerate(starts):
                last = i == len(starts) - 1
                end = self.size if last else starts[i + 1][0]
                if not last and not _ends_with_comma(f, pos, end):
                    return None
                regions[key] = (pos, end, last)
        self._regions = regions
        return regions


def _image_batch(batch: list, start: int, rejects: RejectLog, label: str) -> pa.Table:
    """Arrow columns of a batch of images[] items: a fast path for well-typed batches, else value by value."""
    n = len(batch)
    try:
        ids = pa.array([d.get("id") for d in batch])
        names = pa.array([d.get("file_name") for d in batch], pa.string())
        lic = pa.array([d.get("license") for d in batch])
        holders = pa.array([d.get("rights_holder") for d in batch], pa.string())
        ok = (n > 0 and ids.type == pa.int64() and ids.null_count == 0 and names.null_count == 0
              and lic.type in (pa.int64(), pa.string(), pa.null())
              and pc.min(pc.utf8_length(names)).as_py() > 0)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, AttributeError, TypeError):
        ok = False
    if ok:  # '' is missing, as _text reads it value by value (the same image reads the same in either path)
        lic, holders = (pc.if_else(pc.equal(a, ""), pa.scalar(None, pa.string()), a)
                        for a in (lic.cast(pa.string()), holders))
        return pa.table({"_row": pa.array(range(start, start + n), pa.int64()), "image_id": ids,
                         "file_name": names, "license": lic, "rights_holder": holders,
                         **_context_of(batch)})
    rows, ids_, names_, lic_, holders_ = [], [], [], [], []
    for j, d in enumerate(batch):
        row = start + j
        if not isinstance(d, dict):
            rejects.add(file=label, row=row, field="images", reason="bad_type", value=d)
            continue
        i, fn = d.get("id"), d.get("file_name")
        problem = (("missing_field", "id") if i is None else ("bad_type", "id") if not _is_int64(i)
                   else ("missing_field", "file_name") if fn is None or fn == ""
                   else ("bad_type", "file_name") if not isinstance(fn, str) else None)
        if problem:
            rejects.add(file=label, row=row, member=fn if isinstance(fn, str) else None, field=problem[1],
                        reason=problem[0], value=i if problem[1] == "id" else fn)
            continue
        rows.append(row)
        ids_.append(i)
        names_.append(fn)
        lic_.append(_text(d.get("license")))
        holders_.append(_text(d.get("rights_holder")))
    kept = [batch[r - start] for r in rows]
    return pa.table({"_row": pa.array(rows, pa.int64()), "image_id": pa.array(ids_, pa.int64()),
                     "file_name": pa.array(names_, pa.string()), "license": pa.array(lic_, pa.string()),
                     "rights_holder": pa.array(holders_, pa.string()), **_context_of(kept)})


def _context_of(batch: list) -> dict[str, pa.Array]:
    """The images' date, latitude, longitude and location_uncertainty as text (numbers in their shortest
    decimal form, anything else as its text: records.clean_context nulls and counts what does not parse)."""
    return {col: pa.array([_context_text(d.get(key)) for d in batch], pa.string())
            for key, col in _IMAGE_CONTEXT.items()}


def _context_text(v) -> str | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool):  # JSON true/false: not a number, a value to reject
        return str(v).lower()
    return v if isinstance(v, str) else repr(v) if isinstance(v, float) else str(v)


def _categories_of(items: Iterator) -> tuple[pa.Table, list[dict]]:
    """categories[] (10,000 at most in iNat21: plain Python is fine) -> id + label columns."""
    cols: dict[str, list] = {"id": [], **{k: [] for k in _CATEGORY_COLUMNS}}
    bad: list[dict] = []
    seen: set[int] = set()
    for i, c in enumerate(items):
        cid = c.get("id") if isinstance(c, dict) else None
        if not isinstance(c, dict):
            bad.append(dict(row=i, field="categories", reason="bad_type", value=c))
        elif cid is None:
            bad.append(dict(row=i, field="categories.id", reason="missing_field", value=None))
        elif not _is_int64(cid):
            bad.append(dict(row=i, field="categories.id", reason="bad_type", value=cid))
        elif cid in seen:
            bad.append(dict(row=i, field="categories.id", reason="duplicate_category", value=cid))
        else:
            seen.add(cid)
            cols["id"].append(cid)
            for k in _CATEGORY_COLUMNS:
                cols[k].append(_text(c.get(k)))
    return pa.table({"id": pa.array(cols["id"], pa.int64()),
                     **{k: pa.array(cols[k], pa.string()) for k in _CATEGORY_COLUMNS}}), bad


def _licences_of(items: Iterator) -> tuple[pa.Table, list[dict]]:
    keys, names, idx = [], [], []
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("id") is not None:
            keys.append(_text(item.get("id")))
            names.append(_text(item.get("name")))
            idx.append(i)
    return pa.table({"key": pa.array(keys, pa.string()), "name": pa.array(names, pa.string()),
                     "_i": pa.array(idx, pa.int64())}), []


def _annotations_of(items: Iterator) -> tuple[pa.Table, list[dict]]:
    """annotations[] -> (image_id, category_id) int64 columns, in batches; badly typed ones are rejected."""
    tables, bad = [], []
    batch: list = []
    start = 0

    def flush():
        nonlocal start, batch
        try:
            img = pa.array([a.get("image_id") for a in batch])
            cat = pa.array([a.get("category_id") for a in batch])
            ok = img.type == cat.type == pa.int64() and img.null_count == cat.null_count == 0
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, AttributeError, TypeError):
            ok = False
        if not ok:
            keep_img, keep_cat = [], []
            for j, a in enumerate(batch):
                if not isinstance(a, dict):
                    bad.append(dict(row=start + j, field="annotations", reason="bad_type", value=a))
                    continue
                problem = None
                for fld in ("image_id", "category_id"):
                    v = a.get(fld)
                    if v is None or not _is_int64(v):
                        problem = dict(row=start + j, field=f"annotations.{fld}", value=v,
                                       reason="missing_field" if v is None else "bad_type")
                        break
                if problem:
                    bad.append(problem)
                else:
                    keep_img.append(a["image_id"])
                    keep_cat.append(a["category_id"])
            img, cat = pa.array(keep_img, pa.int64()), pa.array(keep_cat, pa.int64())
        tables.append(pa.table({"image_id": img, "category_id": cat}))
        start += len(batch)
        batch = []

    for a in items:
        batch.append(a)
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    schema = pa.schema([("image_id", pa.int64()), ("category_id", pa.int64())])
    return (pa.concat_tables(tables) if tables else schema.empty_table()), bad


def _drain(items: Iterator) -> None:
    for _ in items:
        pass


def _is_int64(v) -> bool:
    return type(v) is int and _INT64[0] <= v <= _INT64[1]


def _text(v) -> str | None:
    """A label value as text: strings as given ('' = missing), numbers as their decimal form."""
    if v is None:
        return None
    if isinstance(v, str):
        return v if v != "" else None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _file_safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", s) or "_"


# ----------------------------------------------------------------------------------------- byte ranges
class _CountingReader:
    """A file whose reads are counted: where ijson was when it produced an item."""

    def __init__(self, path: Path):
        self._f = open(path, "rb")
        self.pos = 0
        self.last = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.last = len(data)
        self.pos += self.last
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class _Window:
    """The bytes [start, end) of a file between a prefix and a suffix, as a readable file."""

    def __init__(self, path: Path, start: int, end: int, prefix: bytes, suffix: bytes):
        self._f = open(path, "rb")
        self._f.seek(start)
        self._left = end - start
        self._prefix, self._suffix = prefix, suffix

    def read(self, n: int = -1) -> bytes:
        if n == 0:  # ijson's probe for bytes or str
            return b""
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        if self._left > 0:
            data = self._f.read(self._left if n < 0 else min(n, self._left))
            self._left -= len(data)
            if data:
                return data
            self._left = 0
        data, self._suffix = self._suffix, b""
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _find_all(f, needle: bytes, areas: list[tuple[int, int]], block: int = 1 << 24) -> list[int]:
    found: set[int] = set()
    for lo, hi in areas:
        pos = lo
        while pos < hi:
            f.seek(pos)
            data = f.read(min(block + len(needle) - 1, hi - pos))
            i = data.find(needle)
            while i != -1:
                found.add(pos + i)
                i = data.find(needle, i + 1)
            pos += block
    return sorted(found)


def _contains_key(path: Path, key: str, areas) -> bool:
    with open(path, "rb") as f:
        return any(_is_key_at(f, p, len(key) + 2) for p in _find_all(f, b'"' + key.encode() + b'"', areas))


def _is_key_at(f, pos: int, length: int) -> bool:
    """Is the string at pos an object key: an unescaped quote, and ':' after it (whitespace aside)?"""
    back = 0
    while True:  # count the backslashes right before the quote: odd = escaped, inside a string
        lo = max(0, pos - back - 64)
        f.seek(lo)
        chunk = f.read(pos - back - lo)
        stripped = chunk.rstrip(b"\\")
        back += len(chunk) - len(stripped)
        if stripped or lo == 0:
            break
    if back % 2:
        return False
    f.seek(pos + length)
    while True:
        after = f.read(256)
        rest = after.lstrip(b" \t\r\n")
        if rest:
            return rest[:1] == b":"
        if not after:
            return False


def _ends_with_comma(f, start: int, end: int) -> bool:
    lo = max(start, end - 4096)
    f.seek(lo)
    return f.read(end - lo).rstrip(b" \t\r\n").endswith(b",")


# ============================================================================================ archives



"""Benchmark tasks: a manifest's `[benchmark]` table, the images and labels it points at, its class strings.

Owns reading a task straight from disk (metadata + images, no build, no taxonomy) and the label semantics:
the classes are always the benchmark's own (the distinct values of its class column, or its class folders), so
labels that are not taxa (`Tomato___Late_blight`, an insect family) stay classes of their own. What differs is
only the text a class is written as (its *text type*):

* `asis`   the class string as published, BioCLIP's default (its evaluation feeds the CSV's `class` as it is);
* `clean`  the class string through the manifest's `clean` rules (data, not code per set): `{ regex, replace }`
           substitutions and `{ strip_authority = true }` (the taxonomy's name parser keeps the binomial of a
           name with authorship), whitespace collapsed after them;
* a text type of text.py (`sci`, `com`, `taxon`, `sci_com`, `taxon_com`, ...) when the manifest maps rank
  columns (`rank_columns`, `common_column`): the strings BioCLIP's training captions use.

`comparable` names the text type of the "as BioCLIP" number per model family (`bioclip`, `clip`, `openclip`,
`default`). The format is documented in manifests/evalsets/README.md. No torch here.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import from_dict
from ..errors import ConfigError, InputError, TolError
from ..fileio import inside, retrieve
from ..manifest import Manifest, load_manifest
from ..records import RANKS
from ..text import TEXT_TYPES, taxon_texts

PLAIN_TYPES = ("asis", "clean")
FAMILIES = ("default", "bioclip", "clip", "openclip")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class BenchmarkSpec:
    """The `[benchmark]` table of a manifest (manifests/evalsets/README.md)."""

    name: str
    title: str = ""
    layout: str = ""  # "table" (metadata CSV: path + class columns) or "folders" (a folder per class); "" = by source
    images: str = ""  # the images folder, relative to --images-root (default: the manifest's folder)
    test_dir: str = ""  # folders layout: the sub-folder of the scored images ("test")
    shots_dir: str = ""  # folders layout: the sub-folder few-shot shots are drawn from ("train"); "" = the scored
    path_column: str = "filepath"
    class_column: str = "class"
    rank_columns: dict = field(default_factory=dict)  # records rank (kingdom .. species) -> column
    common_column: str = ""
    text_types: list[str] = field(default_factory=lambda: ["asis"])
    comparable: dict = field(default_factory=lambda: {"default": "asis"})  # model family -> text type
    clean: list[dict] = field(default_factory=list)  # rules: {regex, replace} or {strip_authority = true}
    metadata_upstream: str = ""  # where the pinned metadata is published (informative)


@dataclass
class Task:
    spec: BenchmarkSpec
    manifest: Manifest
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def layout(self) -> str:
        return self.spec.layout or ("folders" if self.manifest.source == "image_folder" else "table")

    def text_type(self, family: str) -> str:
        """The text type of the number comparable with BioCLIP's table for a model family."""
        c = self.spec.comparable
        return c.get(family) or c["default"]


def load_task(path: str | Path) -> Task:
    m = load_manifest(path)
    if not m.benchmark:
        raise ConfigError(m.path, "benchmark", "a [benchmark] table (name, class_column, text_types ...)", "missing")
    spec = from_dict(BenchmarkSpec, m.benchmark, m.path, prefix="benchmark")
    _check(spec, m)
    return Task(spec, m, m.path)


def _check(spec: BenchmarkSpec, m: Manifest) -> None:
    p = m.path
    if not _NAME.match(spec.name):
        raise ConfigError(p, "benchmark.name", "a name of letters, digits and _ starting with a letter", spec.name)
    if spec.layout not in ("", "table", "folders"):
        raise ConfigError(p, "benchmark.layout", "\"table\" or \"folders\"", spec.layout)
    bad_ranks = set(spec.rank_columns) - set(RANKS)
    if bad_ranks:
        raise ConfigError(p, "benchmark.rank_columns", f"keys among {', '.join(RANKS)}", sorted(bad_ranks)[0])
    for t in spec.text_types:
        if t in PLAIN_TYPES:
            continue
        if t not in TEXT_TYPES:
            raise ConfigError(p, "benchmark.text_types", f"asis, clean or one of {', '.join(TEXT_TYPES)}", t)
        if not spec.rank_columns:
            raise ConfigError(p, "benchmark.text_types", "asis or clean only (a taxonomic text type needs "
                              "benchmark.rank_columns)", t)
    if "clean" in spec.text_types and not spec.clean:
        raise ConfigError(p, "benchmark.clean", "rules for the 'clean' text type", "none")
    for i, rule in enumerate(spec.clean):
        if not isinstance(rule, dict) or not (set(rule) == {"regex", "replace"} or rule == {"strip_authority": True}):
            raise ConfigError(p, f"benchmark.clean[{i}]", "{ regex = \"...\", replace = \"...\" } or "
                              "{ strip_authority = true }", str(rule))
        if "regex" in rule:
            try:
                re.compile(rule["regex"])
            except re.error as e:
                raise ConfigError(p, f"benchmark.clean[{i}].regex", "a regular expression", str(e)) from None
    if "default" not in spec.comparable:
        raise ConfigError(p, "benchmark.comparable", "a `default` text type", "none")
    for fam, t in spec.comparable.items():
        if fam not in FAMILIES:
            raise ConfigError(p, f"benchmark.comparable.{fam}", f"a model family ({', '.join(FAMILIES)})", fam)
        if t not in spec.text_types:
            raise ConfigError(p, f"benchmark.comparable.{fam}", f"one of text_types {spec.text_types}", t)


def tasks_folder() -> Path:
    from ..resources import project_path

    return project_path("manifests") / "evalsets"


def all_tasks(folder: Path | None = None) -> list[Task]:
    """Every manifest with a [benchmark] table in `folder` (default: the project's manifests/evalsets)."""
    out = []
    for p in sorted(Path(folder or tasks_folder()).glob("*.toml")):
        m = load_manifest(p)
        if m.benchmark:
            out.append(load_task(p))
    return out


def find_tasks(names: str | list[str], folder: Path | None = None) -> list[Task]:
    """`all`, or task names and manifest paths (comma-separated or a list), in the order given."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    known = {t.name: t for t in all_tasks(folder)}
    out: list[Task] = []
    for item in items:
        if item == "all":
            out.extend(known.values())
        elif item.endswith(".toml"):
            out.append(load_task(item))
        elif item in known:
            out.append(known[item])
        else:
            raise TolError(f"--tasks: no benchmark {item!r} (known: all, {', '.join(known)}; or a manifest path)")
    seen: set = set()
    return [t for t in out if not (t.name in seen or seen.add(t.name))]


# ---- labels --------------------------------------------------------------------------------------------------

def clean_label(value: str, rules: list[dict]) -> str:
    """A class string through the manifest's `clean` rules, whitespace collapsed."""
    from ..taxonomy.names import scientific

    for rule in rules:
        if "regex" in rule:
            value = re.sub(rule["regex"], rule["replace"], value)
        elif rule.get("strip_authority"):
            _, binomial, note = scientific(value)
            if binomial and note == "authorship":
                value = binomial
    return " ".join(value.split())


@dataclass
class TaskData:
    """A task's images and labels, read from disk: the scored images and, where the task has a separate split
    for them (Birds 525), the images few-shot shots are drawn from."""

    task: Task
    images_dir: Path
    metadata: Path | None
    classes: list[str]  # the benchmark's own classes (as published), sorted
    paths: list[Path]  # scored images
    y: np.ndarray  # class index of each
    shot_paths: list[Path] = field(default_factory=list)
    shot_y: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ranks: list[dict] = field(default_factory=list)  # per class: rank -> name (tables with rank_columns)
    commons: list = field(default_factory=list)  # per class: common name or None
    skipped: dict = field(default_factory=dict)  # reason -> count (e.g. missing_image)

    @property
    def name(self) -> str:
        return self.task.name

    def strings(self, text_type: str) -> list[str]:
        """The class strings of a text type, one per class, in class order."""
        spec = self.task.spec
        if text_type not in spec.text_types:
            raise TolError(f"{self.task.path}: task {self.name!r} offers text types {spec.text_types}, "
                           f"not {text_type!r}")
        if text_type == "asis":
            return list(self.classes)
        if text_type == "clean":
            return [clean_label(c, spec.clean) for c in self.classes]
        out = []
        for c, ranks, common in zip(self.classes, self.ranks, self.commons):
            try:
                out.append(taxon_texts(ranks, common).names[text_type])
            except ValueError as e:
                raise InputError(self.metadata or self.images_dir, f"class {c!r}: {e}",
                                 field=spec.class_column) from None
        return out

    def fingerprint(self) -> str:
        """What the cached image features depend on: the files (path, size, modification time) in order."""
        h = hashlib.sha256()
        for group in (self.paths, self.shot_paths):
            h.update(b"--\n")
            for p in group:
                st = os.stat(p)
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def images_dir(task: Task, images_root: Path | None) -> Path:
    """Where a task's images are: --images-root / `images` (or the manifest's folder / `images`)."""
    base = Path(images_root) if images_root is not None else task.path.parent
    return (base / task.spec.images) if task.spec.images else base


def metadata_file(task: Task, folder: Path, cache: Path | None = None) -> Path | None:
    """The task's metadata, verified against the manifest's pins (md5, sha256, size): the file of that name
    in the images folder when there is one, else the manifest's url (a local path in place, a URL into
    `cache`). None for a task without metadata (folders layout)."""
    files = task.manifest.files_with("metadata")
    if not files:
        return None
    f = files[0]
    local = folder / f.name
    uri = str(local) if local.is_file() else task.manifest.url(f)
    dest = inside(Path(cache or folder), f"{task.name}-{f.name}")
    return retrieve(uri, dest, md5=f.md5 or None, sha256=f.sha256 or None, size=f.bytes or None)


def read_table_rows(task: Task, path: Path) -> list[dict]:
    """The metadata's rows as {column: value} (BioCLIP's CSVs are small: at most 12,000 rows); a missing column
    is an error naming the file and field, a row without a path or class one naming its row."""
    spec = task.spec
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        needed = [spec.path_column, spec.class_column, *spec.rank_columns.values(),
                  *([spec.common_column] if spec.common_column else [])]
        for col in needed:
            if col not in header:
                raise InputError(path, f"no column '{col}' (the header has {header})", row=0, field=col)
        rows = []
        for i, row in enumerate(reader, 1):
            for col in (spec.path_column, spec.class_column):
                if not (row.get(col) or "").strip():
                    raise InputError(path, "empty value", row=i, field=col)
            rows.append(row)
    return rows


def class_names(task: Task, metadata: Path) -> list[str]:
    """The benchmark's classes as BioCLIP's `asis` names them: the distinct class values, sorted."""
    return sorted({r[task.spec.class_column] for r in read_table_rows(task, metadata)})


def _folder_listing(root: Path) -> list[tuple[str, Path]]:
    """(class folder name, image path) of a folder per class, sorted."""
    if not root.is_dir():
        raise InputError(root, "no such images folder (one sub-folder per class)")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(d.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES:
                out.append((d.name, f))
    if not out:
        raise InputError(root, "no images in its class folders")
    return out


def read_task(task: Task, images_root: Path | None = None, *, cache: Path | None = None) -> TaskData:
    """A task's images and labels from disk. Images the metadata lists but the folder lacks are left out and
    counted (`skipped["missing_image"]`); none found at all is an error naming the folder."""
    spec = task.spec
    folder = images_dir(task, images_root)
    skipped: dict = {}
    if task.layout == "folders":
        listing = _folder_listing(folder / spec.test_dir if spec.test_dir else folder)
        classes = sorted({c for c, _ in listing})
        index = {c: i for i, c in enumerate(classes)}
        paths, y = [p for _, p in listing], [index[c] for c, _ in listing]
        shot_paths, shot_y = [], []
        if spec.shots_dir:
            for c, p in _folder_listing(folder / spec.shots_dir):
                if c in index:  # a class the scored split lacks cannot be scored
                    shot_paths.append(p)
                    shot_y.append(index[c])
                else:
                    skipped["shot_class_not_scored"] = skipped.get("shot_class_not_scored", 0) + 1
        return TaskData(task, folder, None, classes, paths, np.asarray(y, dtype=np.int64), shot_paths,
                        np.asarray(shot_y, dtype=np.int64), skipped=skipped)
    meta = metadata_file(task, folder, cache)
    rows = read_table_rows(task, meta)
    classes = sorted({r[spec.class_column] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    ranks: list = [None] * len(classes)
    commons: list = [None] * len(classes)
    paths, y = [], []
    for r in rows:
        ci = index[r[spec.class_column]]
        if ranks[ci] is None:  # a class's lineage and common name: its first row's
            ranks[ci] = {rank: (r.get(col) or "").strip() or None for rank, col in spec.rank_columns.items()}
            commons[ci] = (r.get(spec.common_column) or "").strip() or None if spec.common_column else None
        p = folder / r[spec.path_column].strip()
        if not p.is_file():
            skipped["missing_image"] = skipped.get("missing_image", 0) + 1
            continue
        paths.append(p)
        y.append(ci)
    if not paths:
        raise InputError(folder, f"none of the {len(rows):,} images of {meta} is there (the folder should hold "
                         f"the `{spec.path_column}` paths; set --images-root)")
    return TaskData(task, folder, meta, classes, paths, np.asarray(y, dtype=np.int64),
                    ranks=ranks if spec.rank_columns else [], commons=commons, skipped=skipped)


def cut_at_rank(data: TaskData, rank: str) -> tuple[TaskData, np.ndarray]:
    """The task scored at a higher rank (issue 21 item 4, rank-cut class strings): its classes become the
    distinct taxonomic strings cut at `rank` ("Animalia Chordata Aves Gruiformes Gruidae Grus" at genus: BioCLIP's
    `taxon` text at that rank), each image labelled by its class's lineage. Images whose class does not name that
    rank are left out (counted as skipped["rank_unknown"]). Returns (the cut task, which of data's scored images
    it keeps). Only tasks with rank columns can be cut."""
    if rank not in RANKS:
        raise TolError(f"--rank: one of {', '.join(RANKS)}, got {rank!r}")
    if not data.ranks:
        raise TolError(f"{data.task.path}: task {data.name!r} has no rank columns, so it cannot be scored at {rank}")
    depth = RANKS.index(rank) + 1
    lineages = [tuple((r or {}).get(k) for k in RANKS[:depth]) for r in data.ranks]
    groups = sorted({lin for lin in lineages if lin[-1]}, key=lambda lin: [x or "" for x in lin])
    names = [" ".join(x for x in lin if x) for lin in groups]
    index = {lin: i for i, lin in enumerate(groups)}
    new_of_old = np.asarray([index.get(lin, -1) for lin in lineages], dtype=np.int64)
    y = new_of_old[data.y] if len(data.y) else data.y
    keep = y >= 0
    skipped = dict(data.skipped)
    if (~keep).any():
        skipped["rank_unknown"] = int((~keep).sum())
    shot_y = new_of_old[data.shot_y] if len(data.shot_y) else data.shot_y
    shot_keep = shot_y >= 0
    cut = TaskData(data.task, data.images_dir, data.metadata, names, [p for p, k in zip(data.paths, keep) if k],
                   y[keep], [p for p, k in zip(data.shot_paths, shot_keep) if k], shot_y[shot_keep],
                   ranks=[{k: (lin[i] if i < depth else None) for i, k in enumerate(RANKS)} for lin in groups],
                   commons=[None] * len(groups), skipped=skipped)
    return cut, keep

"""`image_folder`: a folder of images, one sub-folder per class (the layout of most benchmarks).

    <root>/<class>/<image>.jpg        e.g. Meta-Album, PlantNet, or a user's own collection

The root is the manifest's `media` file (a local folder). A class folder's name is the scientific name
(underscores read as spaces: `Amanita_excelsa`); an optional `metadata` file, a CSV with a `folder` column
and any of the records' rank / name columns (kingdom ... species, scientific_name, common_name), gives the
lineage of each folder instead. Records: source_id = the image's path relative to the root; media_uri = its
absolute path. Files are listed in sorted order, so the same folder always gives the same records (`_row` =
the position in that order); a path that is not UTF-8 is rejected as `undecodable_name`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ..errors import InputError
from ..urlpolicy import local_path as local_file
from ..fileio import inside, retrieve
from ..records import RAW_COLUMNS, RejectLog, arrow_of, duckdb_connection
from .base import Partition, Source, raw_table
from .formats import read_delimited, sql_ident, tsv_header
from .rare_species import media_root

LABEL_COLUMNS = ("kingdom", "phylum", "class", "order", "family", "genus", "species", "scientific_name",
                 "common_name")


@dataclass
class ImageFolderOptions:
    extensions: list = field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif",
                                                      ".tiff"])


class ImageFolderSource(Source):
    name = "image_folder"
    Options = ImageFolderOptions
    description = "a folder of images with one sub-folder per class (folder name = scientific name, or a labels CSV)"
    local_media = True

    @classmethod
    def input_digest(cls, manifest, options: dict) -> str:
        """The folder's listing (paths, sizes, modification times): an added or changed image is noticed."""
        import hashlib

        media = manifest.files_with("media")
        root = local_file(manifest.url(media[0])) if media else None
        h = hashlib.sha256()
        if root is not None and root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    st = os.stat(os.path.join(dirpath, name))
                    h.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}:{st.st_size}:{st.st_mtime_ns}\n"
                             .encode())
        return h.hexdigest()

    def plan(self) -> list[Partition]:
        root = local_file(media_root(self))
        if root is None or not root.is_dir():
            raise InputError(self.manifest.path, f"the images folder {media_root(self)} is not a local folder",
                             field="files")
        inputs = [("root", str(root))]
        labels = self.manifest.files_with("metadata")
        if labels:
            f = labels[0]
            path = retrieve(self.manifest.url(f), inside(self.cache, f.name), md5=f.md5 or None,
                            sha256=f.sha256 or None, size=f.bytes or None)
            inputs += [("labels", str(path)), ("labels_name", f.name)]
        return [Partition("folder", tuple(inputs))]

    def read(self, partition: Partition, rejects: RejectLog) -> Iterator[tuple[str, pa.Table]]:
        root = Path(partition.get("root"))
        wanted = {e.lower() for e in self.options.extensions}
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if not name.startswith(".") and Path(name).suffix.lower() in wanted:
                    files.append(Path(dirpath, name).relative_to(root).as_posix())
        files.sort()
        rows = []
        for i, f in enumerate(files, 1):
            try:
                f.encode("utf-8")
                rows.append(i)
            except UnicodeEncodeError:  # a name that is not UTF-8 (a Linux file system allows any bytes): it has
                # no text form for the records, so it is rejected (named with its bytes escaped), not a crash
                rejects.add(file=str(root), row=i, field="source_id", reason="undecodable_name",
                            value=os.fsencode(f).decode("utf-8", "backslashreplace"))
        files = [files[i - 1] for i in rows]
        folders = [f.rsplit("/", 1)[0] if "/" in f else None for f in files]
        table = raw_table({
            "source_id": files, "media_uri": [str(root / f) for f in files],
            "scientific_name": [None if d is None else " ".join(d.rsplit("/", 1)[-1].replace("_", " ").split())
                                for d in folders], "_row": rows}, len(files))
        if partition.get("labels"):
            table = self._apply_labels(table, folders, Path(partition.get("labels")),
                                       partition.get("labels_name"), rejects)
        yield str(root), table

    def _apply_labels(self, table: pa.Table, folders: list, path: Path, label: str, rejects: RejectLog) -> pa.Table:
        """Lineages per class folder from the labels CSV (folders it does not list keep their folder name)."""
        names = tsv_header(path, label, delim=",")
        if "folder" not in names:
            raise InputError(label, f"no column 'folder' (the header has {names})", row=0, field="folder")
        given = [c for c in LABEL_COLUMNS if c in names]
        labels = read_delimited(path, names, ["folder", *given], label=label, delim=",", quote='"', header=True,
                                rejects=rejects, threads=self.threads)
        con = duckdb_connection(self.threads)
        con.register("recs", table.append_column("_folder", pa.array(folders, pa.string())))
        con.register("labels", labels)
        cols = []
        for c in RAW_COLUMNS:
            if c in given:
                keep = "l.folder IS NULL" if c == "scientific_name" else "false"
                cols.append(f"CASE WHEN {keep} THEN r.{sql_ident(c)} ELSE NULLIF(trim(l.{sql_ident(c)}), '') END "
                            f"AS {sql_ident(c)}")
            else:
                cols.append(f"r.{sql_ident(c)}")
        out = arrow_of(con.sql(f"""SELECT {', '.join(cols)}, r._row FROM recs r
            LEFT JOIN (SELECT DISTINCT ON (folder) * FROM labels ORDER BY folder, _row) l ON l.folder = r._folder
            ORDER BY r._row"""))
        con.close()
        return out

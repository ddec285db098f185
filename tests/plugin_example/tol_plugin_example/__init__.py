"""A tol_builder image source in 30 lines: records from a JSON-lines file, one object per image.

    {"id": "h-001", "url": "https://example.org/h-001.jpg", "genus": "Pica", "species": "hudsonia"}

Any records column (tol_builder.records.RAW_COLUMNS) may appear under its own name; `id` and `url` are the
source id and the image URL. A line that is not a JSON object is a reject naming its row; the build goes on.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from tol_builder.fileio import inside, retrieve
from tol_builder.records import RAW_COLUMNS
from tol_builder.sources import Partition, Source, raw_table


@dataclass
class Options:
    licence: str = ""  # a licence for every image that has none of its own


class JsonLinesSource(Source):
    name = "jsonl"
    Options = Options
    description = "one JSON object per line: id, url and any records column (example plugin)"

    def plan(self):
        files = self.manifest.files_with("metadata")
        paths = [retrieve(self.manifest.url(f), inside(self.cache, f.name), md5=f.md5 or None) for f in files]
        return [Partition(f"lines-{i:04d}", (("path", str(p)),)) for i, p in enumerate(paths)]

    def read(self, partition, rejects):
        path = Path(partition.get("path"))
        cols = {c: [] for c in (*RAW_COLUMNS, "_row")}
        for row, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                obj = json.loads(line)
                assert isinstance(obj, dict)
            except (ValueError, AssertionError):
                rejects.add(file=path.name, row=row, reason="not_a_json_object", value=line)
                continue
            obj = {"source_id": obj.pop("id", None), "media_uri": obj.pop("url", None), **obj}
            obj.setdefault("licence", self.options.licence or None)
            for c in RAW_COLUMNS:
                cols[c].append(None if obj.get(c) is None else str(obj[c]))
            cols["_row"].append(row)
        yield path.name, raw_table(cols, len(cols["_row"]))

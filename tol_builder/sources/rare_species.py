"""`rare_species`: BioCLIP's Rare Species benchmark (400 IUCN-listed species, 11,983 EOL images).

Its metadata (Imageomics/bioclip data/annotation/rare_species/metadata.csv) is a CSV with the header
`,kingdom,phylum,cls,order,family,genus,species,common_name,filepath,class`: seven ranks (`cls` is the class,
`species` the epithet), an English common name, `class` = "Genus species", and `filepath` =
`<date>/<EOL content id>_<EOL page id>_eol-full-size-copy.jpg`, relative to the folder of images. Records:

* source_id = the EOL content id (the file path when the name does not follow that pattern), so that the
  dedup stage can match it against the pool's EOL records (`same_ids_as = "eol"`, together with the page id);
* source_taxon_id = the EOL page id; media_uri = the images folder (the manifest's `media` file) + filepath.

Written for evaluation sets (manifests/evalsets/rare_species.toml), usable as a pool source too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ..errors import InputError
from ..fileio import inside, retrieve
from ..records import RejectLog, arrow_of, duckdb_connection
from .base import Partition, Source
from .formats import read_delimited, tsv_header

COLUMNS = {"kingdom": "kingdom", "phylum": "phylum", "class": "cls", "order": "order", "family": "family",
           "genus": "genus", "species": "species", "common_name": "common_name", "scientific_name": "class"}
EOL_FILE = r"^(?:.*/)?([0-9]+)_([0-9]+)_eol-full-size-copy\.[A-Za-z]+$"


def media_root(source: Source) -> str:
    """The folder or base URL that a set's relative image paths start from: the manifest's `media` file."""
    media = source.manifest.files_with("media")
    if not media:
        raise InputError(source.manifest.path, "no [[files]] entry with role = \"media\" naming the folder (or base "
                         "URL) that holds the images", field="files")
    return source.manifest.url(media[0]).rstrip("/") + "/"


class RareSpeciesSource(Source):
    name = "rare_species"
    description = "BioCLIP's Rare Species benchmark: metadata.csv (seven ranks, filepath) + a folder of EOL images"
    local_media = True  # the images are a downloaded folder

    def plan(self) -> list[Partition]:
        parts = []
        for i, f in enumerate(self.manifest.files_with("metadata")):
            path = retrieve(self.manifest.url(f), inside(self.cache, f.name), md5=f.md5 or None,
                            sha256=f.sha256 or None, size=f.bytes or None)
            parts.append(Partition(f"metadata-{i:04d}", (("path", str(path)), ("label", f.name))))
        if not parts:
            raise InputError(self.manifest.path, "no [[files]] entry with role = \"metadata\"", field="files")
        return parts

    def read(self, partition: Partition, rejects: RejectLog) -> Iterator[tuple[str, pa.Table]]:
        path = Path(partition.get("path"))
        label = partition.get("label") or path.name
        # the first column (pandas' index) has no name: name it so that it can be declared
        names = [n or f"_column{i}" for i, n in enumerate(tsv_header(path, label, delim=","))]
        needed = sorted(set(COLUMNS.values()) | {"filepath"})
        missing = [c for c in needed if c not in names]
        if missing:
            raise InputError(label, f"no column '{missing[0]}' (the header has {names})", row=0, field=missing[0])
        table = read_delimited(path, names, needed, label=label, delim=",", quote='"', header=True,
                               rejects=rejects, threads=self.threads)
        con = duckdb_connection(self.threads)
        con.register("meta", table)
        ranks = ", ".join(f'NULLIF(trim("{src}"), \'\') AS "{col}"' for col, src in COLUMNS.items())
        out = arrow_of(con.sql(f"""
            SELECT coalesce(NULLIF(regexp_extract(fp, $pattern, 1), ''), fp) AS source_id,
                   CASE WHEN fp IS NULL THEN NULL WHEN fp LIKE '%://%' OR fp LIKE '/%' THEN fp
                        ELSE $root || fp END AS media_uri,
                   NULL::VARCHAR AS media_member, {ranks},
                   NULLIF(regexp_extract(fp, $pattern, 2), '') AS source_taxon_id,
                   NULL::VARCHAR AS licence, NULL::VARCHAR AS rights_holder, NULL::VARCHAR AS source_url,
                   NULL::VARCHAR AS source_split, _row
            FROM (SELECT *, NULLIF(trim(filepath), '') AS fp FROM meta)""",
                               params={"pattern": EOL_FILE, "root": media_root(self)}))
        con.close()
        yield label, out

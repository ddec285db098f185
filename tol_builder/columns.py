"""The seven ranks and the raw record columns, as plain Python: importable without pyarrow (the catalog's
documentation needs them on every `tol query`, whose start-up is part of each answer's time)."""

from __future__ import annotations

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

# name -> description (the catalog documents the table with these)
RAW_COLUMNS: dict[str, str] = {
    "source_id": "the image's id in its source (iNat21 file uuid, BIOSCAN processid, EOL content id)",
    "media_uri": "URL of the image, or of the archive that holds it (http, https, file or a path)",
    "media_member": "path of the image inside the archive at media_uri; null for per-image URLs",
    **{r: f"raw {r} as given by the source (null when missing)" for r in RANKS},
    "scientific_name": "raw scientific name as given (iNat21 name, BIOSCAN most specific name)",
    "common_name": "raw common (vernacular) name as given",
    "source_taxon_id": "the source's taxon id: iNat21 category id, BIOSCAN BIN, EOL page id",
    "licence": "licence of the image as given",
    "rights_holder": "rights holder as given",
    "source_url": "the page or original URL of the image at its source",
    "source_split": "the source's own split (train/val/test...), where it has one",
}

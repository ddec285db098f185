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

# Context of each image (issue 23): typed, nullable, after the RAW_COLUMNS in `records`. A reader gives the
# ones its source has as text columns beside RAW_COLUMNS (records.CONTEXT_RAW_SCHEMA); records.finalize parses
# and checks them with Arrow kernels and writes the type named here. A value that fails its check becomes null
# and is counted (records.clean_context); the record is kept.
# name -> (Arrow type name, description)
CONTEXT_COLUMNS: dict[str, tuple[str, str]] = {
    "observed_on": ("string", "date the organism was observed or collected, ISO 8601 at the precision the source "
                    "gave: '2019', '2019-06' or '2019-06-14' (a range keeps what its ends share); null when "
                    "missing, unparseable, before 1700 or in the future"),
    "latitude": ("float64", "decimal degrees WGS84, -90..90 (null with longitude when either is invalid)"),
    "longitude": ("float64", "decimal degrees WGS84, -180..180 (null with latitude when either is invalid)"),
    "coordinate_uncertainty_m": ("float64", "radius in metres around the coordinate (iNat21 location_uncertainty, "
                                 "GBIF coordinateUncertaintyInMeters); > 0"),
    "country_code": ("string", "ISO 3166-1 alpha-2 country code as given by the source (upper case)"),
    "basis_of_record": ("string", "Darwin Core basisOfRecord as given (HUMAN_OBSERVATION, PRESERVED_SPECIMEN...)"),
    "occurrence_id": ("string", "the occurrence's id at its source (Darwin Core occurrenceID)"),
    "dataset_id": ("string", "the dataset the record belongs to at its source (GBIF datasetKey)"),
    "dna_barcode": ("string", "nucleotide sequence (BIOSCAN nucraw), upper case IUPAC letters, '-' gaps and N runs"),
    "sample_id": ("string", "the specimen's sample id at its source (BIOSCAN sampleid)"),
}
CONTEXT_DOCS: dict[str, str] = {name: desc for name, (_, desc) in CONTEXT_COLUMNS.items()}

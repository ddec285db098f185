"""Write authority files in their real formats, from plain lineages: miniatures for the demo and tests,
and full-size synthetic ones for benchmarks.

Formats (SOURCES.md, "Other authorities" and "EOL"):

* ITIS chains `species_level_taxonomy_chains.csv` (TreeOfLife-10M metadata): one row per species with
  hierarchy strings (`-`-joined TSNs, `->`-joined names and ranks), the terminal species and its
  vernacular names (`, `-joined, with their languages), and the Kingdom .. Species columns;
* GBIF backbone DwC-A `backbone.zip`: `Taxon.tsv` (tab-separated, no quoting) and `VernacularName.tsv`,
  with a `meta.xml` like GBIF's;
* EOL Dynamic Hierarchy 2.1 `taxon.tab` (tab-separated; the `authority` column optional, as in some
  dumps), `vernacularnames.csv`, `provider_ids.csv.gz`;
* an authority manifest (`<name>.toml`) naming the files with their size and sha256.

A tree is given as paths: each taxon is a tuple of (name, rank) pairs from the root down, e.g.
`(("Life", ""), ("Metazoa", "kingdom"), ..., ("Pica hudsonia", "species"))`; nodes shared by paths are
written once. Nothing here reads a file; authorities.py does.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import file_digest

ITIS_COLUMNS = ["hierarchy_string_tsn", "hierarchy_string_names", "terminal_tsn", "terminal_scientific_name",
                "terminal_vernacular", "terminal_vernacular_lang", "hierarchy_string_ranks", "Kingdom", "Phylum",
                "Class", "Order", "Family", "Genus", "Species"]
GBIF_TAXON_COLUMNS = ["taxonID", "datasetID", "parentNameUsageID", "acceptedNameUsageID", "originalNameUsageID",
                      "scientificName", "scientificNameAuthorship", "canonicalName", "genericName",
                      "specificEpithet", "infraspecificEpithet", "taxonRank", "nameAccordingTo", "namePublishedIn",
                      "taxonomicStatus", "nomenclaturalStatus", "taxonRemarks", "kingdom", "phylum", "class",
                      "order", "family", "genus"]
GBIF_VERNACULAR_COLUMNS = ["taxonID", "vernacularName", "language", "country", "countryCode", "sex", "lifeStage",
                           "source"]
DH_COLUMNS = ["taxonID", "source", "furtherInformationURL", "acceptedNameUsageID", "parentNameUsageID",
              "scientificName", "taxonRank", "taxonomicStatus", "datasetID", "canonicalName", "authority", "eolID",
              "Landmark", "higherClassification"]
EOL_VERNACULAR_COLUMNS = ["page_id", "canonical_form", "vernacular_string", "language_code", "resource_name",
                          "is_preferred_by_resource", "is_preferred_by_eol"]
PROVIDER_COLUMNS = ["node_id", "resource_pk", "resource_id", "page_id", "preferred_canonical_for_page"]
SEVEN = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


@dataclass
class Node:
    id: str
    name: str
    rank: str
    parent: str  # "" at the root
    path: tuple  # names from the root
    extra: dict = field(default_factory=dict)


def tree(paths, id_of=None) -> list[Node]:
    """Nodes of the tree the paths describe, parents first, in first-seen order. `id_of(i, path)` gives a
    node's id (default: its 1-based position)."""
    nodes: dict[tuple, Node] = {}
    for p in paths:
        for depth in range(1, len(p) + 1):
            prefix = tuple(name for name, _ in p[:depth])
            if prefix in nodes:
                continue
            parent = nodes[prefix[:-1]].id if depth > 1 else ""
            i = len(nodes) + 1
            nodes[prefix] = Node(id_of(i, prefix) if id_of else str(i), p[depth - 1][0], p[depth - 1][1], parent,
                                 prefix)
    return list(nodes.values())


def _seven_of(path) -> dict:
    """The seven ranks of a path (species = the binomial)."""
    out = {r: "" for r in SEVEN}
    for name, rank in path:
        if rank in out:
            out[rank] = name
    return out


def write_itis_chains(path: Path, paths, vernaculars: dict | None = None, tsn_start: int = 100000) -> Path:
    """`paths`: species paths as (name, rank) pairs with ITIS rank names (Kingdom, Subkingdom, Phylum, ...).
    vernaculars: {binomial: [(name, language), ...]}. TSNs are numbered per distinct prefix."""
    vernaculars = vernaculars or {}
    tsn: dict[tuple, int] = {}
    rows = []
    for p in paths:
        names = [n for n, _ in p]
        ids = []
        for d in range(1, len(p) + 1):
            ids.append(tsn.setdefault(tuple(names[:d]), tsn_start + len(tsn)))
        seven = {r: "" for r in SEVEN}
        for name, rank in p:
            r = rank.lower()
            r = "phylum" if r == "division" else r
            if r in seven:
                seven[r] = name
        vn = vernaculars.get(names[-1], [])
        rows.append({"hierarchy_string_tsn": "-".join(map(str, ids)), "hierarchy_string_names": "->".join(names),
                     "terminal_tsn": str(ids[-1]), "terminal_scientific_name": names[-1],
                     "terminal_vernacular": ", ".join(v for v, _ in vn),
                     "terminal_vernacular_lang": ", ".join(lang for _, lang in vn),
                     "hierarchy_string_ranks": "->".join(r for _, r in p),
                     **{c: seven[c.lower()] for c in ITIS_COLUMNS[7:]}})
    return _write_csv(path, ITIS_COLUMNS, rows)


def _tsv(rows: list[dict], columns: list[str]) -> bytes:
    lines = ["\t".join(columns)]
    for r in rows:
        lines.append("\t".join(str(r.get(c, "") or "").replace("\t", " ") for c in columns))
    return ("\n".join(lines) + "\n").encode("utf-8")


GBIF_META = """<?xml version="1.0" encoding="utf-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"
        rowType="http://rs.tdwg.org/dwc/terms/Taxon">
    <files><location>Taxon.tsv</location></files>
    <id index="0"/>
  </core>
  <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy=""
             ignoreHeaderLines="1" rowType="http://rs.gbif.org/terms/1.0/VernacularName">
    <files><location>VernacularName.tsv</location></files>
    <coreid index="0"/>
  </extension>
</archive>
"""


def gbif_rows(paths, synonyms=(), start: int = 1000) -> list[dict]:
    """Taxon.tsv rows of the tree of `paths` (GBIF rank names: kingdom, phylum, ...; species names are
    binomials), plus synonyms: (synonym name, rank, accepted name) with the accepted name in the tree."""
    nodes = tree(paths, id_of=lambda i, _: str(start + i))
    by_name = {}
    rows = []
    for n in nodes:
        rows.append({"taxonID": n.id, "parentNameUsageID": n.parent, "canonicalName": n.name,
                     "scientificName": n.name, "taxonRank": n.rank.upper() if n.rank else "UNRANKED",
                     "taxonomicStatus": "accepted", "datasetID": "d7dddbf4-2cf0-4f39-9b2a-bb099caae36c"})
        by_name[n.name] = n
    # denormalised classification, as the backbone has it
    index = {n.id: n for n in nodes}
    for r in rows:
        n, cls = index[r["taxonID"]], {}
        cur = n
        while cur is not None:
            if cur.rank in SEVEN[:6] and cur.rank not in cls:
                cls[cur.rank] = cur.name
            cur = index.get(cur.parent)
        r.update(cls)
        if n.rank == "species":
            r["genericName"], r["specificEpithet"] = (n.name.split(" ") + [""])[:2]
    next_id = start + len(nodes) + 1
    for syn, rank, accepted in synonyms:
        acc = by_name[accepted]
        rows.append({"taxonID": str(next_id), "parentNameUsageID": acc.parent, "acceptedNameUsageID": acc.id,
                     "canonicalName": syn, "scientificName": syn, "taxonRank": rank.upper(),
                     "taxonomicStatus": "synonym"})
        next_id += 1
    return rows


def write_gbif_backbone(path: Path, rows: list[dict], vernaculars: list[dict] = ()) -> Path:
    """backbone.zip with Taxon.tsv, VernacularName.tsv and meta.xml."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("Taxon.tsv", _tsv(rows, GBIF_TAXON_COLUMNS))
        z.writestr("VernacularName.tsv", _tsv(list(vernaculars), GBIF_VERNACULAR_COLUMNS))
        z.writestr("meta.xml", GBIF_META)
    return path


def dh_rows(paths, pages: dict | None = None, start: int = 1) -> list[dict]:
    """DH 2.1 taxon.tab rows of the tree of `paths` (DH rank names; root "Life" unranked). pages:
    {path tuple of names or taxon name: EOL page id}; taxonIDs are EOL-%012d."""
    pages = pages or {}
    nodes = tree(paths, id_of=lambda i, _: f"EOL-{start + i - 1:012d}")
    rows = []
    for n in nodes:
        page = pages.get(n.path, pages.get(n.name, ""))
        rows.append({"taxonID": n.id, "source": f"demo:{n.id}", "furtherInformationURL": "",
                     "acceptedNameUsageID": "", "parentNameUsageID": n.parent, "scientificName": n.name,
                     "taxonRank": n.rank, "taxonomicStatus": "accepted", "datasetID": "demo",
                     "canonicalName": n.name, "authority": "", "eolID": str(page) if page else "", "Landmark": "",
                     "higherClassification": "|".join(n.path[:-1])})
    return rows


def write_dh_taxon_tab(path: Path, rows: list[dict], authority_column: bool = True) -> Path:
    cols = DH_COLUMNS if authority_column else [c for c in DH_COLUMNS if c != "authority"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_tsv(rows, cols))
    return path


def write_eol_vernaculars(path: Path, rows: list[dict]) -> Path:
    return _write_csv(path, EOL_VERNACULAR_COLUMNS, rows)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def write_provider_ids(path: Path, rows: list[dict]) -> Path:
    """provider_ids.csv.gz (gzip-compressed CSV with a header)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PROVIDER_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename=path.name.removesuffix(".gz"), mode="wb", fileobj=raw,
                                                mtime=0) as gz:
        gz.write(buf.getvalue().encode("utf-8"))
    return path


def sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def _toml_str(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_manifest(path: Path, name: str, format: str, files: list[dict], title: str = "", notes: str = "") -> Path:
    """An authority manifest. files: [{"role", "path" (relative to the manifest or absolute), "member"?}];
    size and sha256 are computed from the files."""
    lines = [f"name = {_toml_str(name)}", f"format = {_toml_str(format)}"]
    if title:
        lines.append(f"title = {_toml_str(title)}")
    if notes:
        lines.append(f"notes = {_toml_str(notes)}")
    for f in files:
        p = Path(f["path"])
        full = p if p.is_absolute() else path.parent / p
        lines += ["", "[[files]]", f"role = {_toml_str(f['role'])}", f"name = {_toml_str(full.name)}",
                  f"url = {_toml_str(str(f['path']))}", f"bytes = {full.stat().st_size}",
                  f"sha256 = {_toml_str(sha256(full))}"]
        if f.get("member"):
            lines.append(f"member = {_toml_str(f['member'])}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# the authorities' standard layout, every file under `files/` beside the manifests:
# manifest name -> (format, files, title)
AUTHORITY_FILES = {
    "itis": ("itis_chains", [{"role": "chains", "path": "files/species_level_taxonomy_chains.csv"}], "ITIS chains"),
    "gbif": ("gbif_dwca", [{"role": "taxon", "path": "files/backbone.zip", "member": "Taxon.tsv"},
                           {"role": "vernacular", "path": "files/backbone.zip", "member": "VernacularName.tsv"}],
             "GBIF backbone"),
    "eol": ("eol_dh", [{"role": "taxon", "path": "files/taxon.tab"},
                       {"role": "provider_ids", "path": "files/provider_ids.csv.gz"},
                       {"role": "vernacular", "path": "files/vernacularnames.csv"}], "EOL Dynamic Hierarchy 2.1"),
    "inaturalist": ("inat_common_names", [{"role": "common_names", "path": "files/common-names-mapping.json"}],
                    "iNat21 common names"),
}


def write_authority_manifests(d: Path, label: str = "", notes: str = "") -> dict[str, Path]:
    """The four manifests (`d/<name>.toml`) of authority files written in the standard layout under `d/files`;
    titled "<title> (<label>)" when a label is given."""
    return {name: write_manifest(d / f"{name}.toml", name, fmt, files, f"{title} ({label})" if label else "", notes)
            for name, (fmt, files, title) in AUTHORITY_FILES.items()}

"""Miniature taxonomic authorities for the demo, in the real formats, from the demo taxa (demo.taxa).

`write_demo_authorities(taxa, dest_dir)` writes, with a manifest each (sizes and sha256 of the files):

* `itis.toml` — ITIS chains (`species_level_taxonomy_chains.csv`): every species the iNat21 and BIOSCAN-1M
  miniatures name, and the EOL species whose Dynamic Hierarchy lineage differs from the expected one (the
  DH calls the orchids' phylum Streptophyta: ITIS supplies Tracheophyta), with the names of
  demo.taxa.OTHER_LANGUAGE_NAMES (one chain with names in several languages);
* `gbif.toml` — GBIF backbone (`backbone.zip`: Taxon.tsv, VernacularName.tsv, meta.xml): the BIOSCAN-1M
  lineages down to the ranks they give (family-only, genus-only samples) and both readings of each
  cross-kingdom homonym of demo.taxa.HOMONYMS (Laelia the orchid and Laelia the moth); VernacularName.tsv
  holds the GBIF names of OTHER_LANGUAGE_NAMES;
* `eol.toml` — EOL Dynamic Hierarchy 2.1 (`taxon.tab` with eolIDs), `provider_ids.csv.gz` and
  `vernacularnames.csv` (the EOL-preferred English names of the EOL pages, and their names in other
  languages from OTHER_LANGUAGE_NAMES);
* `inaturalist.toml` — BioCLIP's iNat21 common-name mapping (`common-names-mapping.json`).

Point a workflow's `[taxonomy] authorities_dir` at `dest_dir`. The taxonomy stage then arrives at each
taxon's `resolved` lineage (tests/test_taxonomy_demo.py checks it). This module writes files only.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..taxonomy import writers
from .taxa import HOMONYMS, OTHER_LANGUAGE_NAMES, RANKS, DemoTaxon

ITIS_RANK_NAMES = ("Kingdom", "Phylum", "Class", "Order", "Family", "Genus", "Species")
# DH kingdom names as kingdom_synonyms.csv maps them (the demo must not depend on reading that file)
DH_KINGDOMS = {"Metazoa": "Animalia", "Archaeplastida": "Plantae", "Chloroplastida": "Plantae",
               "Viridiplantae": "Plantae"}
DH_RESOURCE_ID = "724"  # the DH's resource in EOL's provider_ids (the real row of realdata/eol)


def _binomial(r: dict) -> str:
    return f"{r['genus']} {r['species']}" if r.get("genus") and r.get("species") else ""


def _resolved_path(r: dict, rank_names=RANKS, depth: int | None = None) -> tuple:
    """(name, rank) pairs of a resolved lineage, down to its deepest known rank (species as binomial)."""
    out = []
    for i, rank in enumerate(RANKS[: depth if depth is not None else 7]):
        value = r.get(rank) or ""
        if rank == "species":
            value = _binomial(r)
        if value:
            out.append((value, rank_names[i]))
    return tuple(out)


def _dh_seven(t: DemoTaxon) -> dict:
    """The seven ranks the DH lineage gives (kingdom mapped as the stage maps it, nearest rank wins)."""
    got = {r: "" for r in RANKS}
    for name, rank in reversed(t.dh_lineage):
        r = "kingdom" if name in DH_KINGDOMS and rank in ("", "clade", "kingdom") else rank
        if r in got and not got[r]:
            got[r] = DH_KINGDOMS.get(name, name) if r == "kingdom" else name
    if got["species"]:
        got["genus"] = got["genus"] or got["species"].split()[0]
        got["species"] = got["species"].split()[1]
    return got


def _other_names(t: DemoTaxon, authority: str) -> list[tuple[str, str, bool]]:
    """(language as the authority writes it, name, preferred) of a taxon's names in other languages."""
    return [(lang, name, pref) for a, lang, name, pref in OTHER_LANGUAGE_NAMES.get(t.key, []) if a == authority]


def write_demo_authorities(taxa: list[DemoTaxon], dest_dir: str | Path) -> dict[str, Path]:
    """Write the miniature authorities for `taxa` into `dest_dir`; {authority name: manifest path}."""
    d = Path(dest_dir)
    files = d / "files"
    files.mkdir(parents=True, exist_ok=True)
    # ITIS: species-level chains
    chains, seen, itis_names = [], set(), {}
    for t in taxa:
        if _other_names(t, "itis"):
            itis_names[_binomial(t.resolved)] = [(name, lang) for lang, name, _ in _other_names(t, "itis")]
        r = t.resolved
        if not _binomial(r):
            continue
        if t.source == "eol" and _dh_seven(t) == {k: (v or "") for k, v in r.items()}:
            continue  # the DH alone gives it: left to the DH, so the demo shows both paths
        path = _resolved_path(r, ITIS_RANK_NAMES)
        if len(path) == 7 and path not in seen:
            seen.add(path)
            chains.append(path)
    writers.write_itis_chains(files / "species_level_taxonomy_chains.csv", chains, itis_names)
    # GBIF: BIOSCAN lineages to the rank they give, and both readings of each homonym
    gbif_paths = []
    for t in taxa:
        if t.source == "bioscan1m":
            gbif_paths.append(_resolved_path(t.resolved))
    for name, readings in sorted(HOMONYMS.items()):
        for r in readings:
            gbif_paths.append(_resolved_path(r))
    rows = writers.gbif_rows(sorted(set(gbif_paths)))
    gbif_ids = {r["canonicalName"]: r["taxonID"] for r in rows}
    writers.write_gbif_backbone(files / "backbone.zip", rows, [
        {"taxonID": gbif_ids[_binomial(t.resolved)], "vernacularName": name, "language": lang, "source": "tol demo"}
        for t in taxa for lang, name, _ in _other_names(t, "gbif")])
    # EOL: the DH paths of the pages, their provider ids and EOL-preferred names
    eol = [t for t in taxa if t.source == "eol" and t.dh_lineage]
    pages = {tuple(n for n, _ in t.dh_lineage): int(t.ids["page_id"]) for t in eol}
    dh = writers.dh_rows([t.dh_lineage for t in eol], pages)
    writers.write_dh_taxon_tab(files / "taxon.tab", dh)
    by_page = {r["eolID"]: r for r in dh if r["eolID"]}
    writers.write_provider_ids(files / "provider_ids.csv.gz", [
        {"node_id": str(40_000_000 + i), "resource_pk": by_page[str(p)]["taxonID"], "resource_id": DH_RESOURCE_ID,
         "page_id": str(p), "preferred_canonical_for_page": by_page[str(p)]["canonicalName"]}
        for i, p in enumerate(sorted(pages.values()))])
    vernaculars = []
    for t in eol:
        names = [("eng", t.vernacular["eol_preferred"], True)] if t.vernacular.get("eol_preferred") else []
        for lang, name, preferred in names + _other_names(t, "eol"):
            flag = "preferred" if preferred else ""
            vernaculars.append({"page_id": str(t.ids["page_id"]), "canonical_form": f"<i>{t.scientific_name}</i>",
                                "vernacular_string": name, "language_code": lang, "resource_name": "tol demo",
                                "is_preferred_by_resource": flag, "is_preferred_by_eol": flag})
    writers.write_eol_vernaculars(files / "vernacularnames.csv", vernaculars)
    # BioCLIP's iNat21 common-name mapping
    mapping = {str(int(t.ids["category_id"])): t.vernacular["bioclip_inat21_mapping"] for t in taxa
               if t.source == "inat21" and t.vernacular.get("bioclip_inat21_mapping")}
    (files / "common-names-mapping.json").write_text(json.dumps(mapping, indent=1, sort_keys=True) + "\n",
                                                     encoding="utf-8")
    note = "miniature written by tol_builder.demo.authorities for the demo taxa (not real authority data)"
    return writers.write_authority_manifests(d, "demo", note)

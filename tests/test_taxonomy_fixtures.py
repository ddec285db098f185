"""Small authority fixtures in the real formats (ITIS chains CSV, GBIF backbone.zip, EOL DH taxon.tab +
vernacularnames.csv + provider_ids.csv.gz) and records of every kind, written into a tmp folder.

Helpers for the test_taxonomy_* modules (imported by them); the tests at the bottom check the fixtures
themselves are what the other tests assume.
"""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tol_builder import catalog
from tol_builder.config import SourceConfig, TaxonomyConfig, Workflow
from tol_builder.context import BuildContext
from tol_builder.records import RECORD_SCHEMA, make_uid
from tol_builder.runner import Runner
from tol_builder.taxonomy import writers

ITIS_RANKS = ("Kingdom", "Subkingdom", "Phylum", "Class", "Order", "Family", "Genus", "Species")


def itis_path(k, p, c, o, f, g, species):
    names = (k, f"{k}-sub", p, c, o, f, g, species)
    return tuple(zip(names, ITIS_RANKS))


ITIS_SPECIES = [
    itis_path("Animalia", "Arthropoda", "Insecta", "Diptera", "Cecidomyiidae", "Mayetiola", "Mayetiola destructor"),
    itis_path("Animalia", "Arthropoda", "Insecta", "Diptera", "Phoridae", "Megaselia", "Megaselia scalaris"),
    itis_path("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Erebidae", "Laelia", "Laelia coenosa"),
    itis_path("Plantae", "Tracheophyta", "Liliopsida", "Asparagales", "Orchidaceae", "Laelia", "Laelia anceps"),
    itis_path("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "Pica hudsonia"),
    itis_path("Animalia", "Chordata", "Mammalia", "Rodentia", "Sciuridae", "Marmota", "Marmota flaviventris"),
    # an older classification of the bark beetles: Scolytidae (most now say Curculionidae: Scolytinae)
    itis_path("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Scolytidae", "Xyleborus", "Xyleborus ferrugineus"),
    itis_path("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Curculionidae", "Curculio", "Curculio glandium"),
]
ITIS_VERNACULARS = {"Pica hudsonia": [("pie d'Amérique", "French"), ("black-billed magpie", "English")],
                    "Marmota flaviventris": [("yellow-bellied marmot", "English")]}


def gbif_path(*pairs):
    return tuple(pairs)


GBIF_PATHS = [
    # the Laelia homonyms at genus rank, and two "Aus" genera in one kingdom (a tie on lineage order)
    (("Animalia", "kingdom"), ("Arthropoda", "phylum"), ("Insecta", "class"), ("Lepidoptera", "order"),
     ("Erebidae", "family"), ("Laelia", "genus")),
    (("Plantae", "kingdom"), ("Tracheophyta", "phylum"), ("Liliopsida", "class"), ("Asparagales", "order"),
     ("Orchidaceae", "family"), ("Laelia", "genus")),
    (("Animalia", "kingdom"), ("Arthropoda", "phylum"), ("Insecta", "class"), ("Diptera", "order"),
     ("Culicidae", "family"), ("Aedes", "genus"), ("Aedes japonicus", "species")),
    (("Animalia", "kingdom"), ("Arthropoda", "phylum"), ("Insecta", "class"), ("Hemiptera", "order"),
     ("Miridae", "family"), ("Aus", "genus")),
    (("Animalia", "kingdom"), ("Arthropoda", "phylum"), ("Insecta", "class"), ("Hemiptera", "order"),
     ("Cicadellidae", "family"), ("Aus", "genus")),
    # Pterygota: a plant genus here; the insect Pterygota is a subclass (not one of the seven ranks)
    (("Plantae", "kingdom"), ("Tracheophyta", "phylum"), ("Magnoliopsida", "class"), ("Malvales", "order"),
     ("Malvaceae", "family"), ("Pterygota", "genus")),
]
GBIF_SYNONYMS = [("Ochlerotatus japonicus", "species", "Aedes japonicus")]

_LIFE = (("Life", ""), ("Cellular Organisms", ""), ("Eukaryota", "domain"), ("Opisthokonta", "clade"))
_MAMMALS = _LIFE + (("Metazoa", ""), ("Bilateria", "clade"), ("Deuterostomia", "clade"), ("Chordata", "phylum"),
                    ("Vertebrata", "subphylum"), ("Mammalia", "class"), ("Theria", "subclass"))
DH_PATHS = [
    # Metazoa is unranked here: it is the kingdom by its name (kingdom_synonyms.csv)
    _MAMMALS + (("Carnivora", "order"), ("Feliformia", "suborder"), ("Felidae", "family"),
                ("Pantherinae", "subfamily"), ("Panthera", "genus"), ("Panthera leo", "species"),
                ("Panthera leo leo", "subspecies")),
    _LIFE + (("Metazoa", "kingdom"), ("Chordata", "phylum"), ("Aves", "class"), ("Passeriformes", "order"),
             ("Corvidae", "family"), ("Pica", "genus"), ("Pica hudsonia", "species")),
    # a plant page whose DH phylum (Streptophyta) differs from ITIS's Tracheophyta
    _LIFE[:3] + (("Archaeplastida", "kingdom"), ("Chloroplastida", "clade"), ("Streptophyta", "phylum"),
                 ("Liliopsida", "class"), ("Asparagales", "order"), ("Orchidaceae", "family"),
                 ("Laelia", "genus"), ("Laelia anceps", "species")),
]
DH_PAGES = {"Panthera leo": 328672, "Panthera leo leo": 1052462, "Pica hudsonia": 45511123,
            "Laelia anceps": 1132711, "Metazoa": 1, "Panthera": 14346}
PROVIDER_ROWS = [  # a page the DH lacks, known by name only; and the DH root's own row (as the real one)
    {"node_id": "40989346", "resource_pk": "EOL-000000000001", "resource_id": "724", "page_id": "2913056",
     "preferred_canonical_for_page": "Life"},
    {"node_id": "51000001", "resource_pk": "x-123", "resource_id": "99", "page_id": "990001",
     "preferred_canonical_for_page": "Marmota flaviventris"},
]
EOL_VERNACULARS = [
    {"page_id": "328672", "canonical_form": "<i>Panthera leo</i>", "vernacular_string": "lion", "language_code": "eng",
     "resource_name": "demo", "is_preferred_by_resource": "preferred", "is_preferred_by_eol": "preferred"},
    {"page_id": "328672", "canonical_form": "<i>Panthera leo</i>", "vernacular_string": "African lion",
     "language_code": "eng", "resource_name": "demo", "is_preferred_by_resource": "", "is_preferred_by_eol": ""},
    {"page_id": "328672", "canonical_form": "<i>Panthera leo</i>", "vernacular_string": "león",
     "language_code": "spa", "resource_name": "demo", "is_preferred_by_resource": "preferred",
     "is_preferred_by_eol": "preferred"},
]
INAT_MAPPING = {"310": "7-spot ladybird"}


def write_authorities(dest: Path, dh_authority_column: bool = True) -> Path:
    """All fixture authorities with their manifests in `dest/authorities`; returns that folder."""
    d = dest / "authorities"
    writers.write_itis_chains(d / "files" / "species_level_taxonomy_chains.csv", ITIS_SPECIES, ITIS_VERNACULARS)
    rows = writers.gbif_rows(GBIF_PATHS, GBIF_SYNONYMS)
    writers.write_gbif_backbone(d / "files" / "backbone.zip", rows, [
        {"taxonID": r["taxonID"], "vernacularName": "Asian bush mosquito", "language": "en"}
        for r in rows if r["canonicalName"] == "Aedes japonicus"])
    dh = writers.dh_rows(DH_PATHS, DH_PAGES)
    writers.write_dh_taxon_tab(d / "files" / "taxon.tab", dh, authority_column=dh_authority_column)
    writers.write_eol_vernaculars(d / "files" / "vernacularnames.csv", EOL_VERNACULARS)
    writers.write_provider_ids(d / "files" / "provider_ids.csv.gz", PROVIDER_ROWS)
    (d / "files" / "common-names-mapping.json").write_text(json.dumps(INAT_MAPPING))
    write_manifests(d)
    return d


def write_manifests(d: Path) -> None:
    """The four manifests of the fixture authorities' files in `d/files` (sizes and sha256 of the files)."""
    writers.write_authority_manifests(d)


def seven(k=None, p=None, c=None, o=None, f=None, g=None, s=None) -> dict:
    return {"kingdom": k, "phylum": p, "class": c, "order": o, "family": f, "genus": g, "species": s}


# (source, ranks, scientific_name, source_taxon_id, common_name, number of images)
RECORDS = {
    "inat21": [
        (seven("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Curculionidae", "Xyleborus", "ferrugineus"),
         "Xyleborus ferrugineus", "1234", "Bark beetle", 3),
        (seven("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Coccinellidae", "Coccinella", "septempunctata"),
         "Coccinella septempunctata", "310", "Seven-spotted Lady Beetle", 2),
        (seven("Animalia", "Chordata", "Mammalia", "Rodentia", "Sciuridae", "Marmota", "flaviventris"),
         "Marmota flaviventris", "4831", "Yellow-bellied Marmot", 2),
    ],
    "bioscan1m": [
        (seven(None, "Arthropoda", "Insecta", "Diptera", "Cecidomyiidae"), "Cecidomyiidae", "BOLD:ACB4407", None, 4),
        (seven(None, "Arthropoda", "Insecta", "Diptera", "Cecidomyiidae"), "Cecidomyiidae", "BOLD:ACB4408", None, 1),
        (seven(None, "Arthropoda", "Insecta", "Diptera", "Phoridae", None, "phyMalaise01 Malaise2939"),
         "phyMalaise01 Malaise2939", "BOLD:ADH9130", None, 2),
        (seven(None, "Arthropoda", "Insecta", "Coleoptera", "Curculionidae", "Xyleborus", "Xyleborus ferrugineus"),
         "Xyleborus ferrugineus", "BOLD:ADK8172", None, 2),
        (seven(None, "Arthropoda", "Insecta", "Diptera", "Culicidae", "Ochlerotatus", "Ochlerotatus japonicus"),
         "Ochlerotatus japonicus", "BOLD:AAA0001", None, 1),
        (seven(None, None, None, None, None, "Laelia"), "Laelia", "BOLD:AAA0002", None, 1),
        (seven(None, "Arthropoda", "Insecta", "Diptera", "Phoridae", "Megaselia", "Megaselia sp. 3"),
         "Megaselia sp. 3", "BOLD:AAA0003", None, 1),
    ],
    "eol": [
        (seven(), None, "328672", None, 5),  # Panthera leo, DH only
        (seven(), None, "1052462", None, 1),  # Panthera leo leo (subspecies page)
        (seven(), None, "45511123", None, 2),  # Pica hudsonia, DH and ITIS
        (seven(), None, "1132711", None, 2),  # Laelia anceps: DH phylum Streptophyta, ITIS Tracheophyta
        (seven(), None, "990001", None, 1),  # not in the DH: provider_ids names it Marmota flaviventris
        (seven(), None, "777777", None, 3),  # unknown page
    ],
    "manual": [  # a generic table source giving names with and without context
        (seven(None, None, None, None, "Orchidaceae", "Laelia"), None, None, None, 1),
        (seven(None, None, None, "Lepidoptera", None, "Laelia"), None, None, None, 1),
        (seven(None, None, None, None, None, "Laelia"), None, None, None, 1),
        (seven(None, None, None, None, None, "Aus"), None, None, None, 1),
        (seven(), "Pica hudsonia (Forster, 1772)", None, None, 1),
        (seven(None, None, "Insecta", None, None, "Pterygota"), None, None, None, 1),
        (seven(None, None, None, None, "Orchidaceae", "Laelia", "Laelia anceps var. dawsonii"), None, None, None, 1),
        (seven(None, None, None, None, None, "Salix", "Salix × rubens"), None, None, None, 1),
        (seven(None, None, None, None, None, "Carex", "Carex cf. flava"), None, None, None, 1),
    ],
}
SOURCE_READERS = {"inat21": "inat21", "bioscan1m": "bioscan1m", "eol": "eol", "manual": "table"}


def write_records(out: Path, records: dict = RECORDS, shuffle_seed: int | None = None, parts: int = 1) -> int:
    """records/<source>/part-N.parquet in RECORD_SCHEMA. Returns the number of records."""
    n = 0
    for source, rows in records.items():
        recs = []
        for i, (ranks, sci, tid, common, count) in enumerate(rows):
            for j in range(count):
                sid = f"{source}-{i}-{j}"
                recs.append({"uid": make_uid(source, sid), "source": source, "source_id": sid,
                             "media_uri": f"http://127.0.0.1:9/{sid}.jpg", "media_member": None, **ranks,
                             "scientific_name": sci, "common_name": common, "source_taxon_id": tid,
                             "licence": "cc-by", "rights_holder": None, "source_url": None, "source_split": "train"})
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(recs)
        for k in range(parts):
            chunk = recs[k::parts]
            path = out / "records" / source / f"part-{k}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(chunk, schema=RECORD_SCHEMA), path)
        n += len(recs)
    catalog.register_parquet(out, "records", "records/*/*.parquet")
    return n


def make_workflow(tmp: Path, authorities: Path, source_ids=tuple(SOURCE_READERS), **taxonomy) -> Workflow:
    wf_path = tmp / "workflow.toml"
    wf_path.write_text("# written by the test\n")
    sources = [SourceConfig(name=SOURCE_READERS[sid], manifest=f"{sid}.toml", id=sid) for sid in source_ids]
    tc = TaxonomyConfig(authorities_dir=str(authorities), **taxonomy)
    return Workflow(name="t", out=str(tmp / "build"), sources=sources, taxonomy=tc, path=wf_path)


def run_stage(tmp: Path, authorities: Path | None = None, records: dict = RECORDS, shuffle_seed=None, parts: int = 1,
              out: Path | None = None, **taxonomy) -> tuple[Path, dict]:
    from tol_builder import taxonomy as stage

    authorities = authorities or write_authorities(tmp)
    out = out or tmp / "build"
    if not (out / "records").exists():
        write_records(out, records, shuffle_seed, parts)
    wf = make_workflow(tmp, authorities, tuple(records), **taxonomy)
    ctx = BuildContext(wf, out, Runner(out, client=None, progress=False), None, threads=1)
    return out, stage.run(ctx)


def lineage(out: Path, where: str) -> list[dict]:
    return catalog.query(out, f"""SELECT m.source, m.rule, m.authority, m.authority_id, m.anchor_rank, m.notes,
        m.images, t.* FROM lineage_map m LEFT JOIN taxa t USING (taxon_id) WHERE {where}
        ORDER BY m.lineage_key""").to_pylist()


def ranks_of(row: dict) -> tuple:
    return tuple(row[r] for r in ("kingdom", "phylum", "class", "order", "family", "genus", "species"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One stage run on all fixtures (shared by the tests of a module that asks for it)."""
    tmp = tmp_path_factory.mktemp("taxonomy")
    out, counters = run_stage(tmp, kingdom_synonyms="", homonym_fixes=str(_write_fixes(tmp)))
    return tmp, out, counters


def _write_fixes(tmp: Path) -> Path:
    p = tmp / "homonym_fixes.csv"
    p.write_text(textwrap.dedent("""\
        rank,name,context,kingdom,phylum,class,order,family,note
        genus,Laelia,source=bioscan1m,Animalia,Arthropoda,Insecta,Lepidoptera,Erebidae,BIOSCAN holds insects only
        """))
    return p


# ------------------------------------------------------------------------------ the fixtures themselves
def test_fixture_files_are_in_the_real_formats(tmp_path):
    import csv
    import gzip
    import zipfile

    d = write_authorities(tmp_path)
    with open(d / "files" / "species_level_taxonomy_chains.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == writers.ITIS_COLUMNS
    pica = next(r for r in rows if r["Species"] == "Pica hudsonia")
    assert pica["hierarchy_string_names"].split("->")[-1] == "Pica hudsonia"
    assert len(pica["hierarchy_string_tsn"].split("-")) == len(pica["hierarchy_string_ranks"].split("->")) == 8
    assert pica["terminal_vernacular_lang"] == "French, English"
    with zipfile.ZipFile(d / "files" / "backbone.zip") as z:
        assert {"Taxon.tsv", "VernacularName.tsv", "meta.xml"} <= set(z.namelist())
        header = z.read("Taxon.tsv").decode().splitlines()[0].split("\t")
    assert header[:3] == ["taxonID", "datasetID", "parentNameUsageID"] and "canonicalName" in header
    header = (d / "files" / "taxon.tab").read_text().splitlines()[0].split("\t")
    assert header == writers.DH_COLUMNS
    with gzip.open(d / "files" / "provider_ids.csv.gz", "rt") as f:
        assert f.readline().strip() == ",".join(writers.PROVIDER_COLUMNS)

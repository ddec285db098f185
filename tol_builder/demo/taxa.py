"""The taxa of the demo: every source's miniature in one explicit table.

This module owns the *facts* of the demo (which taxa, their ids, names and ranks exactly as each source
would write them, how many images, and how their pictures look). It writes nothing; `demo.sources` turns
it into files in the sources' real formats and `demo.images` draws the pictures.

It is also the input for miniature authority files (ITIS chains, GBIF backbone, EOL Dynamic Hierarchy,
vernacular names): each taxon carries

* `ranks`: the seven ranks as the *source* gives them (iNat21: capitalised ranks and the bare specific
  epithet; BIOSCAN-1M: `not_classified` for missing ranks, the full binomial in `species`, and `None` for
  kingdom, which it has no column for; EOL: `None` everywhere, because the media manifest has no names: its
  names come from the Dynamic Hierarchy, see `dh_lineage`);
* `resolved`: the seven ranks in BioCLIP's convention that the taxonomy stage should arrive at (species is
  the epithet; "" where the rank is unknown);
* `vernacular`: English common names by authority; `OTHER_LANGUAGE_NAMES` (below) adds names in other
  languages, written as each authority writes its language (EOL `spa`, GBIF `fr`, ITIS `German`), so that
  the catalog's `common_names` table of a demo build holds several languages;
* `dh_lineage`: for EOL pages, the Dynamic Hierarchy 2.1 path from "Life" down to the page's taxon as
  (canonical name, DH taxonRank) pairs. DH names its kingdoms Metazoa / Archaeplastida / Fungi and puts
  intermediate ranks (clade, subphylum, infraorder ...) between the seven. The paths are modelled on DH 2.1
  and simplified; they are demo data, not a transcript of taxon.tab.

Ids: the iNat21 category ids, names and ranks are the real ones (2912, 4831 and 5015 appear in the TFDS
fixtures of the real train.json; the others follow the alphabetical numbering of the real categories and
BioCLIP's common-names mapping). BIOSCAN BINs of Coleomegilla maculata, Cortinicara and Xyleborus
ferrugineus are the real ones of the pre-release metadata rows. EOL page 328672 (Panthera leo) is real;
the other page ids are marked `page_id_verified=False`: plausible, not checked against eol.org.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
NC = "not_classified"  # BIOSCAN-1M's literal for a missing rank

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Style:
    """How the pictures of one taxon look (see demo.images). Taxa of one species share a style across
    sources, so that a model learns the species, not the source."""

    background: RGB  # dominant colour; kept far apart between taxa
    shape: str  # shape family, one of images.SHAPES
    palette: tuple[RGB, ...]  # colours of the shapes
    density: float = 1.0  # relative number of shapes


@dataclass(frozen=True)
class DemoTaxon:
    key: str  # unique in the demo: "<source>:<id>"
    source: str  # "inat21", "bioscan1m" or "eol"
    scientific_name: str  # as the source (or, for EOL, the Dynamic Hierarchy) names it
    common_name: str  # as the source gives it ("" when it gives none)
    ranks: dict  # the seven ranks as the source writes them (see the module docstring)
    resolved: dict  # the seven ranks the taxonomy stage should arrive at (BioCLIP convention)
    style: Style
    images: dict  # the source's split -> number of images ({"train": 20, "val": 4}; {"": 20})
    ids: dict = field(default_factory=dict)  # source ids: inat21 category_id; bioscan BIN...; eol page_id
    extra: dict = field(default_factory=dict)  # further source columns (BIOSCAN subfamily, tribe, ...)
    dh_lineage: tuple = ()  # EOL: ((canonical name, DH rank), ...) from "Life" to the taxon
    vernacular: dict = field(default_factory=dict)  # authority -> English common name (for name tables)
    notes: str = ""  # why this taxon is in the demo

    @property
    def n_images(self) -> int:
        return sum(self.images.values())


def _seven(*values: str) -> dict:
    return dict(zip(RANKS, values))


# ------------------------------------------------------------------------------------------------ styles
# One style per species (shared across sources). Background colours are chosen far apart in RGB.
STYLES: dict[str, Style] = {
    "Ameiurus nebulosus": Style((58, 52, 30), "waves", ((150, 120, 60), (205, 180, 95), (95, 80, 40))),
    "Marmota flaviventris": Style((185, 140, 80), "blobs", ((110, 70, 35), (235, 200, 120), (70, 45, 25))),
    "Dipsosaurus dorsalis": Style((232, 214, 170), "diamonds", ((150, 120, 95), (200, 160, 130), (90, 75, 60)),
                                  1.3),
    "Coccinella septempunctata": Style((50, 135, 45), "spots", ((215, 30, 25), (15, 15, 15), (240, 240, 235))),
    "Trametes versicolor": Style((95, 80, 75), "rings", ((60, 80, 120), (225, 215, 190), (140, 120, 95))),
    "Trillium grandiflorum": Style((25, 70, 40), "triangles", ((250, 250, 245), (240, 200, 215), (230, 210, 60))),
    "Coleomegilla maculata": Style((170, 195, 230), "circles", ((230, 110, 140), (20, 20, 20), (250, 170, 180))),
    "Cortinicara": Style((240, 235, 120), "squares", ((120, 70, 30), (80, 50, 20), (170, 110, 60)), 1.2),
    "Cecidomyiidae": Style((190, 230, 170), "crosses", ((60, 40, 80), (120, 90, 150), (30, 20, 40)), 1.4),
    "phyMalaise01 Malaise2939": Style((150, 235, 235), "zigzag", ((20, 60, 70), (0, 110, 120), (60, 40, 30))),
    "Xyleborus ferrugineus": Style((150, 100, 200), "stripes", ((140, 50, 20), (90, 30, 10), (200, 100, 50))),
    "Panthera leo": Style((215, 165, 35), "arcs", ((120, 70, 20), (250, 220, 150), (60, 35, 10))),
    "Pica hudsonia": Style((110, 160, 220), "stars", ((10, 10, 10), (250, 250, 250), (30, 60, 140))),
    "Laelia speciosa": Style((200, 40, 150), "petals", ((250, 190, 235), (255, 255, 255), (250, 220, 60))),
    "Amanita muscaria": Style((20, 40, 20), "mushrooms", ((220, 25, 20), (250, 245, 230), (200, 190, 170))),
    "Danaus plexippus": Style((245, 130, 20), "veins", ((10, 10, 10), (250, 250, 250), (200, 80, 10))),
}


# ---------------------------------------------------------------------------------------------- iNat21
def _inat(cid: int, kingdom: str, phylum: str, cls: str, order: str, family: str, genus: str, epithet: str,
          common: str, supercategory: str, bioclip_common: str, train: int = 20, val: int = 4,
          notes: str = "") -> DemoTaxon:
    name = f"{genus} {epithet}"
    return DemoTaxon(
        key=f"inat21:{cid:05d}", source="inat21", scientific_name=name, common_name=common,
        ranks=_seven(kingdom, phylum, cls, order, family, genus, epithet),
        resolved=_seven(kingdom, phylum, cls, order, family, genus, epithet),
        style=STYLES[name], images={"train": train, "val": val},
        ids={"category_id": cid, "image_dir_name": f"{cid:05d}_{kingdom}_{phylum}_{cls}_{order}_{family}_{genus}_{epithet}"},
        extra={"supercategory": supercategory},
        vernacular={"inat21": common, "bioclip_inat21_mapping": bioclip_common}, notes=notes)


INAT21 = [
    _inat(310, "Animalia", "Arthropoda", "Insecta", "Coleoptera", "Coccinellidae", "Coccinella", "septempunctata",
          "Seven-spotted Lady Beetle", "Insects", "7-spot ladybird", train=21, val=4),
    _inat(2912, "Animalia", "Chordata", "Actinopterygii", "Siluriformes", "Ictaluridae", "Ameiurus", "nebulosus",
          "Brown Bullhead Catfish", "Ray-finned Fishes", "Northern brown bullhead", train=20, val=4),
    _inat(4831, "Animalia", "Chordata", "Mammalia", "Rodentia", "Sciuridae", "Marmota", "flaviventris",
          "Yellow-bellied Marmot", "Mammals", "Whistlepig", train=22, val=4,
          notes="BioCLIP's common name (Whistlepig) differs from the JSON's; EOL page of the same species "
                "re-hosts one of these photos byte for byte"),
    _inat(5015, "Animalia", "Chordata", "Reptilia", "Squamata", "Iguanidae", "Dipsosaurus", "dorsalis",
          "Desert Iguana", "Reptiles", "Common Desert Iguana", train=19, val=3),
    _inat(5695, "Fungi", "Basidiomycota", "Agaricomycetes", "Polyporales", "Polyporaceae", "Trametes",
          "versicolor", "Turkey Tail", "Fungi", "Turkey tail mushroom", train=20, val=4),
    _inat(6200, "Plantae", "Tracheophyta", "Liliopsida", "Liliales", "Melanthiaceae", "Trillium", "grandiflorum",
          "White Trillium", "Plants", "white trillium", train=18, val=5),
]

# ------------------------------------------------------------------------------------------ BIOSCAN-1M
BIOSCAN_COLUMNS = ("sampleid", "processid", "uri", "name", "phylum", "class", "order", "family", "subfamily",
                   "tribe", "genus", "species", "subspecies", "nucraw", "image_file", "large_diptera_family",
                   "medium_diptera_family", "small_diptera_family", "large_insect_order", "medium_insect_order",
                   "small_insect_order", "chunk_number", "copyright_license", "copyright_holder",
                   "copyright_institution", "copyright_contact", "photographer", "author")


def _bioscan(name: str, uri: str, order: str, family: str, subfamily: str, tribe: str, genus: str, species: str,
             n: int, resolved: dict, notes: str, style_key: str | None = None) -> DemoTaxon:
    return DemoTaxon(
        key=f"bioscan1m:{uri}", source="bioscan1m", scientific_name=name, common_name="",
        ranks={"kingdom": None, "phylum": "Arthropoda", "class": "Insecta", "order": order, "family": family,
               "genus": genus, "species": species},
        resolved=resolved, style=STYLES[style_key or name], images={"": n},
        ids={"bin": uri}, extra={"name": name, "subfamily": subfamily, "tribe": tribe, "subspecies": NC},
        notes=notes)


BIOSCAN1M = [
    _bioscan("Coleomegilla maculata", "BOLD:AAD7604", "Coleoptera", "Coccinellidae", "Coccinellinae",
             "Coleomegillini", "Coleomegilla", "Coleomegilla maculata", 20,
             _seven("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Coccinellidae", "Coleomegilla", "maculata"),
             "species-level sample (real BIN of the pre-release metadata)"),
    _bioscan("Cortinicara", "BOLD:AAI8935", "Coleoptera", "Latridiidae", "Corticariinae", NC, "Cortinicara", NC,
             20, _seven("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Latridiidae", "Cortinicara", ""),
             "genus-only sample: species not_classified"),
    _bioscan("Cecidomyiidae", "BOLD:ACB4407", "Diptera", "Cecidomyiidae", NC, NC, NC, NC, 21,
             _seven("Animalia", "Arthropoda", "Insecta", "Diptera", "Cecidomyiidae", "", ""),
             "family-only sample: BioCLIP wrote sci.txt = 'a photo of .' for these"),
    _bioscan("phyMalaise01 Malaise2939", "BOLD:ADH9130", "Diptera", "Phoridae", NC, NC, NC,
             "phyMalaise01 Malaise2939", 19,
             _seven("Animalia", "Arthropoda", "Insecta", "Diptera", "Phoridae", "", ""),
             "interim species name with genus not_classified: its first word is not a genus"),
    _bioscan("Xyleborus ferrugineus", "BOLD:ADK8172", "Coleoptera", "Curculionidae", "Scolytinae", "Xyleborini",
             "Xyleborus", "Xyleborus ferrugineus", 20,
             _seven("Animalia", "Arthropoda", "Insecta", "Coleoptera", "Curculionidae", "Xyleborus", "ferrugineus"),
             "species-level sample (real BIN of the pre-release metadata)"),
]

# The one deliberately broken metadata row: its chunk_number is not a number, so its image cannot be
# located; ingest must reject it (and name the field) while every other row goes on.
BIOSCAN_BAD_ROW = {"taxon": "bioscan1m:BOLD:AAD7604", "field": "chunk_number", "value": "abc",
                   "processid": "BIOSC9999-23"}

# ------------------------------------------------------------------------------------------------- EOL
_LIFE = (("Life", ""), ("Cellular Organisms", ""), ("Eukaryota", "domain"))
_METAZOA = _LIFE + (("Opisthokonta", "clade"), ("Metazoa", "kingdom"), ("Bilateria", "clade"))
_CHORDATA = _METAZOA + (("Deuterostomia", "clade"), ("Chordata", "phylum"), ("Vertebrata", "subphylum"),
                        ("Gnathostomata", "infraphylum"))
_MAMMALIA = _CHORDATA + (("Tetrapoda", "superclass"), ("Mammalia", "class"), ("Theria", "subclass"),
                         ("Eutheria", "infraclass"))


def _eol(page_id: int, name: str, common: str, lineage: tuple, resolved: dict, n: int = 20,
         verified: bool = False, notes: str = "") -> DemoTaxon:
    return DemoTaxon(
        key=f"eol:{page_id}", source="eol", scientific_name=name, common_name="",
        ranks={r: None for r in RANKS}, resolved=resolved, style=STYLES[name], images={"": n},
        ids={"page_id": page_id, "page_id_verified": verified}, dh_lineage=lineage + ((name, "species"),),
        vernacular={"eol_preferred": common}, notes=notes)


EOL = [
    _eol(328672, "Panthera leo", "lion",
         _MAMMALIA + (("Carnivora", "order"), ("Feliformia", "suborder"), ("Felidae", "family"),
                      ("Pantherinae", "subfamily"), ("Panthera", "genus")),
         _seven("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Panthera", "leo"), verified=True,
         notes="DH kingdom is Metazoa: must be reconciled to Animalia"),
    _eol(1037940, "Marmota flaviventris", "yellow-bellied marmot",
         _MAMMALIA + (("Rodentia", "order"), ("Sciuromorpha", "suborder"), ("Sciuridae", "family"),
                      ("Xerinae", "subfamily"), ("Marmotini", "tribe"), ("Marmota", "genus")),
         _seven("Animalia", "Chordata", "Mammalia", "Rodentia", "Sciuridae", "Marmota", "flaviventris"), n=21,
         notes="same species as iNat21 category 4831; one image is byte-identical to an iNat21 train image "
               "(EOL re-hosts iNaturalist photos): cross-source dedup must catch it"),
    _eol(45511123, "Pica hudsonia", "black-billed magpie",
         _CHORDATA + (("Tetrapoda", "superclass"), ("Aves", "class"), ("Neognathae", "infraclass"),
                      ("Passeriformes", "order"), ("Corvoidea", "superfamily"), ("Corvidae", "family"),
                      ("Pica", "genus")),
         _seven("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia"),
         notes="the example of SOURCES.md's text strings"),
    _eol(1132730, "Laelia speciosa", "Flor de Mayo orchid",
         _LIFE + (("Archaeplastida", "kingdom"), ("Chloroplastida", "clade"), ("Streptophyta", "phylum"),
                  ("Embryophytes", "clade"), ("Tracheophyta", "clade"), ("Spermatophytes", "clade"),
                  ("Angiosperms", "clade"), ("Liliopsida", "class"), ("Asparagales", "order"),
                  ("Orchidaceae", "family"), ("Epidendroideae", "subfamily"), ("Epidendreae", "tribe"),
                  ("Laeliinae", "subtribe"), ("Laelia", "genus")),
         _seven("Plantae", "Tracheophyta", "Liliopsida", "Asparagales", "Orchidaceae", "Laelia", "speciosa"), n=19,
         notes="genus Laelia is a cross-kingdom homonym (orchid and tussock moth, see HOMONYMS); DH kingdom "
               "Archaeplastida and phylum Streptophyta must be reconciled to Plantae / Tracheophyta"),
    _eol(1009706, "Amanita muscaria", "fly agaric",
         _LIFE + (("Opisthokonta", "clade"), ("Fungi", "kingdom"), ("Dikarya", "subkingdom"),
                  ("Basidiomycota", "phylum"), ("Agaricomycotina", "subphylum"), ("Agaricomycetes", "class"),
                  ("Agaricomycetidae", "subclass"), ("Agaricales", "order"), ("Amanitaceae", "family"),
                  ("Amanita", "genus")),
         _seven("Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "muscaria")),
    _eol(174532, "Danaus plexippus", "monarch butterfly",
         _METAZOA + (("Protostomia", "clade"), ("Ecdysozoa", "clade"), ("Arthropoda", "phylum"),
                     ("Hexapoda", "subphylum"), ("Insecta", "class"), ("Pterygota", "subclass"),
                     ("Lepidoptera", "order"), ("Papilionoidea", "superfamily"), ("Nymphalidae", "family"),
                     ("Danainae", "subfamily"), ("Danaini", "tribe"), ("Danaus", "genus")),
         _seven("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Nymphalidae", "Danaus", "plexippus"), n=20),
]

# The EOL image that is the same file as an iNat21 train image: (EOL page, iNat21 category, index of the
# image among that category's train images, index among the page's images).
EOL_INAT_DUPLICATE = {"eol_page_id": 1037940, "inat21_category_id": 4831, "inat21_train_index": 3,
                      "eol_index": 7}

# Names that several kingdoms use, for miniature authority files: a lookup by name alone would be wrong.
HOMONYMS = {
    "Laelia": [
        _seven("Plantae", "Tracheophyta", "Liliopsida", "Asparagales", "Orchidaceae", "Laelia", ""),
        _seven("Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Erebidae", "Laelia", ""),
    ],
}

TAXA: list[DemoTaxon] = INAT21 + BIOSCAN1M + EOL

# Common names in other languages: taxon key -> [(authority, language as that authority writes it, name,
# preferred by the authority)]. None is English, so the English choice (taxa.common_name) is what it is
# without them. Some taxa have none. Real names, but demo data: not transcribed from the authorities' files.
OTHER_LANGUAGE_NAMES: dict[str, list[tuple[str, str, str, bool]]] = {
    # EOL vernacularnames.csv: ISO 639-2 codes, both forms of French (fre, fra); one preferred per language
    "eol:328672": [("eol", "spa", "león", True), ("eol", "spa", "león africano", False),
                   ("eol", "fre", "lion", True), ("eol", "ger", "Löwe", True)],
    "eol:45511123": [("eol", "spa", "urraca de pico negro", True), ("eol", "fra", "pie d'Amérique", True)],
    "eol:1009706": [("eol", "ger", "Fliegenpilz", True), ("eol", "fre", "amanite tue-mouches", True),
                    ("eol", "spa", "matamoscas", True)],
    "eol:174532": [("eol", "spa", "mariposa monarca", True), ("eol", "fre", "monarque", True),
                   ("eol", "ger", "Monarchfalter", True)],
    # ITIS chain: names and their languages' English names, comma-separated; two Spanish names (the first
    # is the one preferred)
    "inat21:00310": [("itis", "French", "coccinelle à sept points", True),
                     ("itis", "German", "Siebenpunkt-Marienkäfer", True),
                     ("itis", "Spanish", "mariquita de siete puntos", True),
                     ("itis", "Spanish", "catarina de siete puntos", False)],
    # GBIF VernacularName.tsv: ISO 639-1 codes, and a name without a language (recorded as 'und')
    "bioscan1m:BOLD:AAD7604": [("gbif", "fr", "coccinelle maculée", True), ("gbif", "", "pink lady beetle", True)],
    "bioscan1m:BOLD:ADK8172": [("gbif", "es", "barrenillo ferruginoso", True)],
}


def taxa_of(source: str) -> list[DemoTaxon]:
    return [t for t in TAXA if t.source == source]


def expected_records() -> dict[str, int]:
    """Records each source should yield after ingest (the bad BIOSCAN row is rejected, not counted)."""
    counts: dict[str, int] = {}
    for t in TAXA:
        counts[t.source] = counts.get(t.source, 0) + t.n_images
    return counts


def _check() -> None:
    keys = [t.key for t in TAXA]
    assert len(set(keys)) == len(keys), "duplicate demo taxon keys"
    backgrounds = [s.background for s in STYLES.values()]
    assert len(set(backgrounds)) == len(backgrounds), "two styles share a background"
    for t in TAXA:
        assert set(t.ranks) == set(RANKS) and set(t.resolved) == set(RANKS), t.key
    for key, names in OTHER_LANGUAGE_NAMES.items():
        assert key in keys and all(a in ("eol", "itis", "gbif") for a, *_ in names), key


_check()

"""Benchmarks outside a build (issue 21): the ten task manifests, their label semantics on the real metadata of
../shared/realdata (skipped when absent), and `tol eval suite` on fixture benchmarks the tests make in each
real layout."""

from __future__ import annotations

import csv

import pytest

from tol_builder.errors import ConfigError
from tol_builder.eval import tasks as T
from tol_builder.fileio import file_digest

# ---- increment 1: the manifests ------------------------------------------------------------------------------

META_ALBUM = {  # task -> (BioCLIP's file in ../shared/realdata/meta_album, classes); 40 images per class
    "meta_album_fungi": ("FNG_Mini_metadata.csv", 25),
    "meta_album_insects": ("INS_Mini_metadata.csv", 104),
    "meta_album_insects_2": ("INS_2_Mini_metadata.csv", 102),
    "meta_album_medicinal_leaf": ("MED_LF_Mini_metadata.csv", 25),
    "meta_album_plankton": ("PLK_Mini_metadata.csv", 86),
    "meta_album_plantdoc": ("PLT_DOC_Mini_metadata.csv", 27),
    "meta_album_plantnet": ("PLT_NET_Mini_metadata.csv", 25),
    "meta_album_plantvillage": ("PLT_VIL_Mini_metadata.csv", 38),
}
TEN = {*META_ALBUM, "birds_525", "rare_species"}


def test_the_ten_tasks_ship_as_benchmark_and_evaluation_set():
    tasks = {t.name: t for t in T.all_tasks()}
    assert set(tasks) == TEN
    for t in tasks.values():
        assert t.manifest.evalset["name"] == t.name and t.manifest.evalset["hold_images"] is True
        assert t.manifest.homepage and t.manifest.licence and t.manifest.citation
        assert "asis" in t.spec.text_types
    assert tasks["birds_525"].layout == "folders" and tasks["birds_525"].manifest.source == "image_folder"
    assert (tasks["birds_525"].spec.test_dir, tasks["birds_525"].spec.shots_dir) == ("test", "train")
    rs = tasks["rare_species"]
    assert (rs.text_type("bioclip"), rs.text_type("clip"), rs.text_type("openclip")) == ("taxon_com", "com", "com")
    assert all(tasks[n].text_type(f) == "asis" for n in META_ALBUM for f in ("bioclip", "clip", "openclip"))
    assert T.find_tasks("rare_species,meta_album_fungi")[0].name == "rare_species"
    with pytest.raises(Exception, match="no benchmark 'nope'"):
        T.find_tasks("nope")


@pytest.mark.parametrize("task", sorted(META_ALBUM))
def test_real_meta_album_metadata_pins_and_bioclip_class_counts(realdata, task):
    name, n_classes = META_ALBUM[task]
    path = realdata / "meta_album" / name
    t = T.find_tasks(task)[0]
    f = t.manifest.one("metadata")
    assert (file_digest(path), file_digest(path, "sha256"), path.stat().st_size) == (f.md5, f.sha256, f.bytes)
    with open(path, newline="", encoding="utf-8") as fh:
        distinct = {row["class"] for row in csv.DictReader(fh)}
    classes = T.class_names(t, path)  # BioCLIP's `asis` naming: the distinct class values, as published
    assert set(classes) == distinct and len(classes) == n_classes
    rows = T.read_table_rows(t, path)
    assert len(rows) == 40 * n_classes
    assert all(sum(r["class"] == c for r in rows) == 40 for c in classes)


def test_real_meta_album_labels_that_are_not_taxa_keep_their_own_classes(realdata):
    vil = T.find_tasks("meta_album_plantvillage")[0]
    classes = T.class_names(vil, realdata / "meta_album" / "PLT_VIL_Mini_metadata.csv")
    assert "Tomato___Late_blight" in classes and "Tomato___healthy" in classes  # never merged into "Tomato"
    assert T.clean_label("Tomato___Late_blight", vil.spec.clean) == "Tomato Late blight"
    fungi = T.find_tasks("meta_album_fungi")[0]
    classes = T.class_names(fungi, realdata / "meta_album" / "FNG_Mini_metadata.csv")
    assert "Amanita excelsa Gonn. & Rabenh." in classes
    cleaned = [T.clean_label(c, fungi.spec.clean) for c in classes]
    assert "Amanita excelsa" in cleaned and "Amanita muscaria" in cleaned and len(set(cleaned)) == 25
    insects = T.find_tasks("meta_album_insects")[0]
    assert "Apidae" in T.class_names(insects, realdata / "meta_album" / "INS_Mini_metadata.csv")


def test_real_rare_species_pins_classes_and_text_types(realdata, tmp_path):
    path = realdata / "rare_species" / "bioclip_rare_species_metadata.csv"
    t = T.find_tasks("rare_species")[0]
    f = t.manifest.one("metadata")
    assert (file_digest(path), file_digest(path, "sha256"), path.stat().st_size) == (f.md5, f.sha256, f.bytes)
    rows = T.read_table_rows(t, path)
    assert len(rows) == 11_983 and len(T.class_names(t, path)) == 400
    # read as a task: its metadata found in the images folder (pins verified), one image present
    images = tmp_path / "rare_species" / "images"
    (images / "2024-03-20").mkdir(parents=True)
    (images / "metadata.csv").write_bytes(path.read_bytes())
    (images / rows[0]["filepath"]).write_bytes(b"not read here")
    data = T.read_task(t, tmp_path)
    assert len(data.classes) == 400 and len(data.paths) == 1 and data.skipped == {"missing_image": 11_982}
    i = data.classes.index("Cyclonaias tuberculata")
    assert data.strings("taxon_com")[i] == ("Animalia Mollusca Bivalvia Unionida Unionidae Cyclonaias tuberculata "
                                            "with common name purple wartyback")
    assert data.strings("com")[i] == "purple wartyback" and data.strings("asis")[i] == "Cyclonaias tuberculata"
    (images / "metadata.csv").write_bytes(path.read_bytes() + b"\n")  # not the pinned file: refused
    with pytest.raises(Exception, match="mismatch"):
        T.read_task(t, tmp_path)


def test_a_bad_benchmark_table_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('source = "table"\nfiles = []\n[benchmark]\nname = "x"\ntext_types = ["asis", "taxon_com"]\n'
                   'comparable = { default = "asis" }\n')
    with pytest.raises(ConfigError, match=r"bad.toml.*benchmark.text_types"):
        T.load_task(bad)
    bad.write_text('source = "table"\nfiles = []\n[benchmark]\nname = "x"\ncomparable = { default = "com" }\n')
    with pytest.raises(ConfigError, match=r"benchmark.comparable.default"):
        T.load_task(bad)

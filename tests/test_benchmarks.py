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


# ---- increments 2 and 3: evaluation outside a build, `tol eval suite` ---------------------------------------

import json  # noqa: E402
import random  # noqa: E402

import numpy as np  # noqa: E402

MA_CLASSES = ["Tomato___Late_blight", "Tomato___healthy", "Apidae", "Amanita excelsa Gonn. & Rabenh."]
RS_TAXA = [("Animalia", "Mollusca", "Bivalvia", "Unionida", "Unionidae", "Cyclonaias", "tuberculata", "purple wartyback"),
           ("Animalia", "Chordata", "Aves", "Gruiformes", "Gruidae", "Grus", "americana", "whooping crane"),
           ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Panthera", "tigris", "tiger")]


def _image(path, rng, tint):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    a = rng.integers(0, 255, (rng.integers(24, 48), rng.integers(24, 48), 3), dtype=np.uint8)
    a[..., tint % 3] = a[..., tint % 3] // 2 + 128  # a colour per class: few-shot has something to find
    Image.fromarray(a).save(path)


def _write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def make_fixture_benchmarks(root, per_class=6):
    """Three tasks in the real layouts under root (the --images-root) and their manifests in root/manifests:
    Meta-Album (metadata.csv ,filepath,class + class folders), Birds 525 (test/ and train/ folder per class),
    Rare Species (BioCLIP's metadata columns, EOL-style file names)."""
    rng = np.random.default_rng(0)
    ma = root / "meta_album" / "FIX_Mini"
    rows = []
    for ci, c in enumerate(MA_CLASSES):
        for i in range(per_class):
            rel = f"{c}/{i}.jpg"
            _image(ma / rel, rng, ci)
            rows.append([len(rows), rel, c])
    _write_csv(ma / "metadata.csv", ["", "filepath", "class"], rows)
    for split, n in (("test", 3), ("train", per_class)):
        for ci, c in enumerate(["ABBOTTS BABBLER", "AFRICAN CROWNED CRANE", "ALBATROSS"]):
            for i in range(n):
                _image(root / "birds" / split / c / f"{i}.jpg", rng, ci)
    rows = []
    for ci, (*ranks, common) in enumerate(RS_TAXA):
        for i in range(per_class):
            rel = f"2024-03-20/{1000 * ci + i}_{ci + 1}_eol-full-size-copy.jpg"
            _image(root / "rare" / "images" / rel, rng, ci)
            rows.append([len(rows), *ranks, common, rel, f"{ranks[5]} {ranks[6]}"])
    _write_csv(root / "rare" / "images" / "metadata.csv",
               ["", "kingdom", "phylum", "cls", "order", "family", "genus", "species", "common_name", "filepath",
                "class"], rows)
    m = root / "manifests"
    m.mkdir()
    (m / "fix_ma.toml").write_text(
        'source = "table"\n[benchmark]\nname = "fix_ma"\nimages = "meta_album/FIX_Mini"\n'
        'text_types = ["asis", "clean"]\nclean = [{ regex = "_+", replace = " " }, { strip_authority = true }]\n'
        '[[files]]\nname = "metadata.csv"\nrole = "metadata"\n')
    (m / "fix_birds.toml").write_text(
        'source = "image_folder"\n[benchmark]\nname = "fix_birds"\nimages = "birds"\ntest_dir = "test"\n'
        'shots_dir = "train"\n[[files]]\nname = "images"\nrole = "media"\nurl = "birds/test"\n')
    (m / "fix_rare.toml").write_text(
        'source = "rare_species"\n[benchmark]\nname = "fix_rare"\nimages = "rare/images"\n'
        'rank_columns = { kingdom = "kingdom", phylum = "phylum", class = "cls", order = "order", '
        'family = "family", genus = "genus", species = "species" }\ncommon_column = "common_name"\n'
        'text_types = ["asis", "com", "taxon_com"]\n'
        'comparable = { default = "taxon_com", bioclip = "taxon_com", clip = "com" }\n'
        '[[files]]\nname = "metadata.csv"\nrole = "metadata"\n')
    return sorted(m.glob("*.toml"))


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    make_fixture_benchmarks(root)
    return root


def _slow_reference(model, tokenize, data, strings, templs):
    """Written apart from the suite: one image and one templated string at a time, open_clip's v1 transform."""
    import open_clip
    import torch

    pp = open_clip.get_model_preprocess_cfg(model)
    transform = open_clip.image_transform(pp["size"], is_train=False, mean=pp["mean"], std=pp["std"])
    from PIL import Image

    with torch.no_grad():
        columns = []
        for s in strings:
            embs = []
            for t in templs:
                e = model.encode_text(tokenize([t(s)]))[0]
                embs.append(e / e.norm())
            m = torch.stack(embs).mean(0)
            columns.append(m / m.norm())
        weights = torch.stack(columns, 1)
        feats = []
        for p in data.paths:
            with Image.open(p) as im:
                f = model.encode_image(transform(im.convert("RGB"))[None])[0]
            feats.append(f / f.norm())
        return (torch.stack(feats) @ weights).numpy()


def _reference_split_few_shot(shot_feats, shot_y, feats, y, k, folds):
    """BioCLIP's nearest centroid with shots from another split, per image (CL2N on the shots' mean)."""
    accs = []
    for fold in range(folds):
        rng = random.Random(fold)
        shots = {}
        for c in sorted(set(shot_y.tolist())):
            members = [i for i in range(len(shot_y)) if shot_y[i] == c]
            rng.shuffle(members)
            shots[c] = members[:k]
        mean = np.mean([shot_feats[i] for c in shots for i in shots[c]], axis=0)
        unit = lambda v: (v - mean) / np.linalg.norm(v - mean)  # noqa: E731
        centroids = {c: np.mean([unit(shot_feats[i]) for i in idx], axis=0) for c, idx in shots.items()}
        hits = [min(centroids, key=lambda c: np.sum((unit(f) - centroids[c]) ** 2)) == t for f, t in zip(feats, y)]
        accs.append(np.mean(hits))
    return float(np.mean(accs))


@pytest.mark.slow
def test_suite_scores_equal_a_slow_reference_on_each_layout(fixture_root):
    from tol_builder.eval import features as F
    from tol_builder.eval.suite import SuiteSettings, run_suite
    from tol_builder.train.zeroshot import templates

    tasks = T.find_tasks([str(p) for p in sorted((fixture_root / "manifests").glob("*.toml"))])
    specs = F.parse_models("random:tol-tiny")
    doc = run_suite(specs, tasks, images_root=fixture_root, cache_dir=None,
                    settings=SuiteSettings(shots=(0, 1, 2), folds=3, templates="openai", bootstrap=200))
    model, tokenize = F.load(specs[0])
    res = doc["results"]["random:tol-tiny"]
    for task in tasks:
        data = T.read_task(task, fixture_root)
        r = res[task.name]
        assert r["n_classes"] == len(data.classes) and r["n_images"] == len(data.paths)
        logits = _slow_reference(model, tokenize, data, data.strings(r["text_type"]), templates("openai"))
        ranked = np.argsort(-logits, axis=1, kind="stable")
        z = r["zero_shot"]
        assert z["top1"] == pytest.approx(np.mean(ranked[:, 0] == data.y))
        assert z["top5"] == pytest.approx(np.mean([t in row[:5] for t, row in zip(data.y, ranked)]))
        assert z["top1_ci95"][0] <= z["top1"] <= z["top1_ci95"][1]
        for i, c in enumerate(data.classes):
            assert z["per_class_top1"][c] == pytest.approx(np.mean(ranked[data.y == i, 0] == i))
    # labels that are not taxa keep their own classes, scored with the CSV's class as it is
    ma = res["fix_ma"]
    assert ma["n_classes"] == 4 and ma["text_type"] == "asis"
    assert set(ma["zero_shot"]["per_class_top1"]) == set(MA_CLASSES)
    assert res["fix_rare"]["text_type"] == "taxon_com" and res["fix_rare"]["n_classes"] == 3
    # Birds: scored on test (3 x 3), shots from train; equal to a per-image reference
    birds = T.read_task(T.load_task(fixture_root / "manifests" / "fix_birds.toml"), fixture_root)
    assert res["fix_birds"]["n_images"] == 9 and res["fix_birds"]["shots_from"] == "train"
    feats, _ = F.encode_images(model, birds.paths)
    shot_feats, _ = F.encode_images(model, birds.shot_paths)
    for k in (1, 2):
        assert res["fix_birds"]["few_shot"][f"{k}-shot"]["mean"] == pytest.approx(
            _reference_split_few_shot(shot_feats, birds.shot_y, feats, birds.y, k, 3), abs=1e-9)


@pytest.mark.slow
def test_eval_suite_command_table_equals_json_and_cache_is_reused_then_invalidated(fixture_root, tmp_path):
    import torch

    from conftest import run_cli
    from tol_builder.train.models import build

    weights = tmp_path / "weights.bin"  # an open_clip-format weights file saved from a random model
    torch.save(build("tol-tiny", seed=3).state_dict(), weights)
    manifests = ",".join(str(p) for p in sorted((fixture_root / "manifests").glob("*.toml")))
    out = tmp_path / "out"
    args = ("eval", "suite", "--models", f"random:tol-tiny,mine=tol-tiny:{weights}", "--tasks", manifests,
            "--shots", "0,1,5", "--images-root", str(fixture_root), "--out", str(out), "--quiet",
            "--batch-size", "4")
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "results.json").read_text())
    n_images = sum(t["images_scored"] for t in doc["tasks"])
    assert doc["cache"]["images_encoded"] >= 2 * n_images  # both models, every scored image
    assert doc["results"]["mine"]["fix_rare"]["text_type"] == "com"  # a weights file: CLIP's comparable text
    # the table's numbers are the JSON's (CSV, Markdown and the terminal)
    with open(out / "table.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 * 3
    md = (out / "table.md").read_text().splitlines()[2:]
    for row, md_row in zip(table, md):
        res = doc["results"][row["model"]]
        cells = [c.strip() for c in md_row.strip("|").split("|")]
        values = []
        for name in ("fix_birds", "fix_ma", "fix_rare"):
            k = int(row["shots"])
            v = res[name]["zero_shot"]["top1"] if k == 0 else res[name]["few_shot"][f"{k}-shot"]["mean"]
            values.append(v)
            assert row[name] == f"{100 * v:.1f}"
        assert row["mean"] == f"{100 * sum(values) / 3:.1f}" and cells[2:] == [row[n] for n in
                                                                             ("fix_birds", "fix_ma", "fix_rare",
                                                                              "mean")]
        assert f"{100 * values[0]:.1f}%" in r.stdout
    # second run: every feature from the cache, no image forward pass, the same numbers
    r2 = run_cli(*args)
    assert r2.returncode == 0, r2.stderr
    doc2 = json.loads((out / "results.json").read_text())
    assert doc2["cache"].get("images_encoded", 0) == 0 and doc2["cache"].get("texts_encoded", 0) == 0
    assert doc2["cache"]["image_hits"] >= 2 * 3 and doc2["results"] == doc["results"]
    # the weights file changes: that model's features are made again, the random model's still cached
    torch.save(build("tol-tiny", seed=4).state_dict(), weights)
    r3 = run_cli(*args)
    assert r3.returncode == 0, r3.stderr
    doc3 = json.loads((out / "results.json").read_text())
    assert doc3["cache"]["invalidated"] == 1 and 2 * doc3["cache"]["images_encoded"] == doc["cache"]["images_encoded"]
    assert doc3["results"]["random:tol-tiny"] == doc["results"]["random:tol-tiny"]
    assert doc3["results"]["mine"] != doc["results"]["mine"]


@pytest.mark.slow
def test_eval_suite_named_task_without_images_names_the_folder(fixture_root, tmp_path):
    from conftest import run_cli

    r = run_cli("eval", "suite", "--models", "random:tol-tiny", "--tasks", "meta_album_fungi", "--images-root",
                str(tmp_path), "--out", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 1 and "meta_album/FNG_Mini" in r.stderr.replace("\n", "")


# ---- issue 21 item 3 (follow-up): `tol eval` finds a build's run ---------------------------------------------

@pytest.fixture(scope="module")
def trained_build(tmp_path_factory):
    """A tiny build (fixture shards of the demo taxa) with one run trained 2 steps under `tol demo`'s run name
    `demo`, while the build's settings (none) say `train/default`."""
    from train_fixtures import write_shards

    from tol_builder.config import TrainConfig
    from tol_builder.train.loop import train

    build = tmp_path_factory.mktemp("tiny-build")
    write_shards(build, "train", 2, per_shard=16)
    write_shards(build, "val", 7, per_shard=32)  # 5-shot needs 6 images of a class
    train(build, TrainConfig(model="tol-tiny", run_name="demo", batch_size=8, steps=2, lr=1e-3, warmup=1,
                             workers=0, threads=1, log_every=1, shuffle_buffer=16, shuffle_initial=4,
                             segment_samples=32, eval_batch_size=16), progress=False)
    return build


@pytest.mark.slow
def test_eval_finds_the_builds_only_run_and_lists_several(trained_build, tmp_path):
    import shutil

    from conftest import run_cli

    assert not (trained_build / "train" / "default").exists() and (trained_build / "train" / "demo").is_dir()
    r = run_cli("eval", "zero-shot", str(trained_build), "--json", str(tmp_path / "z.json"))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "z.json").read_text())
    assert doc["model"].endswith("train/demo") and doc["n_images"] > 0
    r = run_cli("eval", "few-shot", str(trained_build))
    assert r.returncode == 0, r.stderr
    # two runs and neither is the settings': the error lists both and says how to choose
    other = trained_build / "train" / "other"
    shutil.copytree(trained_build / "train" / "demo", other)
    try:
        r = run_cli("eval", "zero-shot", str(trained_build))
        err = r.stderr.replace("\n", "")
        assert r.returncode == 1 and "train/demo" in err and "train/other" in err and "--checkpoint" in err, err
        # the settings' run is taken when it has a checkpoint
        r = run_cli("eval", "zero-shot", str(trained_build), "--set", "run_name=other", "--json",
                    str(tmp_path / "o.json"))
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / "o.json").read_text())["model"].endswith("train/other")
    finally:
        shutil.rmtree(other)


def test_eval_without_a_run_says_how_to_name_a_model(tmp_path):
    from conftest import run_cli
    from train_fixtures import write_shards

    write_shards(tmp_path, "val", 1, per_shard=16)
    r = run_cli("eval", "zero-shot", str(tmp_path))
    err = r.stderr.replace("\n", "")
    assert r.returncode == 1 and "no run with one" in err and "--model" in err and "Traceback" not in err, err


# ---- issue 21 tests: a random-init model at chance; an open_clip checkpoint folder (HF snapshot) -------------

N_CHANCE_CLASSES, N_CHANCE_PER_CLASS = 40, 50  # 2,000 images


@pytest.mark.slow
def test_random_init_model_scores_at_chance_within_four_binomial_sds(tmp_path):
    """Images carry no trace of their class (every image the same noise distribution), so any model's hits are
    Bernoulli(k / C) per image whatever the model does: top-1 ~ Binomial(n, 1/C) / n, SD sqrt(p (1 - p) / n)
    (C = 40, n = 2,000: p = 2.5 %, SD 0.35 points; top-5 p = 12.5 %, SD 0.74). A score beyond 4 SD (a chance of
    6e-5 for a correct pipeline) means labels leak into the scores (an ordering or alignment bug). Few-shot:
    each fold tests n - k C images; the mean of 5 folds is held to 4 SD of one fold."""
    from tol_builder.eval import features as F
    from tol_builder.eval.suite import SuiteSettings, run_suite

    rng = np.random.default_rng(7)
    root = tmp_path / "chance"
    rows = []
    from PIL import Image

    for c in range(N_CHANCE_CLASSES):
        name = f"Genus{c:02d} species{c:02d}"
        (root / f"c{c:02d}").mkdir(parents=True)
        for i in range(N_CHANCE_PER_CLASS):
            rel = f"c{c:02d}/{i}.png"
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / rel)
            rows.append([len(rows), rel, name])
    _write_csv(root / "metadata.csv", ["", "filepath", "class"], rows)
    manifest = tmp_path / "chance.toml"
    manifest.write_text('source = "table"\n[benchmark]\nname = "chance"\nimages = "chance"\n'
                        '[[files]]\nname = "metadata.csv"\nrole = "metadata"\n')
    doc = run_suite(F.parse_models("random:tol-tiny"), T.find_tasks(str(manifest)), images_root=tmp_path,
                    cache_dir=None, settings=SuiteSettings(shots=(0, 1, 5), folds=5, bootstrap=200))
    r = doc["results"]["random:tol-tiny"]["chance"]
    n, C = N_CHANCE_CLASSES * N_CHANCE_PER_CLASS, N_CHANCE_CLASSES
    assert r["n_images"] == n and r["n_classes"] == C

    def sd(p, m):
        return (p * (1 - p) / m) ** 0.5

    z = r["zero_shot"]
    assert abs(z["top1"] - 1 / C) <= 4 * sd(1 / C, n), z["top1"]
    assert abs(z["top5"] - 5 / C) <= 4 * sd(5 / C, n), z["top5"]
    for k in (1, 5):
        m = n - k * C
        acc = r["few_shot"][f"{k}-shot"]["mean"]
        assert abs(acc - 1 / C) <= 4 * sd(1 / C, m), (k, acc)


def _hf_snapshot(cache_root, model, model_cfg, revision="0123456789abcdef"):
    """A model saved as open_clip's push_to_hf_hub saves it (open_clip_config.json with model_cfg and
    preprocess_cfg; open_clip_pytorch_model.bin and open_clip_model.safetensors), laid out as the Hugging Face
    cache holds a download: snapshots/<revision>/<file> symlinks to blobs/<sha256>."""
    import hashlib
    import importlib
    from pathlib import Path

    import safetensors.torch
    import torch

    hf = importlib.import_module("open_clip.push_to_hf_hub")
    repo = cache_root / "models--imageomics--bioclip-fixture"
    staging, blobs, snap = repo / "staging", repo / "blobs", repo / "snapshots" / revision
    staging.mkdir(parents=True)
    tensors = model.state_dict()
    torch.save(tensors, staging / hf.HF_WEIGHTS_NAME)
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, staging / hf.HF_SAFE_WEIGHTS_NAME)
    hf.save_config_for_hf(model, staging / hf.HF_CONFIG_NAME, model_config=model_cfg)
    blobs.mkdir()
    snap.mkdir(parents=True)
    for f in staging.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        f.rename(blobs / digest)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / digest)
    staging.rmdir()
    return snap


@pytest.mark.slow
def test_open_clip_checkpoint_folder_a_hf_snapshot_loads_through_the_suite(fixture_root, tmp_path):
    from conftest import run_cli
    from tol_builder.train import models

    model = models.build("tol-tiny", seed=5)
    snap = _hf_snapshot(tmp_path / "hub", model, models.model_config("tol-tiny"))
    assert (snap / "open_clip_config.json").is_symlink() and (snap / "open_clip_pytorch_model.bin").is_file()
    manifests = ",".join(str(p) for p in sorted((fixture_root / "manifests").glob("*.toml")))
    out = tmp_path / "out"
    r = run_cli("eval", "suite", "--models", f"snap={snap},file=tol-tiny:{snap / 'open_clip_pytorch_model.bin'},"
                "random:tol-tiny", "--tasks", manifests, "--shots", "0,1", "--images-root", str(fixture_root),
                "--out", str(out), "--quiet", "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "results.json").read_text())
    res = doc["results"]
    # the folder's weights and its preprocess_cfg were used: the same numbers as its weights file through
    # tol-tiny's own config, on the tasks whose text type is the same for both families
    for task in ("fix_ma", "fix_birds"):
        assert res["snap"][task]["zero_shot"] == res["file"][task]["zero_shot"]
        assert res["snap"][task]["few_shot"] == res["file"][task]["few_shot"]
    assert res["snap"]["fix_ma"]["zero_shot"] != res["random:tol-tiny"]["fix_ma"]["zero_shot"]  # seed 5, not 0
    # a checkpoint folder is BioCLIP's family: Rare Species as taxon_com (a weights file: CLIP's com)
    assert res["snap"]["fix_rare"]["text_type"] == "taxon_com" and res["file"]["fix_rare"]["text_type"] == "com"
    assert next(m for m in doc["models"] if m["label"] == "snap")["kind"] == "checkpoint"


# ---- issue 21 item 3: a text type per model (--text-types LABEL=TYPE) with BioCLIP's defaults ----------------

@pytest.mark.slow
def test_text_type_per_model_where_a_task_offers_it(fixture_root, tmp_path):
    import torch

    from conftest import run_cli
    from tol_builder.eval import features as F
    from tol_builder.eval.suite import SuiteSettings, run_suite
    from tol_builder.train.models import build

    weights = tmp_path / "w.bin"
    torch.save(build("tol-tiny", seed=2).state_dict(), weights)
    manifests = sorted((fixture_root / "manifests").glob("*.toml"))
    out = tmp_path / "out"
    r = run_cli("eval", "suite", "--models", f"bio=random:tol-tiny,clip=tol-tiny:{weights}", "--tasks",
                ",".join(map(str, manifests)), "--shots", "0", "--images-root", str(fixture_root), "--out",
                str(out), "--quiet", "--text-types", "bio=com,clip=taxon_com")
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "results.json").read_text())
    res = doc["results"]
    # swapped against the defaults on the task that offers both; Meta-Album offers neither: its class as is
    assert res["bio"]["fix_rare"]["text_type"] == "com" and res["clip"]["fix_rare"]["text_type"] == "taxon_com"
    assert res["bio"]["fix_ma"]["text_type"] == res["clip"]["fix_ma"]["text_type"] == "asis"
    assert [m["text_type"] for m in doc["models"]] == ["com", "taxon_com"]
    # the numbers are those of that text type: the same model scored with --text-type com on that task alone
    rare = T.find_tasks(str(fixture_root / "manifests" / "fix_rare.toml"))
    alone = run_suite(F.parse_models("random:tol-tiny"), rare, images_root=fixture_root, cache_dir=None,
                      settings=SuiteSettings(shots=(0,), text_type="com"))
    assert res["bio"]["fix_rare"]["zero_shot"] == alone["results"]["random:tol-tiny"]["fix_rare"]["zero_shot"]
    default = run_suite(F.parse_models("random:tol-tiny"), rare, images_root=fixture_root, cache_dir=None,
                        settings=SuiteSettings(shots=(0,)))
    assert default["results"]["random:tol-tiny"]["fix_rare"]["text_type"] == "taxon_com"  # BioCLIP's default
    # (a random model may rank the classes alike from either strings:) the class texts encoded were each
    # model's type's, as the cache's entries per (task, text type) say
    cached = {p.name for p in (out / "cache").rglob("fix_rare.text.*.npz")}
    assert cached == {"fix_rare.text.com.openai.npz", "fix_rare.text.taxon_com.openai.npz"}
    for m in doc["models"]:
        folder = F.FeatureCache(out / "cache").model_dir(next(s for s in F.parse_models(
            f"bio=random:tol-tiny,clip=tol-tiny:{weights}") if s.label == m["label"]))
        assert {p.name for p in folder.glob("fix_rare.text.*")} == {f"fix_rare.text.{m['text_type']}.openai.npz"}
    # unknown label or text type: one line naming the item
    for bad, words in (("nobody=com", "no model labelled 'nobody'"), ("bio=common", "'common' is not a text type")):
        r = run_cli("eval", "suite", "--models", "bio=random:tol-tiny", "--tasks", str(manifests[0]), "--images-root",
                    str(fixture_root), "--out", str(tmp_path / "bad"), "--quiet", "--text-types", bad)
        assert r.returncode == 1 and words in r.stderr.replace("\n", " ") and "Traceback" not in r.stderr


# ---- issue 21 item 3: tol eval suite --plot ------------------------------------------------------------------

@pytest.mark.slow
def test_eval_suite_plot_draws_the_tables_numbers(fixture_root, tmp_path):
    from PIL import Image

    from conftest import run_cli
    from tol_builder.eval.plot import plot_suite

    manifests = ",".join(str(p) for p in sorted((fixture_root / "manifests").glob("*.toml")))
    out, png = tmp_path / "out", tmp_path / "suite.png"
    r = run_cli("eval", "suite", "--models", "a=random:tol-tiny,b=random:tol-tiny", "--tasks", manifests,
                "--shots", "0,1", "--images-root", str(fixture_root), "--out", str(out), "--quiet", "--plot",
                str(png))
    assert r.returncode == 0, r.stderr
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 2 * 320  # a panel per shot count
    # every bar drawn is the CSV's number (models x shots x (tasks + mean)), read back from the drawn bars
    doc = json.loads((out / "results.json").read_text())
    bars = plot_suite(doc, tmp_path / "again.png")["bars"]
    with open(out / "table.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    expected = {(row["model"], int(row["shots"]), col): float(row[col]) for row in table
                for col in ("fix_birds", "fix_ma", "fix_rare", "mean")}
    assert set(bars) == set(expected) and len(bars) == 2 * 2 * 4
    for key, v in expected.items():
        assert bars[key] == pytest.approx(v, abs=0.05), key


# ---- issue 21 item 3: `tol eval few-shot --plot` (README's table promises --plot for tol eval) ---------------

@pytest.mark.slow
def test_eval_few_shot_plot_draws_the_json_numbers(trained_build, tmp_path):
    from PIL import Image

    from conftest import run_cli
    from tol_builder.eval.plot import plot_few_shot

    png, js = tmp_path / "few.png", tmp_path / "few.json"
    r = run_cli("eval", "few-shot", str(trained_build), "--json", str(js), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    with Image.open(png) as im:
        assert im.format == "PNG"
    doc = json.loads(js.read_text())
    drawn = plot_few_shot(doc, tmp_path / "again.png")["bars"]
    assert set(drawn) == {n for n, v in doc["shots"].items() if v["mean"] is not None} == {"1-shot", "5-shot"}
    for name, h in drawn.items():
        assert h == pytest.approx(100 * doc["shots"][name]["mean"])


# ---- issue 21 tests: a model trained on the demo beats random init on a benchmark of demo-taxa images --------

@pytest.mark.slow
def test_demo_trained_model_beats_random_init_on_a_demo_taxa_benchmark(tmp_path_factory, tmp_path):
    from pathlib import Path

    from train_fixtures import demo_build, distinct_taxa, species_of

    from tol_builder.demo import images
    from tol_builder.records import RANKS
    from tol_builder.eval import features as F
    from tol_builder.eval.suite import SuiteSettings, run_suite
    from tol_builder.train import checkpoint as ckpt
    from tol_builder.train.demo import train_and_evaluate

    build = demo_build(tmp_path_factory)
    run = build / "train" / "demo"
    if ckpt.latest(run) is None:  # a demo build made with --no-train: train the demo's run here
        run = Path(train_and_evaluate(build, run=str(tmp_path_factory.mktemp("demo-run"))).run_dir)
    # a Rare-Species-style table (rank columns, common names) of fresh pictures of the 16 demo taxa
    rows, per_taxon = [], 8
    for ci, t in enumerate(distinct_taxa()):
        sp = species_of(t)
        for i in range(per_taxon):
            rel = f"{ci:02d}_{i}.jpg"
            (tmp_path / "imgs").mkdir(exist_ok=True)
            (tmp_path / "imgs" / rel).write_bytes(images.render(t.style, (200, 160), 23, "benchmark", t.key, i))
            rows.append([len(rows), *(sp["ranks"][r] or "" for r in RANKS), sp["common_name"] or "", rel,
                         sp["taxon_id"]])
    header = ["", *(("cls" if r == "class" else r) for r in RANKS), "common_name", "filepath", "class"]
    _write_csv(tmp_path / "imgs" / "metadata.csv", header, rows)
    manifest = tmp_path / "demo_taxa.toml"
    manifest.write_text(
        'source = "rare_species"\n[benchmark]\nname = "demo_taxa"\nimages = "imgs"\n'
        'rank_columns = { kingdom = "kingdom", phylum = "phylum", class = "cls", order = "order", '
        'family = "family", genus = "genus", species = "species" }\ncommon_column = "common_name"\n'
        'text_types = ["asis", "com", "taxon_com"]\n'
        'comparable = { default = "taxon_com", bioclip = "taxon_com", clip = "com" }\n'
        '[[files]]\nname = "metadata.csv"\nrole = "metadata"\n')
    doc = run_suite(F.parse_models(f"trained={run},random:tol-tiny"), T.find_tasks(str(manifest)),
                    images_root=tmp_path, cache_dir=None, settings=SuiteSettings(shots=(0, 1, 5), bootstrap=200))
    trained, rand = doc["results"]["trained"]["demo_taxa"], doc["results"]["random:tol-tiny"]["demo_taxa"]
    n, C = 16 * per_taxon, 16
    assert trained["n_classes"] == C and trained["n_images"] == n and trained["text_type"] == "taxon_com"
    # zero-shot, trained: far above chance (6.25 %) and random init, beyond the random model's 95% interval's top
    # (measured: 87.5 % vs 0.0 %). Few-shot is printed, not asserted: the demo's picture styles are told apart by
    # random features too (measured 5-shot: 98.8 % vs 97.5 %)
    assert trained["zero_shot"]["top1"] > max(rand["zero_shot"]["top1"] + 0.3, 5 / C)
    assert trained["zero_shot"]["top1_ci95"][0] > rand["zero_shot"]["top1_ci95"][1]
    print(f"zero-shot top-1: trained {100 * trained['zero_shot']['top1']:.1f}%, random "
          f"{100 * rand['zero_shot']['top1']:.1f}%; 5-shot {100 * trained['few_shot']['5-shot']['mean']:.1f}% vs "
          f"{100 * rand['few_shot']['5-shot']['mean']:.1f}%")


# ---- issue 21 item 4: rank-cut class strings (--rank) ------------------------------------------------------

@pytest.mark.slow
def test_suite_at_a_rank_scores_the_taxonomic_strings_cut_there(fixture_root, tmp_path):
    from conftest import run_cli
    from tol_builder.eval import features as F
    from tol_builder.train.zeroshot import templates

    manifests = ",".join(str(p) for p in sorted((fixture_root / "manifests").glob("*.toml")))
    out = tmp_path / "out"
    r = run_cli("eval", "suite", "--models", "random:tol-tiny", "--tasks", manifests, "--shots", "0,1",
                "--images-root", str(fixture_root), "--out", str(out), "--quiet", "--rank", "phylum")
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "results.json").read_text())
    res = doc["results"]["random:tol-tiny"]
    rare = res["fix_rare"]
    # three species in two phyla: two classes, the taxonomic string cut at phylum, every image kept
    assert rare["rank"] == "phylum" and rare["text_type"] == "taxon@phylum" and rare["n_classes"] == 2
    assert set(rare["zero_shot"]["per_class_top1"]) == {"Animalia Chordata", "Animalia Mollusca"}
    assert rare["n_images"] == 3 * 6 and "1-shot" in rare["few_shot"]
    # equal to a per-image, per-template reference on those two strings
    data = T.read_task(T.load_task(fixture_root / "manifests" / "fix_rare.toml"), fixture_root)
    phylum_of = {c: ("Animalia Mollusca" if ranks["phylum"] == "Mollusca" else "Animalia Chordata")
                 for c, ranks in zip(data.classes, data.ranks)}
    strings = ["Animalia Chordata", "Animalia Mollusca"]
    y = np.asarray([strings.index(phylum_of[data.classes[i]]) for i in data.y])
    model, tokenize = F.load(F.parse_models("random:tol-tiny")[0])
    logits = _slow_reference(model, tokenize, data, strings, templates("openai"))
    assert rare["zero_shot"]["top1"] == pytest.approx(np.mean(logits.argmax(1) == y))
    # tasks without rank columns are not scored at a rank: blank cells, the mean over the rest
    assert "no rank columns" in res["fix_ma"]["not_scored"] and "zero_shot" not in res["fix_birds"]
    with open(out / "table.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert row["fix_ma"] == row["fix_birds"] == "" and row["mean"] == row["fix_rare"]
    r = run_cli("eval", "suite", "--models", "random:tol-tiny", "--tasks", manifests, "--images-root",
                str(fixture_root), "--out", str(tmp_path / "bad"), "--quiet", "--rank", "subspecies")
    assert r.returncode == 1 and "--rank: one of kingdom" in r.stderr

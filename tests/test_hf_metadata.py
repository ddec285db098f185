"""Standard metadata for the shards (issue 19, item 5), on a real demo build: the dataset card's Hugging Face
header; shard folders that hold tars only, so HF's webdataset loader reads the folder as it is and through the
card's `configs:` (train_small a config of its own); a `wids` index per split that wids.ShardListDataset
opens; `croissant.json` that mlcroissant 1.1.1 validates and loads records from, its fields following the
samples' own .json; and the card's and README's examples of all of it, run as printed."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import ROOT, run_cli
from tol_builder.shards.plan import SPLITS, build_workflow, read_plan
from tol_builder.shards.publish import publish_task
from tol_builder.shards.write import ShardWriter, index_path

pytestmark = pytest.mark.slow
HF_SPLIT = {"train": "train", "val": "validation"}
# the layout README.md documents (tol_builder/shards/layout.py)
SPLIT_FOLDERS = {"train": "train", "val": "val", "train_small": "trainsmall"}


def split_dir(build: Path, split: str) -> Path:
    return build / "shards" / SPLIT_FOLDERS[split]


def shard_path(build: Path, split: str, shard: int) -> Path:
    return split_dir(build, split) / f"shard-{shard:06d}.tar"


def sizes_path(build: Path, split: str) -> Path:
    return build / "shards_meta" / split / "sizes.json"


def wids_path(build: Path, split: str) -> Path:
    return build / "shards_meta" / split / "wids.json"


def json_table_path(build: Path, split: str) -> Path:
    return build / "shards_meta" / split / "json.parquet"


def croissant_path(build: Path) -> Path:
    return build / "croissant.json"


@pytest.fixture(scope="module")
def demo_root(demo_run) -> Path:
    """A folder holding `tol-demo/` (README's `tol demo` run there: the build is `tol-demo/build`): the session's
    demo (tests/fixtures_demo.py), read only here."""
    return demo_run.root


@pytest.fixture(scope="module")
def build(demo_root) -> Path:
    return demo_root / "tol-demo" / "build"


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf-cache"


def sizes(build: Path, split: str) -> dict[str, int]:
    return json.loads(sizes_path(build, split).read_text())


def tar_samples(build: Path, split: str) -> dict[str, dict]:
    """{uid: the sample's .json} of every tar of a split, in order."""
    got = {}
    for tar_path in sorted(split_dir(build, split).glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    got[m.name[:-5]] = json.loads(tar.extractfile(m).read())
    return got


def card_header(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


# ------------------------------------------------------------------------------------ the card's header
def test_both_cards_carry_a_complete_header_with_paths_relative_to_their_folder(build):
    languages = read_plan(build)["languages"]
    images = sum(sum(sizes(build, s).values()) for s in ("train", "val"))
    for folder in (build, build / "shards"):
        card = (folder / "README.md").read_text()
        head = card_header(card)
        assert head["license"] == "other" and head["license_name"]
        assert (folder / head["license_link"]).resolve() == (build / "shards_meta" / "licenses.csv").resolve()
        assert set(head["task_categories"]) == {"zero-shot-image-classification", "image-classification"}
        assert head["size_categories"] == (["n<1K"] if images < 1000 else head["size_categories"])
        assert head["language"][0] == "en" and set(languages) <= set(head["language"])
        assert head["pretty_name"].startswith("demo") and {"biology", "webdataset"} <= set(head["tags"])
        configs = {c["config_name"]: c for c in head["configs"]}
        assert set(configs) == {"default", "train_small"} and configs["default"].get("default") is True
        files = {(c, f["split"]): sorted(folder.glob(f["path"])) for c in configs for f in configs[c]["data_files"]}
        assert files == {("default", "train"): sorted(split_dir(build, "train").glob("*.tar")),
                         ("default", "validation"): sorted(split_dir(build, "val").glob("*.tar")),
                         ("train_small", "train"): sorted(split_dir(build, "train_small").glob("*.tar"))}
        assert str(build) not in card and str(build.resolve()) not in card  # no absolute path of the build
        for path in re.findall(r"`((?:\.\./)?(?:shards_meta|shards|train|val|trainsmall)/[^`<*]+)`", card):
            assert (folder / path).exists(), (folder, path)  # every path it names, from its own folder
        assert (folder / "coverage.png").is_file() and "](coverage.png)" in card


# ------------------------------------------------------------------------------------- the shard folders
def test_shard_folders_hold_tars_only(build):
    assert sorted(p.name for p in (build / "shards").iterdir() if p.is_dir()) == sorted(SPLIT_FOLDERS.values())
    for split in SPLITS:
        names = sorted(p.name for p in split_dir(build, split).iterdir())
        assert names == sorted(sizes(build, split)) and all(re.fullmatch(r"shard-\d{6}\.tar", n) for n in names)


def test_hugging_face_webdataset_loader_reads_the_shard_folder_as_it_is(build, hf_offline):
    import datasets

    ds = datasets.load_dataset("webdataset", data_dir=str(build / "shards"), cache_dir=str(hf_offline))
    assert set(ds) == {"train", "validation"}  # trainsmall/ is not taken for a part of train
    for split, hf_split in HF_SPLIT.items():
        assert ds[hf_split].num_rows == sum(sizes(build, split).values())
        assert sorted(ds[hf_split]["__key__"]) == sorted(tar_samples(build, split))


def test_hugging_face_loads_the_build_and_the_shard_folder_through_the_cards_configs(build, hf_offline):
    import datasets

    for root in (build, build / "shards"):
        default = datasets.load_dataset(str(root), cache_dir=str(hf_offline))
        assert set(default) == {"train", "validation"}
        for split, hf_split in HF_SPLIT.items():
            assert default[hf_split].num_rows == sum(sizes(build, split).values())
        small = datasets.load_dataset(str(root), "train_small", cache_dir=str(hf_offline))
        assert set(small) == {"train"} and small["train"].num_rows == sum(sizes(build, "train_small").values())
        assert set(small["train"]["__key__"]) == set(tar_samples(build, "train_small"))
        assert set(small["train"]["__key__"]) < set(default["train"]["__key__"])
        assert small["train"][0]["jpg"].size == (224, 224)


# ------------------------------------------------------------------------------------------------- wids
def test_wids_opens_every_split_index(build, tmp_path, monkeypatch):
    import wids

    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "wids"))
    for split in SPLITS:
        doc = json.loads(wids_path(build, split).read_text())
        assert doc["__kind__"] == "wids-shard-index-v1" and not any(os.path.isabs(s["url"]) for s in doc["shardlist"])
        ds = wids.ShardListDataset(str(wids_path(build, split)))
        expected = tar_samples(build, split)
        assert len(ds) == sum(sizes(build, split).values()) == len(expected)
        picks = range(len(ds)) if len(ds) < 50 else range(0, len(ds), 7)
        uids = list(expected)
        for i in picks:
            sample = ds[i]
            assert sample["__key__"] == uids[i] and sample[".json"] == expected[uids[i]]
            assert sample[".jpg"].size == (224, 224)


# -------------------------------------------------------------------------------------------- Croissant
def _croissant_records(path: Path, cache: Path, split: str) -> list[dict]:
    """Records of a split as mlcroissant yields them (in a fresh interpreter: its cache folder is read at import)."""
    code = f"""
import json, os, sys
os.environ["CROISSANT_CACHE"] = {json.dumps(str(cache))}
import mlcroissant as mlc
ds = mlc.Dataset({json.dumps(str(path))})
issues = ds.metadata.ctx.issues
out = {{"errors": sorted(issues.errors), "warnings": sorted(issues.warnings), "records": []}}
for r in ds.records({json.dumps(split)}):
    out["records"].append({{k: (v.decode() if isinstance(v, bytes) else list(v.size) if hasattr(v, "size") else v)
                            for k, v in r.items()}})
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


def test_mlcroissant_validates_croissant_json_and_loads_every_splits_records(build, tmp_path):
    doc = json.loads(croissant_path(build).read_text())
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    local = [d["contentUrl"] for d in doc["distribution"] if "contentUrl" in d]
    assert local and all(not re.match(r"^[a-z]+:|/", u) and (build / u).is_file() for u in local)
    for split in SPLITS:
        got = _croissant_records(croissant_path(build), tmp_path / "croissant", split)
        assert got["errors"] == [] and all("datePublished" in w for w in got["warnings"])  # no date: byte-stable
        expected = tar_samples(build, split)
        assert len(got["records"]) == sum(sizes(build, split).values()) == len(expected)
        columns = pq.read_schema(json_table_path(build, split)).names
        for rec in got["records"]:
            uid = rec[f"{split}/uid"]
            meta = expected[uid]
            assert rec[f"{split}/jpg"] == [224, 224]
            assert rec[f"{split}/scientific_name"] == meta["scientific_name"]
            assert rec[f"{split}/texts.taxon_com"] == meta["texts"]["taxon_com"]
            assert set(rec) == {f"{split}/{c}" for c in columns} | {f"{split}/jpg"}


def test_a_new_key_in_the_samples_json_appears_in_croissant_without_an_edit(build, tmp_path):
    """A sample .json with one more key (as a future writer might add): publish puts it in the split's table
    and croissant.json, typed, and mlcroissant yields it."""
    copy = tmp_path / "build"
    shutil.copytree(build, copy)
    sizes_val = sizes(copy, "val")
    with tarfile.open(shard_path(copy, "val", 0)) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with open(shard_path(copy, "val", 0), "wb") as f:
        writer = ShardWriter(f, "val", 0)
        sample, position = [], 0
        for name, data in members:
            if name.endswith(".json"):
                meta = json.loads(data)
                data = json.dumps({**meta, "habitat": "meadow", "elevation_m": 1200 + position}).encode()
            sample.append((name, data))
            if name.endswith(".json"):
                writer.add(name[:-5], position, sample)
                sample, position = [], position + 1
        index = writer.close()
    pq.write_table(index, index_path(copy, "val", 0))
    publish_task(str(copy), build_workflow(copy))
    assert sizes(copy, "val") == sizes_val
    doc = json.loads(croissant_path(copy).read_text())
    fields = {f["@id"]: f["dataType"] for rs in doc["recordSet"] for f in rs["field"]}
    assert fields["val/habitat"] == "sc:Text" and fields["val/elevation_m"] == "sc:Integer"
    assert "train/habitat" not in fields
    got = _croissant_records(croissant_path(copy), tmp_path / "croissant", "val")
    assert got["errors"] == [] and {r["val/habitat"] for r in got["records"]} == {"meadow"}
    assert sorted(r["val/elevation_m"] for r in got["records"]) == [1200 + i for i in range(sum(sizes_val.values()))]
    r = run_cli("shards", "verify", str(copy))
    assert r.returncode == 0, r.stderr  # the tars, sizes, wids indexes and member indexes agree


# -------------------------------------------------------------------------------- the printed examples
def _run_blocks(blocks: list[str], cwd: Path, tmp_path: Path) -> list[str]:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), WIDS_CACHE=str(tmp_path / "wids"))
    outputs = []
    for code in blocks:
        r = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (code, r.stderr[-3000:])
        outputs.append(r.stdout)
    return outputs


READERS = ("datasets.load_dataset", "wids.ShardListDataset", "mlcroissant")


def test_the_cards_reading_examples_run_as_printed(build, tmp_path):
    blocks = [b for b in re.findall(r"```python\n(.*?)```", (build / "README.md").read_text(), re.S)
              if any(r in b for r in READERS)]
    assert [sum(r in b for b in blocks) for r in READERS] == [1, 1, 1]
    outputs = _run_blocks(blocks, build, tmp_path)  # from the card's folder, as it says
    val = tar_samples(build, "val")
    first_train, first_small = outputs[0].split()
    assert first_train in tar_samples(build, "train") and first_small in tar_samples(build, "train_small")
    assert outputs[1].split()[0] == str(len(val)) and outputs[1].split()[1] == next(iter(val))
    assert outputs[2].split()[0] in val


def test_readmes_reading_examples_run_as_printed(demo_root, build, tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Shards\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if any(r in b for r in READERS)]
    assert [sum(r in b for b in blocks) for r in READERS] == [1, 1, 1]
    assert all("tol-demo/build" in b for b in blocks)
    outputs = _run_blocks(blocks, demo_root, tmp_path)  # where `tol demo` ran, as README's quick start
    train = tar_samples(build, "train")
    assert outputs[0].split()[-1] == str(sum(sizes(build, "val").values()))
    assert outputs[1].split()[:2] == [str(len(train)), next(iter(train))]
    assert outputs[2].split()[0] in train

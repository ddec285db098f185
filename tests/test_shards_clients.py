"""Real clients read the shards unmodified: webdataset, open_clip's own training data pipeline
(open_clip_train.data.get_wds_dataset) and Hugging Face datasets (the webdataset builder on a list of tars, and
`load_dataset` on the shard folder), on a demo build sharded with Spanish as an extra language and a seed
under which a train shard starts with samples that have no common name (Hugging Face infers its column types
from a shard's first samples)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w

from conftest import run_cli
from tol_builder.catalog import query
from tol_builder.records import RANKS
from tol_builder.text import taxon_texts, text_keys

pytestmark = pytest.mark.slow
PER_SHARD = 16
LANGUAGES = ("en", "es")
SPANISH = {"Panthera leo": "león", "Danaus plexippus": "mariposa monarca", "Pica hudsonia": "urraca de pico negro"}


def _h64(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)


def _seed_with_a_nameless_start(usable: list[dict]) -> tuple[int, int]:
    """A seed under which a train shard's first 5 samples have no common name (plan.py's documented rules:
    split by sha256(seed:split:uid), order by sha256(seed:order:train:uid)). Returns (seed, shard)."""
    for seed in range(1, 20_000):
        train = [r for r in usable if _h64(f"{seed}:split:{r['uid']}") >= int(0.05 * 2 ** 64)]
        train.sort(key=lambda r: (_h64(f"{seed}:order:train:{r['uid']}"), r["uid"]))
        for shard in range(len(train) // PER_SHARD):
            if all(r["common_name"] is None for r in train[shard * PER_SHARD:shard * PER_SHARD + 5]):
                return seed, shard
    raise AssertionError("no seed found")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clients")
    demo = root / "demo"
    r = run_cli("demo", "--out", str(demo), "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    build = root / "build"
    shutil.copytree(demo / "build", build, ignore=lambda d, names: {n for n in names if n in (
        "shards", "selection", "README.md", "coverage.png") and Path(d) == demo / "build"})
    usable = query(build, "SELECT i.uid, i.common_name FROM images i JOIN media m USING (uid) "
                          "WHERE m.status = 'ok' AND i.taxon_id IS NOT NULL ORDER BY uid").to_pylist()
    seed, nameless = _seed_with_a_nameless_start(usable)
    names_file = build / "taxonomy" / "common_names.parquet"
    names = pq.read_table(names_file)
    taxa = {t["scientific_name"]: t["taxon_id"] for t in query(build, "SELECT * FROM taxa").to_pylist()}
    extra = pa.table({"taxon_id": [taxa[n] for n in SPANISH], "language": ["es"] * len(SPANISH),
                      "name": list(SPANISH.values()), "source": ["test"] * len(SPANISH),
                      "preferred": [True] * len(SPANISH)}).cast(names.schema)
    pq.write_table(pa.concat_tables([names, extra]), names_file)
    doc = tomllib.loads((demo / "workflow.toml").read_text())
    doc.update(seed=seed, out=str(build))
    doc["shards"]["samples_per_shard"] = PER_SHARD
    doc["text"] = {"languages": list(LANGUAGES)}
    wf = demo / "workflow-clients.toml"
    wf.write_text(tomli_w.dumps(doc))
    r = run_cli("build", str(wf), "--stages", "shards", "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    plan = {(x["uid"], x["split"]): x for x in pq.read_table(build / "selection" / "samples.parquet").to_pylist()}
    return {"build": build, "shards": build / "shards", "nameless": nameless, "plan": plan, "seed": seed}


def _tars(shards: Path, split: str) -> list[str]:
    return sorted(str(p) for p in (shards / split).glob("shard-*.tar"))


def _sizes(shards: Path, split: str) -> int:
    return sum(json.loads((shards / split / "sizes.json").read_text()).values())


def _expected(row: dict):
    spanish = json.loads(row["common_names"] or "{}")
    return taxon_texts({r: row[r] for r in RANKS}, row["common_name"], common_names=spanish, languages=LANGUAGES,
                       confirmed_rank=row["lowest_rank"])


def test_the_chosen_shard_starts_without_common_names(sharded):
    with open(sharded["shards"] / "train" / f"shard-{sharded['nameless']:06d}.tar", "rb") as f:
        import tarfile

        with tarfile.open(fileobj=f) as tar:
            metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    assert [m["common_name"] for m in metas[:5]] == [""] * 5 and any(m["common_name"] for m in metas)
    assert all("en" in m["fallback_languages"].split(",") for m in metas[:5])


def test_webdataset_reads_every_key_and_the_text_modules_texts(sharded):
    import webdataset as wds

    # webdataset lower-cases member keys when it groups a sample (taxonTag.txt arrives as taxontag.txt)
    keys = {f"{k}.txt".lower(): k for k in text_keys(LANGUAGES)}
    assert "taxon_com_es.txt" in keys and "taxontag_com.txt" in keys
    spanish_seen = set()
    for split in ("train", "val", "train_small"):
        n = 0
        for sample in wds.WebDataset(_tars(sharded["shards"], split), shardshuffle=False).decode("pil"):
            n += 1
            assert sorted(k for k in sample if not k.startswith("__")) == sorted([*keys, "jpg", "txt", "json"])
            assert sample["jpg"].size == (224, 224) and sample["jpg"].mode == "RGB"
            row = sharded["plan"][(sample["__key__"], split)]
            t = _expected(row)
            assert {key: sample[k] for k, key in keys.items()} == t.captions
            assert sample["txt"] == t.captions["taxon_com"] and sample["json"]["texts"] == t.captions
            assert sample["json"]["fallback_languages"] == ",".join(t.fallback_languages)
            if row["scientific_name"] in SPANISH:
                assert sample["com_es.txt"] == f"a photo of {SPANISH[row['scientific_name']]}."
                spanish_seen.add(row["scientific_name"])
            else:  # no Spanish name: the scientific form, and the .json says so
                assert sample["com_es.txt"] == f"a photo of {t.names['scientific_name']}."
                assert "es" in sample["json"]["fallback_languages"].split(",")
        assert n == _sizes(sharded["shards"], split)
    assert spanish_seen == set(SPANISH)


def test_open_clip_training_pipeline_yields_images_and_tokenised_txt(sharded):
    import open_clip
    import torch
    from open_clip_train.data import get_wds_dataset
    from open_clip_train.params import parse_args

    shards = sharded["shards"]
    n_train = len(_tars(shards, "train"))
    # the namespace open_clip_train.main builds (main then sets world_size/rank from the distributed setup)
    args = parse_args(["--train-data", str(shards / "train" / f"shard-{{000000..{n_train - 1:06d}}}.tar"),
                       "--val-data", str(shards / "val" / "shard-000000.tar"), "--dataset-type", "webdataset",
                       "--batch-size", "8", "--workers", "0", "--model", "ViT-S-16", "--seed", "3"])
    args.world_size, args.rank, args.distributed = 1, 0, False
    tokenizer = open_clip.get_tokenizer("ViT-S-16")
    preprocess = open_clip.image_transform(224, is_train=True)
    data = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
    assert data.dataloader.num_samples >= _sizes(shards, "train")  # from sizes.json, rounded up to full batches
    images, texts = next(iter(data.dataloader))
    assert images.shape == (8, 3, 224, 224) and texts.shape == (8, 77) and texts.dtype == torch.long
    captions = {"".join(_expected(x).captions["taxon_com"].lower().split()) for x in sharded["plan"].values()}
    for row in texts:
        decoded = tokenizer.decode([int(t) for t in row if int(t) not in (0, 49406, 49407)])
        assert "".join(decoded.split()) in captions  # the tokenised .txt of a sample of the shards
    val = get_wds_dataset(args, open_clip.image_transform(224, is_train=False), is_train=False, tokenizer=tokenizer)
    assert sum(len(b[0]) for b in val.dataloader) == _sizes(shards, "val")


def test_hugging_face_loads_the_tars_and_the_shard_folder(sharded, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    shards = sharded["shards"]
    columns = {"jpg", *[f"{k}.txt" for k in text_keys(LANGUAGES)], "txt", "json", "__key__", "__url__"}
    train = _tars(shards, "train")
    first = train.pop(sharded["nameless"])  # types are inferred from the first samples of the first tar
    ds = datasets.load_dataset("webdataset", data_files={"train": [first, *train]}, split="train",
                               cache_dir=str(tmp_path / "cache1"))
    assert set(ds.column_names) == columns and ds.num_rows == _sizes(shards, "train")
    assert ds.features["json"]["common_name"].dtype == "string"
    head = ds[0]
    assert head["json"]["common_name"] == "" and head["common_name.txt"] == head["scientific_name.txt"]
    named = [r for r in ds.select(range(ds.num_rows)) if r["json"]["common_name"]]
    assert named and all(isinstance(r["json"]["common_name"], str) for r in named)
    assert head["jpg"].size == (224, 224)
    folder = datasets.load_dataset(str(shards), cache_dir=str(tmp_path / "cache2"))
    assert set(folder) == {"train", "validation", "train_small"}
    for split, hf_split in (("train", "train"), ("val", "validation"), ("train_small", "train_small")):
        assert folder[hf_split].num_rows == _sizes(shards, split)
        assert set(folder[hf_split].column_names) == columns
    assert set(folder["train_small"]["__key__"]) <= set(folder["train"]["__key__"])
    assert not set(folder["validation"]["__key__"]) & set(folder["train"]["__key__"])

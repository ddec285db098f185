"""Real clients read the shards unmodified: webdataset, open_clip's own training data pipeline
(open_clip_train.data.get_wds_dataset) and Hugging Face datasets (the webdataset builder on a list of tars, and
`load_dataset` on the shard folder), on a demo build sharded with Spanish as an extra language (the demo's
authorities carry Spanish names for some taxa) and a seed
under which a train shard starts with samples that have no common name (Hugging Face infers its column types
from a shard's first samples)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from test_shards import usable_images, variant
from tol_builder.catalog import query
from tol_builder.records import RANKS
from tol_builder.shards.layout import sizes_path, split_dir
from tol_builder.text import taxon_texts, text_keys

pytestmark = pytest.mark.slow
PER_SHARD = 16
LANGUAGES = ("en", "es")


def _h64(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)


def _seed_with_a_nameless_start(usable: list[dict]) -> tuple[int, int]:
    """A seed under which a train shard's first 5 samples have no common name (plan.py's documented rules:
    split by sha256(seed:split:anchor), order by sha256(seed:order:train:uid)). Returns (seed, shard)."""
    for seed in range(1, 20_000):
        train = [r for r in usable if _h64(f"{seed}:split:{r['cluster']}") >= int(0.05 * 2 ** 64)]
        train.sort(key=lambda r: (_h64(f"{seed}:order:train:{r['uid']}"), r["uid"]))
        for shard in range(len(train) // PER_SHARD):
            if all(r["common_name"] is None for r in train[shard * PER_SHARD:shard * PER_SHARD + 5]):
                return seed, shard
    raise AssertionError("no seed found")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, demo_run) -> dict:
    root = tmp_path_factory.mktemp("clients")
    demo = demo_run.out  # the session's demo (tests/fixtures_demo.py); `variant` shards a copy of its build
    seed, nameless = _seed_with_a_nameless_start(usable_images(demo / "build"))
    build, wf = variant(demo, root, "clients", seed=seed, shards={"samples_per_shard": PER_SHARD},
                        text={"languages": list(LANGUAGES)})
    r = run_cli("build", str(wf), "--stages", "shards", "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    plan = {(x["uid"], x["split"]): x for x in pq.read_table(build / "selection" / "samples.parquet").to_pylist()}
    spanish = {r["taxon_id"]: r["name"] for r in query(
        build, "SELECT taxon_id, name FROM common_names WHERE language = 'es' AND preferred").to_pylist()}
    return {"build": build, "shards": build / "shards", "nameless": nameless, "plan": plan, "seed": seed,
            "spanish": spanish}


def _tars(shards: Path, split: str) -> list[str]:
    return sorted(str(p) for p in split_dir(shards.parent, split).glob("shard-*.tar"))


def _sizes(shards: Path, split: str) -> int:
    return sum(json.loads(sizes_path(shards.parent, split).read_text()).values())


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
    spanish_seen, fallback_seen = set(), set()
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
            if row["taxon_id"] in sharded["spanish"]:  # the demo's EOL, GBIF and ITIS names in Spanish
                assert sample["com_es.txt"] == f"a photo of {sharded['spanish'][row['taxon_id']]}."
                spanish_seen.add(row["taxon_id"])
            else:  # no Spanish name: the scientific form, and the .json says so
                assert sample["com_es.txt"] == f"a photo of {t.names['scientific_name']}."
                assert "es" in sample["json"]["fallback_languages"].split(",")
                fallback_seen.add(row["taxon_id"])
        assert n == _sizes(sharded["shards"], split)
    assert len(spanish_seen) >= 3 and fallback_seen


def test_open_clip_training_pipeline_yields_images_and_tokenised_txt(sharded):
    import open_clip
    import torch
    from open_clip_train.data import get_wds_dataset
    from open_clip_train.params import parse_args

    shards = sharded["shards"]
    n_train = len(_tars(shards, "train"))
    # the namespace open_clip_train.main builds (main then sets world_size/rank from the distributed setup)
    # the shard folders hold tars only (sizes.json is in shards_meta/): the counts go on the command line
    args = parse_args(["--train-data", str(shards / "train" / f"shard-{{000000..{n_train - 1:06d}}}.tar"),
                       "--train-num-samples", str(_sizes(shards, "train")),
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
    folder["train_small"] = datasets.load_dataset(str(shards), "train_small", split="train",
                                                  cache_dir=str(tmp_path / "cache2"))  # a config of its own
    assert set(folder) == {"train", "validation", "train_small"}
    for split, hf_split in (("train", "train"), ("val", "validation"), ("train_small", "train_small")):
        assert folder[hf_split].num_rows == _sizes(shards, split)
        assert set(folder[hf_split].column_names) == columns
    assert set(folder["train_small"]["__key__"]) <= set(folder["train"]["__key__"])
    assert not set(folder["validation"]["__key__"]) & set(folder["train"]["__key__"])

"""The training stream and the settings, on real tar shards: the tar reader against Python's tarfile, the
text policies against the shards' own strings and BioCLIP's step-seeded choice, positions that make a resume
exact through torch's DataLoader with several workers, and errors that name shard, member and key."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest
import torch

from tol_builder.config import TrainConfig
from tol_builder.errors import ConfigError, InputError
from tol_builder.text import MIXED_TYPES
from tol_builder.train.data import (ReadSamples, StreamPlan, batch_text_type, random_resized_crop_box,
                                    tar_members, train_loader)
from tol_builder.train.settings import load_settings
from tol_builder.train.shards import open_split

from train_fixtures import write_shards


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    build = tmp_path_factory.mktemp("data")
    write_shards(build, "train", 3, per_shard=10)
    return open_split(build / "shards" / "train")


def _plan(split, **kw) -> StreamPlan:
    args = dict(shards=split.shards, sizes=split.sizes, seed=5, rank=0, batch_size=6, image_size=32,
                tokenizer="tol-tiny", shuffle_buffer=20, shuffle_initial=5, segment_samples=25)
    return StreamPlan(**{**args, **kw})


def test_tar_reader_agrees_with_tarfile_on_pax_and_long_names(tmp_path):
    path = tmp_path / "t.tar"
    members = {"a" * 120 + ".jpg": b"x" * 700, "b.taxon_com.txt": "é".encode(), "c/d.txt": b"", "e.json": b"{}"}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5  # a float mtime makes tarfile write a PAX header
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(tarfile.TarInfo("dir"))  # not a regular file: skipped
    with tarfile.open(path) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with open(path, "rb") as f:
        got = list(tar_members(f, str(path), lambda n: True))
    assert got == expected
    with open(path, "rb") as f:  # unwanted members are skipped, not returned
        assert [n for n, _ in tar_members(f, str(path), lambda n: n.endswith(".json"))] == ["e.json"]


def test_reader_names_the_shard_and_member_of_a_problem(split, tmp_path):
    samples = list(ReadSamples(("jpg", "taxon_com.txt"))(split.shards[:1]))
    assert len(samples) == split.sizes[0] and all(len(s["__key__"]) == 32 for s in samples)
    with pytest.raises(InputError, match=r"member [0-9a-f]{32}\.nope\.txt"):
        list(ReadSamples(("jpg", "nope.txt"))(split.shards[:1]))
    broken = tmp_path / "shard-000000.tar"
    data = bytearray(Path(split.shards[0]).read_bytes())
    size = int(data[124:136].split(b"\0")[0], 8)
    second = 512 + (size + 511) // 512 * 512  # the second member's header: damage its name
    data[second + 5] ^= 0xFF
    broken.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"{broken}.*bad tar header at byte {second}"):
        list(ReadSamples(("jpg",))([str(broken)]))


def test_sizes_json_problems_name_the_file_and_shard(split, tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "shard-000000.tar").write_bytes(Path(split.shards[0]).read_bytes())
    with pytest.raises(InputError, match="sizes.json: missing"):
        open_split(folder)
    (folder / "sizes.json").write_text(json.dumps({"shard-000001.tar": 3}))
    with pytest.raises(InputError, match="field 'shard-000000.tar'"):
        open_split(folder)


def test_batch_policy_is_bioclips_step_seeded_choice_with_the_shards_strings(split):
    plan = _plan(split, text_policy="batch", accum_freq=2)
    batches = plan.batches()
    for b in range(6):
        images, tokens, kind = next(batches)
        random.seed(b // 2)  # BioCLIP: random.seed(step); random.choice([sci, com, taxon, sci_com, taxon_com])
        assert kind == random.choice(list(MIXED_TYPES)) == batch_text_type(b // 2, MIXED_TYPES)
        assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
        assert tokens.shape == (6, 77)


def test_sample_policy_follows_weights_and_strings_come_from_the_shards(split):
    from tol_builder.train import models

    only_taxon = _plan(split, text_policy="sample", text_weights=(0, 0, 1, 0, 0))
    images, tokens, kind = next(only_taxon.batches())
    assert kind == "taxon"
    mixed = _plan(split, text_policy="sample")
    kinds = set()
    items = mixed.samples(0, 0)
    from tol_builder.train.data import PickText

    texts = json_texts(split)
    for _, s in PickText("sample", MIXED_TYPES, (), 1)(next(items) for _ in range(40)):
        kinds.add(s["text_type"])
        assert s["text"] == texts[s["__key__"]][s["text_type"]]  # the shard's own `.<type>.txt`
    assert len(kinds) >= 4
    fixed = _plan(split, text_policy="taxonTag_com")
    _, tokens, kind = next(fixed.batches())
    assert kind == "taxonTag_com"
    assert torch.equal(tokens[0], models.tokenizer("tol-tiny")([tokens_text(split, fixed)])[0])


def json_texts(split) -> dict:
    return {s["__key__"]: json.loads(s["json"])["texts"] for s in ReadSamples(("json",))(split.shards)}


def tokens_text(split, plan) -> str:
    first_key = next(plan.samples(plan.role(0, 1), 0))[1]["__key__"]
    return json_texts(split)[first_key][plan.text_policy]


def test_resume_through_dataloader_workers_gives_the_same_batches(split):
    torch.set_num_threads(1)
    plan = _plan(split)
    whole = [b for b, _ in zip(train_loader(plan, 2), range(9))]
    for start in (3, 4):  # an odd and an even start: the worker roles rotate
        resumed = [b for b, _ in zip(train_loader(_plan(split, start_batch=start), 2), range(9 - start))]
        for (i1, t1, k1), (i2, t2, k2) in zip(whole[start:], resumed):
            assert torch.equal(i1, i2) and torch.equal(t1, t2) and k1 == k2
    in_process = [b for b, _ in zip(train_loader(plan, 0), range(3))]
    assert not torch.equal(in_process[1][0], whole[1][0])  # 1 worker != 2 workers: the layout must match
    assert torch.equal(in_process[0][0], whole[0][0])  # (batch 0 is role 0's first batch either way)


def test_crop_box_stays_inside_and_in_the_area_range():
    rng = random.Random(0)
    for _ in range(300):  # shards are square; near-square images get a crop of 90-100% of their area
        w = rng.randint(64, 400)
        h = int(w * rng.uniform(0.9, 1.1))
        left, top, right, bottom = random_resized_crop_box(w, h, (0.9, 1.0), rng)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        assert 0.85 < (right - left) * (bottom - top) / (w * h) <= 1.0
    # an image too elongated for any 3/4..4/3 crop gets torchvision's fallback: the central crop at the bound
    from torchvision.transforms import RandomResizedCrop

    i, j, h, w = RandomResizedCrop.get_params(torch.zeros(3, 40, 400), [0.9, 1.0], [3 / 4, 4 / 3])
    assert random_resized_crop_box(400, 40, (0.9, 1.0), rng) == (j, i, j + w, i + h) == (173, 0, 226, 40)


def test_settings_from_workflow_with_overrides_and_errors(tmp_path):
    (tmp_path / "m.toml").write_text('source = "eol"\n[[files]]\nname = "x"\nrole = "metadata"\n')
    wf = tmp_path / "wf.toml"
    wf.write_text(f'name = "t"\nout = "{tmp_path / "build"}"\n[[sources]]\nname = "eol"\nmanifest = "m.toml"\n'
                  '[train]\nmodel = "tol-tiny"\nbatch_size = 64\n')
    build, cfg, _ = load_settings(wf, ["batch_size=16", "train.text_policy=sample", "crop_scale=[0.5, 1.0]"])
    assert build == tmp_path / "build" and cfg.model == "tol-tiny" and cfg.batch_size == 16
    assert cfg.text_policy == "sample" and cfg.crop_scale == [0.5, 1.0]
    assert TrainConfig().batch_size == 4096 and TrainConfig().lr == 1e-4  # BioCLIP's defaults
    with pytest.raises(ConfigError, match=r"wf.toml: key 'train.batch_sise'"):
        load_settings(wf, ["batch_sise=3"])
    with pytest.raises(ConfigError, match=r"key 'train.batch_size': expected an integer"):
        load_settings(wf, ["batch_size=big"])
    with pytest.raises(ConfigError, match=r"key 'train.text_policy'"):
        load_settings(wf, ["text_policy=random"])
    with pytest.raises(ConfigError, match=r"key 'train.text_weights'"):
        load_settings(wf, ["text_policy=sample", "text_weights=[1, 2]"])
    with pytest.raises(ConfigError, match=r"key 'train.crop_scale'"):
        load_settings(wf, ["crop_scale=[0.9, 1.2]"])
    build, cfg, _ = load_settings(wf, ["text_policy=taxon_com_es"])  # a language twin is a text key
    assert cfg.text_policy == "taxon_com_es"

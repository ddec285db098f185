"""Evaluation: rank-level aggregation against a slow reference, the reader of the build's evaluation-set views
(hand-written parquet in the documented columns), few-shot nearest centroid, the reports and the CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tol_builder.records import RANKS
from tol_builder.train.evalsets import eval_data
from tol_builder.train.fewshot import few_shot, fold_accuracy
from tol_builder.train.report import demo_line
from tol_builder.train.zeroshot import LEVELS, Classes, class_key, rank_topk

from conftest import run_cli
from train_fixtures import HAND_WRITTEN, write_eval_set, write_shards


def _random_labels(rng: random.Random, n_classes: int, n_images: int) -> list[dict]:
    """Taxa of a random little tree, some with unknown lower ranks (genus- or family-level taxa)."""
    taxa = []
    for c in range(n_classes):
        lineage = {r: f"{r[:2]}{rng.randint(0, 2 if i < 3 else 4)}" for i, r in enumerate(RANKS)}
        for i, r in enumerate(RANKS):  # the lower ranks nest in the higher: names carry the parent's
            lineage[r] = (lineage[RANKS[i - 1]] + "/" if i else "") + lineage[r]
        cut = rng.choice([7, 7, 7, 6, 5])  # species, genus- or family-level taxa
        for r in RANKS[cut:]:
            lineage[r] = None
        taxa.append({"taxon_id": f"t{c}", **lineage, "common_name": None})
    return [dict(rng.choice(taxa), uid=f"u{i}") for i in range(n_images)]


def _reference(probs: np.ndarray, classes: Classes, labels: list[dict]) -> dict:
    """Per image and level: sum the probabilities of every class by its group, sort, look for the truth."""
    out = {}
    for level in LEVELS:
        depth = None if level == "taxon" else RANKS.index(level) + 1
        hits1 = hits5 = n = 0
        groups_seen = set()
        for c, lin in enumerate(classes.lineages):
            if depth is None:
                groups_seen.add(c)
            elif lin[depth - 1] is not None:
                groups_seen.add(lin[:depth])
        for i, lab in enumerate(labels):
            if depth is None:
                truth = classes.index[class_key(lab)]
            else:
                lin = tuple(lab[r] for r in RANKS)
                if lin[depth - 1] is None:
                    continue
                truth = lin[:depth]
            sums: dict = {}
            for c, lin in enumerate(classes.lineages):
                if depth is None:
                    sums[c] = sums.get(c, 0.0) + probs[i, c]
                elif lin[depth - 1] is not None:
                    sums[lin[:depth]] = sums.get(lin[:depth], 0.0) + probs[i, c]
            ranked = sorted(sums, key=lambda g: -sums[g])
            n += 1
            hits1 += truth in ranked[:1]
            hits5 += truth in ranked[:5]
        if n:
            out[level] = {"n": n, "groups": len(groups_seen), "top1": hits1 / n, "top5": hits5 / n}
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_aggregation_agrees_with_a_slow_reference(seed):
    rng = random.Random(seed)
    labels = _random_labels(rng, n_classes=25, n_images=120)
    classes = Classes.from_labels(labels)
    logits = torch.from_numpy(np.random.default_rng(seed).normal(size=(120, len(classes))) * 3)
    probs = logits.softmax(1)
    fast = rank_topk(probs, classes, labels)
    slow = _reference(probs.numpy(), classes, labels)
    assert set(fast) == set(slow)
    for level, r in slow.items():
        assert fast[level]["n"] == r["n"] and fast[level]["groups"] == r["groups"], level
        assert fast[level]["top1"] == pytest.approx(r["top1"]) and fast[level]["top5"] == pytest.approx(r["top5"])
    # summing matters: a genus whose species each get little probability still wins at genus level
    assert any(fast[lv]["top1"] != fast["taxon"]["top1"] for lv in fast if lv != "taxon")


def test_perfect_and_uniform_predictions():
    labels = _random_labels(random.Random(3), 12, 60)
    classes = Classes.from_labels(labels)
    truth = torch.tensor([classes.index[class_key(lab)] for lab in labels])
    perfect = rank_topk(torch.nn.functional.one_hot(truth, len(classes)).double(), classes, labels)
    assert all(r["top1"] == 1.0 for r in perfect.values())
    assert perfect["taxon"]["chance"] == 1 / len(classes)


def test_eval_set_reader_uses_the_catalog_views_and_skips_what_it_cannot_use(tmp_path):
    import duckdb
    import pyarrow.parquet as pq

    n = write_eval_set(tmp_path, "demo_eval", 2)
    # one image's media failed, one image's taxon is unresolved: both are counted and left out
    folder = tmp_path / HAND_WRITTEN / "demo_eval"
    media, images = pq.read_table(folder / "media.parquet").to_pylist(), pq.read_table(folder / "images.parquet")
    media[0]["status"], media[0]["jpeg"] = "http_404", None
    pq.write_table(__import__("pyarrow").Table.from_pylist(media), folder / "media.parquet")
    rows = images.to_pylist()
    rows[1]["taxon_id"] = None
    pq.write_table(__import__("pyarrow").Table.from_pylist(rows, schema=images.schema), folder / "images.parquet")

    data = eval_data(tmp_path, eval_set="demo_eval", size=48, batch_size=5)
    batches = list(data.batches())
    got = [lab for _, labs in batches for lab in labs]
    assert len(got) == n - 2 and data.skipped == {"media_not_ok": 1, "unresolved_taxon": 1}
    assert batches[0][0].shape == (5, 3, 48, 48) and batches[0][0].dtype == np.uint8
    assert {lab["uid"] for lab in got} == {r["uid"] for r in rows[2:]} | ({r["uid"] for r in rows[:2]} - {
        media[0]["uid"], rows[1]["uid"]})
    with pytest.raises(Exception, match="no images"):
        list(eval_data(tmp_path, eval_set="nope", size=48).batches())
    assert duckdb.__version__  # the reader went through DuckDB's catalog views


def test_few_shot_nearest_centroid():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16)) * 3
    labels = np.repeat(np.arange(6), 8)
    feats = centres[labels] + rng.normal(size=(48, 16)) * 0.3
    res = few_shot(feats, labels, shots=(1, 5), folds=5)
    assert res["1-shot"]["mean"] > 0.9 and res["5-shot"]["mean"] == 1.0
    assert res["5-shot"]["test_images"] == 6 * 3 and len(res["1-shot"]["folds"]) == 5
    noise = rng.normal(size=(48, 16))
    assert few_shot(noise, labels, shots=(1,), folds=5)["1-shot"]["mean"] < 0.5
    # the folds differ (seeded by fold number, as BioCLIP) and a fold is reproducible
    assert fold_accuracy(noise, labels, 1, 0) == fold_accuracy(noise, labels, 1, 0)
    # a class with too few images for k shots is left out of that k
    res = few_shot(feats[:-4], labels[:-4], shots=(5,), folds=2)
    assert res["5-shot"]["classes_left_out"] == 1


def test_demo_line_format():
    assert demo_line(0.41, 0.1) == "zero-shot top-1: 41.0% (chance 10.0%)"


@pytest.mark.slow
def test_eval_cli_tables_json_and_plot(tmp_path):
    write_shards(tmp_path, "val", 2, per_shard=16)
    r = run_cli("eval", "zero-shot", str(tmp_path), "--model", "tol-tiny", "--set", "threads=1",
                "--set", "eval_templates='plain'", "--json", str(tmp_path / "zs.json"), "--plot",
                str(tmp_path / "zs.png"))
    assert r.returncode == 0, r.stderr
    assert "zero-shot: tol-tiny (random init) on split:val" in r.stdout.replace("\n", " ")
    result = json.loads((tmp_path / "zs.json").read_text())
    assert result["n_images"] == 32 and result["n_classes"] == 16 and result["templates"] == 1
    assert list(result["levels"]) == list(LEVELS)
    assert (tmp_path / "zs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run_cli("eval", "few-shot", str(tmp_path), "--model", "tol-tiny", "--set", "threads=1")
    assert r.returncode == 0 and "1-shot" in r.stdout
    r = run_cli("eval", "zero-shot", str(tmp_path), "--checkpoint", str(tmp_path / "none"))
    assert r.returncode == 1 and "none: no such checkpoint folder" in " ".join(r.stderr.split())
    from tol_builder.train.checkpoint import resolve_folder

    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="neither a checkpoint folder"):
        resolve_folder(tmp_path / "empty")

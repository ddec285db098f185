"""`tol shards verify DIR`: re-read every shard of a build and report every problem with its shard and key.

Owns no file; reads `BUILD/shards/` (the tars) and `BUILD/shards_meta/` (sizes.json, wids.json, the member
indexes: layout.py), the plan (`selection/`) and the build's workflow.json (languages, default text, image
size). Checks, per shard:

* the tar reads to its end; members are grouped by sample (`<uid>.<key>`), each sample once, its members
  together;
* every sample has every key (`jpg`, one `<key>.txt` per text key, `txt`, `json`) and no other; texts are
  UTF-8; the JSON parses, has every field, names its own uid, and holds the same texts as the `.txt` members;
  `.txt` equals the default text key's member; the image decodes as an RGB JPEG of image_size x image_size;
* the count equals `sizes.json` and the plan (catalog table `samples`); the member index lists the same
  members at the same offsets and sizes;
and per split: sizes.json lists exactly the shards there are, wids.json lists the same tars and counts, the
split's folder holds nothing but its tars (Hugging Face's webdataset loader reads every file there as a tar),
and no planned shard is missing.
Shards are checked in parallel processes (`--workers`); a problem never stops the check.
"""

from __future__ import annotations

import io
import json
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from ..errors import TolError
from ..text import text_keys
from .plan import SPLITS, build_workflow, languages, read_plan, selection_dir
from .layout import SHARDS, sizes_path, split_dir, wids_path
from .write import SAMPLE_JSON_FIELDS, index_path, shard_name


@dataclass(frozen=True)
class Problem:
    shard: str  # "<split>/shard-000000.tar" (or "<split>/sizes.json")
    key: str  # the member key ("jpg", "sci.txt", ...), "" when the problem is the shard's
    uid: str  # the sample, "" when the problem is the shard's
    message: str

    def __str__(self) -> str:
        where = self.shard + (f", sample {self.uid}" if self.uid else "") + (f", key {self.key}" if self.key else "")
        return f"{where}: {self.message}"


def expected_keys(langs) -> list[str]:
    return ["jpg", *[f"{k}.txt" for k in text_keys(langs)], "txt", "json"]


def check_shard(tar_path: str, index_file: str, split: str, keys: list[str], default_text: str, image_size: int,
                expected: int | None, planned: int | None) -> tuple[int, list[Problem]]:
    """Check one shard; returns (samples found, problems)."""
    name = f"{split}/{Path(tar_path).name}"
    problems: list[Problem] = []
    samples: dict[str, dict[str, bytes]] = {}
    offsets: list[tuple[str, str, int, int]] = []
    order: list[str] = []

    def add(key: str, uid: str, message: str) -> None:
        problems.append(Problem(name, key, uid, message))

    try:
        with tarfile.open(tar_path, "r:") as tar:
            for m in tar:
                uid, _, key = m.name.partition(".")
                if not m.isfile() or not key:
                    add("", uid, f"member {m.name!r} is not a sample file")
                    continue
                if uid not in samples:
                    if order and uid in order:
                        add(key, uid, "the sample's members are not together")
                    samples[uid] = {}
                    order.append(uid)
                elif order[-1] != uid:
                    add(key, uid, "the sample's members are not together")
                if key in samples[uid]:
                    add(key, uid, "member appears twice")
                samples[uid][key] = tar.extractfile(m).read()
                offsets.append((uid, key, m.offset, m.size))
    except (tarfile.TarError, OSError, EOFError) as e:
        add("", "", f"unreadable tar ({type(e).__name__}: {e})")
    for uid, members in samples.items():
        for key in keys:
            if key not in members:
                add(key, uid, "missing")
        for key in members:
            if key not in keys:
                add(key, uid, "unexpected member")
        texts = {}
        for key in keys:
            if key.endswith("txt") and key in members:
                try:
                    texts[key] = members[key].decode("utf-8")
                except UnicodeDecodeError:
                    add(key, uid, "not UTF-8")
        if "txt" in texts and f"{default_text}.txt" in texts and texts["txt"] != texts[f"{default_text}.txt"]:
            add("txt", uid, f"differs from {default_text}.txt")
        if "jpg" in members:
            try:
                img = Image.open(io.BytesIO(members["jpg"]))
                fmt = img.format
                img.load()
                if fmt != "JPEG" or img.mode != "RGB" or img.size != (image_size, image_size):
                    add("jpg", uid, f"{fmt} {img.mode} {img.size[0]}x{img.size[1]}, expected an RGB JPEG of "
                        f"{image_size}x{image_size}")
            except Exception as e:
                add("jpg", uid, f"does not decode ({type(e).__name__}: {e})")
        if "json" in members:
            try:
                meta = json.loads(members["json"])
                lost = [f for f in SAMPLE_JSON_FIELDS if f not in meta]
                if lost:
                    add("json", uid, f"fields missing: {', '.join(lost)}")
                if meta.get("uid") != uid:
                    add("json", uid, f"names uid {meta.get('uid')!r}")
                for key, text in texts.items():
                    if key != "txt" and meta.get("texts", {}).get(key[:-4]) != text:
                        add("json", uid, f"texts.{key[:-4]} differs from the member {key}")
            except (ValueError, AttributeError) as e:
                add("json", uid, f"does not parse as a JSON object ({e})")
    if expected is not None and expected != len(samples):
        add("", "", f"{len(samples)} samples, sizes.json says {expected}")
    if planned is not None and planned != len(samples):
        add("", "", f"{len(samples)} samples, the catalog's plan has {planned}")
    if not Path(index_file).is_file():
        add("", "", "no member index")
    else:
        idx = pq.read_table(index_file, columns=["uid", "key", "offset", "size"]).to_pylist()
        listed = [(r["uid"], r["key"], r["offset"], r["size"]) for r in idx]
        if listed != offsets:
            first = next((i for i, (a, b) in enumerate(zip(listed, offsets)) if a != b), min(len(listed), len(offsets)))
            add("", "", f"the member index differs from the tar ({len(listed)} vs {len(offsets)} members; first "
                f"difference at member {first})")
    return len(samples), problems


def verify(out: Path, workers: int = 1) -> tuple[dict[str, int], list[Problem]]:
    """Check every shard of the build in `out`. Returns ({split: samples}, problems)."""
    out = Path(out)
    root = out / SHARDS
    if not root.is_dir():
        raise TolError(f"{out}: no shards here (run the shards stage: tol build WORKFLOW --stages shards)")
    wf = build_workflow(out)
    keys = expected_keys(languages(wf))
    doc = read_plan(out)
    planned = _planned(out) if doc else {}
    jobs, problems = [], []
    for split in SPLITS:
        folder = split_dir(out, split)
        tars = sorted(p.name for p in folder.glob("shard-*.tar")) if folder.is_dir() else []
        for stray in sorted(p.name for p in folder.iterdir() if p.name not in tars) if folder.is_dir() else []:
            problems.append(Problem(f"{split}/{stray}", "", "", "not a shard: a split's folder holds its tars only "
                                    "(Hugging Face's webdataset loader reads every file there as a tar)"))
        want = [shard_name(i) for i in range(doc["counts"]["splits"][split]["shards"])] if doc else tars
        for missing in sorted(set(want) - set(tars)):
            problems.append(Problem(f"{split}/{missing}", "", "", "planned but not written"))
        if not tars:
            continue
        sizes_file = sizes_path(out, split)
        sizes = {}
        if not sizes_file.is_file():
            problems.append(Problem(f"{split}/sizes.json", "", "", "missing"))
        else:
            try:
                sizes = json.loads(sizes_file.read_text())
            except json.JSONDecodeError as e:
                problems.append(Problem(f"{split}/sizes.json", "", "", f"not JSON ({e})"))
            for name in sorted(set(sizes) - set(tars)):
                problems.append(Problem(f"{split}/sizes.json", "", "", f"lists {name}, which does not exist"))
        problems += _check_wids(out, split, sizes)
        for name in tars:
            if sizes and name not in sizes:
                problems.append(Problem(f"{split}/sizes.json", "", "", f"does not list {name}"))
            shard = int(name[6:12])
            jobs.append((str(folder / name), str(index_path(out, split, shard)), split, keys, wf.shards.default_text,
                         wf.shards.image_size, sizes.get(name), planned.get((split, shard))))
    totals: dict[str, int] = {}
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(check_shard, *zip(*jobs)))
    else:
        results = [check_shard(*j) for j in jobs]
    for job, (n, found) in zip(jobs, results):
        totals[job[2]] = totals.get(job[2], 0) + n
        problems.extend(found)
    return totals, problems


def _check_wids(out: Path, split: str, sizes: dict) -> list[Problem]:
    """wids.json lists the split's tars (urls relative to it) with the counts of sizes.json."""
    path = wids_path(out, split)
    where = f"{split}/{path.name}"
    try:
        doc = json.loads(path.read_text())
        listed = {(path.parent / s["url"]).resolve(): s["nsamples"] for s in doc["shardlist"]}
        kind = doc.get("__kind__")
    except FileNotFoundError:
        return [Problem(where, "", "", "missing")]
    except (ValueError, KeyError, TypeError) as e:
        return [Problem(where, "", "", f"not a wids shard index ({type(e).__name__}: {e})")]
    expected = {(split_dir(out, split) / name).resolve(): n for name, n in sizes.items()}
    if kind != "wids-shard-index-v1":
        return [Problem(where, "", "", f"__kind__ is {kind!r}, expected 'wids-shard-index-v1'")]
    if listed != expected:
        return [Problem(where, "", "", "does not list the split's tars with the counts of sizes.json")]
    return []


def _planned(out: Path) -> dict[tuple[str, int], int]:
    t = pq.read_table(selection_dir(out) / "samples.parquet", columns=["split", "shard"])
    g = t.group_by(["split", "shard"]).aggregate([([], "count_all")])  # one row per shard, not per sample
    return {(sp, sh): n for sp, sh, n in zip(*(g[c].to_pylist() for c in ("split", "shard", "count_all")))}


__all__ = ["verify", "check_shard", "Problem", "expected_keys"]

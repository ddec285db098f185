"""The dataset card: `BUILD/README.md`, and the same card as `BUILD/shards/README.md` for the shard folder.

Owns the two cards and `coverage.png` beside each. Both start with the YAML header Hugging Face reads: licence
(`other`, per image: `license_name`, `license_link` to licenses.csv), task categories, size category,
languages (en and the build's), pretty name, tags and explicit `configs:` (default: the splits train and
validation; `train_small`: a config of its own), so `load_dataset("BUILD")` and `load_dataset("BUILD/shards")`
load the tars as webdataset. Every path of the build a card names is relative to the card's own folder (never
absolute): the header and the file table write one as BUILD_PATH + its path in the build, and `render` makes
each card's text for its folder. The reading examples (Hugging Face, wids, Croissant, the catalog with DuckDB
and polars) name the build from the folder that holds it, the same in both cards.

Sections: what is where and how to use it (open_clip, webdataset, Hugging Face), sources and counts, taxa per
rank, the selection, exclusions per evaluation set and method, the coverage picture, texts (keys, languages,
how many exceed CLIP's 77-token context), licences, the exact workflow, versions, the authorities' checksums.
Reads the catalog and the plan; writes nothing else.
"""

from __future__ import annotations

import json
import platform
import shlex
from importlib import metadata
from pathlib import Path

import tomli_w
import yaml

from ..config import to_dict
from ..fileio import file_digest, write_bytes_atomic, write_text_atomic
from ..records import RANKS, duckdb_connection
from ..sql import literal
from ..text import text_keys
from .commands import card_section as open_clip_section
from .plan import describe, read_plan, selection_dir
from .layout import CROISSANT, INDEX_GLOB, META, SHARDS, SPLIT_FOLDERS
from .write import SampleTexts

BUILD_PATH = "\ue000"  # a private-use character: "the build directory, seen from the card's folder", until rendered
CONTEXT_LENGTH = 77  # CLIP's text context (open_clip's default, BioCLIP's)
HF_SPLITS = {"train": "train", "val": "validation", "train_small": "train_small"}
VERSIONED = ("tol_builder", "pillow", "numpy", "pyarrow", "duckdb", "dask", "distributed", "webdataset",
             "open_clip_torch", "torch", "datasets", "pdqhash")


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(v):
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return lines


SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(n: int) -> str:
    """Hugging Face's size bucket for n samples."""
    return next((name for limit, name in SIZE_CATEGORIES if n < limit), "n>1B")


def hf_header(counts: dict[str, dict[str, int]], name: str, languages: list[str]) -> str:
    """The card's YAML header (Hugging Face's dataset card metadata), paths as BUILD_PATH + path in the build.
    Images: train + val (train_small is a subset of train)."""
    def files(split: str) -> str:
        return f"{BUILD_PATH}{SHARDS}/{SPLIT_FOLDERS[split]}/shard-*.tar"

    default = [{"split": HF_SPLITS[split], "path": files(split)} for split in ("train", "val") if counts.get(split)]
    configs = [{"config_name": "default", "default": True, "data_files": default}] if default else []
    if counts.get("train_small"):
        configs.append({"config_name": "train_small", "data_files": [{"split": "train", "path": files("train_small")}]})
    images = sum(sum(counts.get(split, {}).values()) for split in ("train", "val"))
    doc = {"pretty_name": f"{name}: image-text shards of the tree of life",
           "license": "other", "license_name": "per-image-licenses", "license_link": f"{BUILD_PATH}{META}/licenses.csv",
           "language": list(dict.fromkeys(["en", *languages])),
           "task_categories": ["zero-shot-image-classification", "image-classification"],
           "size_categories": [size_category(images)],
           "tags": ["biology", "biodiversity", "tree-of-life", "taxonomy", "image-text", "clip", "webdataset"],
           "configs": configs}
    return "---\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def render(text: str, out: Path, folder: Path) -> str:
    """`text` with BUILD_PATH replaced so that every path is relative to `folder` (the build or a folder in it)."""
    up = Path(folder).relative_to(out)
    for depth in range(len(up.parts), 0, -1):  # a path under the card's folder: without the folder's own prefix
        text = text.replace(BUILD_PATH + "/".join(up.parts[:depth]) + "/", "../" * (len(up.parts) - depth))
    return text.replace(BUILD_PATH, "../" * len(up.parts))


def what_is_here(counts: dict[str, dict[str, int]], s: dict) -> list[str]:
    """The card's table of splits and files, and what each file holds (paths as BUILD_PATH + path in the build)."""
    def code(path: str) -> str:
        return f"`{BUILD_PATH}{path}`"

    lines = _table(["split", "samples", "tars", "sizes (open_clip's sizes.json)", "wids index"], [
        [split, sum(v.values()), code(f"{SHARDS}/{SPLIT_FOLDERS[split]}/shard-000000.tar")
         + (f" .. `shard-{len(v) - 1:06d}.tar`" if len(v) > 1 else ""),
         code(f"{META}/{split}/sizes.json"), code(f"{META}/{split}/wids.json")]
        for split, v in counts.items() if v])
    small = SPLIT_FOLDERS["train_small"]
    return lines + ["", f"train_small is a subset of train ({s['train_small_fraction']:.0%} of it); its tars are in "
                    f"{code(f'{SHARDS}/{small}/')} (Hugging Face's folder rules would read a "
                    "folder named train_small as a part of train). Each sample (`__key__` = its uid) holds `.jpg` "
                    f"({s['image_size']}x{s['image_size']}, {s['resize_mode']}), one `.<key>.txt` per text key, "
                    f"`.txt` (= `{s['default_text']}`) and `.json` (source, licence, rights holder, source URL, "
                    "lineage, common name and its authority, every text, sha256, PDQ). The shard folders hold the "
                    f"tars only; the rest is beside them: {code(f'{META}/licenses.csv')} (every image's licence), "
                    f"{code(f'{META}/<split>/index/')} (every member's offset and size: catalog view `shard_index`), "
                    f"{code(f'{META}/<split>/json.parquet')} (every sample's `.json`, a row each) and "
                    f"{code(CROISSANT)} (the shards in Croissant 1.0, JSON-LD)."]


def read_it() -> list[str]:
    """How to read the shards and query the catalog, from the card's own folder: code blocks that run as printed
    there (tests/test_hf_metadata.py, tests/test_catalog_outside.py run them). Paths are BUILD_PATH-relative, so
    the card holds no build folder's name: two builds of one workflow get the same card wherever they are."""
    def q(path: str) -> str:  # a Python string literal of a path (BUILD_PATH kept as is, for render)
        return json.dumps(path, ensure_ascii=False)

    here = BUILD_PATH + "."  # the build itself: "." in BUILD/README.md, "../." in BUILD/shards/README.md
    return ["Read it from the folder this card is in, as printed. Hugging Face datasets "
            "(this card's `configs`: train and validation; train_small a config of its own):", "", "```python",
            "import os", "", "import datasets", "",
            f"build = os.path.abspath({q(here)})  # the build folder (datasets wants its name, which '.' lacks)",
            "train = datasets.load_dataset(build, split=\"train\", streaming=True)",
            "small = datasets.load_dataset(build, \"train_small\", split=\"train\", streaming=True)",
            "print(next(iter(train))[\"__key__\"], next(iter(small))[\"__key__\"])", "```", "",
            "webdataset's random-access reader (`wids`, one index per split):", "", "```python", "import wids",
            f"val = wids.ShardListDataset({q(f'{BUILD_PATH}{META}/val/wids.json')})",
            "print(len(val), val[0][\"__key__\"], val[0][\".json\"][\"scientific_name\"])", "```", "",
            "Croissant (`mlcroissant` extracts the tars into its cache: keep it in the build, whose next `tol build` "
            "clears it when the shards change):", "", "```python", "import os", "",
            f"os.environ[\"CROISSANT_CACHE\"] = {q(f'{BUILD_PATH}cache/croissant')}", "import mlcroissant as mlc", "",
            f"records = mlc.Dataset({q(f'{BUILD_PATH}{CROISSANT}')}).records(\"val\")",
            "first = next(iter(records))",
            "print(first[\"val/uid\"].decode(), first[\"val/scientific_name\"].decode(), first[\"val/jpg\"].size)",
            "```", "",
            "The catalog opens read-only in any DuckDB client, from any directory (its views read the build's "
            "absolute paths; after a move or copy, the next `tol` command on the build re-points them):", "",
            "```bash", f"duckdb -readonly {shlex.quote(f'{BUILD_PATH}catalog.duckdb')} "
            "\"SELECT split, count(*) AS samples FROM samples GROUP BY split ORDER BY split\"", "```", "",
            "```python", "import duckdb", "",
            f"con = duckdb.connect({q(f'{BUILD_PATH}catalog.duckdb')}, read_only=True)",
            "print(con.sql(\"SELECT split, count(*) AS samples FROM samples GROUP BY split ORDER BY split\")"
            ".fetchall())",
            "```", "", "```python", "import duckdb", "import polars as pl", "",
            f"con = duckdb.connect({q(f'{BUILD_PATH}catalog.duckdb')}, read_only=True)",
            "per_class: pl.DataFrame = con.sql(\"SELECT class, count(*) AS images FROM images GROUP BY class "
            "ORDER BY images DESC, class\").pl()", "print(per_class)", "```", ""]


def token_counts(out: Path, languages: list[str]) -> tuple[list[list], str]:
    """Rows (key, samples, samples over the context, distinct texts over it) and a note on the tokenizer."""
    try:
        import open_clip

        tokenizer = open_clip.get_tokenizer("ViT-B-16")  # CLIP's BPE, bundled with open_clip: no download
        encode = tokenizer.encode
        note = (f"Tokens counted with open_clip {metadata.version('open_clip_torch')}'s CLIP tokenizer (ViT-B-16, "
                f"BioCLIP's); a text longer than {CONTEXT_LENGTH} tokens with its start and end tokens is cut "
                "when tokenised for training.")
    except Exception as e:  # open_clip is an optional extra
        return [], (f"Tokens were not counted: open_clip's tokenizer could not be imported ({type(e).__name__}). "
                    "Install it (`pip install 'tol_builder[train]'`) and run `tol build` again (only the card is "
                    "rewritten) to get how many texts exceed CLIP's 77-token context.")
    over: dict[str, list[int]] = {k: [0, 0, 0] for k in text_keys(languages)}
    for t, n in _shard_taxa_texts(out, languages):
        for key in over:
            over[key][0] += n
            if len(encode(t.captions[key])) + 2 > CONTEXT_LENGTH:
                over[key][1] += n
                over[key][2] += 1
    return [[k, *v] for k, v in over.items()], note


def _shard_taxa_texts(out: Path, languages: list[str]):
    """(TaxonTexts, images in the shards) of each distinct taxon (and common names) of the shards."""
    con = duckdb_connection()
    try:
        rows = con.execute("""SELECT s.taxon_id, any_value(s.common_name), s.common_names,
                   any_value(s.lowest_rank), count(DISTINCT s.uid)::BIGINT AS n,
                   """ + ", ".join(f'any_value(s."{r}")' for r in RANKS) + """
            FROM read_parquet(?) s SEMI JOIN (SELECT uid FROM read_parquet(?) WHERE key = 'json') i USING (uid)
            GROUP BY s.taxon_id, s.common_name, s.common_names ORDER BY ALL""",
                           [str(selection_dir(out) / "samples.parquet"),
                            str(out / INDEX_GLOB)]).fetchall()
    finally:
        con.close()
    texts = SampleTexts(languages)
    for taxon_id, common_name, common_names, lowest_rank, n, *ranks in rows:
        yield texts.of({"taxon_id": taxon_id, "common_name": common_name, "common_names": common_names,
                        "lowest_rank": lowest_rank, **dict(zip(RANKS, ranks))}), n


def stripped_line(out: Path, languages: list[str]) -> str:
    """The card's line on control and bidi characters text.py removed from the names (issue 18)."""
    found = [(t.stripped, n) for t, n in _shard_taxa_texts(out, languages) if t.stripped]
    return (f"Control and bidirectional formatting characters removed from names (text.py): "
            f"{sum(c for c, _ in found):,} in {len(found):,} taxa ({sum(n for _, n in found):,} images).")


def _versions() -> list[list]:
    from PIL import features

    rows = [["python", platform.python_version()]]
    for dist in VERSIONED:
        try:
            rows.append([dist, metadata.version(dist)])
        except metadata.PackageNotFoundError:
            rows.append([dist, "not installed"])
    rows.append(["libjpeg (Pillow's JPEG codec)", f"{features.version('jpg')}"
                 + (" (libjpeg-turbo)" if features.check_feature("libjpeg_turbo") else "")])
    return rows


def _digest(path: Path, cache: dict) -> str:
    st = path.stat()
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    if key not in cache:
        cache[key] = file_digest(path, "sha256")
    return cache[key]


def authority_rows(out: Path, wf) -> list[list]:
    """Each file of each authority the build used: declared size/checksums and the sha256 of the local copy."""
    from ..taxonomy import plan as taxonomy_plan
    from ..taxonomy.authorities import load_manifest

    try:
        needed, _ = taxonomy_plan(wf)
    except Exception as e:  # e.g. the workflow file moved since the build: say so instead of failing the card
        return [["(authorities not listed)", f"{type(e).__name__}: {e}", "", "", ""]]
    cache_file = out / "cache" / "card" / "checksums.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    rows = []
    for name, manifest in sorted(needed.items()):
        m = load_manifest(manifest)
        for f in m.files:
            url = m.url(f)
            local = Path(url[7:] if url.startswith("file://") else url)
            if not local.is_file():
                local = out / "cache" / "taxonomy" / "downloads" / m.name / f.name
            got = _digest(local, cache) if local.is_file() else "(no local copy)"
            declared = ", ".join(x for x in (f"md5 {f.md5}" if f.md5 else "", f"sha256 {f.sha256}" if f.sha256 else "",
                                             f"{f.bytes:,} bytes" if f.bytes else "") if x) or "none"
            rows.append([name, f"{m.title or m.name} {m.version}".strip(), f.name, declared, f"`{got}`"])
    write_text_atomic(cache_file, json.dumps(cache, sort_keys=True))
    return rows


def card_text(out: Path, wf, counts: dict[str, dict[str, int]]) -> str:
    doc = read_plan(out)
    c, s = doc["counts"], doc["settings"]
    languages = doc["languages"]
    con = duckdb_connection()
    try:
        fetched = dict(con.execute(f"SELECT source, count(*) FROM read_parquet({literal(out / 'media' / '*' / '*.parquet')}, "
                                   "union_by_name=true) WHERE status = 'ok' GROUP BY ALL").fetchall())
        samples = selection_dir(out) / "samples.parquet"
        index = out / INDEX_GLOB
        # the samples the tars hold (one `json` member per sample in the index), not just the plan
        con.execute(f"""CREATE TEMP TABLE in_shards AS SELECT s.* FROM read_parquet({literal(samples)}) s
            SEMI JOIN (SELECT uid, split FROM read_parquet({literal(index)}) WHERE key = 'json') i USING (uid, split)""")
        per_source = con.execute("SELECT source, split, count(*) FROM in_shards GROUP BY ALL").fetchall()
        names = {r: "genus || ' ' || species" if r == "species" else f'"{r}"' for r in RANKS}
        per_rank = con.execute("SELECT " + ", ".join(
            f"count(DISTINCT {n}), count(DISTINCT uid) FILTER (WHERE {n} IS NOT NULL)" for n in names.values())
            + " FROM in_shards").fetchall()[0]
        rank_rows = [[r, per_rank[2 * i], per_rank[2 * i + 1]] for i, r in enumerate(RANKS)]
        has_excl = (out / "dedup" / "exclusions.parquet").is_file()
        excl = con.execute(f"""SELECT coalesce(eval_set, '(none)'), coalesce(method, ''), reason, count(DISTINCT uid)
                               FROM read_parquet({literal(out / "dedup" / "exclusions.parquet")})
                               GROUP BY ALL ORDER BY ALL""").fetchall() if has_excl else []
        has_clusters = (out / "dedup" / "pool_duplicates.parquet").is_file()
    finally:
        con.close()
    lines = [f"# {wf.name}: image-text shards of the tree of life", "",
             f"Built by tol_builder {_version('tol_builder')} from the workflow `{Path(wf.path).name}` "
             f"(seed {wf.seed}). "
             "Webdataset shards of images with their taxonomic texts, in the layout of BioCLIP's TreeOfLife-10M "
             "(arXiv 2311.18803), rebuilt reproducibly: the same inputs and seed give byte-identical shards.", ""]
    lines += ["## What is here", ""] + what_is_here(counts, s) + [""]
    lines += [*open_clip_section(out),  # generated from sizes.json (shards/commands.py); paths under <build>
              *read_it()]
    lines += ["## Sources", ""]
    by_src: dict[str, dict[str, int]] = {}
    for src, split, n in per_source:
        by_src.setdefault(src, {})[split] = n
    lines += _table(["source", "records", "fetched", "selected", "train", "val", "train_small"], [
        [src, v["records"], fetched.get(src, 0), v["selected"], *(by_src.get(src, {}).get(sp, 0) for sp in
                                                                  ("train", "val", "train_small"))]
        for src, v in c["per_source"].items()])
    lines += ["", "## Taxa per rank", "", "Distinct names at each rank among the images in the shards, and how many "
              "images are resolved down to it.", ""]
    lines += _table(["rank", "taxa", "images"], rank_rows)
    lines += ["", "## Selection", "", *[f"    {x}" for x in describe(doc)], "",
              "Rules, in order (the first one an image fails is its reason in the catalog table `unselected`): "
              "include list, fetched, resolved, not excluded by the dedup stage, sources, licences, taxa, minimum "
              "rank, then per taxon the floor and the cap. Splits come from a seeded hash of each image's "
              "within-pool duplicate cluster (of its member from the earliest source), so near copies never "
              "straddle train and val and adding a source moves no image between splits; a seeded global shuffle "
              "across sources orders each split.", ""]
    lines += ["## Evaluation sets and exclusions", ""]
    if not has_excl:
        lines += ["The dedup stage was not run for this build: no evaluation-set image was removed, and every "
                  "image is its own duplicate cluster for the split" + (" (but within-pool duplicate clusters "
                                                                       "were given)." if has_clusters else "."), ""]
    else:
        lines += _table(["evaluation set", "method", "reason", "images excluded"], [list(r) for r in excl])
        lines += ["", "Within-pool duplicate clusters: " + ("from `dedup/pool_duplicates.parquet`." if has_clusters
                                                          else "none given (every image its own cluster)."), ""]
    lines += ["## Coverage", "", "![coverage by class and most specific rank](coverage.png)", ""]
    rows, note = token_counts(out, languages)
    lines += ["## Texts", "", f"Languages: {', '.join(languages)}. Keys: " + ", ".join(f"`{k}`" for k in text_keys(languages))
              + f". The default `.txt` is `{s['default_text']}`.", "", note, "",
              stripped_line(out, languages), ""]
    if rows:
        lines += _table(["key", "samples", f"over {CONTEXT_LENGTH} tokens", "distinct texts over"], rows)
        lines.append("")
    lines += ["## Licences", "", "`licence_id` normalises each source's own licence strings (SPDX ids where one "
              "exists; the raw value is kept in licenses.csv and the .json).", ""]
    lines += _table(["licence_id", "images selected"], [[k, v] for k, v in c["licences"].items()])
    settings = {**_plain(to_dict(wf)), "out": "<build>"}  # where it was built is no part of the recipe
    lines += ["", "## Workflow", "", "```toml", tomli_w.dumps(settings).rstrip(), "```", ""]
    lines += ["## Versions", ""] + _table(["package", "version"], _versions())
    lines += ["", "## Taxonomic authorities", ""]
    lines += _table(["authority", "release", "file", "declared", "sha256 of the file used"], authority_rows(out, wf))
    lines.append("")
    return "\n".join(lines)


def _plain(value):
    """TOML has no null: drop None values (none are expected in a workflow, but a card must not fail on one)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def write_cards(out: Path, wf, counts: dict[str, dict[str, int]]) -> None:
    from ..taxonomy.coverage import plot_coverage

    out = Path(out)
    png = plot_coverage(out, "class", out / "cache" / "card" / "coverage.png").read_bytes()
    text = hf_header(counts, wf.name, read_plan(out)["languages"]) + card_text(out, wf, counts)
    for folder in (out, out / SHARDS):  # each card with its picture beside it
        write_bytes_atomic(folder / "coverage.png", png)
        write_text_atomic(folder / "README.md", render(text, out, folder))

"""Small writers for the trainer's tests: shards in the shard stage's format, and an evaluation set in the
catalog views `eval_images` + `eval_media`, both from the demo's taxa and picture styles.

The format is the "Shards" contract of the project brief (what tol_builder's shard stage writes): per sample
`<uid>.jpg`, `<uid>.<key>.txt` for every text.text_keys() key, `<uid>.txt` (taxon_com) and `<uid>.json`, in
that order; `sizes.json` per split. Pictures are fresh renders of demo.images (other keys than the demo's).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tol_builder import catalog
from tol_builder.demo import images
from tol_builder.demo.taxa import RANKS, TAXA
from tol_builder.text import taxon_texts, text_keys


def species_of(t) -> dict:
    """Ranks, common name and a taxon id of a demo taxon (one id per resolved lineage: the two Marmota taxa
    of iNat21 and EOL are one species)."""
    ranks = {r: (t.resolved.get(r) or None) for r in RANKS}
    common = t.common_name or next(iter(t.vernacular.values()), "") or None
    lineage = "|".join(ranks[r] or "" for r in RANKS)
    return {"ranks": ranks, "common_name": common,
            "taxon_id": "fx-" + hashlib.sha256(lineage.encode()).hexdigest()[:10]}


def distinct_taxa() -> list:
    seen, out = set(), []
    for t in TAXA:
        sid = species_of(t)["taxon_id"]
        if sid not in seen:
            seen.add(sid)
            out.append(t)
    return out


def _uid(*parts) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:32]


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def sample_members(uid: str, t, jpeg: bytes) -> list[tuple[str, bytes]]:
    sp = species_of(t)
    texts = taxon_texts(sp["ranks"], sp["common_name"])
    members = [(f"{uid}.jpg", jpeg)]
    members += [(f"{uid}.{k}.txt", texts.captions[k].encode()) for k in text_keys()]
    members.append((f"{uid}.txt", texts.captions["taxon_com"].encode()))
    meta = {"uid": uid, "source": t.source, "source_id": f"{t.key}", "taxon_id": sp["taxon_id"],
            **{r: sp["ranks"][r] for r in RANKS}, "common_name": sp["common_name"],
            "scientific_name": texts.names["scientific_name"], "lowest_rank": texts.lowest_rank,
            "texts": texts.captions}
    members.append((f"{uid}.json", json.dumps(meta).encode()))
    return members


def write_shards(build: Path, split: str, per_taxon: int, *, seed: int = 17, per_shard: int = 32,
                 size: int = 224) -> Path:
    """BUILD/shards/<split>/shard-*.tar + sizes.json: `per_taxon` pictures of each distinct demo taxon."""
    folder = build / "shards" / split
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for t in distinct_taxa():
        for i in range(per_taxon):
            jpeg = images.render(t.style, (size, size), seed, "fixture", split, t.key, i)
            samples.append(sample_members(_uid(split, t.key, i), t, jpeg))
    order = sorted(range(len(samples)), key=lambda k: _uid("order", seed, k))  # a fixed shuffle
    sizes = {}
    for n, start in enumerate(range(0, len(order), per_shard)):
        name = f"shard-{n:06d}.tar"
        chunk = order[start:start + per_shard]
        with tarfile.open(folder / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for k in chunk:
                for member, data in samples[k]:
                    _member(tar, member, data)
        sizes[name] = len(chunk)
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return folder


HAND_WRITTEN = "evalsets_handwritten"  # apart from the dedup stage's evalsets/ folder
EVAL_IMAGE_COLUMNS = ["uid", "eval_set", "eval_id", "taxon_id", *RANKS, "scientific_name", "common_name",
                      "lowest_rank"]


def catalog_taxa(build: Path) -> dict:
    """lineage (seven ranks, None = unknown) -> (taxon_id, common_name) from a real build's `taxa` table."""
    rows = catalog.query(build, 'SELECT taxon_id, kingdom, phylum, "class", "order", family, genus, species, '
                                "common_name FROM taxa").to_pylist()
    return {tuple(r[k] or None for k in RANKS): (r["taxon_id"], r["common_name"] or None) for r in rows}


def write_eval_set(build: Path, eval_set: str, per_taxon: int, *, seed: int = 17, sizes=((320, 240), (256, 256),
                   (240, 300)), from_catalog: bool = False) -> int:
    """Fresh pictures of every distinct demo taxon as evaluation set `eval_set`, in parquet with the documented
    columns of `eval_images` and `eval_media`, registered as those catalog views. Returns the image count.

    from_catalog: taxon ids and common names from the build's `taxa` (as the integrator's evaluation sets get
    lineages reconciled like the pool's), else made up here."""
    img_rows = {c: [] for c in EVAL_IMAGE_COLUMNS}
    media_rows = {c: [] for c in ("uid", "eval_set", "status", "sha256", "md5", "pdq", "pdq_quality", "width",
                                  "height", "jpeg")}
    known = catalog_taxa(build) if from_catalog else {}
    for t in distinct_taxa():
        sp = species_of(t)
        if from_catalog:
            sp["taxon_id"], sp["common_name"] = known[tuple(sp["ranks"][r] for r in RANKS)]
        texts = taxon_texts(sp["ranks"], sp["common_name"])
        for i in range(per_taxon):
            w, h = sizes[i % len(sizes)]
            jpeg = images.render(t.style, (w, h), seed, "heldout", eval_set, t.key, i)
            uid = _uid("eval", eval_set, t.key, i)
            row = {"uid": uid, "eval_set": eval_set, "eval_id": f"{t.key}/{i}", "taxon_id": sp["taxon_id"],
                   **sp["ranks"], "scientific_name": texts.names["scientific_name"],
                   "common_name": sp["common_name"], "lowest_rank": texts.lowest_rank}
            for c in EVAL_IMAGE_COLUMNS:
                img_rows[c].append(row[c])
            for c, v in (("uid", uid), ("eval_set", eval_set), ("status", "ok"),
                         ("sha256", hashlib.sha256(jpeg).hexdigest()), ("md5", hashlib.md5(jpeg).hexdigest()),
                         ("pdq", "0" * 64), ("pdq_quality", 100), ("width", w), ("height", h), ("jpeg", jpeg)):
                media_rows[c].append(v)
    folder = build / HAND_WRITTEN / eval_set
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(img_rows), folder / "images.parquet")
    pq.write_table(pa.table(media_rows), folder / "media.parquet")
    catalog.register_parquet(build, "eval_images", f"{HAND_WRITTEN}/*/images.parquet")
    catalog.register_parquet(build, "eval_media", f"{HAND_WRITTEN}/*/media.parquet")
    return len(img_rows["uid"])


def demo_build(tmp_path_factory, heldout_per_taxon: int = 13) -> Path:
    """A real `tol demo` build (shards written by the shard stage): the session's one (tests/fixtures_demo.py),
    with its evaluation set `demo_eval` (>= 200 fresh pictures of the demo taxa, never in the shards) in the
    catalog's eval views: the dedup stage's where this version has it, else written here (13 per taxon: 208
    images)."""
    from fixtures_demo import session_demo
    from tol_builder.train.demo import DEMO_EVAL_SET, has_eval_set

    build = session_demo(tmp_path_factory).build
    if not has_eval_set(build, DEMO_EVAL_SET):
        write_eval_set(build, DEMO_EVAL_SET, heldout_per_taxon, from_catalog=True)
    return build

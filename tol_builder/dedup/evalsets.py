"""Evaluation sets: registered like sources, prepared with the pool's own machinery, kept apart from the pool.

An evaluation set is a source manifest (manifests/evalsets/<name>.toml) read by a registered source reader
(`rare_species`, `image_folder`, `table`, any plugin), plus an `[evalset]` table saying what it holds out:

    source = "rare_species"            # the reader
    title = "Rare Species"
    licence = "..."
    [evalset]
    name = "rare_species"              # its id: tables, exclusions and reports name it
    hold_images = true                 # its images (and exact / near copies of them) leave the pool
    hold_species = "all"               # "all", "none", or a list of the set's scientific names: every pool
                                       # image of those species leaves the pool (matched on the resolved taxon)
    same_ids_as = "eol"                # optional: its source ids are ids of the pool's sources read by this
                                       # reader (Rare Species images are EOL media: content id + page id)
    options = {}                       # the reader's options
    [[files]] ...                      # metadata and the images folder (role = "media"), as in any manifest

The dedup stage prepares every set before matching, in sub-stages that call the same task functions as the
pool's stages (`prepare`): `dedup.evalsets.plan` + `dedup.evalsets.ingest` (ingest.plan_task / read_task),
`dedup.evalsets.archives` + `dedup.evalsets.fetch` (fetch.fetch_records: the same download, decode, sha256 /
md5 / PDQ / stored JPEG as the pool), `dedup.evalsets.taxonomy` (taxonomy's reconcile_task with the pool's
settings and authorities). Everything is written under `<build>/evalsets/` (records, rejects, media,
taxonomy) and registered as eval_* views: evaluation images never enter records, media, images, the coverage
views or the shards.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from .. import catalog
from ..config import SourceConfig, Workflow, from_dict
from ..context import BuildContext
from ..errors import ConfigError, TolError
from ..fileio import files_fingerprint
from ..manifest import Manifest, load_manifest
from ..records import RANKS
from ..runner import Task, drop_stale_markers, marker_dir
from ..sources import get_source_class

ROOT = "evalsets"
RECORDS, REJECTS, MEDIA, TAXONOMY = (f"{ROOT}/records", f"{ROOT}/rejects", f"{ROOT}/media", f"{ROOT}/taxonomy")
STAGE = "dedup.evalsets"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

catalog.document("eval_records", "evaluation-set images as their readers give them (records columns; source = "
                 "the set's name); never part of the pool", {"uid": "image id", "source": "evaluation set"})
catalog.document("eval_media", "evaluation-set images fetched and hashed exactly like the pool's (media columns)",
                 {"uid": "eval_records.uid", "eval_set": "evaluation set", "status": "ok, failed, transient"})
catalog.document("eval_images", "evaluation-set images with their resolved taxon (reconciled like the pool's)",
                 {"uid": "eval_records.uid", "eval_set": "evaluation set", "eval_id": "the image's id in its set",
                  "taxon_id": "resolved taxon (same ids as taxa.taxon_id); NULL = unresolved",
                  **{r: f"resolved {r}" for r in RANKS}, "scientific_name": "resolved name",
                  "common_name": "English common name", "lowest_rank": "most specific rank resolved"})


@dataclass
class EvalSet:
    """The `[evalset]` table of an evaluation-set manifest."""

    name: str
    hold_images: bool = True
    hold_species: Union[str, list[str]] = "none"  # "all", "none" or scientific names of the set's taxa
    same_ids_as: str = ""  # a reader name: the pool's records read by it share this set's source ids
    options: dict = field(default_factory=dict)  # options of the reader


@dataclass
class LoadedEvalSet:
    spec: EvalSet
    manifest: Manifest
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def source_config(self) -> dict:
        """What ingest's plan/read tasks take: the reader, the set's name as the source id, its options."""
        return {"name": self.manifest.source, "manifest": str(self.path), "id": self.spec.name,
                "options": dict(self.spec.options)}


def load_evalsets(wf: Workflow) -> list[LoadedEvalSet]:
    """The workflow's evaluation sets, validated before any work (file and dotted key in every error)."""
    found: list[LoadedEvalSet] = []
    pool_ids = {s.id for s in wf.sources}
    for i, rel in enumerate(wf.dedup.evalsets):
        path = (wf.path.parent / rel).resolve()
        key = f"dedup.evalsets[{i}]"
        if not path.is_file():
            raise ConfigError(wf.path, key, "an existing evaluation-set manifest (manifests/evalsets/*.toml)", str(path))
        m = load_manifest(path)
        if not m.evalset:
            raise ConfigError(path, "evalset", "an [evalset] table (name, hold_images, hold_species ...)", "missing")
        spec = from_dict(EvalSet, m.evalset, path, prefix="evalset")
        if not _NAME.match(spec.name):
            raise ConfigError(path, "evalset.name", "a name of letters, digits and _ starting with a letter", spec.name)
        if spec.name in pool_ids or spec.name in {e.name for e in found}:
            raise ConfigError(path, "evalset.name", "a name used by no source and no other evaluation set", spec.name)
        if isinstance(spec.hold_species, str) and spec.hold_species not in ("all", "none"):
            raise ConfigError(path, "evalset.hold_species", "\"all\", \"none\" or a list of scientific names",
                              spec.hold_species)
        cls = get_source_class(m.source)
        from_dict(cls.Options, spec.options, path, prefix="evalset.options")
        if spec.same_ids_as:
            get_source_class(spec.same_ids_as)  # an unknown reader name fails here, naming the known ones
        found.append(LoadedEvalSet(spec, m, path))
    return found


def hold_spec(sets: list[LoadedEvalSet]) -> dict[str, dict]:
    """Plain data for the matching tasks: per set, what it holds out."""
    return {e.name: {"hold_images": e.spec.hold_images, "hold_species": e.spec.hold_species,
                     "same_ids_as": e.spec.same_ids_as} for e in sets}


def remove_stale(out: Path, sets: list[LoadedEvalSet], say) -> None:
    """Sets no longer in the workflow: their records, media and markers go (said on the console)."""
    keep = {e.name for e in sets}
    for root in (RECORDS, REJECTS, MEDIA):
        d = out / root
        if d.exists():
            for sub in sorted(p for p in d.iterdir() if p.is_dir() and p.name not in keep):
                say(f"dedup: evaluation set '{sub.name}' is no longer in the workflow: removing {sub}")
                shutil.rmtree(sub)


def prepare(ctx: BuildContext, sets: list[LoadedEvalSet]) -> dict[str, int]:
    """Ingest, fetch and reconcile every evaluation set (sub-stages of dedup). Returns counters."""
    from ..fetch import fetch_records, local_media_sources
    from ..ingest import partitions_file, plan_task, read_task, reconcile_sources

    out, wf = Path(ctx.out).resolve(), ctx.workflow
    remove_stale(out, sets, ctx.log)
    # a set whose reader, options or manifest changed is read again (its fetched images are carried over)
    reconcile_sources(out, [(SourceConfig(**e.source_config()), e.path) for e in sets], ctx.log,
                      {"records": RECORDS, "rejects": REJECTS, "plan_stage": f"{STAGE}.plan",
                       "stage": f"{STAGE}.ingest"})
    counters: dict[str, int] = {}
    if not sets:
        return counters
    common = dict(out=str(out), threads=ctx.threads, config_file=str(wf.path))
    ctx.runner.run(f"{STAGE}.plan", [Task(e.name, plan_task, dict(common, source=e.source_config(),
                                                                  manifest_path=str(e.path))) for e in sets])
    tasks = []
    for e in sets:
        for p in json.loads(partitions_file(out, e.name).read_text()):
            tasks.append(Task(f"{e.name}.{p['key']}", read_task, dict(
                common, source=e.source_config(), manifest_path=str(e.path), partition=p, records_dir=RECORDS,
                rejects_dir=REJECTS)))
    r = ctx.runner.run(f"{STAGE}.ingest", tasks, outputs=(out / RECORDS, out / REJECTS))
    counters.update({f"eval_{k}": v for k, v in r.counters.items()})
    files = sorted(str(p) for e in sets for p in (out / RECORDS / e.name).glob("*.parquet"))
    fetched = fetch_records(ctx, files, media_root=MEDIA, stage=f"{STAGE}.fetch", archives_stage=f"{STAGE}.archives",
                            local_media=local_media_sources([SourceConfig(**e.source_config()) for e in sets]))
    counters.update({f"eval_{k}": v for k, v in fetched.items()})
    counters.update({f"eval_{k}": v for k, v in reconcile(ctx, sets).items()})
    register(out)
    return counters


def reconcile(ctx: BuildContext, sets: list[LoadedEvalSet]) -> dict[str, int]:
    """The sets' lineages through the pool's reconciliation: same settings, same loaded authorities."""
    from ..taxonomy import OUTPUTS as TAXONOMY_OUTPUTS, plan as taxonomy_plan
    from ..taxonomy.authorities import LOADER_VERSION, authority_db
    from ..taxonomy.reconcile import reconcile_task, settings_dict

    out = Path(ctx.out).resolve()
    _, settings = taxonomy_plan(ctx.workflow)
    missing = [a for a in settings.loaded if not authority_db(out, a).exists()]
    if missing:
        raise TolError(f"dedup: the evaluation sets' lineages need the authorities {', '.join(missing)} loaded: "
                       "run the taxonomy stage first (tol build WORKFLOW --stages taxonomy)")
    settings.records_glob = f"{RECORDS}/*/*.parquet"
    settings.output_dir = TAXONOMY
    settings.page_sources = [e.name for e in sets if e.manifest.source == "eol"]
    settings.inat_sources = [e.name for e in sets if e.manifest.source == "inat21"]
    sd = settings_dict(settings)
    authorities = {a: files_fingerprint(out / "cache" / "taxonomy", f"{a}.duckdb") for a in settings.loaded}
    fp = hashlib.sha256(json.dumps({"settings": sd, "authorities": authorities, "version": LOADER_VERSION,
                                    "records": files_fingerprint(out, settings.records_glob)},
                                   sort_keys=True, default=str).encode()).hexdigest()
    key = f"reconcile.{fp[:16]}"
    stage = f"{STAGE}.taxonomy"
    if not all((out / TAXONOMY / f"{n}.parquet").exists() for n in TAXONOMY_OUTPUTS):
        (marker_dir(out, stage) / f"{key}.json").unlink(missing_ok=True)
    drop_stale_markers(out, stage, {key})
    return ctx.runner.run(stage, [Task(key, reconcile_task, dict(out=str(out), settings=sd))],
                          outputs=(out / TAXONOMY,)).counters


def register(out: Path) -> None:
    """The eval_* views of the catalog (paths relative to the build, like every view)."""
    from ..taxonomy.reconcile import lineage_key_sql

    out = Path(out).resolve()
    have = {name: any(out.glob(glob)) for name, glob in (
        ("records", f"{RECORDS}/*/*.parquet"), ("rejects", f"{REJECTS}/*/*.parquet"),
        ("media", f"{MEDIA}/*/*.parquet"), ("taxonomy", f"{TAXONOMY}/taxa.parquet"))}
    if have["rejects"]:
        catalog.register_parquet(out, "eval_rejects", f"{REJECTS}/*/*.parquet")
    if not have["records"]:
        return
    catalog.register_parquet(out, "eval_records", f"{RECORDS}/*/*.parquet")
    if have["media"]:
        catalog.register_parquet(out, "eval_media", f"{MEDIA}/*/*.parquet",
                                 select="uid, source AS eval_set, * EXCLUDE (uid, source)")
    if have["taxonomy"]:
        from ..taxonomy import OUTPUTS as TAXONOMY_OUTPUTS

        for name in TAXONOMY_OUTPUTS:  # eval_lineage_map, eval_taxa, eval_conflicts, eval_common_names
            catalog.register_parquet(out, f"eval_{name}", f"{TAXONOMY}/{name}.parquet")
    con = catalog.connect(out, read_only=False)
    try:
        if have["taxonomy"]:
            pages = [r[0] for r in con.execute("SELECT DISTINCT source FROM eval_lineage_map WHERE taxon_ref IS NOT NULL")
                     .fetchall()]
            con.execute(f"""CREATE OR REPLACE VIEW eval_images AS
                SELECT r.uid, r.source AS eval_set, r.source_id AS eval_id, m.taxon_id, t.kingdom, t.phylum, t.class,
                       t."order", t.family, t.genus, t.species, t.scientific_name, t.common_name, t.lowest_rank,
                       m.confirmed_rank, m.rank_status
                FROM eval_records r
                LEFT JOIN eval_lineage_map m ON m.source = r.source AND m.lineage_key = {lineage_key_sql(pages, 'r')}
                LEFT JOIN eval_taxa t ON t.taxon_id = m.taxon_id""")
        catalog.register_parquet(out, "eval_records", f"{RECORDS}/*/*.parquet")  # refreshes `tables`
    finally:
        con.close()

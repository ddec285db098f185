"""Stage `taxonomy`: records' raw labels -> one seven-rank hierarchy, queryable in `catalog.duckdb`.

Two runner stages, like ingest:

* `taxonomy.load`: one task per authority the workflow needs (authorities.py) -> a DuckDB file per
  authority under `<out>/cache/taxonomy/`, loaded once per build. A task's key carries the authority's
  fingerprint (manifest, files, kingdom synonyms), so changing an authority reloads it and nothing else.
* `taxonomy`: one task (reconcile.py; a DuckDB job on the distinct raw lineages) ->
  `<out>/taxonomy/{lineage_map,taxa,conflicts,common_names}.parquet`, then every record with its taxon,
  written once as `<out>/taxonomy/images/<source>/<part>.parquet` (images.py). Its key fingerprints the settings, the curated
  files, the authorities and the records, so a re-run after any of them changed reconciles again, and a
  re-run after nothing changed does nothing.

Then `register` puts it all in the catalog: `taxa`, `lineage_map`, `conflicts`, `common_names` (every
common name of every taxon in every language: common_names.py) as parquet views, the
`images` view over the written table (every record with its taxon; unresolved ones with empty ranks; each
record's `confirmed_rank` and `rank_status` through its own raw lineage) and the coverage views (coverage.py), which
count confirmed against source-asserted ranks. Stages never import cluster code; the runner hands the tasks to Dask.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import catalog
from ..config import Workflow
from ..context import BuildContext
from ..errors import ConfigError
from ..fileio import files_fingerprint
from ..resources import project_path
from ..runner import Task, drop_stale_markers, marker_dir
from . import authorities as auth
from . import curation
from . import languages
from .common_names import COMMON_NAMES_COLUMNS
from .coverage import VIEW_DOCS, create_views
from .images import IMAGES_DIR, images_glob
from .reconcile import (CONFLICT_COLUMNS, LINEAGE_MAP_COLUMNS, TAXA_COLUMNS, Settings,
                        reconcile_task, settings_dict)

LOAD_STAGE = "taxonomy.load"
STAGE = "taxonomy"
OUTPUTS = ("lineage_map", "taxa", "conflicts", "common_names")

catalog.document("taxa", "resolved taxa: one row per distinct seven-rank lineage (stage taxonomy)", TAXA_COLUMNS)
catalog.document("lineage_map", "every distinct raw lineage of the records, with its taxon and how it was "
                 "resolved (authority, rule, matched id, the rank confirmed)", LINEAGE_MAP_COLUMNS)
catalog.document("conflicts", "decisions where an authority and a given (or EOL context) rank disagreed, "
                 "ties, synonyms, overrides, suspected misspellings and ambiguous homonyms", CONFLICT_COLUMNS)
catalog.document("common_names", "every common name of every resolved taxon, in every language, from the "
                 "authorities of taxonomy.common_name_order; one preferred per taxon and language "
                 "(English: taxa.common_name)", COMMON_NAMES_COLUMNS)
for _name, (_desc, _cols) in VIEW_DOCS.items():
    catalog.document(_name, _desc, _cols)


def project_taxonomy_dir() -> Path:
    """The project's taxonomy/ folder (the checkout's, or the installed package data's)."""
    return project_path("taxonomy")


def _path(wf: Workflow, value: str, default: Path, key: str) -> Path:
    p = (wf.path.parent / value).resolve() if value else default
    if not p.exists():
        raise ConfigError(wf.path, f"taxonomy.{key}", "an existing path" + (
            "" if value else " (the project's taxonomy/ folder is missing: set the path in the workflow)"), str(p))
    return p


def curated_paths(wf: Workflow) -> dict[str, Path]:
    cfg, base = wf.taxonomy, project_taxonomy_dir()
    return {
        "authorities_dir": _path(wf, cfg.authorities_dir, base / "authorities", "authorities_dir"),
        "kingdom_synonyms": _path(wf, cfg.kingdom_synonyms, base / "kingdom_synonyms.csv", "kingdom_synonyms"),
        "homonym_fixes": _path(wf, cfg.homonym_fixes, base / "homonym_fixes.csv", "homonym_fixes"),
        "overrides": _path(wf, cfg.overrides, base / "overrides.csv", "overrides"),
    }


def plan(wf: Workflow) -> tuple[dict[str, Path], Settings]:
    """Validate the taxonomy settings; the authority manifests to load and the reconcile settings."""
    from ..validate import raise_first, taxonomy_problems

    cfg = wf.taxonomy
    raise_first(wf.path, taxonomy_problems(cfg))  # names and ranges (load_workflow checked them already)
    paths = curated_paths(wf)
    available = auth.discover(paths["authorities_dir"])
    page_sources = [s.id for s in wf.sources if s.name == "eol"]
    inat_sources = [s.id for s in wf.sources if s.name == "inat21"]
    needed: dict[str, Path] = {}
    for i, a in enumerate(cfg.authority_order):
        if a in ("source", "inat21"):
            continue
        if a not in available:
            raise ConfigError(wf.path, f"taxonomy.authority_order[{i}]",
                              f"an authority manifest named '{a}' in {paths['authorities_dir']}", a)
        needed[a] = available[a]
    if page_sources and "eol" not in needed:
        if "eol" not in available:
            raise ConfigError(wf.path, "taxonomy.authorities_dir", "an 'eol' authority manifest (EOL Dynamic "
                              f"Hierarchy): source(s) {', '.join(page_sources)} give EOL page ids",
                              str(paths["authorities_dir"]))
        needed["eol"] = available["eol"]  # pages resolve through the DH even when 'eol' is not in the order
    for a in cfg.common_name_order:  # common names from whatever of these is declared
        name = "eol" if a in ("eol", "eol_preferred") else a
        if name in available and name not in needed and name != "source":
            needed[name] = available[name]
    settings = Settings(
        authority_order=list(cfg.authority_order), common_name_order=list(cfg.common_name_order),
        kingdom_priority=list(cfg.kingdom_priority), resolve_synonyms=cfg.resolve_synonyms,
        accept_suggestions=cfg.accept_suggestions, misspelling_max_distance=cfg.misspelling_max_distance,
        page_sources=page_sources, inat_sources=inat_sources,
        kingdom_synonyms=curation.read_kingdom_synonyms(paths["kingdom_synonyms"]),
        homonym_fixes=curation.read_homonym_fixes(paths["homonym_fixes"]),
        overrides=curation.read_overrides(paths["overrides"]),
        loaded=sorted(needed), threads=cfg.threads, memory_limit=cfg.memory_limit)
    return needed, settings


def run(ctx: BuildContext) -> dict[str, int]:
    wf, out = ctx.workflow, Path(ctx.out).resolve()
    needed, settings = plan(wf)
    languages_csv = languages.default_path()  # the project's table (taxonomy/languages.csv)
    languages.read_languages(languages_csv)  # a bad row fails here, naming its line, before any task runs
    extra = auth.curated_extra(settings.kingdom_synonyms, languages_csv)
    cache = ctx.cache("taxonomy")
    load_tasks, fps = [], {}
    for name, manifest in sorted(needed.items()):
        fp = auth.fingerprint(manifest, extra)
        fps[name] = fp
        key = f"{name}.{fp[:16]}"
        if not auth.authority_db(out, name).exists():  # cache removed by hand: load again
            (marker_dir(out, LOAD_STAGE) / f"{key}.json").unlink(missing_ok=True)
        load_tasks.append(Task(key, auth.load_task, dict(
            out=str(out), name=name, manifest_path=str(manifest), kingdom_synonyms=settings.kingdom_synonyms,
            threads=settings.threads or max(1, ctx.threads), memory_limit=settings.memory_limit,
            languages_csv=str(languages_csv))))
    drop_stale_markers(out, LOAD_STAGE, {t.key for t in load_tasks})
    loaded = ctx.runner.run(LOAD_STAGE, load_tasks, outputs=(cache,))
    sd = settings_dict(settings)
    fp = hashlib.sha256(json.dumps({"settings": sd, "authorities": fps,
                                    "records": files_fingerprint(out, settings.records_glob),
                                    "version": auth.LOADER_VERSION}, sort_keys=True, default=str).encode())
    key = f"reconcile.{fp.hexdigest()[:16]}"
    if not all((out / "taxonomy" / f"{n}.parquet").exists() for n in OUTPUTS) or \
            not (out / "taxonomy" / IMAGES_DIR).is_dir():  # also: a build reconciled before images/ existed
        (marker_dir(out, STAGE) / f"{key}.json").unlink(missing_ok=True)
    drop_stale_markers(out, STAGE, {key})
    result = ctx.runner.run(STAGE, [Task(key, reconcile_task, dict(out=str(out), settings=sd))],
                            outputs=(out / "taxonomy",))
    register(out, settings.page_sources, wf.taxonomy.min_images)
    counters = dict(loaded.counters)
    counters.update(result.counters)
    ctx.log(f"taxonomy: {counters.get('lineages_resolved', 0):,} of {counters.get('lineages', 0):,} raw lineages "
            f"resolved to {counters.get('taxa', 0):,} taxa; {counters.get('conflicts', 0):,} conflicts; "
            f"{counters.get('common_names_rows', 0):,} common names in {counters.get('common_names_languages', 0)} "
            "languages")
    return counters


def register(out: Path, page_sources: list[str], min_images: int) -> None:
    """Catalog views over the taxonomy outputs, `images` and the coverage views. Idempotent.
    `images` is a view over the written table; over the records (computed at every query) only when the
    table is missing (outputs of an older reconcile, read by hand). The coverage results are small tables
    in the catalog, computed here once per reconciliation."""
    for name in OUTPUTS:
        catalog.register_parquet(out, name, f"taxonomy/{name}.parquet")
    written = catalog.register_parquet(out, "images", images_glob())
    if not written:
        catalog.unregister(out, "images")
    con = catalog.connect(out, read_only=False)
    try:
        create_views(con, page_sources, min_images, images=not written, tables=True)
    finally:
        con.close()
    catalog.register_parquet(out, "taxa", "taxonomy/taxa.parquet")  # (re)writes the `tables` documentation


__all__ = ["run", "plan", "register", "LOAD_STAGE", "STAGE"]

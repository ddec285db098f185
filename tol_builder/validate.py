"""Load-time checks of a workflow's values: every range and every name, all problems in one error.

The type of each setting is checked by config.from_dict while the TOML loads; this module checks what a type
cannot say (a positive size, a quality of 1-100, an authority that exists, a stage that exists) before any
cluster starts or any work is done. `problems(wf)` lists them as (dotted key, expected, got); load_workflow
raises one ConfigError listing them all. A stage may call the part for its own section again when it is
given a Workflow built in code rather than loaded.

Why not pydantic or msgspec: the dataclasses and from_dict already give file + dotted key + expectation for
types; what was missing is these range and name rules, which fit in this one table-like module without a
new dependency or a second way of declaring settings.
"""

from __future__ import annotations

from typing import Any

Problem = tuple[str, str, Any]


def _positive(section: str, cfg: Any, names: tuple[str, ...]) -> list[Problem]:
    return [(f"{section}.{n}", "a positive integer", getattr(cfg, n)) for n in names if getattr(cfg, n) < 1]


def cluster_problems(cfg) -> list[Problem]:
    out = _positive("cluster", cfg, ("n_workers", "threads_per_worker", "jobs"))
    lo, hi = cfg.adaptive_minimum_jobs, cfg.adaptive_maximum_jobs
    out += [(f"cluster.{n}", "0 or a positive integer", v) for n, v in
            (("adaptive_minimum_jobs", lo), ("adaptive_maximum_jobs", hi)) if v < 0]
    if (lo or hi) and not cfg.jobqueue:
        out.append(("cluster.jobqueue", "a batch system (slurm, pbs, sge, lsf) for adaptive_*_jobs", cfg.jobqueue))
    if lo > 0 and hi < lo:
        out.append(("cluster.adaptive_maximum_jobs", f"at least adaptive_minimum_jobs ({lo})", hi))
    return out


def fetch_problems(cfg) -> list[Problem]:
    out = _positive("fetch", cfg, ("max_side", "max_pixels", "max_decoded_bytes", "max_bytes",
                                   "per_host_concurrency", "max_redirects", "attempts", "task_concurrency",
                                   "partition_size", "archive_stream_tasks", "chunk_rows"))
    out += image_format_problems(cfg.image_formats)
    if not 1 <= cfg.jpeg_quality <= 100:
        out.append(("fetch.jpeg_quality", "an integer from 1 to 100", cfg.jpeg_quality))
    for n in ("per_host_rps", "retry_passes", "backoff_base", "backoff_max", "max_retry_after", "archive_attempts"):
        if getattr(cfg, n) < 0:
            out.append((f"fetch.{n}", "zero or more", getattr(cfg, n)))
    for n in ("connect_timeout", "read_timeout", "total_timeout"):
        if getattr(cfg, n) <= 0:
            out.append((f"fetch.{n}", "a positive number of seconds", getattr(cfg, n)))
    if not cfg.user_agent.strip():
        out.append(("fetch.user_agent", "a non-empty User-Agent", cfg.user_agent))
    return out


def image_format_problems(formats: list[str]) -> list[Problem]:
    """fetch.image_formats: names of formats Pillow can open, as Pillow spells them, each once, never EPS."""
    from PIL import Image

    from .config import NEVER_OPENED

    Image.init()  # registers every plugin (nothing is opened)
    known = sorted(f for f in Image.OPEN if f not in NEVER_OPENED)
    out: list[Problem] = []
    if not formats:
        out.append(("fetch.image_formats", "at least one format, e.g. [\"JPEG\", \"PNG\"]", formats))
    for i, f in enumerate(formats):
        key = f"fetch.image_formats[{i}]"
        if f in NEVER_OPENED:
            out.append((key, "not EPS: Pillow opens EPS by running Ghostscript on the file", f))
        elif f not in known:
            hint = f" (did you mean '{f.upper()}'?)" if f.upper() in known else ""
            out.append((key, "a format name Pillow opens: " + ", ".join(known) + hint, f))
        elif f in formats[:i]:
            out.append((key, "each format once", f))
    return out


def taxonomy_problems(cfg) -> list[Problem]:
    from .taxonomy.common_names import COMMON_NAME_AUTHORITIES
    from .taxonomy.reconcile import KNOWN_AUTHORITIES

    out: list[Problem] = []
    for i, a in enumerate(cfg.authority_order):
        if a not in KNOWN_AUTHORITIES:
            out.append((f"taxonomy.authority_order[{i}]", "one of " + ", ".join(KNOWN_AUTHORITIES), a))
        elif a in cfg.authority_order[:i]:
            out.append((f"taxonomy.authority_order[{i}]", "each authority once", a))
    for i, a in enumerate(cfg.common_name_order):
        if a not in COMMON_NAME_AUTHORITIES:
            out.append((f"taxonomy.common_name_order[{i}]", "one of " + ", ".join(COMMON_NAME_AUTHORITIES), a))
    if cfg.min_images < 1:
        out.append(("taxonomy.min_images", "an integer >= 1", cfg.min_images))
    if cfg.threads < 0:
        out.append(("taxonomy.threads", "0 (all cores) or more", cfg.threads))
    if not 0 <= cfg.misspelling_max_distance <= 3:  # past 3 edits most short names are "near" a real one
        out.append(("taxonomy.misspelling_max_distance", "an integer from 0 (no check) to 3",
                    cfg.misspelling_max_distance))
    return out


def dedup_problems(cfg) -> list[Problem]:
    out = _positive("dedup", cfg, ("match_rows", "report_max_pairs"))
    if not 0 <= cfg.pdq_max_distance <= 64:  # exact at any distance (dedup/index.py); past 64 unrelated photos match
        out.append(("dedup.pdq_max_distance", "an integer from 0 to 64 (of 256 bits)", cfg.pdq_max_distance))
    if not 0 <= cfg.min_pdq_quality <= 100:
        out.append(("dedup.min_pdq_quality", "an integer from 0 to 100", cfg.min_pdq_quality))
    out += [(f"dedup.{n}", "true or false", getattr(cfg, n)) for n in ("match_dihedral", "match_variants")
            if not isinstance(getattr(cfg, n), bool)]
    return out


def shards_problems(wf) -> list[Problem]:
    """[shards]: sizes, fractions, taxa as "rank:Name", sources of this workflow, the include list, the text key."""
    from .records import RANKS
    from .shards.plan import include_list_path, parse_taxon
    from .text import text_keys

    cfg = wf.shards
    out = _positive("shards", cfg, ("image_size", "samples_per_shard", "bucket_rows"))
    if cfg.samples_per_shard > 1_000_000:
        out.append(("shards.samples_per_shard", "at most 1,000,000 (one parquet row group per shard)",
                    cfg.samples_per_shard))
    if not 1 <= cfg.jpeg_quality <= 100:
        out.append(("shards.jpeg_quality", "an integer from 1 to 100", cfg.jpeg_quality))
    if len(cfg.pad_colour) != 3 or not all(0 <= c <= 255 for c in cfg.pad_colour):
        out.append(("shards.pad_colour", "three integers from 0 to 255 (RGB)", cfg.pad_colour))
    for n in ("val_fraction", "train_small_fraction"):
        if not 0.0 <= getattr(cfg, n) < 1.0:
            out.append((f"shards.{n}", "a number from 0 to below 1", getattr(cfg, n)))
    for n in ("max_per_species", "min_per_species"):
        if getattr(cfg, n) < 0:
            out.append((f"shards.{n}", "zero (off) or a positive integer", getattr(cfg, n)))
    for n in ("include_taxa", "exclude_taxa"):
        for i, spec in enumerate(getattr(cfg, n)):
            if parse_taxon(spec) is None:
                out.append((f"shards.{n}[{i}]", "'rank:Name' with rank one of " + ", ".join(RANKS)
                            + " (species: 'species:Genus epithet')", spec))
    known = [s.id for s in wf.sources]
    for n in ("include_sources", "exclude_sources"):
        for i, s in enumerate(getattr(cfg, n)):
            if s not in known:
                out.append((f"shards.{n}[{i}]", "a source id of this workflow: " + ", ".join(known), s))
    if cfg.include_list and not include_list_path(wf).is_file():
        out.append(("shards.include_list", "an existing CSV file", str(include_list_path(wf))))
    try:
        keys = text_keys(("en", *wf.text.languages))
    except ValueError:  # a bad language code: text.languages gets its own error
        keys = text_keys()
    if cfg.default_text not in keys:
        out.append(("shards.default_text", "one of the text keys " + ", ".join(keys), cfg.default_text))
    return out


def problems(wf) -> list[Problem]:
    """Every range and name problem of a workflow (types were checked when it loaded)."""
    from .config import SOURCE_ID, STAGES

    out: list[Problem] = []
    for i, stage in enumerate(wf.stages):
        if stage not in STAGES:
            out.append((f"stages[{i}]", "one of " + ", ".join(STAGES), stage))
    seen: set[str] = set()
    for i, s in enumerate(wf.sources):
        if not SOURCE_ID.match(s.id):  # it names folders, task keys and catalog rows
            out.append((f"sources[{i}].id", "an identifier: letters, digits and _, not starting with a digit", s.id))
        elif s.id in seen:
            out.append((f"sources[{i}].id", "a source id not used before (set `id`)", s.id))
        seen.add(s.id)
        if not wf.source_manifest_path(s).exists():
            out.append((f"sources[{i}].manifest", "an existing manifest file", str(wf.source_manifest_path(s))))
    if wf.cluster.scheduler and wf.cluster.scheduler_file:
        out.append(("cluster", "scheduler or scheduler_file, not both", "both set"))
    out += cluster_problems(wf.cluster) + fetch_problems(wf.fetch) + taxonomy_problems(wf.taxonomy)
    out += dedup_problems(wf.dedup) + shards_problems(wf)
    return out


def raise_first(file, found: list[Problem]) -> None:
    """For a stage checking its own section: the first problem as a ConfigError."""
    from .errors import ConfigError

    if found:
        raise ConfigError(file, *found[0])

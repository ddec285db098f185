"""Workflow configuration: a TOML file loaded into typed dataclasses, validated at load time.

This module is the one home of every default. A wrong key or value fails in `load_workflow` with a
`ConfigError` naming the file, the key (dotted path) and what was expected. Source-specific options are
validated by the source's own `Options` dataclass with the same machinery (`from_dict`).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ConfigError, ConfigErrors


class FieldValueError(ValueError):
    """Raised by a config dataclass's __post_init__ for a value its type allows but its meaning does not;
    `from_dict` turns it into a ConfigError naming the file and the dotted key."""

    def __init__(self, field: str, expected: str, got: object):
        super().__init__(f"{field}: expected {expected}, got {got!r}")
        self.field, self.expected, self.got = field, expected, got


# --------------------------------------------------------------------------------------------- sections
@dataclass
class ClusterConfig:
    """Where the stages run. Empty scheduler and scheduler_file: a LocalCluster on this machine."""

    scheduler: str = ""  # address of a running scheduler, e.g. tcp://10.0.0.5:8786
    scheduler_file: str = ""  # or the scheduler file a running cluster wrote (dask scheduler --scheduler-file)
    n_workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str = "auto"  # per worker, Dask syntax ("8GB") or "auto"
    processes: bool = True
    dashboard_address: str = ":0"  # ":0" = any free port; "" = no dashboard
    # Dask's statistical profiler samples every worker thread's stack every 10 ms (the dashboard's Profile
    # page); off by default in the LocalCluster tol starts: it cost the fetch stage 2-3% of its CPU
    worker_profiler: bool = False
    # Batch schedulers through dask-jobqueue (pip install 'tol_builder[cluster]'): "slurm", "pbs", "sge", "lsf"
    jobqueue: Literal["", "slurm", "pbs", "sge", "lsf"] = ""
    jobs: int = 1  # jobs to submit (a fixed number; see adaptive_maximum_jobs)
    # passed to e.g. SLURMCluster: cores, memory (per job), walltime, queue, account, job_extra_directives, ...;
    # processes: worker processes per job (1); without cores or memory: threads_per_worker and memory_limit
    # (8GB for "auto") times processes, as both are per worker process
    jobqueue_options: dict = field(default_factory=dict)
    # adaptive: jobs come and go with the work, between these bounds (dask-jobqueue's adapt); 0 = fixed `jobs`
    adaptive_minimum_jobs: int = 0
    adaptive_maximum_jobs: int = 0


@dataclass
class SourceConfig:
    """One image source of the build: a registered reader and its manifest."""

    name: str  # the reader, as registered in the entry-point group tol_builder.sources
    manifest: str  # path of the source manifest TOML, relative to the workflow file
    id: str = ""  # the value of records.source; defaults to name (set two ids to use one reader twice)
    options: dict = field(default_factory=dict)  # reader-specific; validated by the reader's Options

    def __post_init__(self) -> None:
        if not self.id:
            self.id = self.name


NEVER_OPENED = frozenset({"EPS"})  # image formats never opened, whatever fetch.image_formats says: Pillow's EPS
# plugin runs Ghostscript on the file


@dataclass
class FetchConfig:
    """The fetch stage: per-image HTTP downloads, archive members, image processing (issue 3).

    Politeness (per_host_*) holds across the whole cluster, not per worker (tol_builder/fetch/budget.py).
    PDQ is always computed on one fixed canonical preparation of the pixels (fetch/imaging.py): not a setting.
    """

    # image processing
    max_side: int = 720  # stored JPEGs are resized so that their longer side is at most this
    jpeg_quality: int = 95
    keep_original_jpeg: bool = True  # an RGB, upright JPEG already within max_side is stored as is (no re-encode)
    resize_filter: Literal["bicubic", "bilinear", "box", "lanczos"] = "bicubic"  # of the stored copy (box = area)
    max_pixels: int = 89_478_485  # decode cap against decompression bombs (Pillow's default)
    # memory cap of one image's decode and RGB conversion, by mode and size, checked from the header before any
    # pixel is decoded (fetch/imaging.py decoded_bytes_per_pixel); 512 MiB fits a 2 GB worker
    max_decoded_bytes: int = 512 * 1024 ** 2
    # the only formats Pillow may open (its names); others fail as format_refused. What sources and benchmarks
    # serve: JPEG (iNat21, BIOSCAN-1M, EOL, Rare Species, most benchmarks), PNG (Meta-Album Plankton), WEBP, GIF
    # (first frame). Add "TIFF", "BMP" ... for a folder of such files; EPS is never allowed (it runs Ghostscript)
    image_formats: list[str] = field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF"])
    max_bytes: int = 50_000_000  # size cap of one downloaded image
    # HTTP
    user_agent: str = "tol_builder/0.1 (biodiversity dataset rebuild; https://github.com/tol-builder)"
    per_host_concurrency: int = 8  # cluster-wide requests in flight per host
    per_host_rps: float = 20.0  # cluster-wide requests per second per host; 0 = no rate limit
    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # longest wait for the next bytes (headers or body)
    total_timeout: float = 120.0  # longest time one request may take in all
    max_redirects: int = 5
    # per-image URLs and their redirects reach only global addresses (not loopback, private, link-local, CGNAT,
    # 6to4 of those, ...: tol_builder/urlpolicy.py) unless this is on: images served from this machine or a LAN
    allow_private_addresses: bool = False
    # the old name of allow_private_addresses (it covered redirects only), still read: true turns it on
    allow_private_redirects: bool = False
    # the creators' opt-out: a response whose X-Robots-Tag carries one of these (for all agents or for ours)
    # is not stored (status failed, error class opted_out), as img2dataset; [] turns this off
    disallowed_directives: list[str] = field(default_factory=lambda: ["noai", "noimageai", "noindex",
                                                                       "noimageindex"])
    attempts: int = 3  # tries of one URL within a pass (exponential backoff with jitter between them)
    backoff_base: float = 1.0  # seconds; the n-th retry waits a random time up to base * 2**n
    backoff_max: float = 60.0
    max_retry_after: float = 120.0  # a longer Retry-After ends the pass for that URL (retried next pass)
    retry_passes: int = 3  # passes over transient failures within one build
    task_concurrency: int = 32  # requests one task keeps in flight (all hosts; the host budget also applies)
    # tasks and output
    partition_size: int = 10_000  # records per fetch task (per-image URLs and zip members)
    archive_stream_tasks: int = 4  # tasks per tar archive: each streams it once and keeps 1/n of its members
    chunk_rows: int = 1000  # media rows per parquet file: what a killed task keeps
    archive_attempts: int = 20  # reconnections (range resume) of one interrupted archive download

    def __post_init__(self) -> None:  # one setting under either name (fetch/archives.py reads the old one)
        self.allow_private_addresses = self.allow_private_redirects = (self.allow_private_addresses
                                                                       or self.allow_private_redirects)


@dataclass
class TaxonomyConfig:
    """The taxonomy stage (issue 4): authorities, reconciliation rules, common names, coverage.

    Paths are relative to the workflow file; "" = the project's curated file in taxonomy/. The rules
    themselves are documented in tol_builder/taxonomy/reconcile.py."""

    # folder of authority manifests (<name>.toml: format, files, URLs, sizes, checksums);
    # "" = taxonomy/authorities/ of the project
    authorities_dir: str = ""
    # authorities tried for each raw lineage: "source" (a source's own full lineage), "inat21" (iNat21's
    # categories as a name authority), "itis", "gbif", "eol"; equal-rank matches go to the earlier one
    authority_order: list[str] = field(default_factory=lambda: ["source", "itis", "gbif", "eol"])
    # English common names: "itis", "inaturalist", "eol_preferred", "eol", "gbif", "source"
    common_name_order: list[str] = field(
        default_factory=lambda: ["itis", "inaturalist", "eol_preferred", "eol"])
    min_images: int = 10  # coverage view: taxa with fewer images than this
    kingdom_synonyms: str = ""  # CSV name,kingdom; "" = taxonomy/kingdom_synonyms.csv
    homonym_fixes: str = ""  # CSV; "" = taxonomy/homonym_fixes.csv
    overrides: str = ""  # CSV; "" = taxonomy/overrides.csv
    # tie-break between equally good candidates in different kingdoms (after completeness)
    kingdom_priority: list[str] = field(default_factory=lambda: [
        "Animalia", "Plantae", "Fungi", "Chromista", "Protozoa", "Bacteria", "Archaea", "Viruses"])
    resolve_synonyms: bool = True  # a synonym resolves to its accepted taxon (recorded in conflicts)
    # a given name below the confirmed rank, unknown to every authority but within misspelling_max_distance
    # edits of an authority name under the same confirmed parent (Pantherra / Panthera under Felidae), is a
    # suspected misspelling (recorded in conflicts): the lineage stops at the confirmed rank, or, with
    # accept_suggestions, takes the nearest name when exactly one is nearest. 0 = no misspelling check
    accept_suggestions: bool = False
    misspelling_max_distance: int = 2
    threads: int = 0  # DuckDB threads per taxonomy task; 0 = reconcile on all cores, loads on the worker's threads
    memory_limit: str = "4GB"  # DuckDB memory limit per taxonomy task (spills to cache/taxonomy/tmp)

    def __post_init__(self) -> None:
        from .sql import MEMORY_LIMIT

        if not MEMORY_LIMIT.match(self.memory_limit):  # it reaches DuckDB's SET memory_limit
            raise FieldValueError("memory_limit", "a size such as 4GB, 512MB or 1.5GiB", self.memory_limit)


@dataclass
class TextConfig:
    """The texts of the samples (issue 8): which languages get common-name text keys in the shards.

    English is implied: it is BioCLIP's `common_name`, `com`, `sci_com` ... and always there, so
    `languages = ["es"]` means English and Spanish (listing "en" is allowed; it is put first). Each other
    language L adds the `_L` twins of text.LANGUAGE_TYPES (`com_es`, `taxon_com_es`). Codes are those of
    taxonomy/languages.csv's `code` column (ISO 639-1 where the language has one: es, fr, de, zh); checked
    at load. This only selects text keys: the catalog's `common_names` table keeps every language."""

    languages: list[str] = field(default_factory=lambda: ["en"])


@dataclass
class DedupConfig:
    """The dedup stage (tol_builder/dedup/): evaluation sets held out of the pool, duplicates inside the pool.

    Evaluation sets are manifests like sources' (manifests/evalsets/*.toml) with an [evalset] table saying what
    they hold out. Matching: exact (sha256, md5, normalised URL, source id) first, then PDQ Hamming distance."""

    evalsets: list[str] = field(default_factory=list)  # manifests/evalsets/*.toml, relative to the workflow
    pdq_max_distance: int = 10  # near duplicate: PDQ Hamming distance <= this (the TreeOfLife-200M setting)
    # PDQ's own quality (0..100) below which a hash is not trusted for near matches (PDQ's authors: < 50 is too
    # featureless); such images still match exactly (sha256, md5, URL) and are counted as pdq_untrusted
    min_pdq_quality: int = 50
    drop_pool_exact: bool = True  # byte-exact copies inside the pool: keep one (rule in dedup/pool.py)
    drop_pool_near: bool = False  # near copies inside the pool: keep one too (else they stay, in one split)
    match_rows: int = 1_000_000  # pool media rows per matching task
    report_max_pairs: int = 500  # near matches shown by `tol dedup report` (the page says how many it left out)
    # edit-robust matching (dedup/variants.py; figures in bench/README_dedup.md): the 8 dihedral PDQ hashes of
    # every evaluation image (mirrored and 90-degree-turned pool copies) and its grid of edit variants (centred
    # crops, small rotations, borders, letterboxes) are indexed beside its own hash; the pool is hashed once
    match_dihedral: bool = True
    match_variants: bool = True


@dataclass
class ShardsConfig:
    """The shards stage (issue 9, tol_builder/shards/): which images, which split, which shard, at what size.

    Selection settings apply in the order the dataset card lists them; every image left out gets its reason
    in the catalog table `unselected`. Taxa are written "rank:Name" ("class:Aves", "species:Pica hudsonia");
    licence patterns match the normalised `licence_id` (shards/licences.py) with shell wildcards."""

    # what a sample's image is
    image_size: int = 224  # square side of every .jpg
    resize_mode: Literal["squash", "keep_ratio", "center_crop"] = "squash"  # squash as BioCLIP
    resize_filter: Literal["bicubic", "bilinear", "box", "lanczos"] = "bicubic"  # BioCLIP: bicubic
    jpeg_quality: int = 95  # fixed encoder settings (baseline, 4:2:0, no optimisation) for byte-identical shards
    pad_colour: list[int] = field(default_factory=lambda: [0, 0, 0])  # keep_ratio's padding, RGB
    # splits and layout
    samples_per_shard: int = 10_000
    val_fraction: float = 0.05
    train_small_fraction: float = 0.10  # of train
    default_text: str = "taxon_com"  # written as .txt so unmodified open_clip trains on the shards
    # selection
    include_sources: list[str] = field(default_factory=list)  # [] = every source
    exclude_sources: list[str] = field(default_factory=list)
    include_taxa: list[str] = field(default_factory=list)  # "rank:Name"; [] = every taxon
    exclude_taxa: list[str] = field(default_factory=list)
    include_licences: list[str] = field(default_factory=list)  # licence_id patterns, e.g. "CC-BY*", "CC0-1.0"
    exclude_licences: list[str] = field(default_factory=list)  # e.g. ["CC-BY-NC*"]: no non-commercial images
    min_rank: Literal["", "kingdom", "phylum", "class", "order", "family", "genus", "species"] = ""  # "" = any
    max_per_species: int = 0  # cap of images per taxon (0 = no cap); which ones stay is seeded
    min_per_species: int = 0  # floor: a taxon with fewer selected images is dropped or kept whole ...
    below_min_per_species: Literal["drop", "keep"] = "drop"  # ... as this says
    include_list: str = ""  # CSV (source,source_id or the TreeOfLife-10M catalog.csv), relative to the workflow
    # work
    bucket_rows: int = 50_000  # at most this many samples per first-pass task (fewer for small builds; shards/plan.py)
    keep_buckets: bool = False  # keep the first pass's buckets (BUILD/cache/shards) after the shards are written
    # DuckDB memory limit of the plan (one task; spills to cache/selection-tmp beyond it). At TreeOfLife-10M
    # size 4GB spilled ~17 GB and made the plan grow faster than the records (bench/README_dryrun.md)
    memory_limit: str = "8GB"

    def __post_init__(self) -> None:
        from .sql import MEMORY_LIMIT

        if not MEMORY_LIMIT.match(self.memory_limit):  # it reaches DuckDB's SET memory_limit
            raise FieldValueError("memory_limit", "a size such as '8GB' or '500MB'", self.memory_limit)


@dataclass
class TrainConfig:
    """`tol train` / `tol eval` (tol_builder/train, needs the `train` extra): CLIP training on the shards.

    Defaults reproduce BioCLIP (arXiv 2311.18803; Imageomics/bioclip slurm/train.sh): ViT-B/16, per-process
    batch 4096 on 8 GPUs (global 32,768), lr 1e-4, 1000 warmup steps, cosine over 100 epochs, weight decay 0.2,
    AdamW beta2 0.98 eps 1e-6, a mixed text type per batch, local loss with gather-with-grad. bench/README_train.md
    shows the whole reproduction; the demo and the tests use `model = "tol-tiny"`. Every key can be overridden on
    the command line (`tol train WORKFLOW --set train.batch_size=64`)."""

    run: str = ""  # run directory (checkpoints, logs); "" = BUILD/train/<run_name>
    run_name: str = "default"
    # the model: a built-in open_clip architecture ("ViT-B-16"; "ViT-B-16-quickgelu" for OpenAI's weights),
    # "tol-tiny" (a few-million-parameter CLIP for CPUs), or "local-dir:PATH" (a folder with open_clip_config.json)
    model: str = "ViT-B-16"
    init_checkpoint: str = ""  # a local open_clip checkpoint file to start from; "" = random init (never downloaded)
    split: str = "train"  # BUILD/shards/<split>
    # text type of each step: "batch" = one of text_types per step for the whole batch (seeded by the step, as
    # BioCLIP), "sample" = one per sample (text_weights), or one fixed key of the shards (e.g. "taxon_com")
    text_policy: str = "batch"
    text_types: list[str] = field(default_factory=lambda: ["sci", "com", "taxon", "sci_com", "taxon_com"])
    text_weights: list[float] = field(default_factory=list)  # "sample" policy; empty = equal weights
    batch_size: int = 4096  # per process; the global batch is batch_size * processes * accum_freq
    accum_freq: int = 1  # micro-batches per optimiser step (features cached: negatives span all of them)
    epochs: int = 100  # an epoch = the split's samples (sizes.json) / global batch, in steps
    steps: int = 0  # total optimiser steps; 0 = epochs * steps per epoch
    lr: float = 1e-4
    warmup: int = 1000  # steps of linear warmup, then cosine decay to 0 at the last step
    weight_decay: float = 0.2  # AdamW; not on gains, biases and the logit scale
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip_norm: float = 0.0  # 0 = no clipping (as BioCLIP)
    # "auto" = "amp" (fp16 autocast, loss scaling) on GPU, "fp32" on CPU; "amp_bf16" = bf16 autocast
    precision: Literal["auto", "fp32", "amp", "amp_bf16"] = "auto"
    local_loss: bool = True  # contrastive loss of the local batch against all gathered features
    gather_with_grad: bool = True  # gradients flow through the all-gather (needed for the exact global loss)
    grad_checkpointing: bool = False  # recompute activations in the backward pass (BioCLIP: on)
    image_size: int = 0  # crop size; 0 = the model's
    crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])  # RandomResizedCrop area range
    shuffle_buffer: int = 5000  # samples (open_clip's training buffer)
    shuffle_initial: int = 1000  # samples buffered before the first one leaves
    segment_samples: int = 50_000  # a data stream restarts its shard draws every this many samples: a resume
    #                                replays at most this many samples' bytes (no decoding) per stream
    workers: int = 4  # data loader processes per training process; 0 = in the training process
    threads: int = 0  # torch threads per training process; 0 = torch's default
    device: str = "auto"  # "auto" = cuda:<local rank> when CUDA is present, else cpu
    seed: int = 42  # BioCLIP's
    log_every: int = 10  # steps between lines of log.jsonl
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 3  # the newest kept (older ones removed)
    resume: bool = True  # continue from the run's latest checkpoint when there is one
    # evaluation (`tol eval`)
    eval_text_type: str = "taxon_com"  # the class string (text.taxon_texts names[...]); BioCLIP's default
    eval_templates: Literal["openai", "plain"] = "openai"  # the 80 OpenAI ImageNet templates, or "a photo of {}."
    eval_batch_size: int = 256
    few_shot_shots: list[int] = field(default_factory=lambda: [1, 5])
    few_shot_folds: int = 5

STAGES = ("ingest", "fetch", "taxonomy", "dedup", "shards")
SOURCE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Workflow:
    """A whole build: where it goes, with what seed, on which cluster, from which sources."""

    name: str
    out: str  # build directory; relative paths are relative to the current directory
    sources: list[SourceConfig]
    seed: int = 17
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    text: TextConfig = field(default_factory=TextConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    path: Path = field(default=Path("."), metadata={"toml": False})  # the TOML it came from

    def source_manifest_path(self, source: SourceConfig) -> Path:
        return (self.path.parent / source.manifest).resolve()


# ------------------------------------------------------------------------------------------ validation
def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, typing.List):
        (inner,) = get_args(tp) or (Any,)
        return f"a list of {_type_name(inner)}"
    if origin in (dict, typing.Dict) or tp is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "nothing"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, file: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(file, key, _type_name(tp), value)
        return value
    if origin in (typing.Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _convert(value, option, file, key)
            except ConfigError:
                continue
        raise ConfigError(file, key, _type_name(tp), value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(file, key, "a table", value)
        return from_dict(tp, value, file, prefix=key)
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise ConfigError(file, key, _type_name(tp), value)
        (inner,) = get_args(tp) or (Any,)
        return [_convert(v, inner, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, typing.Dict) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(file, key, "a table", value)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, key, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, key, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(file, key, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(file, key, "a string", value)
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(file, key, "a path string", value)
        return Path(value)
    raise TypeError(f"config type {tp!r} is not supported")  # a programming error, not a user's


def from_dict(cls: type, data: dict, file: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a TOML table, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("toml", True)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(file, dotted, "one of the known keys: " + ", ".join(sorted(fields)), "unknown key")
        kwargs[key] = _convert(value, hints[key], file, dotted)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            dotted = f"{prefix}.{name}" if prefix else name
            raise ConfigError(file, dotted, f"{_type_name(hints[name])} (required)", "missing")
    try:
        return cls(**kwargs)
    except FieldValueError as e:  # a dataclass's own check of a value (its __post_init__)
        raise ConfigError(file, f"{prefix}.{e.field}" if prefix else e.field, e.expected, e.got) from None


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "an existing TOML file", "not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "(syntax)", "valid TOML", str(e)) from None


NO_CONTROL = "text without control characters (newline, CR, tab, ESC ...)"


def control_character_problems(cfg: ClusterConfig) -> list[tuple[str, str, object]]:
    """(dotted key, expected, got) of every [cluster] value, jobqueue_options' nested keys and values included,
    holding a control character. dask-jobqueue writes these options into the batch script as they are: a
    newline in job_name or queue would start a new line of the script, a command of its own."""
    out: list[tuple[str, str, object]] = []

    def walk(key: str, value: object) -> None:
        if isinstance(value, str):
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                out.append((key, NO_CONTROL, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                sub = f"{key}.{k.encode('unicode_escape').decode() if isinstance(k, str) else k}"  # one line
                walk(sub, k)
                walk(sub, v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{key}[{i}]", v)

    for f in dataclasses.fields(cfg):
        walk(f"cluster.{f.name}", getattr(cfg, f.name))
    return out


def load_workflow(path: str | Path) -> Workflow:
    path = Path(path).resolve()
    wf = from_dict(Workflow, read_toml(path), path)
    wf.path = path
    from .validate import problems

    found = problems(wf) + control_character_problems(wf.cluster)  # jobqueue options become batch-script lines
    if found:  # every range and name problem at once, before any work
        raise ConfigErrors(path, found)
    wf.text.languages = _text_languages(path, wf.text.languages)
    return wf


def _text_languages(path: Path, given: list[str]) -> list[str]:
    """[text] languages checked against taxonomy/languages.csv: "en" first (implied), then the others in
    the order given, each once; no code that names no language (und, mul, mis, zxx)."""
    for i, code in enumerate(given):
        if code in given[:i]:
            raise ConfigError(path, f"text.languages[{i}]", "each language once", code)
    extra = [code for code in given if code != "en"]
    if not extra:
        return ["en"]
    from .taxonomy.languages import NOT_A_LANGUAGE, default_path, read_languages

    table = default_path()
    if not table.exists():
        raise ConfigError(path, "text.languages", f"the language table {table} (the project's taxonomy/ folder "
                          "is missing)", given)
    langs = read_languages(table)
    for i, code in enumerate(given):
        key = f"text.languages[{i}]"
        if code not in langs.names or code in NOT_A_LANGUAGE:
            meant = langs.suggest(code)
            hint = f" (did you mean '{meant}'?)" if meant and meant not in NOT_A_LANGUAGE else ""
            raise ConfigError(path, key, "a code of the `code` column of taxonomy/languages.csv (es, fr, de ...; "
                              f"not und, mul, mis or zxx){hint}", code)
    return ["en", *extra]


def to_dict(obj: Any) -> Any:
    """A dataclass as plain TOML-able data (fields marked toml=False left out)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.metadata.get("toml", True)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj

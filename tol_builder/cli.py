"""The `tol` command line. Each command is a thin shell over a module function (testable without the CLI)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import TolError
from .terminal import safe_text, say_to, styled

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="tol_builder: rebuild, extend and train on TreeOfLife-scale image-text datasets.")
shards_app = typer.Typer(no_args_is_help=True, help="Webdataset shards: plan the selection, check what a build wrote.")
app.add_typer(shards_app, name="shards")
dedup_app = typer.Typer(no_args_is_help=True, help="Evaluation-set dedup: audit what the dedup stage excluded.")
app.add_typer(dedup_app, name="dedup")

console = Console(stderr=True)


def _fail(e: Exception) -> None:
    # the message may quote a file's value: shown as text, never as markup or raw control characters
    console.print(Text.assemble(("error:", "bold red"), " ", safe_text(e, newlines=True)),
                  soft_wrap=True)  # one line, whatever the terminal width
    raise typer.Exit(1)


def _print_summary(summary) -> None:
    for stage, counters in summary.stages.items():
        shown = ", ".join(f"{k}={v:,}" for k, v in counters.items())
        console.print(safe_text(f"  {stage}: {shown}"))
    if summary.skipped:
        console.print(safe_text(f"  not in this version yet: {', '.join(summary.skipped)}"))
    console.print(safe_text(f"outputs in {summary.out} ({summary.seconds:.1f} s); "
                            f"try: tol query {summary.out} \"SELECT source, count(*) FROM records GROUP BY source\""))


@app.command()
def demo(out: Path = typer.Option(Path("tol-demo"), "--out", help="Where the demo data and build go "
                                  "(a previous demo there is replaced)."),
         scheduler: Optional[str] = typer.Option(None, help="Address or scheduler file of a running Dask "
                                                 "cluster; default: a LocalCluster."),
         quiet: bool = typer.Option(False, help="No progress bars."),
         train: bool = typer.Option(True, "--train/--no-train", help="End by training the tiny CLIP model on "
                                    "the demo shards and printing its zero-shot accuracy (needs the train "
                                    "extra).")) -> None:
    """Build a miniature of all three sources end to end, offline, and train on it.

    Generates iNat21, BIOSCAN-1M and EOL miniatures in their real formats (procedurally drawn images, a
    few taxa each) and an evaluation set, serves the EOL images from a loopback HTTP server, runs every
    stage from ingest to the webdataset shards, then trains a tiny CLIP model on the shards and prints its
    zero-shot top-1 on the held-out evaluation images against chance."""
    from .demo import run_demo, train_demo

    try:
        summary = run_demo(out, console=console, scheduler=scheduler, progress=not quiet, train=False)
        _print_summary(summary)
        if train:
            train_demo(say_to(console), summary.out, console, progress=not quiet)
    except TolError as e:
        _fail(e)


@app.command()
def build(workflow: Path = typer.Argument(..., help="Workflow TOML (see workflows/)."),
          out: Optional[Path] = typer.Option(None, help="Build directory (default: the workflow's `out`)."),
          stages: Optional[str] = typer.Option(None, help="Comma-separated stages to run, e.g. ingest,fetch "
                                               "(default: the workflow's list)."),
          scheduler: Optional[str] = typer.Option(None, help="Address (tcp://host:8786) or scheduler file "
                                                  "of a running Dask cluster; default: a LocalCluster."),
          quiet: bool = typer.Option(False, help="No progress bars."),
          retry_failed: bool = typer.Option(False, "--retry-failed", help="Fetch permanent failures again too "
                                            "(transient ones are retried by every run).")) -> None:
    """Run a workflow's stages. Re-running resumes: completed tasks are skipped; transient fetch failures are
    retried."""
    from .build import build as run_build
    from .config import load_workflow

    try:
        wf = load_workflow(workflow)
        summary = run_build(wf, out=out, stages=stages.split(",") if stages else None, scheduler=scheduler,
                            console=console, progress=not quiet, retry_failed=retry_failed)
    except TolError as e:
        _fail(e)
    _print_summary(summary)


@app.command()
def status(out: Path = typer.Argument(..., help="Build directory.")) -> None:
    """Show each stage's progress (tasks done of planned) and its merged counters."""
    from .status import stage_status

    try:
        rows = stage_status(out)
    except TolError as e:
        _fail(e)
    table = Table(title=safe_text(f"build {out}"))
    for col in ("stage", "tasks done", "counters"):
        table.add_column(col)
    for r in rows:  # stage folders, marker counters and stale reasons come from files: shown as text
        done = f"{r['done']}/{r['planned'] if r['planned'] is not None else '?'}"
        if r.get("stale"):
            done += f" (stale: {r['stale']}; the next tol build re-plans it)"
        table.add_row(safe_text(r["stage"]), safe_text(done),
                      safe_text(", ".join(f"{k}={v:,}" for k, v in r["counters"].items())))
    Console().print(table)
    from .catalog import catalog_path, query as run_query

    if catalog_path(out).exists():
        try:
            summary = run_query(out, "SELECT * FROM dedup_summary")
        except Exception:  # no dedup stage run yet
            return
        console.print("dedup exclusions (tol dedup report DIR shows the near matches):")
        write_table(summary, "table")


@dedup_app.command("report")
def dedup_report(out: Path = typer.Argument(..., help="Build directory."),
                 report: Optional[Path] = typer.Option(None, "--out", help="The HTML file to write "
                                                       "(default: DIR/dedup/report.html)."),
                 max_pairs: int = typer.Option(500, help="Pairs shown per section, nearest first.")) -> None:
    """Write one self-contained HTML page: each near match beside its evaluation image, with its distance."""
    from .dedup.report import write_report

    try:
        path, shown = write_report(out, report, max_pairs)
    except TolError as e:
        _fail(e)
    console.print(safe_text(f"wrote {path}: {shown['near_shown']:,} near matches shown ({shown['near_left_out']:,} "
                            f"left out), {shown['pool_shown']:,} near copies inside the pool "
                            f"({shown['pool_left_out']:,} left out)"), soft_wrap=True)


@app.command()
def sources() -> None:
    """List the registered image sources (built in, and added by other packages)."""
    from .sources import available, get_source_class

    table = Table(title="sources (entry-point group tol_builder.sources)")
    for col in ("name", "class", "description"):
        table.add_column(col)
    for name, target in available().items():
        try:
            desc = safe_text((get_source_class(name).description or "").strip(), newlines=True)
        except Exception as e:  # a broken plugin is listed with its error, not hidden
            desc = safe_text(f"cannot load: {e}", style="red")
        table.add_row(safe_text(name), safe_text(target), desc)
    Console(width=200).print(table)


@app.command()
def query(out: Path = typer.Argument(..., help="Build directory."),
          sql: str = typer.Argument(..., help="SQL on the catalog (tables: SELECT * FROM tables)."),
          format: str = typer.Option("table", "--format", help="table, csv or json. In csv, a text cell starting "
                                     "with = + - @, a tab or a carriage return gets a leading ' (a spreadsheet "
                                     "shows it as text instead of running it as a formula); numbers are kept."),
          raw: bool = typer.Option(False, "--raw", help="csv: write every cell as it is (no leading ')."),
          timeout: float = typer.Option(60.0, "--timeout", help="Seconds before the query is stopped (0: no "
                                        "limit)."),
          memory_limit: str = typer.Option("4GB", "--memory-limit", help="DuckDB's memory limit for the query; "
                                           "beyond it DuckDB spills to a private temporary folder outside the "
                                           "build (removed afterwards)."),
          max_temp: str = typer.Option("20GB", "--max-temp", help="Most disk the query may spill to.")) -> None:
    """Run SQL on a build's catalog.duckdb through a read-only connection.

    Bounded: stopped after --timeout seconds, in --memory-limit of memory and --max-temp of spill space
    (a temporary folder outside the build, removed afterwards). Values are shown as text: markup and control
    characters in a cell are never interpreted by the terminal (ESC shows as \\x1b)."""
    from .catalog import QueryLimits, query_rows

    if format not in ("table", "csv", "json"):
        _fail(TolError(f"--format: expected table, csv or json, got {format!r}"))
    try:
        limits = QueryLimits(timeout=timeout, memory_limit=memory_limit, max_temp=max_temp)
        result = query_rows(out, sql, limits=limits)
    except TolError as e:
        _fail(e)
    except Exception as e:  # DuckDB's own message names the problem
        _fail(TolError(f"{type(e).__name__}: {e}"))
    write_table(result, format, raw=raw)


def _cell(value) -> str:
    """A table cell: BLOBs as their kind and size (`<jpeg 23,114 bytes>`), never escaped bytes."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        kind = "jpeg" if data[:3] == b"\xff\xd8\xff" else "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "blob"
        return f"<{kind} {len(data):,} bytes>"
    return str(value)


def write_table(result, format: str, raw: bool = False) -> None:
    """A result on stdout. csv: formula-like text cells neutralised unless `raw` (csvcells); table: every
    header and cell as text (terminal.safe_text), whatever a record holds."""
    if format == "csv":
        import csv

        from .csvcells import csv_cell

        cell = (lambda v: v) if raw else csv_cell
        w = csv.writer(sys.stdout)
        w.writerow([cell(c) for c in result.column_names])
        for row in result.to_pylist():
            w.writerow(["" if row[c] is None else cell(row[c]) for c in result.column_names])
    elif format == "json":
        sys.stdout.write(json.dumps(result.to_pylist(), default=str, ensure_ascii=False) + "\n")
    else:
        table = Table()
        for c in result.column_names:
            table.add_column(safe_text(c))
        for row in result.to_pylist():
            table.add_row(*[safe_text(_cell(row[c])) for c in result.column_names])
        Console(width=max(120, Console().width)).print(table)


@app.command()
def coverage(out: Path = typer.Argument(..., help="Build directory."),
             rank: str = typer.Option("class", help="Rank to count by."),
             plot: Optional[Path] = typer.Option(None, help="Write a PNG picture of coverage.")) -> None:
    """Taxonomic coverage: images and taxa per rank and source, and a picture of it (needs the taxonomy stage)."""
    from .taxonomy.coverage import check_rank, coverage_table, plot_coverage, rank_summary

    try:
        check_rank(rank)  # before anything is printed
        write_table(rank_summary(out), "table")
        write_table(coverage_table(out, rank, top=30), "table")
        if plot is not None:
            console.print(safe_text(f"wrote {plot_coverage(out, rank, plot)}"))
    except TolError as e:
        _fail(e)


@shards_app.command("plan")
def shards_plan(out: Path = typer.Argument(..., help="Build directory (after the taxonomy stage)."),
                workflow: Optional[Path] = typer.Option(None, help="Plan with this workflow's [shards] and [text] "
                                                        "settings instead of the build's own (workflow.json).")) -> None:
    """Show the sample selection and its counts: images per split and source, what is left out and why.

    Writes the plan to DIR/selection (the shards stage reuses it when nothing changed)."""
    from .config import load_workflow
    from .shards.plan import build_workflow, describe, plan

    try:
        wf = load_workflow(workflow) if workflow else build_workflow(out)
        doc = plan(out, wf)
    except TolError as e:
        _fail(e)
    for line in describe(doc):
        Console(width=200).print(safe_text(line), highlight=False)


@shards_app.command("verify")
def shards_verify(out: Path = typer.Argument(..., help="Build directory."),
                  workers: int = typer.Option(2, help="Processes checking shards in parallel.")) -> None:
    """Re-read every shard: every sample has every key, every image decodes, counts equal sizes.json, the
    plan and the member index. Each problem is printed with its shard and key; exit 1 on any."""
    from .shards.verify import verify

    try:
        totals, problems = verify(out, workers=workers)
    except TolError as e:
        _fail(e)
    for p in problems:
        console.print(safe_text(p), highlight=False)
    counted = ", ".join(f"{split} {n:,}" for split, n in totals.items())
    if problems:
        console.print(Text.assemble((f"{len(problems)} problem(s)", "bold red"),
                                    safe_text(f" in the shards of {out} (samples read: {counted})")))
        raise typer.Exit(1)
    console.print(safe_text(f"shards of {out}: all good ({counted} samples)"))


def _require_train_extra() -> None:
    """torch and open_clip are an optional extra: say how to add them, and stop."""
    from .train import MissingTrainExtra, require_torch

    try:
        require_torch()
    except MissingTrainExtra as e:
        console.print(safe_text(e, style="yellow", newlines=True))
        raise typer.Exit(2)


SET_HELP = ("A \\[train] setting, KEY=VALUE (repeatable), e.g. --set batch_size=64 --set model=tol-tiny; "
            "see tol_builder/config.py TrainConfig for every key.")


@app.command()
def train(target: Path = typer.Argument(..., help="Workflow TOML (its \\[train] section and build directory) or a "
                                        "build directory."),
          set_: list[str] = typer.Option([], "--set", help=SET_HELP),
          quiet: bool = typer.Option(False, help="No progress bar.")) -> None:
    """Train a CLIP model on a build's shards (torch + open_clip: pip install -e '.\\[train]').

    Runs under torchrun as it is for several processes or nodes (gloo on CPU, NCCL on GPU):
    torchrun --nproc_per_node 8 -m tol_builder.cli train WORKFLOW. Re-running resumes from the run's latest
    checkpoint; checkpoints load with plain open_clip (see bench/README_train.md)."""
    _require_train_extra()
    from .train.settings import TrainDoesNotFit, load_settings

    try:
        build_dir, cfg, source = load_settings(target, set_)  # a bad setting fails before torch loads
        from .train.loop import train as run_train

        run_train(build_dir, cfg, console=console, progress=not quiet, source=source)
    except TrainDoesNotFit as e:  # why, then the command with the fix (one line each: runnable as printed)
        console.print(styled(("error:", "bold red"), " ", str(e)), soft_wrap=True)
        console.print(safe_text(f"run instead: {e.command(target, set_)}"), soft_wrap=True)
        raise typer.Exit(1)
    except TolError as e:
        _fail(e)


eval_app = typer.Typer(no_args_is_help=True, help="Zero-shot and few-shot evaluation of a trained model "
                       "(torch + open_clip: pip install -e '.\\[train]').")
app.add_typer(eval_app, name="eval")


def _run_eval(task: str, target: Path, checkpoint: Optional[str], model: Optional[str], split: Optional[str],
              eval_set: Optional[str], set_: list[str], json_out: Optional[Path], plot: Optional[Path]) -> None:
    _require_train_extra()
    from .train import report
    from .train.settings import load_settings

    try:
        build_dir, cfg, _ = load_settings(target, set_)
        from .train.evaluate import find_run, run_few_shot, run_zero_shot

        if not checkpoint and not model:
            checkpoint = str(find_run(build_dir, cfg))  # the settings' run, else the build's only run
        if not split and not eval_set:
            split = "val"
        run = run_zero_shot if task == "zero-shot" else run_few_shot
        result = run(build_dir, cfg, checkpoint=checkpoint or "", model=model or "", split=split,
                     eval_set=eval_set)
        Console(width=max(100, Console().width)).print(
            report.zero_shot_table(result) if task == "zero-shot" else report.few_shot_table(result))
        if json_out is not None:
            console.print(safe_text(f"wrote {report.write_json(result, json_out)}"))
        if plot is not None:
            if task == "zero-shot":
                console.print(safe_text(f"wrote {report.plot_levels(result, plot)}"))
            else:
                from .eval.plot import plot_few_shot

                console.print(safe_text(f"wrote {plot_few_shot(result, plot)['png']}"))
    except TolError as e:
        _fail(e)


CHECKPOINT_HELP = ("A checkpoint folder, a run folder (its latest checkpoint) or, with --model, a weights file; "
                   "default: the run of the \\[train] settings.")
MODEL_HELP = "Architecture for a weights file, or alone a random-init model (e.g. tol-tiny) as a baseline."


@eval_app.command("zero-shot")
def eval_zero_shot(target: Path = typer.Argument(..., help="Workflow TOML or build directory."),
                   checkpoint: Optional[str] = typer.Option(None, help=CHECKPOINT_HELP),
                   model: Optional[str] = typer.Option(None, help=MODEL_HELP),
                   split: Optional[str] = typer.Option(None, help="A shard split (default: val)."),
                   eval_set: Optional[str] = typer.Option(None, help="An evaluation set of the build "
                                                          "(catalog views eval_images + eval_media)."),
                   set_: list[str] = typer.Option([], "--set", help=SET_HELP),
                   json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
                   plot: Optional[Path] = typer.Option(None, help="Draw accuracy per rank as a PNG.")) -> None:
    """Zero-shot top-1 / top-5 at the taxon and at every rank (class strings from the text module in the 80
    OpenAI ImageNet templates; rank predictions sum the probabilities of the taxa below)."""
    _run_eval("zero-shot", target, checkpoint, model, split, eval_set, set_, json_out, plot)


@eval_app.command("few-shot")
def eval_few_shot(target: Path = typer.Argument(..., help="Workflow TOML or build directory."),
                  checkpoint: Optional[str] = typer.Option(None, help=CHECKPOINT_HELP),
                  model: Optional[str] = typer.Option(None, help=MODEL_HELP),
                  split: Optional[str] = typer.Option(None, help="A shard split (default: val)."),
                  eval_set: Optional[str] = typer.Option(None, help="An evaluation set of the build."),
                  set_: list[str] = typer.Option([], "--set", help=SET_HELP),
                  json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
                  plot: Optional[Path] = typer.Option(None, help="Draw accuracy per shot count as a PNG.")) -> None:
    """Few-shot accuracy, nearest centroid of 1 and 5 shots over 5 folds (as BioCLIP)."""
    _run_eval("few-shot", target, checkpoint, model, split, eval_set, set_, json_out, plot)


@eval_app.command("suite")
def eval_suite(models: str = typer.Option(..., help="Comma-separated: a checkpoint or run folder (or open_clip "
                                          "folder), ARCH:WEIGHTS_FILE, random:ARCH; each optionally LABEL=SPEC."),
               tasks: str = typer.Option("all", help="all, or comma-separated task names / manifest paths "
                                         "(manifests/evalsets/README.md)."),
               shots: str = typer.Option("0,1,5", help="0 = zero-shot; k = k-shot nearest centroid."),
               images_root: Optional[Path] = typer.Option(None, help="The folder holding each task's images "
                                                          "folder (its manifest's `images`)."),
               out: Path = typer.Option(Path("eval-suite"), help="Writes table.md, table.csv and results.json here."),
               cache: Optional[Path] = typer.Option(None, help="Feature cache (default: OUT/cache)."),
               text_type: str = typer.Option("", help="Score every task with this text type instead of each "
                                             "task's comparable one."),
               text_types: str = typer.Option("", help="Per model, LABEL=TYPE,... (e.g. bioclip=taxon_com,"
                                              "clip=com): its text type on the tasks that offer it (default: "
                                              "BioCLIP's, taxon_com for folders, com for weights files)."),
               templates: str = typer.Option("openai", help="openai (BioCLIP's 80) or plain."),
               rank: str = typer.Option("", help="Score at a rank (e.g. genus): classes are the taxonomic strings "
                                        "cut there (tasks with rank columns; the others are not scored)."),
               batch_size: int = typer.Option(64, min=1),
               folds: int = typer.Option(5, min=1),
               threads: int = typer.Option(0, min=0, help="torch threads (0 = torch's default)."),
               plot: Optional[Path] = typer.Option(None, help="Also draw the table as a PNG bar chart (a panel per "
                                                   "shot count, a bar per model and task)."),
               quiet: bool = typer.Option(False, help="No progress bar.")) -> None:
    """BioCLIP's evaluation table for any models: zero-shot and few-shot top-1 on each benchmark's own classes,
    read straight from its metadata and images (no build). Features are cached per model and task."""
    _require_train_extra()
    try:
        from .eval.features import parse_models, set_text_types
        from .eval.suite import SuiteSettings, run_suite
        from .eval.tasks import find_tasks
        from .train import report

        try:
            shot_counts = tuple(int(s) for s in shots.split(",") if s.strip())
        except ValueError:
            raise TolError(f"--shots: comma-separated whole numbers such as 0,1,5, got {shots!r}") from None
        if not shot_counts or min(shot_counts) < 0:
            raise TolError(f"--shots: comma-separated whole numbers such as 0,1,5, got {shots!r}")
        if threads:
            import torch

            torch.set_num_threads(threads)
        specs = parse_models(models)
        set_text_types(specs, text_types)
        chosen = find_tasks(tasks)
        settings = SuiteSettings(shots=shot_counts, folds=folds, text_type=text_type, templates=templates,
                                 batch_size=batch_size, rank=rank)
        bar = None if quiet else _SuiteProgress()
        try:
            doc = run_suite(specs, chosen, images_root=images_root, cache_dir=cache or out / "cache",
                            settings=settings, skip_missing=tasks.strip() == "all", progress=bar)
        finally:
            if bar is not None:
                bar.stop()
        Console(width=max(120, Console().width)).print(report.suite_table(doc))
        for name, why in doc["missing_tasks"].items():
            console.print(safe_text(f"  not scored: {name} ({why})"), soft_wrap=True)
        from .fileio import write_text_atomic

        write_text_atomic(out / "table.md", report.suite_markdown(doc))
        write_text_atomic(out / "table.csv", report.suite_csv(doc))
        report.write_json(doc, out / "results.json")
        console.print(safe_text(f"wrote {out / 'table.md'}, {out / 'table.csv'}, {out / 'results.json'} "
                                f"({doc['seconds']:.1f} s)"))
        if plot is not None:
            from .eval.plot import plot_suite

            console.print(safe_text(f"wrote {plot_suite(doc, plot)['png']}"))
    except TolError as e:
        _fail(e)


class _SuiteProgress:
    """A rich progress bar per (model, task) whose images are being encoded."""

    def __init__(self) -> None:
        from rich.progress import Progress

        self.progress = Progress(console=console, transient=True)
        self.task = None

    def start(self, what: str, total: int) -> None:
        if self.task is None:
            self.progress.start()
        else:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(safe_text(f"images {what}"), total=total)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()


@app.command("embed")
def embed_cmd(model: str = typer.Argument(..., help="A checkpoint or run folder (or open_clip folder), "
                                          "ARCH:WEIGHTS_FILE or random:ARCH (as tol eval suite --models)."),
              source: str = typer.Argument(..., help="A benchmark task (name or manifest), an image folder (a "
                                           "sub-folder per class) or a shard split folder (BUILD/shards/val)."),
              out: Path = typer.Option(..., help="The embeddings parquet to write."),
              images_root: Optional[Path] = typer.Option(None, help="For a task: the folder holding its images "
                                                         "folder."),
              plot: Optional[Path] = typer.Option(None, help="Also draw a 2-D t-SNE as a PNG (pip install -e "
                                                  "'.\\[eval]')."),
              color_by: str = typer.Option("label", help="Colour the t-SNE by label or a rank (kingdom ... "
                                           "species)."),
              max_points: int = typer.Option(10_000, min=3, help="t-SNE of at most this many (seeded sample)."),
              seed: int = typer.Option(0),
              batch_size: int = typer.Option(64, min=1),
              quiet: bool = typer.Option(False, help="No progress bar.")) -> None:
    """Image embeddings as parquet (uid, path, label, ranks, embedding as a fixed-size list), and optionally a
    t-SNE of them coloured by a rank, as BioCLIP's intrinsic evaluation."""
    _require_train_extra()
    try:
        from .eval.embed import plot_tsne
        from .eval.embed import embed as run_embed
        from .eval.features import parse_models

        specs = parse_models(model)
        if len(specs) != 1:
            raise TolError(f"tol embed: one model, got {len(specs)}")
        bar = None if quiet else _SuiteProgress()
        try:
            done = run_embed(specs[0], source, out, images_root=images_root, batch_size=batch_size, progress=bar)
        finally:
            if bar is not None:
                bar.stop()
        console.print(safe_text(f"wrote {done['out']}: {done['rows']:,} embeddings of width {done['dim']} "
                                f"({done['kind']}; {done['undecodable']:,} undecodable)"))
        if plot is not None:
            p = plot_tsne(out, plot, color_by=color_by, max_points=max_points, seed=seed)
            console.print(safe_text(f"wrote {p['png']}: t-SNE of {p['points']:,} of {p['of']:,} points, "
                                    f"{p['groups']:,} {color_by} groups"))
    except TolError as e:
        _fail(e)


def _not_yet(command: str, what: str) -> None:
    console.print(styled((f"tol {command}", "yellow"), f": {what} is not part of this version yet."))
    raise typer.Exit(2)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""`tol demo`: a miniature of all three sources in their real formats, built end to end, offline.

`run_demo(out)`:

1. refuses an existing non-empty `out` that is not a previous demo (a `.tol-demo` file marks demo
   directories); a previous demo is replaced, so every run starts fresh;
2. writes iNat21, BIOSCAN-1M and EOL miniatures under `out/data` (demo.sources, from the taxa of
   demo.taxa, pictures drawn by demo.images), deterministic for the workflow's seed;
3. writes the evaluation set `demo_eval` (demo.evalset: fresh pictures of the demo taxa, planted
   duplicates of pool images, a held species) for the dedup stage;
4. serves the EOL pictures from a loopback HTTP server (demo.server) for the rest of the run: started
   before the EOL media manifest is written, since its URLs carry the server's port, stopped at the end
   (also on error);
5. writes the source manifests (`out/data/manifests/*.toml`, real md5s and sizes) and `out/workflow.toml`
   (workflows/demo.toml with `out` and `sources` filled in), then runs `build.build` on it: every stage, from
   ingest to the shards;
6. trains the tiny CLIP model on the shards and prints its zero-shot top-1 on the held-out `demo_eval` set
   against chance (tol_builder.train.demo); without torch it prints the command that adds training.

It owns `out` and nothing else; the build itself is `tol build`'s.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from .. import build as build_mod
from ..config import load_workflow, read_toml
from ..errors import TolError
from ..fileio import write_bytes_atomic, write_text_atomic
from ..resources import project_path
from ..terminal import say_to, styled
from . import sources as gen
from .authorities import write_demo_authorities
from .evalset import write_demo_evalset
from .server import serve_directory
from .taxa import TAXA, expected_records

SENTINEL = ".tol-demo"
DEMO_WORKFLOW = project_path("workflows") / "demo.toml"

__all__ = ["run_demo", "prepare_demo", "DemoInputs", "train_demo", "prepare_out", "generate", "demo_workflow_template", "SENTINEL"]


def prepare_out(out: Path) -> None:
    """Make `out` an empty demo directory: refuse anything that is not a previous demo, replace one that is."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise TolError(f"{out} exists and is not a directory; choose another --out")
        if any(out.iterdir()):
            if not (out / SENTINEL).is_file():
                raise TolError(f"{out} is not empty and is not a previous demo (it has no {SENTINEL} file); "
                               "choose another --out or empty it")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / SENTINEL, "This directory was written by `tol demo`; the next `tol demo` here "
                                      "replaces all of it.\n")


def demo_workflow_template() -> dict:
    """workflows/demo.toml of the project (the checkout's, or the installed package data's)."""
    if not DEMO_WORKFLOW.is_file():  # not the config defaults instead: a different demo, silently
        raise TolError(f"the demo's workflow {DEMO_WORKFLOW} is missing: reinstall tol_builder "
                       "(a wheel carries workflows/ as package data; an editable install reads the checkout's)")
    return read_toml(DEMO_WORKFLOW)


def generate(out: Path, seed: int) -> tuple[dict[str, gen.SourceFiles], list[gen.EOLMedium]]:
    """Write the iNat21 and BIOSCAN-1M miniatures and draw the EOL pictures under `out/data`.

    The EOL media manifest is not written yet (its URLs need the server's port): see `gen.write_eol_manifest`."""
    data = out / "data"
    generated = {"inat21": gen.write_inat21(data, seed), "bioscan1m": gen.write_bioscan1m(data, seed)}
    return generated, gen.render_eol_media(data, seed)


def write_workflow(out: Path, template: dict, manifests: dict[str, Path]) -> Path:
    doc = dict(template)
    doc["out"] = str(out / "build")
    doc["sources"] = []
    for name, path in manifests.items():
        entry: dict[str, Any] = {"name": name, "manifest": path.relative_to(out).as_posix()}
        if name == "inat21":
            entry["options"] = {"splits": ["train", "val"]}
        doc["sources"].append(entry)
    path = out / "workflow.toml"
    header = ("# Written by `tol demo` from workflows/demo.toml. The EOL images are served over HTTP only while\n"
              "# `tol demo` runs: to rebuild everything, run `tol demo` again.\n")
    write_bytes_atomic(path, (header + tomli_w.dumps(doc)).encode("utf-8"))
    return path


@dataclass
class DemoInputs:
    """What `prepare_demo` generated: the workflow template and every source's files (EOL's manifest waits
    for the URL of the server that serves its images)."""

    out: Path
    template: dict
    generated: dict
    eol_media: list
    seconds: float

    @property
    def data(self) -> Path:
        return self.out / "data"

    def eol_root(self) -> Path:
        return gen.eol_content_root(self.data)

    def write_workflow(self, base_url: str) -> Path:
        """The EOL media manifest with the server's URLs, every source manifest, and out/workflow.toml."""
        self.generated["eol"] = gen.write_eol_manifest(self.data, self.eol_media, base_url)
        manifests = {name: gen.write_manifest(self.data / "manifests", files) for name, files in self.generated.items()}
        return write_workflow(self.out, self.template, manifests)


def prepare_demo(out: Path, seed: int | None = None) -> DemoInputs:
    """Steps 1-3 of the module doc: an empty demo directory, the miniatures, authorities and evaluation set."""
    out = Path(out).expanduser().resolve()
    prepare_out(out)
    template = demo_workflow_template()
    seed = int(template.get("seed", 17) if seed is None else seed)
    template["seed"] = seed
    data = out / "data"
    t0 = time.time()
    generated, eol_media = generate(out, seed)
    # miniature taxonomic authorities (ITIS, GBIF, EOL DH, iNaturalist names) in their real formats
    write_demo_authorities(TAXA, data / "authorities")
    template.setdefault("taxonomy", {})["authorities_dir"] = "data/authorities"  # relative to workflow.toml
    # an evaluation set with planted duplicates of pool images and a held species (demo.evalset)
    evalset = write_demo_evalset(data, seed)
    template.setdefault("dedup", {})["evalsets"] = [evalset.manifest.relative_to(out).as_posix()]
    return DemoInputs(out, template, generated, eol_media, time.time() - t0)


def run_demo(out: Path, console=None, scheduler: str | None = None, progress: bool = True,
             seed: int | None = None, train: bool = True) -> build_mod.BuildSummary:
    say = say_to(console)  # paths in a line are text, never markup
    inputs = prepare_demo(out, seed)
    out, data, generated = inputs.out, inputs.data, inputs.generated
    with serve_directory(inputs.eol_root()) as base_url:
        wf_path = inputs.write_workflow(base_url)
        counts = ", ".join(f"{name} {g.images}" for name, g in generated.items())
        say(styled(("tol demo", "bold"), f": generated {sum(g.images for g in generated.values())} images ({counts}) "
            f"in {inputs.seconds:.1f} s under {data}"))
        say(f"EOL images served from {base_url} for the duration of the build")
        wf = load_workflow(wf_path)
        summary = build_mod.build(wf, console=console, scheduler=scheduler, progress=progress)
    _report(say, out, summary, generated)
    if train:
        summary.zero_shot = train_demo(say, summary.out, console, progress)
    return summary


def train_demo(say, build_dir: Path, console=None, progress: bool = True):
    """The demo's last step: the tiny CLIP model trained briefly on the demo shards, then zero-shot top-1 on
    the held-out evaluation set. Without torch (the `train` extra) it says how to add it and stops."""
    from ..train import INSTALL_HINT, train_extra_missing

    missing = train_extra_missing()
    if missing:
        say(f"training skipped: {', '.join(missing)} not installed (the `train` extra). Add it with: {INSTALL_HINT}")
        return None
    from ..train.demo import train_and_evaluate

    say("training the tiny CLIP model on the demo shards (tol_builder.train; a minute or two on 2 cores) ...")
    result = train_and_evaluate(build_dir, console=console, progress=progress)
    say(f"trained {result.steps} steps in {result.train_seconds:.0f} s; zero-shot on {result.n_images} held-out "
        f"images of {result.n_classes} taxa ({result.data})")
    say(result.line())
    return result


def _report(say, out: Path, summary: build_mod.BuildSummary, generated: dict[str, gen.SourceFiles]) -> None:
    from .. import catalog

    say(f"demo data:  {out / 'data'} (manifests in {out / 'data' / 'manifests'})")
    say(f"workflow:   {out / 'workflow.toml'}")
    cat = catalog.catalog_path(summary.out)
    say(f"catalog:    {cat}")
    ingested: dict[str, int] = {}
    rejected: dict[str, int] = {}
    if cat.exists():
        try:
            rows = catalog.query(summary.out, "SELECT source, count(*) AS n FROM records GROUP BY source")
            ingested = {r["source"]: r["n"] for r in rows.to_pylist()}
            rows = catalog.query(summary.out, "SELECT source, count(*) AS n FROM rejects GROUP BY source")
            rejected = {r["source"]: r["n"] for r in rows.to_pylist()}
        except Exception:  # no records or rejects table (ingest not run): report what was generated only
            pass
    expected = expected_records()
    for name, g in generated.items():
        line = f"  {name}: {g.images} images generated"
        if name in ingested:
            line += f", {ingested[name]} records ingested"
            if ingested[name] != expected.get(name):
                line += f" (expected {expected.get(name)})"
        broken = g.rows - g.images
        if broken or rejected.get(name):
            line += (f"; {rejected.get(name, 0)} row(s) rejected ({broken} deliberately broken: "
                     f"tol query {summary.out} \"SELECT * FROM rejects\")")
        say(line)

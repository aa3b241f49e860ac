"""The ``conceptprune`` command line."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.config import ConfigError, config_json_schema, load_config
from pipeline.errors import EXIT_BUG, EXIT_CONFIG, EXIT_ERROR, ConceptpruneError
from pipeline.evaluate.command import evaluate_command
from pipeline.interrupts import Interrupted, exit_code_of
from pipeline.logs import setup_logging

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help: flags shown as flags (not "<bool>"), paragraphs wrapped as sentences
    rich_markup_mode=None,
)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"conceptprune {version('conceptprune')}")
        raise typer.Exit()


@app.callback()
def main(
    _: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="print the version and exit")] = False,
) -> None:
    """Prune web-scale image-text datasets by concept complexity: semantic deduplication
    (SemDeDup), a CLIP-score filter and density-based pruning (DBP), with a per-sample
    ledger and a report of what was removed and why."""

log = logging.getLogger("conceptprune")


@app.command()
def run(
    config: Annotated[str | None, typer.Argument(
        metavar="CONFIG", help="YAML config file (see README), or the URL of one (a run's "
        "report/config.yaml in object storage); may be omitted when --set gives "
        "everything")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="override a setting, e.g. --set dbp.k=200 --set output=out/")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    no_progress: Annotated[bool, typer.Option(
        "--no-progress", help="no progress bars or periodic progress lines (each step's "
        "summary line stays); the same as --set progress=false")] = False,
    engine: Annotated[str | None, typer.Option(
        "--engine", metavar="local|ray|spark", help="where the steps' maps run: local (this "
        "machine, the default), ray (a Ray cluster: engine.address, or a Ray instance "
        "started here) or spark (the session spark-submit made, or engine.master); the same "
        "as --set engine.name=...")
    ] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="take over an output or work folder that holds files no run "
        "wrote there (by default such a folder is refused and nothing is touched): the run "
        "then replaces what it writes there; other files are never touched")] = False,
) -> None:
    """Run semdedup -> clip_filter -> dbp and write subset.npy, ledger/ and report/.

    Re-running the same command resumes an interrupted run from its work folder, and does
    nothing more after a finished one. One run at a time may use an output folder.

    Examples:

    \b
      conceptprune run config.yaml
      conceptprune run config.yaml --set dbp.k=200 --set dbp.keep_fraction=0.3
      conceptprune run --set input.shards='data/{00000..00099}.tar' --set output=out/
      conceptprune run config.yaml --engine ray --set engine.address=HEAD:6379
    """
    from pipeline.runner import run as run_pipeline

    try:
        overrides = list(set_ or [])
        if engine is not None:
            overrides.append(f"engine.name={engine}")
        if overwrite:
            overrides.append("overwrite=true")
        cfg = load_config(config, overrides)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    if no_progress:
        cfg.progress = False
    setup_logging(verbose)
    try:
        summary = run_pipeline(cfg)
    except (ConceptpruneError, OSError):  # run() logged it
        raise typer.Exit(EXIT_ERROR) from None
    except Exception:  # a bug: run() logged its traceback
        raise typer.Exit(EXIT_BUG) from None
    except (Interrupted, KeyboardInterrupt) as stop:  # run() said where, and how to resume
        raise typer.Exit(exit_code_of(stop)) from None
    typer.echo(f"kept {summary.kept} of {summary.input_samples} samples "
               f"({summary.kept / max(1, summary.input_samples):.1%})")
    if summary.remote:
        typer.echo(f"uploaded to {summary.remote} (local copy: {summary.output})")
        typer.echo(f"subset: {summary.remote}/subset.npy")
        typer.echo(f"report: {summary.remote}/report/report.json")
    else:
        typer.echo(f"subset: {summary.output / 'subset.npy'}")
        typer.echo(f"report: {summary.report_path}")
    typer.echo(f"page:   {summary.page_path.resolve()} (open it in a browser)")


@app.command()
def describe(
    config: Annotated[Path, typer.Argument(metavar="CONFIG",
                                           help="YAML config of the run, as for `run`")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="override a setting, as for `run`")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Print what `run` would do with CONFIG, without doing any of it.

    Every step in order with its state in the work folder: done (reused as it is),
    partly done (the units an interrupted run finished are reused), or to run; the units
    finished; and what each task asks of a worker (a CPU, or a GPU for embed and for the
    clustering kernels on a GPU). Only the inputs' sizes and times are read.
    """
    from pipeline.describe import describe as plan_of

    try:
        cfg = load_config(config, list(set_ or []))
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    _show(lambda: plan_of(cfg), as_json)


def _show(make: Callable[[], Any], as_json: bool) -> None:
    """Print what ``make`` returns, as JSON or as its lines; a user's error as one line."""
    try:
        found = make()
    except (ConceptpruneError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    typer.echo(found.to_json() if as_json else "\n".join(found.lines()))


def _refuse_a_folder_in_use(out: Path) -> None:
    """Generators write only into a new or empty folder: never over a user's files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        typer.echo(f"error: {out} already exists and is not an empty folder; generated data "
                   "goes into a new or empty folder: choose another path", err=True)
        raise typer.Exit(EXIT_ERROR)


@app.command()
def status(
    output: Annotated[Path, typer.Argument(metavar="OUTPUT", help="the output folder of a run")],
    as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
) -> None:
    """Where the latest run into OUTPUT stands: running (and on which host), finished,
    stopped or failed; each step's state and units finished; the last error or stop.

    Read from the folders alone (the settings the run wrote into OUTPUT/logs/config.json,
    its lock, the work folder's markers and logs/run.log), from any machine that sees them.
    """
    from pipeline.status import status as status_of

    _show(lambda: status_of(output), as_json)


@app.command("synth-embeddings")
def synth_embeddings_cmd(
    out: Annotated[Path, typer.Argument(metavar="OUT",
                                        help="folder to create (clip-retrieval layout)")],
    samples: Annotated[int, typer.Option(min=1, metavar="N", help="number of samples")] = 10000,
    dim: Annotated[int, typer.Option(min=2, metavar="N", help="embedding dimension")] = 512,
    concepts: Annotated[int, typer.Option(
        min=1, metavar="N", help="number of planted concepts")] = 100,
    files: Annotated[int, typer.Option(
        min=1, metavar="N", help="number of img_emb_{i}.npy files")] = 1,
    seed: Annotated[int, typer.Option(min=0, metavar="N", help="random seed")] = 0,
) -> None:
    """Generate clustered embeddings with planted duplicates and a ground-truth file."""
    from pipeline.synth.embeddings import SynthSpec, synth_embeddings

    _refuse_a_folder_in_use(out)
    synth_embeddings(out, SynthSpec(samples=samples, dim=dim, concepts=concepts, files=files,
                                    seed=seed))
    typer.echo(f"wrote {samples} samples to {out}")


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(
        metavar="OUT", help="folder to create: webdataset shards NNNNN.tar")],
    samples: Annotated[int, typer.Option(min=1, metavar="N", help="number of samples")] = 3000,
    seed: Annotated[int, typer.Option(min=0, metavar="N", help="random seed")] = 0,
    samples_per_shard: Annotated[int, typer.Option(
        min=1, metavar="N", help="samples per shard")] = 1000,
    concepts: Annotated[int, typer.Option(
        min=1, metavar="N", help="number of visual concepts")] = 10,
) -> None:
    """Generate a LAION-style dataset: procedural images, captions, json with uid, planted
    exact and near duplicates, img2dataset sidecars and ground_truth.parquet."""
    from pipeline.synth.images import synth_images

    _refuse_a_folder_in_use(out)
    synth_images(out, samples, seed=seed, samples_per_shard=samples_per_shard,
                 concepts=concepts)
    typer.echo(f"wrote {samples} samples to {out} (ground truth: {out / 'ground_truth.parquet'})")


@app.command()
def plan(
    run_dir: Annotated[Path, typer.Argument(
        help="output folder of a finished run (holds report/report.json)")],
    eps: Annotated[str | None, typer.Option(
        "--eps", metavar="EPS,...", help="comma list of semdedup.eps values, e.g. "
        "0.02,0.05,0.1: semdedup's removals at each, in total and per semdedup cluster "
        "(alone, plans semdedup only)")
    ] = None,
    keep_fraction: Annotated[str | None, typer.Option(
        "--keep-fraction",
        help="comma list of dbp.keep_fraction values, e.g. 0.2,0.3,0.5 "
        "(default: the run's own)")] = None,
    keep_count: Annotated[str | None, typer.Option(
        "--keep-count",
        help="comma list of absolute targets dbp.keep_count, planned besides any "
        "--keep-fraction")] = None,
    temperature: Annotated[str | None, typer.Option(
        "--temperature",
        help="comma list of softmax temperatures dbp.temperature, e.g. 0.05,0.1,0.5 "
        "(default: the run's own)")] = None,
    balance: Annotated[str | None, typer.Option(
        "--balance",
        help="comma list of dbp.balance values, e.g. 0,0.5 (default: the run's own)")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="where to write: OUT.parquet and OUT.csv (per concept), "
        "OUT_totals.csv (per combination), OUT.svg (the plot); for --eps OUT_eps.parquet, "
        "OUT_eps.csv (per cluster), OUT_eps_totals.csv, OUT_eps.svg; default "
        "RUN_DIR/report/plan")
    ] = None,
    concepts: Annotated[bool | None, typer.Option(
        "--concepts/--no-concepts", help="print every concept's budget, and with --eps "
        "every semdedup cluster's removals (default: when there are at most 30)")] = None,
) -> None:
    """What-if dbp budgets and semdedup removals of a finished run: other
    keep fractions, temperatures, balances and eps, in seconds.

    The concepts (sizes, complexities) do not depend on these settings,
    so each combination's budget per concept is computed from the run's
    concept table (WORK/dbp/clusters.parquet) with the run's own code:
    exactly what a full run with those settings would keep per concept.
    No embedding and no shard is read. Prints per combination how many
    concepts keep samples, the effective number of concepts and how far
    the allocation is from random pruning; writes the plan and a plot.

    With --eps: semdedup's removals at each eps, exactly those of a full
    run with it (each member's highest similarity to an earlier member,
    recorded by the run, does not depend on eps). semdedup's alone: with
    another eps, clip_filter and dbp would see other samples.
    """
    from pipeline.plan import make_plan
    from pipeline.plan_eps import make_eps_plan

    try:
        if eps is not None:  # alone, semdedup's plan only; with dbp lists too, both
            make_eps_plan(run_dir, eps, out, concepts)
        if eps is None or (keep_fraction, keep_count, temperature, balance) != (None,) * 4:
            make_plan(run_dir, keep_fraction, keep_count, temperature, balance, out, concepts)
    except (ConceptpruneError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_ERROR) from None


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(
        metavar="RUN_DIR", help="output folder of a finished run (holds report/report.json)")],
) -> None:
    """Render report/index.html of a finished run again from its report.json.

    Also for a run made by an older version: what its report.json lacks
    (plots of histograms, thumbnails) is left out of the page.
    """
    from pipeline.report.publish import rerender

    try:
        page = rerender(run_dir)
    except (ConceptpruneError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    typer.echo(f"report: {page.resolve()}")


@app.command("synth-eval")
def synth_eval(
    out: Annotated[Path, typer.Argument(
        metavar="OUT", help="folder to create: one folder of JPEGs per class")],
    per_class: Annotated[int, typer.Option(
        "--per-class", min=1, metavar="N", help="pictures per class")] = 50,
    seed: Annotated[int, typer.Option(
        min=0, metavar="N", help="the seed the training data was made with")] = 0,
    concepts: Annotated[int, typer.Option(
        min=1, metavar="N", help="the training data's number of concepts")] = 10,
    style: Annotated[str, typer.Option(
        metavar="shapes|scenes", help="the training data's style (make demo's: scenes)")
    ] = "shapes",
) -> None:
    """Generate a labelled set for `conceptprune evaluate`: new pictures of the concepts that
    `synth` (or make demo) draws with the same seed and concepts, one class folder each.

    For make demo's data: conceptprune synth-eval evalset/ --seed 0 --concepts 12 --style
    scenes"""
    from pipeline.synth.eval_set import synth_eval_set

    _refuse_a_folder_in_use(out)
    try:
        synth_eval_set(out, per_class, seed=seed, concepts=concepts, style=style)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    typer.echo(f"wrote {per_class * concepts} labelled pictures of {concepts} classes to {out}")


app.command("evaluate")(evaluate_command)


@app.command("config-schema")
def config_schema() -> None:
    """Print the JSON schema of the run configuration."""
    typer.echo(config_json_schema(), nl=False)


@app.command("report-schema")
def report_schema() -> None:
    """Print the JSON schema of a run's report/report.json."""
    from pipeline.report.model import report_json_schema

    typer.echo(report_json_schema(), nl=False)


@app.command("evaluate-schema")
def evaluate_schema() -> None:
    """Print the JSON schema of RUN_DIR/evaluate/evaluate.json."""
    from pipeline.evaluate.model import evaluate_json_schema

    typer.echo(evaluate_json_schema(), nl=False)


if __name__ == "__main__":
    app()

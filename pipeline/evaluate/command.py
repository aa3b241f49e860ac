"""The ``conceptprune evaluate`` command line (registered by ``pipeline.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from pipeline.errors import EXIT_BUG, EXIT_CONFIG, EXIT_ERROR, ConceptpruneError
from pipeline.interrupts import Interrupted, exit_code_of


def _listed(values: list[str] | None) -> list[str]:
    """Repeated options, each of which may also hold a comma-separated list."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(
        metavar="RUN_DIR", help="output folder of a finished `conceptprune run` on shards")],
    eval_path: Annotated[str, typer.Option(
        "--eval", metavar="PATH", help="labelled set: a folder with one folder of images per "
        "class (named by the class), or webdataset shards with .cls members (class names "
        "from --classnames or classnames.txt beside them)")],
    samples_seen: Annotated[int, typer.Option(
        "--samples-seen", min=1, metavar="N", help="training samples every arm sees "
        "(DataComp's fixed compute: the same for every arm, whatever its size)")],
    model: Annotated[str, typer.Option(
        "--model", metavar="NAME", help="open_clip architecture, trained from scratch "
        "(e.g. ViT-B-32; conceptprune-tiny-vit for a quick check on a CPU)")],
    arm: Annotated[list[str] | None, typer.Option(
        "--arm", metavar="ARM", help="an arm besides the run's own (pruned), repeatable: "
        "random (a seeded random subset of the same size), full (every usable input "
        "sample), after-<step> (the samples left after that step), <first step>-only")
    ] = None,
    seeds: Annotated[int, typer.Option(
        "--seeds", min=1, metavar="N", help="training seeds per arm (0..N-1); the spread "
        "over them says whether a difference means anything")] = 3,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N")] = 256,
    lr: Annotated[float, typer.Option("--lr", min=0, metavar="X")] = 5e-4,
    warmup: Annotated[int | None, typer.Option(
        "--warmup", min=0, metavar="STEPS", help="default: a tenth of the steps")] = None,
    epochs: Annotated[int, typer.Option(
        "--epochs", min=1, metavar="N", help="checkpoints the samples seen are split into")
    ] = 1,
    workers: Annotated[int, typer.Option(
        "--workers", min=0, metavar="N", help="the trainer's data loader processes")] = 4,
    precision: Annotated[str, typer.Option(
        "--precision", metavar="P", help="open_clip's --precision (auto: amp on a GPU, fp32 "
        "on the CPU)")] = "auto",
    classnames: Annotated[str | None, typer.Option(
        "--classnames", metavar="FILE", help="class names, one a line, class 0 first")
    ] = None,
    probe_train: Annotated[str | None, typer.Option(
        "--probe-train", metavar="PATH", help="also fit a linear probe on the frozen image "
        "features of this labelled set (same classes) and score it on --eval")] = None,
    template: Annotated[list[str] | None, typer.Option(
        "--template", metavar="TEXT", help="zero-shot prompt with {} for the class name, "
        "repeatable (default: 'a photo of a {}.')")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, metavar="N", help="torch threads for training and scoring (the "
        "same figures on a CPU rerun need the same)")] = None,
    trainer_python: Annotated[str | None, typer.Option(
        "--trainer-python", metavar="EXE", help="interpreter of an environment with "
        "open_clip_torch[training] and webdataset <= 0.2.86 (default: this one)")] = None,
    trainer_path: Annotated[str | None, typer.Option(
        "--trainer-path", metavar="DIR", help="put first on the trainer's path: a folder made "
        "by `pip install --target DIR webdataset==0.2.86` (default: make install's "
        ".venv/clients/webdataset-0.2.86 when there)")] = None,
    launcher: Annotated[str | None, typer.Option(
        "--launcher", metavar="CMD", help="starts the trainer's module instead of python, "
        "e.g. 'torchrun --nproc_per_node 8' for every GPU of a node")] = None,
    trainer_arg: Annotated[list[str] | None, typer.Option(
        "--trainer-arg", metavar="ARG", help="passed on to open_clip_train.main, repeatable "
        "(e.g. --trainer-arg=--grad-checkpointing)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """Train the same open_clip model on the run's pruned shards and on other arms of the same
    input, for the same samples seen, and score each by zero-shot classification: does the
    subset train better than a random one of its size?

    Each arm is trained once per seed with open_clip's own trainer (open_clip_train.main,
    in its own process) and the checkpoint is scored on the labelled set. Results go to
    RUN_DIR/evaluate/evaluate.json and a section of the report page. Rerunning the command
    trains only what is missing or changed.

    Examples:

    \b
      conceptprune evaluate out/ --eval evalset/ --samples-seen 20000 \\
          --model conceptprune-tiny-vit --arm random --arm full --seeds 3
      conceptprune evaluate out/ --eval imagenet-val/ --samples-seen 12800000 \\
          --model ViT-B-32 --arm random --launcher 'torchrun --nproc_per_node 8'
    """
    from pipeline.evaluate.harness import evaluate
    from pipeline.evaluate.settings import EvaluateSettings
    from pipeline.logs import setup_logging

    raw = {"arms": _listed(arm) or ["random"], "samples_seen": samples_seen, "model": model,
           "eval": eval_path, "classnames": classnames, "probe_train": probe_train, "seeds": seeds,
           "batch_size": batch_size, "lr": lr, "warmup": warmup, "epochs": epochs,
           "workers": workers, "precision": precision, "threads": threads,
           "trainer_python": trainer_python, "trainer_path": trainer_path,
           "launcher": launcher, "trainer_args": list(trainer_arg or [])}
    if template:
        raw["templates"] = list(template)
    try:
        settings = EvaluateSettings.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        typer.echo(f"error: {where}: {first['msg']}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    setup_logging(verbose)
    try:
        result = evaluate(run_dir, settings)
    except (ConceptpruneError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    except (Interrupted, KeyboardInterrupt) as stop:
        typer.echo("evaluate stopped: run the same command to go on", err=True)
        raise typer.Exit(exit_code_of(stop)) from None
    except Exception:
        import logging

        logging.getLogger("conceptprune").exception("internal error")
        raise typer.Exit(EXIT_BUG) from None
    for summary in result["arms"]:
        spread = "" if summary["spread"] is None else f" ± {summary['spread']:.4f}"
        versus = "" if summary["difference_to_random"] is None else (
            f", {summary['difference_to_random']:+.4f} vs random"
            + ("" if summary["exceeds_spread"] is None else
               " (beyond the spread)" if summary["exceeds_spread"] else " (within the spread)"))
        probe = "" if summary["probe_mean"] is None else \
            f"; linear probe {summary['probe_mean']:.4f}"
        typer.echo(f"{summary['name']:>16}: {summary['subset_size']} samples, zero-shot top-1 "
                   f"{summary['mean']:.4f}{spread}{versus}{probe}")
    typer.echo(f"results: {run_dir / 'evaluate' / 'evaluate.json'}")
    typer.echo(f"page:    {(run_dir / 'report' / 'index.html').resolve()}")

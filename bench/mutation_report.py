"""Mutation score per source file, from what ``mutmut run`` left under ``mutants/``.

mutmut 3 keeps one JSON file per mutated source file, ``mutants/<path>.py.meta``, whose
``exit_code_by_key`` maps each mutant's name to the exit code of the test run against it
(``null`` while not yet run). This reads those files and prints, per source file, killed /
total mutants and the percentage, with the survivors and the mutants no selected test
reaches, then a line per package (``pipeline/stages``, ``pipeline/runner.py``, ...) and one
for everything.

A file none of whose mutants has been run yet (a run limited to other modules) is left out
of the table and only counted below it.

    python bench/mutation_report.py [--mutants mutants] [--survivors]
        [--sample N] [--under pipeline/stages/ ...] [--names]

A full run is thousands of mutants and hours on two cores; ``--sample N`` keeps the fixed
one-in-N sample of mutants whose name's CRC-32 is 0 mod N (the same names in every checkout
of the same code), and ``--names`` prints that sample's names for ``mutmut run NAME...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# What an exit code means, as mutmut 3.8's mutmut.stats.status_by_exit_code has it; the
# installed mutmut's own table is used when it can be imported.
_FALLBACK_STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    2: "check was interrupted by user",
    None: "not checked",
    33: "no tests",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    37: "caught by type check",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
    -11: "segfault",
    -9: "segfault",
}


def _status_table() -> dict:
    try:
        from mutmut.stats import status_by_exit_code
    except Exception:  # mutmut not installed, or it cannot load its config here
        return _FALLBACK_STATUS
    return status_by_exit_code


def status_of(code: int | None, table: dict) -> str:
    try:
        return table[code]
    except KeyError:
        return "suspicious"


@dataclass
class FileScore:
    path: str
    counts: Counter = field(default_factory=Counter)
    survivors: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def killed(self) -> int:
        return self.counts["killed"]

    @property
    def checked(self) -> int:
        return self.total - self.counts["not checked"]

    def add(self, other: FileScore) -> None:
        self.counts.update(other.counts)
        self.survivors += other.survivors


def in_sample(name: str, every: int) -> bool:
    return every <= 1 or zlib.crc32(name.encode()) % every == 0


def read_scores(mutants: Path, every: int = 1, under: tuple[str, ...] = ()
                ) -> list[FileScore]:
    table = _status_table()
    scores = []
    for meta in sorted(mutants.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        source = meta.relative_to(mutants).as_posix().removesuffix(".meta")
        if under and not source.startswith(under):
            continue
        score = FileScore(source)
        for name, code in data.get("exit_code_by_key", {}).items():
            if not in_sample(name, every):
                continue
            status = status_of(code, table)
            score.names.append(name)
            score.counts[status] += 1
            if status == "survived":
                score.survivors.append(name)
        if score.total:
            scores.append(score)
    return scores


def group_of(path: str) -> str:
    """pipeline/stages/ingest.py -> pipeline/stages; pipeline/runner.py stays itself."""
    parent = path.rpartition("/")[0]
    return path if parent == "pipeline" else parent


def _row(name: str, s: FileScore) -> str:
    pct = f"{100.0 * s.killed / s.total:5.1f}%" if s.total else "    -"
    other = s.total - sum(s.counts[k] for k in ("killed", "survived", "no tests", "timeout",
                                                 "not checked"))
    return (f"{name:<36} {s.killed:>6} / {s.total:<6} {pct:>7} {s.counts['survived']:>8} "
            f"{s.counts['no tests']:>8} {s.counts['timeout']:>7} {other:>5} "
            f"{s.counts['not checked']:>7}")


def report(scores: list[FileScore], out=sys.stdout) -> None:
    run = [s for s in scores if s.checked]
    header = (f"{'source file':<36} {'killed / total':>15} {'score':>7} {'survived':>8} "
              f"{'no tests':>8} {'timeout':>7} {'other':>5} {'unrun':>7}")
    print(header, file=out)
    print("-" * len(header), file=out)
    groups: dict[str, FileScore] = {}
    overall = FileScore("all")
    for s in run:
        print(_row(s.path, s), file=out)
        groups.setdefault(group_of(s.path), FileScore(group_of(s.path))).add(s)
        overall.add(s)
    print("-" * len(header), file=out)
    for name, g in groups.items():
        print(_row(name + ("" if name.endswith(".py") else "/"), g), file=out)
    print(_row("all", overall), file=out)
    skipped = [s for s in scores if not s.checked]
    if skipped:
        n = sum(s.total for s in skipped)
        print(f"\nnot run yet: {len(skipped)} files, {n} mutants "
              f"({', '.join(s.path for s in skipped)})", file=out)
    print("\nscore = killed / total mutants of the file; 'other' = suspicious, segfault, "
          "skipped, interrupted; 'unrun' = not checked yet.", file=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=Path, default=Path("mutants"),
                    help="the folder mutmut ran in (default: mutants)")
    ap.add_argument("--survivors", action="store_true",
                    help="also list the surviving mutants' names, file by file")
    ap.add_argument("--sample", type=int, default=1, metavar="N",
                    help="only the fixed one-in-N sample of mutants")
    ap.add_argument("--under", nargs="*", default=[], metavar="PREFIX",
                    help="only source files under these paths (pipeline/stages/ ...)")
    ap.add_argument("--names", action="store_true",
                    help="print the selected mutants' names, one a line, and nothing else")
    args = ap.parse_args(argv)
    if not args.mutants.is_dir():
        print(f"{args.mutants}/ not found: run `make mutation` (mutmut run) first",
              file=sys.stderr)
        return 1
    scores = read_scores(args.mutants, args.sample, tuple(args.under))
    if args.names:
        for s in scores:
            for name in s.names:
                print(name)
        return 0
    if not scores:
        print(f"no mutmut results (*.py.meta) under {args.mutants}/", file=sys.stderr)
        return 1
    report(scores)
    if args.survivors:
        for s in scores:
            if s.survivors:
                print(f"\n{s.path}: {len(s.survivors)} survived")
                for name in s.survivors:
                    print(f"    {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Put back, one at a time, the wiring bugs a review once found surviving the suite, and
say which tests now catch each.

    .venv/bin/python bench/known_bugs.py [--only NAME ...] [--tests tests/x.py ...]

Each bug is a one-line edit of the library, made in a scratch copy of the project (this
checkout is never touched); the test suite then runs on that copy. A bug that no test
catches is listed as SURVIVED and the script exits 1.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    name: str
    path: str
    old: str
    new: str


BUGS = [
    Bug("dbp: fixed tau instead of dbp.temperature", "pipeline/stages/dbp.py",
        "d_intra * d_inter, cfg.temperature)", "d_intra * d_inter, 0.1)"),
    Bug("dbp: dbp.l ignored", "pipeline/stages/dbp.py",
        "size > 0, cfg.l)", "size > 0, 20)"),
    Bug("dbp: complexity as a sum", "pipeline/stages/dbp.py",
        "concept_probability(d_intra * d_inter", "concept_probability(d_intra + d_inter"),
    Bug("dbp: dbp.keep ignored", "pipeline/stages/dbp.py",
        "budget[b.first : b.stop], cfg.keep,", "budget[b.first : b.stop], 'hard',"),
    Bug("dbp: dbp.balance ignored", "pipeline/stages/dbp.py",
        "cfg.k, cfg.balance)", "cfg.k, 0.0)"),
    Bug("dbp: dbp.keep_count ignored", "pipeline/stages/dbp.py",
        "if cfg.keep_count is not None:", "if False:"),
    Bug("dbp: no uid tie-break in selection", "pipeline/algorithms/selection.py",
        "order = grouped_order(cluster, key, uid_hi, uid_lo)",
        "order = np.lexsort((key, cluster))"),
    Bug("semdedup: fixed eps", "pipeline/stages/semdedup.py",
        "store.gather(rows[a:b]), task.eps,", "store.gather(rows[a:b]), 0.07,"),
    Bug("semdedup: closest first", "pipeline/stages/shuffle.py",
        'grouped_order(rec["cluster"], -rec["distance"],',
        'grouped_order(rec["cluster"], rec["distance"],'),
    Bug("semdedup: no uid tie-break", "pipeline/stages/shuffle.py",
        'rec["uid_hi"], rec["uid_lo"])', '0 * rec["uid_hi"], 0 * rec["uid_lo"])'),
    Bug("semdedup: dup_of names the sample itself", "pipeline/stages/semdedup.py",
        "at = a + np.maximum(arg, 0)", "at = a + np.arange(b - a)"),
    Bug("clip_filter: fixed keep fraction", "pipeline/stages/clip_filter.py",
        "_cut(ctx, keys, cfg.keep_fraction)", "_cut(ctx, keys, cfg.keep_fraction and 0.9)"),
    Bug("runner: fingerprints ignore the seed", "pipeline/stages/step.py",
        "seeds = ([cfg.seed, ", "seeds = (["),
    Bug("runner: fingerprints not chained", "pipeline/runner.py",
        "step.fingerprint(cfg, fp)", "step.fingerprint(cfg, fps['read'])"),
    Bug("runner: input edited in place unnoticed", "pipeline/run_inputs.py",
        "return [str(path.resolve()), st.st_size, st.st_mtime_ns]",
        "return [str(path.resolve())]"),
    Bug("ledger: check_invariant never raises", "pipeline/stages/ledger.py",
        "    if bad:\n        raise LedgerInvariantError",
        "    if False:\n        raise LedgerInvariantError"),
]


def scratch_copy(root: Path) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="known-bug-", dir=root.parent))
    for name in ("pipeline", "schemas", "tests", "pyproject.toml"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def run_suite(copy: Path, tests: list[str]) -> tuple[list[str], float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-rf", *tests],
        cwd=copy, capture_output=True, text=True)
    failed = sorted(set(re.findall(r"^FAILED (\S+)", proc.stdout, re.M)))
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    return failed, time.perf_counter() - start, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="substrings of the bug names to try")
    parser.add_argument("--tests", nargs="*", default=[], help="test files (default: all)")
    args = parser.parse_args()
    bugs = [b for b in BUGS if not args.only or any(o in b.name for o in args.only)]
    survived = []
    with tempfile.TemporaryDirectory(prefix="known-bugs-") as tmp:
        for bug in bugs:
            copy = scratch_copy(Path(tmp) / "x")
            target = copy / bug.path
            text = target.read_text()
            if text.count(bug.old) != 1:
                print(f"?? {bug.name}: the line to break is not in {bug.path} exactly once")
                survived.append(bug.name)
                continue
            target.write_text(text.replace(bug.old, bug.new))
            failed, seconds, tail = run_suite(copy, args.tests)
            verdict = "caught  " if failed else "SURVIVED"
            print(f"{verdict} {bug.name}  ({len(failed)} tests fail, {seconds:.0f} s; {tail})")
            for test in failed:
                print(f"           {test}")
            sys.stdout.flush()
            if not failed:
                survived.append(bug.name)
            shutil.rmtree(copy)
    print(f"\n{len(bugs) - len(survived)} of {len(bugs)} caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())

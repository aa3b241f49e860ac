"""Comparisons of big test outputs whose failures say little, and say it fast.

``assert a == b`` on megabytes (a subset's bytes, a dict of ledger files) makes pytest build
a character diff of both reprs when it fails, which can take longer than the run being
tested. These helpers check the same condition (bytes equal, or parsed JSON equal) and, only
when it fails, look for the first few differences and raise an ``AssertionError`` of at most
``LIMIT`` characters that names them: subset positions, ledger rows and columns, report.json
paths, or a file's first differing byte offset.

This is a plain module (not a test module), so pytest does not rewrite it; every helper
raises its own ``AssertionError`` and returns None. Call them as statements, not in
``assert``. In each helper ``got`` is the output under test and ``want`` the reference.
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
import reprlib
import tarfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "LIMIT",
    "RUN_PARTS",
    "assert_same_arrays",
    "assert_same_bytes",
    "assert_same_contents",
    "assert_same_file",
    "assert_same_files",
    "assert_same_json",
    "assert_same_rows",
    "assert_same_run",
]

LIMIT = 3000  # characters of one failure message at most, whatever the inputs
SHOW = 5  # differences shown for one comparison (the rest are counted)
FILES_SHOWN = 2  # differing files explained in one folder (the rest are named)
VALUE = 80  # characters of one value's repr
LINE = 400  # characters of one line
RUN_PARTS = ("subset.npy", "ledger", "report", "shards")  # what assert_same_run can compare
IDENTIFYING = ("key", "uid")  # columns named beside a differing ledger row

_MISSING = object()
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = VALUE
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxlevel = 3


# ---- the public helpers ------------------------------------------------------------------

def assert_same_bytes(got: bytes, want: bytes, what: str) -> None:
    """got == want, else: both lengths, the first differing offset and bytes around it."""
    if got != want:
        _fail(what, [_explain(_bytes_problem, got, want)])


def assert_same_arrays(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Same dtype, same shape and the same bytes, else: the first differing positions with
    both values (a structured subset row shows as a tuple)."""
    got, want = np.asarray(got), np.asarray(want)
    if not (got.dtype == want.dtype and got.shape == want.shape
            and got.tobytes() == want.tobytes()):
        _fail(what, [_explain(_array_problem, got, want)])


def assert_same_rows(got: Sequence[Mapping[str, Any]], want: Sequence[Mapping[str, Any]],
                     what: str) -> None:
    """got == want for two lists of row dicts (``Table.to_pylist()``), else: the first
    differing rows by number, their key/uid, the differing columns with both values and a
    count of differing rows per column."""
    if list(got) != list(want):
        _fail(what, [_explain(_rows_problem, got, want)])


def assert_same_json(got: Any, want: Any, what: str, ignore: Collection[str] = ()) -> None:
    """got == want for parsed JSON, less the top-level keys in ignore, else: the first
    differing paths (``$.stages[2].out``) with both values."""
    got, want = _without(got, ignore), _without(want, ignore)
    if got != want:
        _fail(what, [_explain(_json_problem, got, want)])


def assert_same_file(got: Path, want: Path, what: str | None = None) -> None:
    """Two files hold the same bytes, else: what differs, read as the file's kind (.npy:
    array positions, .parquet: rows, .json: paths, .tar: the member at the first differing
    offset, anything else: the offset)."""
    got, want = Path(got), Path(want)
    a, b = got.read_bytes(), want.read_bytes()
    if a != b:
        _fail(what or got.name, [f"{got} (got) vs {want} (want)",
                                 _explain(_file_problem, got.name, a, b)])


def assert_same_contents(got: Mapping[str, Any], want: Mapping[str, Any], what: str) -> None:
    """got == want for two dicts of name -> value, else: the names found on one side only,
    then the first differing entries: bytes read as the kind the name says (as in
    assert_same_file), lists of row dicts as rows (as in assert_same_rows), arrays as in
    assert_same_arrays, anything else as parsed JSON."""
    if dict(got) != dict(want):
        _fail(what, [_explain(_contents_problem, got, want)])


def assert_same_files(got_dir: Path, want_dir: Path, what: str | None = None, *,
                      json_ignore: Mapping[str, Collection[str]] | None = None) -> None:
    """Two folders hold files of the same names (relative paths) and the same bytes.

    json_ignore maps a file-name pattern (fnmatch, e.g. ``"*_stats.json"``) to top-level
    JSON keys left out of the comparison of the files it matches: those files are compared
    as parsed JSON less the keys, not as bytes.
    """
    problem = _folder_problem(Path(got_dir), Path(want_dir), json_ignore or {})
    if problem:
        _fail(what or Path(got_dir).name, [problem])


def assert_same_run(got: Path, want: Path, *, parts: Collection[str] = RUN_PARTS,
                    report_ignore: Collection[str] = (),
                    json_ignore: Mapping[str, Collection[str]] | None = None,
                    what: str = "run outputs") -> None:
    """Two run output folders hold the same outputs; every part in parts is compared and
    each differing part gets a share of the message.

    parts, a selection of RUN_PARTS:
    - ``subset.npy``: the same bytes (explained as array positions with both values);
    - ``ledger``: ``ledger/`` holds files of the same names and bytes (parquet explained as
      rows: row number, key/uid, differing columns with both values, counts per column);
    - ``report``: ``report/report.json`` parsed equal, less the top-level keys in
      report_ignore (e.g. ``engine``, ``timings_s``, ``parameters``, ``command``);
    - ``shards``: ``shards/`` as ``ledger``.
    json_ignore applies to the files of ``ledger/`` and ``shards/`` as in assert_same_files.
    """
    unknown = set(parts) - set(RUN_PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; known: {RUN_PARTS}")
    got, want = Path(got), Path(want)
    problems: list[str] = []
    for part in RUN_PARTS:
        if part not in parts:
            continue
        if part == "subset.npy":
            problem = _path_problem(got / part, want / part)
        elif part == "report":
            problem = _report_problem(got / "report" / "report.json",
                                      want / "report" / "report.json", report_ignore)
        else:
            problem = _folder_problem(got / part, want / part, json_ignore or {}, part)
        if problem:
            problems.append(problem)
    if problems:
        _fail(f"{what}: {got} (got) vs {want} (want)", problems)


# ---- messages --------------------------------------------------------------------------

def _fail(what: str, problems: list[str]) -> None:
    raise AssertionError(_bounded(what, problems))


def _explain(problem: Callable[..., str], *args: Any) -> str:
    """problem(*args); should the explanation itself break, the inputs still differ."""
    try:
        return problem(*args)
    except Exception as e:  # the failure being reported matters more than its details
        return f"they differ (the helper could not say where: {type(e).__name__}: {e})"


def _bounded(head: str, sections: list[str], limit: int = LIMIT) -> str:
    """head, then the sections, cut so that the whole fits in limit: a short section is kept
    whole and the long ones share what is left equally."""
    head = _cut(head, LINE)
    left = limit - len(head) - len(sections)  # a newline before each section
    allowed: dict[int, int] = {}
    for done, i in enumerate(sorted(range(len(sections)), key=lambda j: len(sections[j]))):
        allowed[i] = max(0, min(len(sections[i]), left // (len(sections) - done)))
        left -= allowed[i]
    text = "\n".join([head, *(_cut(s, allowed[i]) for i, s in enumerate(sections))])
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    tail = f" … (cut, {len(text):,} characters)"
    return text[: max(0, limit - len(tail))] + tail


def _short(value: Any, limit: int = VALUE) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value)
        if len(value) > limit:
            return f"{value[: limit // 2]!r}… ({len(value):,} bytes)"
        return repr(value)
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    if isinstance(value, float):
        return repr(value)
    return _cut(_repr.repr(value), limit)


def _pair(got: Any, want: Any) -> str:
    """'got X, want Y'; two long strings (or bytes) are shown around their first difference."""
    if (isinstance(got, str) and isinstance(want, str)
            or isinstance(got, bytes) and isinstance(want, bytes)) \
            and max(len(got), len(want)) > VALUE:
        at = next((i for i, (x, y) in enumerate(zip(got, want, strict=False)) if x != y),
                  min(len(got), len(want)))
        start = max(0, at - 20)
        return (f"got …{got[start:at + 40]!r}…, want …{want[start:at + 40]!r}… (lengths "
                f"{len(got):,} and {len(want):,}, first differing at {at:,})")
    return f"got {_short(got)}, want {_short(want)}"


def _count(items: Sequence[Any], total: int, noun: str) -> str:
    shown = ", ".join(_short(i, 60) for i in items[:SHOW])
    more = f" and {total - SHOW:,} more" if total > SHOW else ""
    return f"{noun} ({total:,}): {shown}{more}"


# ---- bytes -------------------------------------------------------------------------------

def _first_differences(got: bytes, want: bytes) -> tuple[int | None, int]:
    """(first differing offset or None, differing bytes in the common length)."""
    n = min(len(got), len(want))
    a = np.frombuffer(got, np.uint8, count=n)
    b = np.frombuffer(want, np.uint8, count=n)
    neq = a != b
    count = int(np.count_nonzero(neq))
    if count:
        return int(np.argmax(neq)), count
    return (n if len(got) != len(want) else None), 0


def _bytes_problem(got: bytes, want: bytes, tar: bool = False) -> str:
    first, count = _first_differences(got, want)
    if first is None:
        return "bytes are equal"
    member = _tar_member_at(want if first < len(want) else got, first) if tar else ""
    lines = [f"bytes differ: got {len(got):,} bytes, want {len(want):,}; "
             f"first difference at offset {first:,}{member}"
             + (f" (differing bytes in the common {min(len(got), len(want)):,}: {count:,})"
                if count else " (one is the other's start)")]
    start = max(0, first - 8)
    for side, data in (("got ", got), ("want", want)):
        chunk = data[start:first + 16]
        lines.append(f"  {side} [{start:,}:{start + len(chunk):,}] {chunk.hex(' ')}  {chunk!r}")
    return "\n".join(lines)


def _tar_member_at(data: bytes, offset: int) -> str:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                end = m.offset_data + -(-m.size // 512) * 512
                if m.offset <= offset < end:
                    where = ("header" if offset < m.offset_data
                             else f"data +{offset - m.offset_data:,}")
                    return f" in tar member {m.name!r} ({where})"
    except (tarfile.TarError, OSError, ValueError):
        pass
    return ""


# ---- arrays ------------------------------------------------------------------------------

def _array_problem(got: np.ndarray, want: np.ndarray) -> str:
    return "\n".join(_array_lines(got, want)[0])


def _array_lines(got: np.ndarray, want: np.ndarray) -> tuple[list[str], bool]:
    """The lines that say how two arrays differ; whether some common element differs."""
    lines = []
    if got.dtype != want.dtype:
        lines.append(f"dtype: got {got.dtype}, want {want.dtype}")
    if got.shape != want.shape:
        lines.append(f"shape: got {got.shape}, want {want.shape}")
    if got.ndim == want.ndim == 1:
        n = min(len(got), len(want))
        a, b = got[:n], want[:n]
    elif got.shape == want.shape:
        a, b = got, want
    else:
        return lines, False
    diff = _element_diff(a, b)
    if diff is None:
        return [*lines, "their elements cannot be compared"], False
    flat = np.flatnonzero(diff)
    if not len(flat):
        return [*lines, f"the common {a.size:,} elements are equal"], False
    lines.append(f"{len(flat):,} of the {a.size:,} common elements differ; first:")
    for i in flat[:SHOW]:
        index = np.unravel_index(int(i), a.shape)
        at = ", ".join(str(int(j)) for j in index)
        lines.append(f"  [{at}]: got {_short(_plain(a[index]))}, "
                     f"want {_short(_plain(b[index]))}")
    return lines, True


def _element_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Per element: differs (bitwise where the dtypes are the same)."""
    if a.dtype == b.dtype and not a.dtype.hasobject and a.dtype.itemsize:
        size = a.dtype.itemsize
        x = np.ascontiguousarray(a).reshape(-1).view(np.uint8).reshape(a.size, size)
        y = np.ascontiguousarray(b).reshape(-1).view(np.uint8).reshape(b.size, size)
        return (x != y).any(axis=1).reshape(a.shape)
    try:
        diff = np.asarray(a != b)
        if diff.shape != a.shape:
            return None
        if a.dtype.kind == "f" and b.dtype.kind == "f":
            diff &= ~(np.isnan(a) & np.isnan(b))
        return diff
    except (TypeError, ValueError):
        return None


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def _npy_problem(got: bytes, want: bytes) -> str | None:
    try:
        a = np.load(io.BytesIO(got), allow_pickle=False)
        b = np.load(io.BytesIO(want), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    lines, differs = _array_lines(a, b)
    if not differs and a.dtype == b.dtype and a.shape == b.shape:
        lines.append(_bytes_problem(got, want))  # same values, other header bytes
    return "\n".join(lines)


# ---- tables ------------------------------------------------------------------------------

def _parquet_problem(got: bytes, want: bytes) -> str | None:
    try:
        a = pq.read_table(pa.BufferReader(got))
        b = pq.read_table(pa.BufferReader(want))
    except (pa.ArrowException, OSError, ValueError):
        return None
    lines = []
    if a.schema != b.schema:
        only_a = [n for n in a.column_names if n not in b.column_names]
        only_b = [n for n in b.column_names if n not in a.column_names]
        typed = [f"{n} got {a.schema.field(n).type}, want {b.schema.field(n).type}"
                 for n in a.column_names if n in b.column_names
                 and a.schema.field(n).type != b.schema.field(n).type]
        lines.append("schemas differ:" + (f" columns only in got {only_a};" if only_a else "")
                     + (f" columns only in want {only_b};" if only_b else "")
                     + (f" types: {'; '.join(typed[:SHOW])}" if typed else "")
                     + ("" if only_a or only_b or typed else " (order or metadata)"))
    n = min(a.num_rows, b.num_rows)
    names = [c for c in a.column_names if c in b.column_names]
    masks = {c: _column_diff(a.column(c).slice(0, n), b.column(c).slice(0, n)) for c in names}

    def value(table: pa.Table) -> Callable[[str, int], Any]:
        return lambda column, row: table.column(column)[row].as_py()

    rows, differs = _row_lines(a.num_rows, b.num_rows, masks, value(a), value(b))
    lines += rows
    if not differs and a.schema == b.schema and a.num_rows == b.num_rows:
        lines.append("the files' bytes differ (metadata or encoding): "
                     + _bytes_problem(got, want))
    return "\n".join(lines)


def _column_diff(x: pa.ChunkedArray, y: pa.ChunkedArray) -> np.ndarray:
    """Per row: the values differ (two nulls, or two NaNs, are alike)."""
    try:
        same = pc.fill_null(pc.equal(x, y), False)
        same = pc.or_(same, pc.and_(pc.is_null(x), pc.is_null(y)))
        if pa.types.is_floating(x.type) and pa.types.is_floating(y.type):
            same = pc.or_(same, pc.fill_null(pc.and_(pc.is_nan(x), pc.is_nan(y)), False))
        return ~np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return _python_diff(x.to_pylist(), y.to_pylist())


def _python_diff(a: Sequence[Any], b: Sequence[Any]) -> np.ndarray:
    return np.fromiter((not _alike(x, y) for x, y in zip(a, b, strict=True)), bool,
                       count=len(a))


def _alike(x: Any, y: Any) -> bool:
    try:
        if bool(x == y):
            return True
    except (TypeError, ValueError):
        return False
    return isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)


def _row_lines(n_got: int, n_want: int, masks: Mapping[str, np.ndarray],
               got: Callable[[str, int], Any], want: Callable[[str, int], Any]
               ) -> tuple[list[str], bool]:
    """The lines that say how two tables' rows differ; whether some common row differs."""
    lines = []
    if n_got != n_want:
        lines.append(f"rows: got {n_got:,}, want {n_want:,} (compared by row number over the "
                     f"first {min(n_got, n_want):,})")
    n = min(n_got, n_want)
    if not masks or n == 0:
        return lines or ["no rows to compare"], False
    any_diff = np.logical_or.reduce([m for m in masks.values()])
    rows = np.flatnonzero(any_diff)
    if not len(rows):
        lines.append(f"the common {n:,} rows are equal")
        return lines, False
    per_column = [f"{c} {int(m.sum()):,}" for c, m in masks.items() if m.any()]
    if len(per_column) > 8:
        per_column[8:] = [f"and {len(per_column) - 8} more columns"]
    lines.append(f"{len(rows):,} of {n:,} rows differ; rows differing per column: "
                 + ", ".join(per_column) + "; first:")
    for row in rows[:SHOW]:
        row = int(row)
        ident = ", ".join(f"{c}={_short(got(c, row), 40)}" for c in IDENTIFYING if c in masks)
        columns = [c for c, m in masks.items() if m[row]]
        many = f"{len(columns)} columns differ: " if len(columns) > 1 else ""
        shown = "; ".join(f"{c}: " + _pair(got(c, row), want(c, row)) for c in columns[:3])
        lines.append(_cut(f"  row {row:,}" + (f" ({ident})" if ident else "")
                          + f": {many}{shown}", LINE))
    return lines, True


def _rows_problem(got: Sequence[Mapping[str, Any]], want: Sequence[Mapping[str, Any]]) -> str:
    columns: dict[str, None] = {}  # every key of any row, in the order first seen
    for row in (*got, *want):
        columns.update(dict.fromkeys(row))
    n = min(len(got), len(want))

    def value(rows: Sequence[Mapping[str, Any]]) -> Callable[[str, int], Any]:
        return lambda column, row: rows[row].get(column, "(missing)")

    masks = {c: np.fromiter((not _alike(got[i].get(c, _MISSING), want[i].get(c, _MISSING))
                             for i in range(n)), bool, count=n) for c in columns}
    return "\n".join(_row_lines(len(got), len(want), masks, value(got), value(want))[0])


# ---- JSON --------------------------------------------------------------------------------

def _without(value: Any, ignore: Collection[str]) -> Any:
    if ignore and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in ignore}
    return value


def _json_diffs(got: Any, want: Any, path: str = "$") -> Iterator[tuple[str, Any, Any]]:
    """(path, got's value, want's value) where parsed JSON differs (as == sees it)."""
    if isinstance(got, dict) and isinstance(want, dict):
        for key in [*got, *(k for k in want if k not in got)]:
            sub = (f"{path}.{key}" if isinstance(key, str) and key.isidentifier()
                   else f"{path}[{key!r}]")
            yield from _json_diffs(got.get(key, _MISSING), want.get(key, _MISSING), sub)
    elif isinstance(got, list) and isinstance(want, list):
        if len(got) != len(want):
            yield f"{path} (length)", len(got), len(want)
        for i, (a, b) in enumerate(zip(got, want, strict=False)):
            yield from _json_diffs(a, b, f"{path}[{i}]")
    elif got is _MISSING or want is _MISSING or got != want:
        yield path, got, want


def _json_problem(got: Any, want: Any) -> str:
    first, total = [], 0
    for diff in _json_diffs(got, want):
        total += 1
        if len(first) < SHOW:
            first.append(diff)
    if not total:
        return "the parsed values are equal"
    lines = [f"JSON paths that differ: {total:,}; first:"]
    for path, a, b in first:
        if a is _MISSING or b is _MISSING:
            shown = [("(missing)" if v is _MISSING else _short(v)) for v in (a, b)]
            text = f"got {shown[0]}, want {shown[1]}"
        else:
            text = _pair(a, b)
        lines.append(_cut(f"  {path}: {text}", LINE))
    return "\n".join(lines)


def _report_problem(got: Path, want: Path, ignore: Collection[str]) -> str | None:
    missing = [str(p) for p in (got, want) if not p.is_file()]
    if missing:
        return f"report.json: missing: {', '.join(missing)}"
    a = _without(json.loads(got.read_text()), ignore)
    b = _without(json.loads(want.read_text()), ignore)
    if a == b:
        return None
    skipped = f" (less {sorted(ignore)})" if ignore else ""
    return f"report.json{skipped}: " + _explain(_json_problem, a, b)


# ---- files and folders -------------------------------------------------------------------

def _file_problem(name: str, got: bytes, want: bytes) -> str:
    """Why two files' bytes differ, read as the kind its name says."""
    suffix = Path(name).suffix
    explained = None
    if suffix == ".parquet":
        explained = _parquet_problem(got, want)
    elif suffix == ".npy":
        explained = _npy_problem(got, want)
    elif suffix == ".json":
        try:
            a, b = json.loads(got), json.loads(want)
        except (ValueError, UnicodeDecodeError):
            a = b = None
        if a is not None or b is not None:
            explained = (_json_problem(a, b) if a != b
                         else "same JSON, other bytes: " + _bytes_problem(got, want))
    return explained or _bytes_problem(got, want, tar=suffix == ".tar")


def _ignored_keys(name: str, json_ignore: Mapping[str, Collection[str]]) -> set[str] | None:
    """The keys left out of name's JSON; None where no pattern matches (compare bytes)."""
    matched = [keys for pattern, keys in json_ignore.items()
               if fnmatch.fnmatch(Path(name).name, pattern)]
    return {k for keys in matched for k in keys} if matched else None


def _entry_problem(name: str, got: Any, want: Any,
                   json_ignore: Mapping[str, Collection[str]]) -> str | None:
    """None where two entries (bytes, or parsed JSON) count as the same."""
    ignore = _ignored_keys(name, json_ignore)
    if ignore is not None and isinstance(got, bytes | str) and isinstance(want, bytes | str):
        got, want = _without(json.loads(got), ignore), _without(json.loads(want), ignore)
        return (None if got == want
                else f"(less {sorted(ignore)}) " + _explain(_json_problem, got, want))
    if got == want:
        return None
    if isinstance(got, bytes) and isinstance(want, bytes):
        return _explain(_file_problem, name, got, want)
    if isinstance(got, np.ndarray) or isinstance(want, np.ndarray):
        return _explain(_array_problem, np.asarray(got), np.asarray(want))
    if _is_rows(got) and _is_rows(want):
        return _explain(_rows_problem, got, want)
    return _explain(_json_problem, got, want)


def _is_rows(value: Any) -> bool:
    """A list of row dicts, as Table.to_pylist() gives."""
    return isinstance(value, list) and bool(value) and all(isinstance(r, dict) for r in value)


def _names_problem(got: Collection[str], want: Collection[str]) -> list[str]:
    only_got = sorted(set(got) - set(want))
    only_want = sorted(set(want) - set(got))
    lines = []
    for side, names in (("got", only_got), ("want", only_want)):
        if names:
            lines.append(_count(names, len(names), f"names only in {side}"))
    return lines


def _entries_problem(names: Sequence[str], got: Callable[[str], Any],
                     want: Callable[[str], Any], json_ignore: Mapping[str, Collection[str]],
                     prefix: str = "") -> list[str]:
    lines, differing = [], []
    for name in names:
        problem = _entry_problem(name, got(name), want(name), json_ignore)
        if problem is None:
            continue
        differing.append(name)
        if len(differing) <= FILES_SHOWN:
            lines.append(f"{prefix}{name}: {problem}")
    if len(differing) > FILES_SHOWN:
        lines.append(_count(differing, len(differing), f"differing entries in {prefix or 'all'}"))
    return lines


def _contents_problem(got: Mapping[str, Any], want: Mapping[str, Any]) -> str:
    lines = _names_problem(list(got), list(want))
    common = [n for n in sorted(got) if n in want]
    lines += _entries_problem(common, got.__getitem__, want.__getitem__, {})
    return "\n".join(lines or ["contents differ"])


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _folder_problem(got: Path, want: Path, json_ignore: Mapping[str, Collection[str]],
                    label: str | None = None) -> str | None:
    label = label or got.name
    missing = [str(p) for p in (got, want) if not p.is_dir()]
    if missing:
        return f"{label}/: no such folder: {', '.join(missing)}"
    names_got, names_want = _listing(got), _listing(want)
    lines = [f"{label}/: {line}" for line in _names_problem(names_got, names_want)]
    present = set(names_want)
    common = [n for n in names_got if n in present]
    lines += _entries_problem(common, lambda n: (got / n).read_bytes(),
                              lambda n: (want / n).read_bytes(), json_ignore, f"{label}/")
    return "\n".join(lines) if lines else None


def _path_problem(got: Path, want: Path) -> str | None:
    missing = [str(p) for p in (got, want) if not p.is_file()]
    if missing:
        return f"{got.name}: no such file: {', '.join(missing)}"
    a, b = got.read_bytes(), want.read_bytes()
    return None if a == b else f"{got.name}: " + _explain(_file_problem, got.name, a, b)

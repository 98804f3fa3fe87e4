"""Where measurements go: an append-only journal per profile directory (so an interrupted run
resumes where it stopped), then the parquet tables and meta.json of the schema.

Each measured point is one JSON line in `journal.jsonl`, written and flushed as soon as it is
measured; a restart reads the journal and skips every point whose key is in it. `finish`
writes each table from the journal rows of the current grid, then meta.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from servesim.models.profile_schema import META_FILE, TABLES

JOURNAL = "journal.jsonl"


class Journal:
    """Rows measured so far in one profile directory, keyed by `Point.key`."""

    def __init__(self, out_dir: Path, grid_id: str) -> None:
        """`grid_id` names the model, grid mode and device; a journal of another grid in the
        same directory is set aside (renamed), never mixed in."""
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / JOURNAL
        self.rows: dict[str, dict[str, Any]] = {}
        header = {"grid_id": grid_id}
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            first = json.loads(lines[0]) if lines else {}
            if first == header:
                for line in lines[1:]:
                    self._load_line(line)
            else:
                self.path.rename(self.path.with_suffix(".other-grid.jsonl"))
        if not self.path.exists():
            self.path.write_text(json.dumps(header) + "\n")
        self._fh = self.path.open("a")

    def _load_line(self, line: str) -> None:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return  # a line cut short by the interruption: measured again
        self.rows[row["key"]] = row

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def add(self, key: str, table: str, row: dict[str, Any]) -> None:
        full = {"key": key, "table": table, **row}
        self.rows[key] = full
        self._fh.write(json.dumps(full) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def table(self, name: str, keys: set[str] | None = None) -> pd.DataFrame:
        """One table's rows (only `keys` if given), columns in schema order."""
        rows = [r for k, r in self.rows.items()
                if r["table"] == name and (keys is None or k in keys)]
        frame = pd.DataFrame(rows, columns=["key", *TABLES[name]])
        return frame.drop(columns="key").reset_index(drop=True)


def write_tables(out_dir: Path, tables: dict[str, pd.DataFrame]) -> list[Path]:
    """Each table as <name>.parquet (columns checked against the schema)."""
    written = []
    for name, frame in tables.items():
        if tuple(frame.columns) != TABLES[name]:
            raise ValueError(f"table {name}: columns {tuple(frame.columns)} != schema {TABLES[name]}")
        path = out_dir / f"{name}.parquet"
        partial = path.with_suffix(".parquet.partial")
        frame.to_parquet(partial, index=False)
        os.replace(partial, path)  # whole or not at all (`--runtime-passes-only` rewrites a profile)
        written.append(path)
    return written


def write_meta(out_dir: Path, meta: dict[str, Any]) -> Path:
    path = out_dir / META_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    os.replace(partial, path)
    return path

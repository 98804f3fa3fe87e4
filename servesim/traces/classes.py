"""SLO/priority classes of requests: by rule, per row from a trace column, or by fraction.

A class only names an SLO (its ttft/tbt targets live in the simulator config) and carries a
priority (lower = more important). Rules are tried in order and the first that matches wins;
a row no rule matches gets class "default", priority 0. A rule matches when its `when`
condition holds (no `when`: always) and, if it has a `fraction`, when the row's uniform draw
falls in that rule's share of [0, 1): fraction rules split [0, 1) in the order written, so
`[{name: a, fraction: 0.3}, {name: b, fraction: 0.7}]` gives about 30 % a and 70 % b.

Conditions are parsed, never evaluated as code: `"num_prompt_tokens <= 1024 and
num_output_tokens > 8"` or the mapping `{num_prompt_tokens: {le: 1024}, num_output_tokens:
{gt: 8}}`; ops < <= > >= == != (lt le gt ge eq ne); values are numbers, or quoted strings for
== and !=.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from servesim.dictconfig import DictConfig, show
from servesim.errors import InputError

DEFAULT_CLASS = "default"
_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
        "==": np.equal, "!=": np.not_equal}
_WORD_OPS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
_COMPARISON = re.compile(r"^\s*(.+?)\s*(<=|>=|==|!=|<|>)\s*(.+?)\s*$")
_COLUMN = re.compile(r"^[A-Za-z_][\w .-]*$")  # names such as BurstGPT's "Log Type"
_QUOTED = re.compile(r"""^(?:"([^"]*)"|'([^']*)')$""")

When = str | dict[str, dict[str, float | str]]


@dataclass(frozen=True)
class Condition:
    """One comparison `column op value` of a class rule."""

    column: str
    op: str
    value: float | str


def parse_when(when: When) -> tuple[Condition, ...]:
    """The comparisons (all must hold) of a rule's `when`, text or mapping form."""
    if isinstance(when, str):
        return tuple(_parse_comparison(part) for part in re.split(r"\s+and\s+", when.strip()))
    conditions = []
    for column, tests in when.items():
        if not isinstance(tests, Mapping) or not tests:
            raise InputError(f"when: '{column}' needs a mapping like {{le: 1024}}")
        for word, value in tests.items():
            if word not in _WORD_OPS:
                raise InputError(f"when: unknown comparison '{word}' (use {', '.join(_WORD_OPS)})")
            conditions.append(_checked(str(column), _WORD_OPS[word], value))
    return tuple(conditions)


def _parse_comparison(text: str) -> Condition:
    match = _COMPARISON.match(text)
    if match is None:
        raise InputError(f"when: cannot read '{text}'; expected <column> <op> <number>, "
                         "comparisons joined by 'and'")
    column, op, raw = match.groups()
    if not _COLUMN.match(column):
        raise InputError(f"when: '{column}' in '{text}' is not a column name")
    quoted = _QUOTED.match(raw)
    if quoted is not None:
        return _checked(column, op, quoted.group(1) or quoted.group(2) or "")
    try:
        return _checked(column, op, float(raw))
    except ValueError:
        raise InputError(f"when: '{raw}' in '{text}' is not a number (quote strings)") from None


def _checked(column: str, op: str, value: object) -> Condition:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputError(f"when: value for '{column}' must be a number or a string")
    if isinstance(value, str) and op not in ("==", "!="):
        raise InputError(f"when: '{column} {op} {value!r}': strings compare only with == or !=")
    return Condition(column, op, value if isinstance(value, str) else float(value))


@dataclass(frozen=True)
class ClassRule(DictConfig):
    """One SLO class and which requests belong to it."""

    name: str = field(metadata={"help": "class name; the simulator config gives its SLOs"})
    priority: int = field(default=0, metadata={"help": "lower = more important"})
    when: When | None = field(default=None, metadata={
        "help": "condition on trace columns, e.g. 'num_prompt_tokens <= 1024'; none = any row"})
    fraction: float | None = field(default=None, metadata={
        "help": "share of all requests, drawn at random, that this rule may take"})

    def __post_init__(self) -> None:
        if not self.name:
            raise InputError("name: must not be empty")
        if self.when is not None:
            parse_when(self.when)
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise InputError(f"fraction: must be in (0, 1], got {self.fraction}")


@dataclass(frozen=True)
class ClassesConfig(DictConfig):
    """Classes by ordered rules, or per row from trace columns (not both)."""

    rules: tuple[ClassRule, ...] = field(default=(), metadata={
        "help": "ordered rules; the first that matches a request names its class"})
    column: str | None = field(default=None, metadata={
        "help": "take each request's class name from this trace column"})
    priority_column: str | None = field(default=None, metadata={
        "help": "take each request's priority from this trace column (default 0)"})

    def __post_init__(self) -> None:
        if self.rules and (self.column or self.priority_column):
            raise InputError("rules: give either rules or column/priority_column, not both")
        total = sum(rule.fraction or 0.0 for rule in self.rules)
        if total > 1 + 1e-9:
            raise InputError(f"rules: fractions add up to {total:g}, more than 1")
        priorities: dict[str, int] = {}
        for rule in self.rules:
            if priorities.setdefault(rule.name, rule.priority) != rule.priority:
                raise InputError(f"rules: class '{rule.name}' is given two priorities")


def assign_classes(table: pd.DataFrame, cfg: ClassesConfig | None, rng: np.random.Generator,
                   where: str) -> tuple[np.ndarray, np.ndarray]:
    """(slo_class, priority) per row of `table`. Without rules or column, a trace's own
    `slo_class`/`priority` columns are used when it has them. `where` names the trace."""
    cfg = cfg or ClassesConfig()
    if cfg.rules:
        return _by_rules(table, cfg.rules, rng, where)
    class_column = cfg.column or ("slo_class" if "slo_class" in table.columns else None)
    priority_column = cfg.priority_column or ("priority" if "priority" in table.columns else None)
    n = len(table)
    names = (np.full(n, DEFAULT_CLASS, dtype=object) if class_column is None
             else _class_names(table, class_column, where))
    priorities = (np.zeros(n, dtype=np.int64) if priority_column is None
                  else _priorities(table, priority_column, where))
    return names, priorities


def _by_rules(table: pd.DataFrame, rules: tuple[ClassRule, ...], rng: np.random.Generator,
              where: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(table)
    chosen = np.full(n, -1)
    draws = rng.random(n) if any(r.fraction is not None for r in rules) else np.zeros(n)
    share_start = 0.0
    for k, rule in enumerate(rules):
        match = chosen < 0
        if rule.when is not None:
            for cond in parse_when(rule.when):
                match &= _holds(table, cond, rule.name, where)
        if rule.fraction is not None:
            match &= (draws >= share_start) & (draws < share_start + rule.fraction)
            share_start += rule.fraction
        chosen[match] = k
    names = np.array([r.name for r in rules] + [DEFAULT_CLASS], dtype=object)
    priorities = np.array([r.priority for r in rules] + [0], dtype=np.int64)
    return names[chosen], priorities[chosen]  # chosen -1 picks the default, the last entry


def _holds(table: pd.DataFrame, cond: Condition, rule: str, where: str) -> np.ndarray:
    if cond.column not in table.columns:
        raise InputError(f"{where}: class '{rule}': the trace has no column '{cond.column}' "
                         f"(columns: {', '.join(map(str, table.columns))})")
    column = table[cond.column]
    if isinstance(cond.value, str):
        return np.asarray(_OPS[cond.op](column.astype(str).to_numpy(), cond.value), dtype=bool)
    values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
    bad = np.isnan(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{where}: row {i + 1}, column '{cond.column}': class '{rule}' "
                         f"compares it with a number, got {show(column.iloc[i])}")
    return np.asarray(_OPS[cond.op](values, cond.value), dtype=bool)


def _class_names(table: pd.DataFrame, column: str, where: str) -> np.ndarray:
    cells = _column(table, column, where)
    missing = cells.isna().to_numpy() | (cells.astype(str).str.strip() == "").to_numpy()
    if missing.any():
        raise InputError(f"{where}: row {int(np.argmax(missing)) + 1}, column '{column}': "
                         "expected a class name, got an empty cell")
    return cells.astype(str).to_numpy(dtype=object)


def _priorities(table: pd.DataFrame, column: str, where: str) -> np.ndarray:
    cells = _column(table, column, where)
    values = pd.to_numeric(cells, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    bad[~bad] = values[~bad] != np.floor(values[~bad])
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{where}: row {i + 1}, column '{column}': expected an integer "
                         f"priority, got {show(cells.iloc[i])}")
    return values.astype(np.int64)


def _column(table: pd.DataFrame, column: str, where: str) -> pd.Series:
    if column not in table.columns:
        raise InputError(f"{where}: missing column '{column}' named by classes "
                         f"(columns: {', '.join(map(str, table.columns))})")
    return table[column]

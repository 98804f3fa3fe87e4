"""Reading a profile directory (servesim.models.profile_schema) for the profiled cost model:
meta.json checks, the parquet tables, and one interpolating `OpTable` per operator.

An operator's rows form a full cartesian grid over its axes; `Grid` interpolates multilinearly.
Attention and GEMM tables interpolate measured time over a structural estimate of it
(kernel_work.py: the kernels' program counts, split rule, tiles and key tiles, weighted by a
fit of the table's own rows), so split-count and wave steps between grid points come from the
launch rule; decode
attention interpolates over log batch and log context (its grid is geometric). Beyond the top
of a grid an `OpTable` uses a least-squares fit of the whole table on roofline-like terms
(FLOPs and bytes in the axes), never less than the clamped grid value; the caller counts every
such lookup. No torch anywhere.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from servesim.errors import InputError
from servesim.models.arch import ModelArch
from servesim.models.ops import gemm_shapes
from servesim.models.profile_schema import GEMM_OPS, META_FILE, OP_AXES, SCHEMA_VERSION, TABLES
from servesim.sim import kernel_work
from servesim.sim.hardware import GpuSpec

Structure = Callable[[ModelArch, int, tuple[float, ...]], list[float]]


def _gemm_structure(op: str) -> Structure:
    def terms(arch: ModelArch, num_sms: int, x: tuple[float, ...]) -> list[float]:
        return kernel_work.gemm_terms(*gemm_shapes(arch)[op], num_sms, x)
    return terms


_STRUCTURE: dict[str, Structure] = {
    "attn_decode": kernel_work.decode_terms, "attn_prefill": kernel_work.prefill_terms,
    "attn_prefill_packed": kernel_work.prefill_terms, **{op: _gemm_structure(op) for op in GEMM_OPS}}
"""Tables whose time is interpolated relative to the kernel's structural estimate."""
_LOG_AXES = {"attn_decode": (True, True, False)}
"""Axes interpolated in log space: decode batch and context (geometric grids, 4x steps)."""
_MAX_WORK_CACHE = 100_000


def shipped_root() -> Traversable:
    return resources.files("servesim").joinpath("profiles")


def shipped_profiles() -> list[tuple[str, str]]:
    """(gpu, model) pairs with a profile inside the package."""
    root = shipped_root()
    if not root.is_dir():
        return []
    return sorted((g.name, m.name) for g in root.iterdir() if g.is_dir()
                  for m in g.iterdir() if m.joinpath(META_FILE).is_file())


def _features(op: str, x: tuple[float, ...]) -> list[float]:
    """Roofline-like terms the out-of-grid fit is linear in."""
    if op.startswith("attn_prefill"):
        n = x[2] if len(x) > 2 else 1.0
        return [1.0, n * (x[0] * x[1] + x[0] * x[0] / 2), n * (x[0] + x[1])]
    if op == "attn_decode":
        return [1.0, x[0] * x[1], x[0]]
    return [1.0, x[0]] if x else [1.0]


class Grid:
    """Multilinear interpolation over a full cartesian grid; values flat, row-major. An axis
    flagged in `log_axes` interpolates in the logarithm of its values (all > 0)."""

    def __init__(self, axes: list[list[float]], values: list[float], log_axes: tuple[bool, ...] = ()) -> None:
        self.axes, self.values = axes, values
        self.log_axes = tuple(log_axes) + (False,) * (len(axes) - len(log_axes))
        self._coords = [[math.log(v) for v in a] if lg else a for a, lg in zip(axes, self.log_axes, strict=True)]
        self.strides = [int(np.prod([len(a) for a in axes[i + 1:]])) for i in range(len(axes))]

    def weight(self, axis: int, v: float) -> tuple[int, float]:
        """(j, w): v lies between axis values j and j + 1, at fraction w (inside the axis)."""
        coords = self._coords[axis]
        j = bisect.bisect_right(self.axes[axis], v) - 1
        c = math.log(v) if self.log_axes[axis] else v
        return j, (c - coords[j]) / (coords[j + 1] - coords[j])

    def at(self, x: tuple[float, ...]) -> tuple[float, bool]:
        """(value, whether x lies outside the grid on some axis; then it is clamped)."""
        spans, outside = [], False
        for i, (axis, v, stride) in enumerate(zip(self.axes, x, self.strides, strict=False)):
            if v <= axis[0] or len(axis) == 1:
                outside |= v < axis[0] or (len(axis) == 1 and v > axis[0])
                spans.append((0, 0, 0.0, stride))
            elif v >= axis[-1]:
                outside |= v > axis[-1]
                spans.append((len(axis) - 1, 0, 0.0, stride))
            else:
                j, w = self.weight(i, v)
                spans.append((j, 1, w, stride))
        total = 0.0
        for bits in itertools.product((0, 1), repeat=len(spans)):
            weight, index = 1.0, 0
            for bit, (j, step, w, stride) in zip(bits, spans, strict=True):
                weight *= w if bit else 1.0 - w
                index += (j + bit * step) * stride
            if weight:
                total += weight * self.values[index]
        return total, outside


def _rows(frame: pd.DataFrame, cols: list[str]) -> list[tuple[float, ...]]:
    """Each row's values of `cols` (empty tuples for an operator without axes: one per row,
    which `itertuples` over zero columns does not give on every pandas version)."""
    return [tuple(map(float, v)) for v in frame[cols].to_numpy(float).reshape(len(frame), len(cols))]


def _grid(frame: pd.DataFrame, cols: list[str], value: np.ndarray) -> tuple[list[list[float]], np.ndarray]:
    axes = [sorted(set(frame[c].astype(float))) for c in cols]
    cube = np.full([len(a) for a in axes], np.nan)
    for row, v in zip(_rows(frame, cols), value, strict=True):
        cube[tuple(a.index(x) for a, x in zip(axes, row, strict=True))] = v
    return axes, cube


def _relative_fit(terms: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Nonnegative coefficients c minimising sum((terms @ c / seconds - 1)^2): the best
    all-nonnegative least-squares solution over subsets of the (few) terms."""
    a, best, best_err = terms / seconds[:, None], np.zeros(terms.shape[1]), math.inf
    for size in range(1, terms.shape[1] + 1):
        for keep in itertools.combinations(range(terms.shape[1]), size):
            c = np.linalg.lstsq(a[:, keep], np.ones(len(seconds)), rcond=None)[0]
            err = float(np.sum((a[:, keep] @ c - 1.0) ** 2))
            if (c >= 0).all() and err < best_err - 1e-12:
                best, best_err = np.zeros(terms.shape[1]), err
                best[list(keep)] = c
    return best


class OpTable:
    """One operator's measured times (seconds) with its out-of-grid fit; `arch` and `num_sms`
    give attention tables their structural estimate (without them, time is interpolated)."""

    def __init__(self, op: str, rows: pd.DataFrame, arch: ModelArch | None = None, num_sms: int = 0) -> None:
        self.op = op
        cols = ["a", "b", "c"][: len(OP_AXES[op])]
        xs = _rows(rows, cols)
        seconds = rows.median_us.to_numpy(float) * 1e-6
        features = np.array([_features(op, x) for x in xs])
        self.coef = np.maximum(np.linalg.lstsq(features, seconds, rcond=None)[0], 0.0)
        self.scale: tuple[float, ...] = ()
        self.num_sms = num_sms
        self._work: dict[tuple[tuple[float, ...], int], float] = {}
        structure = _STRUCTURE.get(op)
        self._structure: Callable[[tuple[float, ...], int], list[float]] | None = None
        if structure is not None and arch is not None and num_sms > 0:
            self._structure = lambda x, sms: structure(arch, sms, x)
            self.scale = tuple(map(float, _relative_fit(np.array([structure(arch, num_sms, x) for x in xs]),
                                                        seconds)))
            if not all(self.work(x) > 0 for x in xs):
                self._structure, self.scale = None, ()
                self._work.clear()
        axes, cube = _grid(rows, cols, seconds / np.array([self.work(x) for x in xs]))
        self.gaps = int(np.isnan(cube).sum())
        if self.gaps:  # unmeasured cells (failed points): the fit fills them
            for idx in zip(*np.nonzero(np.isnan(cube)), strict=True):
                x = tuple(a[i] for a, i in zip(axes, idx, strict=True))
                cube[idx] = self.fit(x) / self.work(x)
        self.top = [a[-1] for a in axes]
        self.grid = Grid(axes, cube.ravel().tolist(), _LOG_AXES.get(op, ())) if cols else None
        self.scalar = float(seconds[0]) if not cols else 0.0

    def work(self, x: tuple[float, ...]) -> float:
        """The structural estimate (seconds) that time is interpolated relative to, else 1."""
        return self.work_on(x, self.num_sms)

    @property
    def structured(self) -> bool:
        return self._structure is not None

    def work_on(self, x: tuple[float, ...], sms: int) -> float:
        """The structural estimate on `sms` SMs (its waves and splits on that many), with the
        whole-GPU fit's weights; 1 without a structure."""
        if self._structure is None:
            return 1.0
        w = self._work.get((x, sms))
        if w is None:  # prefill's makespan walks every program: once per shape
            if len(self._work) >= _MAX_WORK_CACHE:
                self._work.clear()
            w = self._work[(x, sms)] = sum(c * t for c, t in zip(self.scale, self._structure(x, sms), strict=True))
        return w

    def fit(self, x: tuple[float, ...]) -> float:
        return float(np.dot(self.coef, _features(self.op, x)))

    def seconds(self, x: tuple[float, ...]) -> tuple[float, bool]:
        if self.grid is None:
            return self.scalar, False
        value, outside = self.grid.at(x)
        t = value * self.work(x)
        if outside and any(v > top for v, top in zip(x, self.top, strict=False)):
            t = max(t, self.fit(x))
        return t, outside


def read_meta(path: Path | Traversable) -> dict[str, Any]:
    meta_path = path.joinpath(META_FILE)
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: no profile here (run `servesim profile` to make one)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{meta_path}: not valid JSON ({err.msg})") from None
    return dict(meta)


def check_meta(meta: dict[str, Any], where: str, arch: ModelArch, gpu: GpuSpec) -> None:
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{where}: profile schema version {meta.get('schema_version')!r}; this servesim "
                         f"reads version {SCHEMA_VERSION}: profile the model again")
    if meta.get("gpu") != gpu.name or meta.get("sm_count") != gpu.num_sms:
        raise InputError(f"{where}: profile of GPU {meta.get('gpu')!r} ({meta.get('sm_count')} SMs), "
                         f"but the run simulates {gpu.name!r} ({gpu.num_sms} SMs)")
    if meta.get("model") != arch.name or meta.get("arch", {}).get("num_layers") != arch.num_layers:
        raise InputError(f"{where}: profile of model {meta.get('model')!r}, but the run uses {arch.name!r}")


TIME_COLUMNS = ("median_us", "p20_us", "p80_us", "alone_us", "corun_us")
"""The columns of the profile tables that hold times (`Profile`'s gpu_scale multiplies them)."""


def load_tables(path: Path | Traversable) -> dict[str, pd.DataFrame]:
    out = {}
    for name in TABLES:
        f = path.joinpath(f"{name}.parquet")
        if f.is_file():
            with f.open("rb") as fh:
                out[name] = pd.read_parquet(fh)
    return out


class RatioTable:
    """Time on `sms` SMs over time on the whole GPU, per shape of one operator. The SM axis is
    interpolated in -1/sms: where an operator scales with its SMs the ratio is c/sms, a straight
    line in 1/sms, while a straight line in sms between profiled shares (32 and 64, say)
    overstates the time between them (by 12 % at 48 SMs)."""

    def __init__(self, op: str, rows: pd.DataFrame, full: OpTable, num_sms: int) -> None:
        cols = ["a", "b", "c"][: len(OP_AXES[op])]
        xs = _rows(rows, cols)
        self.full = full
        self.tiled = op in GEMM_OPS and full.structured
        seconds = rows.median_us.to_numpy(float) * 1e-6
        whole = rows.drop_duplicates(cols).assign(sms=num_sms)
        if self.tiled:  # time over the tiling's estimate on each partition's own SMs
            ratio = seconds / np.array([full.work_on(x, int(s)) for x, s in zip(xs, rows.sms, strict=True)])
            at_whole = [full.seconds(x)[0] / full.work_on(x, num_sms) for x in _rows(whole, cols)]
        else:
            ratio = seconds / np.array([full.seconds(x)[0] for x in xs])
            at_whole = [1.0] * len(whole)
        frame = pd.concat([rows.assign(ratio=ratio), whole.assign(ratio=at_whole)], ignore_index=True)
        frame = frame.assign(sms=-1.0 / frame.sms.astype(float))
        axes, cube = _grid(frame, [*cols, "sms"], frame.ratio.to_numpy(float))
        for j in range(cube.shape[-1]):  # a failed point: the mean ratio at that SM count
            layer = cube[..., j]
            layer[np.isnan(layer)] = np.nanmean(layer) if np.isfinite(layer).any() else 1.0
        self.min_sms = round(-1.0 / axes[-1][0])
        self.grid = Grid(axes, cube.ravel().tolist())

    def seconds_on(self, x: tuple[float, ...], sms: int, whole_s: float) -> tuple[float, bool]:
        """(time on `sms` SMs given `whole_s` on the whole GPU, whether sms is below the smallest
        profiled partition: scaled as 1/sms). A GEMM's is read relative to its tiling on those
        SMs: on 48 SMs a 1,025-row `down` runs the 3 waves of 1,024 rows, where the whole GPU's
        time doubles (1 wave to 2), so a ratio of times read across that step doubled it."""
        on = max(sms, self.min_sms)
        r = self.grid.at((*x, -1.0 / on))[0]
        t = r * self.full.work_on(x, on) if self.tiled else r * whole_s
        return (t * self.min_sms / sms, True) if sms < self.min_sms else (t, False)


def contention_curves(frame: pd.DataFrame) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """(target class, co-runner class) -> (target SMs, median slowdown at each).

    A co-runner on the other partition cannot speed the target up: a slowdown below 1 is the
    noise of two separate timings (the shipped Llama profile has small GEMMs next to decode
    GEMMs at 0.83 on 68 SMs, between 1.39 on 64 and 1.17 on 96), so it counts as 1."""
    out = {}
    for (target, corunner), rows in frame.groupby(["op", "corunner"], observed=True):
        by_sms = rows.groupby("sms", observed=True).slowdown.median().sort_index()
        out[(str(target), str(corunner))] = ([float(s) for s in by_sms.index], [max(1.0, v) for v in by_sms])
    return out


def lerp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear in x, clamped at both ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    j = bisect.bisect_right(xs, x) - 1
    w = (x - xs[j]) / (xs[j + 1] - xs[j])
    return ys[j] * (1.0 - w) + ys[j + 1] * w


class Profile:
    """Every table of one profile directory, checked against the run's model and GPU."""

    def __init__(self, path: Path | Traversable, arch: ModelArch, gpu: GpuSpec, gpu_scale: float = 1.0) -> None:
        """`gpu_scale`: every time of every table times this (ratios such as a co-runner's
        slowdown unchanged)."""
        self.path = path
        self.meta = read_meta(path)
        check_meta(self.meta, str(path.joinpath(META_FILE)), arch, gpu)
        self.tables = load_tables(path)
        if gpu_scale != 1.0:
            self.tables = {name: table.assign(**{c: table[c] * gpu_scale for c in TIME_COLUMNS if c in table})
                           for name, table in self.tables.items()}
        if "ops" not in self.tables:
            raise InputError(f"{path}: ops.parquet is missing")
        ops = self.tables["ops"].dropna(subset=["median_us"])
        self.ops = {str(op): OpTable(str(op), rows, arch, gpu.num_sms)
                    for op, rows in ops.groupby("op", observed=True)}
        shares = self.tables.get("sm_shares", pd.DataFrame(columns=TABLES["sm_shares"]))
        self.ratios = {str(op): RatioTable(str(op), rows, self.ops[str(op)], gpu.num_sms)
                       for op, rows in shares.dropna(subset=["median_us"]).groupby("op", observed=True) if op in self.ops}
        corun = self.tables.get("contention", pd.DataFrame(columns=TABLES["contention"]))
        self.contention = contention_curves(corun.dropna(subset=["slowdown"]))
        self.gaps = sum(t.gaps for t in self.ops.values())

"""Figures of a sweep: Pareto frontiers, goodput vs rate, SLO attainment vs SLO scale, latency CDFs.

Every function takes the sweep's tables (results, cdfs, search; see servesim.sweep) and writes
FIG.png and FIG.svg atomically, plus FIG.points.csv: one row per plotted point with its
run_hash, the name of its record OUT/runs/<run_hash>.json (the SVG's points link there too).
One colour per policy; a policy's variants are shades of it. Only this module imports matplotlib.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from servesim.outputs import atomic_write

matplotlib.use("Agg")  # files only, never a window

POLICY_COLORS = {"vllm": "#d62728", "vllm_v1": "#ff7f0e", "sarathi": "#1f77b4", "orca": "#7f7f7f",
                 "layered": "#2ca02c", "flowprefill": "#9467bd", "nexus": "#8c564b"}
SPARE_COLORS = ("#e377c2", "#bcbd22", "#17becf", "#000000")
KINDS = ("pareto_latency", "pareto_throughput", "goodput_vs_rate", "slo_vs_scale", "latency_cdf")


def policy_color(policy: str, policies: Sequence[str]) -> tuple[float, float, float]:
    if policy in POLICY_COLORS:
        return to_rgb(POLICY_COLORS[policy])
    others = sorted(p for p in policies if p not in POLICY_COLORS)
    return to_rgb(SPARE_COLORS[others.index(policy) % len(SPARE_COLORS)])


def series_colors(frame: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """variant -> colour: its policy's colour, lighter for each further variant of the policy
    (a colour map over the variants when there is only one policy)."""
    out = {}
    policies = sorted(frame.policy.unique())
    if len(policies) == 1:  # one policy: its variants along a sequential colour map
        variants = list(dict.fromkeys(frame.variant))
        cmap = plt.get_cmap("viridis")
        return {str(v): to_rgb(cmap(0.9 * i / max(len(variants) - 1, 1))) for i, v in enumerate(variants)}
    for policy, group in frame.groupby("policy", sort=True, observed=True):
        variants = list(dict.fromkeys(group.variant))
        base = np.array(policy_color(str(policy), policies))
        for i, v in enumerate(variants):
            mix = 0.6 * i / max(len(variants) - 1, 1)
            out[str(v)] = tuple(float(c) for c in base * (1 - mix) + mix * 0.92)
    return out  # type: ignore[return-value]


def pareto_mask(x: np.ndarray, y: np.ndarray, maximize: bool = False) -> np.ndarray:
    """True where no other point is at least as good on both axes and better on one
    (good = smaller, or larger with `maximize`)."""
    sign = -1.0 if maximize else 1.0
    a, b = sign * np.asarray(x, float), sign * np.asarray(y, float)
    mask = np.ones(len(a), dtype=bool)
    for i in range(len(a)):
        dominated = (a <= a[i]) & (b <= b[i]) & ((a < a[i]) | (b < b[i]))
        mask[i] = not dominated.any()
    return mask


def save_figure(fig: Figure, stem: Path, points: pd.DataFrame) -> list[Path]:
    """STEM.png, STEM.svg and STEM.points.csv, each written whole, the same bytes for the same
    figure: the SVG without its date and with element ids from a fixed salt (matplotlib draws
    them at random otherwise)."""
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg"), stem.with_suffix(".points.csv")]
    atomic_write(paths[0], lambda p: fig.savefig(p, format="png", dpi=130, bbox_inches="tight"))
    with plt.rc_context({"svg.hashsalt": "servesim"}):
        atomic_write(paths[1], lambda p: fig.savefig(p, format="svg", bbox_inches="tight",
                                                     metadata={"Date": None}))
    atomic_write(paths[2], lambda p: points.to_csv(p, index=False))
    plt.close(fig)
    return paths


def _scatter(ax: Axes, frame: pd.DataFrame, x: str, y: str, color: Any, label: str,
             frontier: np.ndarray) -> None:
    ax.scatter(frame[x], frame[y], color=[color], s=22, alpha=0.8, label=label, zorder=2,
               urls=[f"../runs/{h}.json" for h in frame.run_hash])
    front = frame[frontier].sort_values(x)
    ax.scatter(front[x], front[y], facecolors="none", edgecolors="black", s=70, linewidths=1.2,
               zorder=3)


def _points(frame: pd.DataFrame, x: str, y: str, panel: str, frontier: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"panel": panel, "policy": frame.policy, "variant": frame.variant,
                         "rate_scale": frame.rate_scale, "x": frame[x], "y": frame[y],
                         "on_frontier": frontier, "run_hash": frame.run_hash,
                         "record": "runs/" + frame.run_hash + ".json"})


def _panels(n: int, width: float = 5.2, height: float = 4.2) -> tuple[Figure, list[Axes]]:
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _log_axes(ax: Axes, y: bool = True) -> None:
    """Log scale (x, and y unless told) with plain-number ticks: 1, 2, 5 x 10^k over a few
    decades, 10^k over more. Call after plotting (the tick density follows the data)."""
    axes = [(ax.xaxis, ax.get_xlim)] + ([(ax.yaxis, ax.get_ylim)] if y else [])
    ax.set(xscale="log", yscale="log" if y else "linear")
    for axis, limits in axes:
        lo, hi = limits()
        subs = (1.0, 2.0, 5.0) if np.log10(max(hi, 1e-12) / max(lo, 1e-12)) <= 2.5 else (1.0,)
        axis.set_major_locator(LogLocator(subs=subs))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)


def _short(knob: str) -> str:
    value = knob.split("=", 1)[1]
    return value if value.replace(".", "", 1).isdigit() else knob


def _base_slo(results: pd.DataFrame, grid_only: bool = True) -> pd.DataFrame:
    """Successful runs at the base SLOs (slo_scale 1 when swept); grid runs unless told."""
    ok = results[(results.status == "ok") & ((results.kind == "grid") | (not grid_only))]
    return ok[ok.slo_scale == 1.0] if (ok.slo_scale == 1.0).any() else ok


def _frontier_by_policy(ax: Axes, frame: pd.DataFrame, x: str, y: str, maximize: bool,
                        panel: str) -> list[pd.DataFrame]:
    """Each policy's points in its colour, its own frontier joined and ringed."""
    out = []
    policies = sorted(frame.policy.unique())
    for policy, g in frame.groupby("policy", sort=True, observed=True):
        mask = pareto_mask(g[x].to_numpy(), g[y].to_numpy(), maximize)
        color = policy_color(str(policy), policies)
        knobs = sorted({k.split("=")[0] for v in g.variant for k in str(v).split(" ")[1:]})
        _scatter(ax, g, x, y, color, f"{policy} [{', '.join(knobs)}]" if knobs else str(policy), mask)
        front = g[mask].sort_values(x)
        ax.plot(front[x], front[y], color=color, lw=1.2, zorder=1,
                drawstyle="steps-post" if not maximize else "default")
        for _, row in front.iterrows():  # numeric knob values (named in the legend), else k=v
            values = ",".join(_short(k) for k in str(row.variant).split(" ")[1:])
            ax.annotate(values, (row[x], row[y]), fontsize=6.5, xytext=(3, 3), textcoords="offset points")
        out.append(_points(g, x, y, panel, mask))
    return out


def plot_pareto_latency(results: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """P99 TTFT vs P99 TBT across knobs, one panel per rate_scale; lower-left is better."""
    ok = _base_slo(results)
    rates = sorted(ok.rate_scale.unique())
    fig, axes = _panels(len(rates))
    points = []
    for ax, rate in zip(axes, rates, strict=True):
        frame = ok[ok.rate_scale == rate]
        points += _frontier_by_policy(ax, frame, "p99_itl_ms", "p99_ttft_ms", False, f"rate_scale={rate:g}")
        _log_axes(ax)
        ax.set(xlabel="P99 TBT (ms)", ylabel="P99 TTFT (ms)",
               title=f"rate x{rate:g} ({frame.offered_request_rate.mean():.1f} req/s)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: P99 TTFT vs P99 TBT (ringed: each policy's Pareto frontier)")
    return save_figure(fig, stem, pd.concat(points))


def plot_pareto_throughput(results: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Output tokens/s per user vs per GPU over every knob and rate; upper-right is better."""
    ok = _base_slo(results)
    fig, (ax,) = _panels(1, 6.5, 4.8)
    points = _frontier_by_policy(ax, ok, "tokens_per_s_per_user", "tokens_per_s_per_gpu", True, "all")
    ax.set(xlabel="tokens/s/user (output tok/s per concurrent request)",
           ylabel="tokens/s/GPU (output tok/s)", title=f"{title}: throughput Pareto frontier")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, stem, pd.concat(points))


def _lines(ax: Axes, frame: pd.DataFrame, x: str, y: str, panel: str) -> list[pd.DataFrame]:
    colors, out = series_colors(frame), []
    for variant, g in frame.groupby("variant", sort=False, observed=True):
        g = g.sort_values(x)
        ax.plot(g[x], g[y], "o-", color=colors[str(variant)], label=str(variant), ms=3.5, lw=1.2)
        out.append(_points(g, x, y, panel, np.zeros(len(g), dtype=bool)))
    return out


def plot_goodput_vs_rate(results: pd.DataFrame, search: pd.DataFrame | None, stem: Path,
                         title: str = "") -> list[Path]:
    """Request goodput and SLO attainment vs offered rate, per configuration; the searched
    goodput rate (DistServe) is starred on the attainment panel."""
    ok = _base_slo(results, grid_only=False).drop_duplicates("run_hash")
    fig, (a1, a2) = _panels(2, 6.0, 4.4)
    points = _lines(a1, ok, "offered_request_rate", "request_goodput", "goodput")
    points += _lines(a2, ok, "offered_request_rate", "slo_attainment", "attainment")
    if search is not None and len(search):
        colors = series_colors(ok)
        found = search[(search.criterion == "goodput") & (search.request_rate > 0)]
        for _, row in found.iterrows():
            rec = ok[ok.run_hash == row.run_hash]
            if len(rec) and row.variant in colors:  # '^': the search's top rate still passed
                a2.plot(row.request_rate, rec.slo_attainment.iloc[0], "^" if row.censored else "*",
                        ms=12, color=colors[row.variant], markeredgecolor="black")
        threshold = float(found.threshold.iloc[0].split(">=")[1]) if len(found) else 0.9
        a2.axhline(threshold, color="black", ls="--", lw=0.8)
        _mark_capacity(a1, ok, search, colors)
    a1.set(xlabel="offered request rate (req/s)", ylabel="request goodput (req/s meeting all SLOs)")
    a2.set(xlabel="offered request rate (req/s)", ylabel="SLO attainment (fraction of requests)",
           ylim=(-0.02, 1.02))
    for ax in (a1, a2):
        ax.grid(True, alpha=0.3)
    a2.legend(fontsize=6, loc="best")
    fig.suptitle(f"{title}: goodput vs rate\n(star: DistServe goodput rate, ^ if above the range searched; "
                 "diamond: Sarathi-Serve capacity)")
    return save_figure(fig, stem, pd.concat(points))


def _mark_capacity(ax: Axes, ok: pd.DataFrame, search: pd.DataFrame,
                   colors: Mapping[str, Any]) -> None:
    """Diamonds on the goodput curves at each configuration's Sarathi-Serve capacity."""
    found = search[(search.criterion == "capacity") & (search.request_rate > 0)]
    for _, row in found.iterrows():
        rec = ok[ok.run_hash == row.run_hash]
        if len(rec) and row.variant in colors:
            ax.plot(row.request_rate, rec.request_goodput.iloc[0], "D", ms=7,
                    color=colors[row.variant], markeredgecolor="black")


def plot_slo_vs_scale(results: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """SLO attainment vs SLO scale (all targets multiplied), a panel per rate_scale swept
    over more than one SLO scale."""
    ok = results[(results.status == "ok") & (results.kind == "grid")]
    scales = ok.groupby("rate_scale", observed=True).slo_scale.nunique()
    rates = sorted(scales.index[scales > 1])
    fig, axes = _panels(len(rates))
    points = []
    for ax, rate in zip(axes, rates, strict=True):
        points += _lines(ax, ok[ok.rate_scale == rate], "slo_scale", "slo_attainment", f"rate_scale={rate:g}")
        ax.set(xlabel="SLO scale (x base targets)", ylabel="SLO attainment (fraction of requests)",
               ylim=(-0.02, 1.02), title=f"rate x{rate:g}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"{title}: SLO attainment vs SLO scale")
    return save_figure(fig, stem, pd.concat(points))


def plot_latency_cdf(results: pd.DataFrame, cdfs: pd.DataFrame, stem: Path, title: str = "",
                     rate_scale: float | None = None) -> list[Path]:
    """TTFT and TBT CDFs of every configuration at one rate_scale (default: the highest)."""
    ok = _base_slo(results)
    rate = float(rate_scale if rate_scale is not None else ok.rate_scale.max())
    frame = ok[np.isclose(ok.rate_scale, rate)].drop_duplicates("variant")
    colors = series_colors(frame)
    fig, axes = _panels(2, 6.0, 4.4)
    points = []
    for ax, (metric, name) in zip(axes, (("ttft", "TTFT"), ("itl", "TBT (every token gap)")), strict=True):
        for _, row in frame.iterrows():
            c = cdfs[(cdfs.run_hash == row.run_hash) & (cdfs.metric == metric)]
            ax.plot(c.value_ms, c["quantile"], color=colors[row.variant], label=row.variant, lw=1.3)
            points.append(pd.DataFrame({"panel": metric, "variant": row.variant, "x": c.value_ms,
                                        "y": c["quantile"], "run_hash": row.run_hash}))
        _log_axes(ax, y=False)
        ax.set(xlabel=f"{name} (ms)", ylabel="CDF (fraction)", ylim=(0, 1.01))
    axes[1].legend(fontsize=6, loc="best")
    fig.suptitle(f"{title}: latency CDFs at rate x{rate:g}")
    return save_figure(fig, stem, pd.concat(points))


def _can_draw(kind: str, results: pd.DataFrame) -> str:
    """Why `kind` cannot be drawn from these results ('' if it can)."""
    ok = results[results.status == "ok"] if "status" in results else results
    if ok.empty:
        return "no successful runs"
    if kind == "goodput_vs_rate" and ok.offered_request_rate.nunique() < 2:
        return "needs at least two rates"
    if kind == "slo_vs_scale" and (ok.groupby("rate_scale", observed=True).slo_scale.nunique() < 2).all():
        return "needs a slo_scale axis"
    return ""


def draw(out: Path, plots: Sequence[tuple[str, Mapping[str, Any]]] | None = None,
         title: str = "", figures: Path | None = None) -> tuple[list[Path], list[str]]:
    """Draw the sweep in OUT (results.parquet, cdfs.parquet, search.parquet) into
    FIGURES (default OUT/figures); returns the files written and notes on plots skipped."""
    results = pd.read_parquet(out / "results.parquet")
    cdfs = pd.read_parquet(out / "cdfs.parquet")
    search = pd.read_parquet(out / "search.parquet") if (out / "search.parquet").exists() else None
    figures = figures or out / "figures"
    draw_fns: dict[str, Callable[[Path, Mapping[str, Any]], list[Path]]] = {
        "pareto_latency": lambda s, o: plot_pareto_latency(results, s, title),
        "pareto_throughput": lambda s, o: plot_pareto_throughput(results, s, title),
        "goodput_vs_rate": lambda s, o: plot_goodput_vs_rate(results, search, s, title),
        "slo_vs_scale": lambda s, o: plot_slo_vs_scale(results, s, title),
        "latency_cdf": lambda s, o: plot_latency_cdf(results, cdfs, s, title, o.get("rate_scale")),
    }
    written, notes = [], []
    for kind, options in plots or [(k, {}) for k in KINDS]:
        why = _can_draw(kind, results)
        if why:
            notes.append(f"{kind}: skipped ({why})")
            continue
        written += draw_fns[kind](figures / str(options.get("name", kind)), options)
    return written, notes


def _cdf(values: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the empirical CDF, thinned to about `max_points` steps spread evenly in y
    (the first and last kept): the curve is the same at any plotted size, and the points file
    stays small for runs with hundreds of thousands of token gaps."""
    x = np.sort(values)
    n = len(x)
    rank = np.arange(n) if n <= max_points else np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
    return x[rank], (rank + 1) / max(n, 1)


def plot_validation_cdf(measured: pd.DataFrame, predicted: pd.DataFrame, measured_itl_s: np.ndarray,
                        predicted_itl_s: np.ndarray, stem: Path, title: str = "") -> list[Path]:
    """`servesim validate`: measured vs predicted CDFs of TTFT and of every token gap."""
    fig, axes = _panels(2, 6.0, 4.4)
    points = []
    series = (("ttft", "TTFT", measured.ttft_s.dropna(), predicted.ttft_s.dropna()),
              ("itl", "TBT (every token gap)", pd.Series(measured_itl_s), pd.Series(predicted_itl_s)))
    for ax, (metric, name, meas, pred) in zip(axes, series, strict=True):
        for label, values, style in (("measured (runtime)", meas, "-"), ("predicted (simulator)", pred, "--")):
            x, y = _cdf(np.asarray(values, dtype=float) * 1000.0)
            ax.plot(x, y, style, lw=1.4, label=label, color="black" if style == "-" else "#1f77b4")
            points.append(pd.DataFrame({"panel": metric, "series": label, "x": x, "y": y}))
        _log_axes(ax, y=False)
        ax.set(xlabel=f"{name} (ms)", ylabel="CDF (fraction)", ylim=(0, 1.01))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title or "measured vs predicted")
    return save_figure(fig, stem, pd.concat(points))


def plot_validation_matrix(errors: pd.DataFrame, targets: Mapping[str, float], stem: Path,
                           title: str = "") -> list[Path]:
    """Validation runs (rows) x metrics (columns): each cell the relative error of the
    prediction in per cent, green within its target (`targets`: metric -> bound), red beyond
    it (darker up to 3x the bound); a metric without a target is grey."""
    runs, metrics = list(errors.index), list(errors.columns)
    fig, ax = plt.subplots(figsize=(1.45 * len(metrics) + 2.2, 0.36 * len(runs) + 1.4))
    colors = np.ones((len(runs), len(metrics), 3))
    values = errors.to_numpy(float)
    points = []
    for i, run in enumerate(runs):
        for j, metric in enumerate(metrics):
            value = float(values[i, j])
            bound = targets.get(metric)
            if not np.isfinite(value):
                shade = (1.0, 1.0, 1.0)
            elif bound is None:
                shade = (0.88, 0.88, 0.88)
            else:
                depth = min(abs(value) / bound, 3.0)
                shade = (0.70, 0.88, 0.70) if depth <= 1 else (0.98, 0.80 - 0.15 * (depth - 1), 0.78 - 0.15 * (depth - 1))
            colors[i, j] = shade
            ax.text(j, i, "-" if not np.isfinite(value) else f"{100 * value:+.1f}", ha="center", va="center",
                    fontsize=8)
            points.append({"run": run, "metric": metric, "rel_error": value, "target": bound,
                           "met": None if bound is None or not np.isfinite(value) else abs(value) <= bound})
    ax.imshow(colors, aspect="auto")
    ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics], rotation=25, ha="right", fontsize=8)
    ax.set_yticks(range(len(runs)), runs, fontsize=8)
    ax.set_xticks(np.arange(len(metrics) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(runs) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title(title or "prediction error (%): green within target, red beyond", fontsize=10)
    return save_figure(fig, stem, pd.DataFrame(points))

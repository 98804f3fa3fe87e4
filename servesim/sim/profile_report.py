"""Accuracy of a profiled cost model on the measurements it was not built from.

`servesim profile --validate` stores held-out operator shapes (validation_ops) and whole-model
iterations of random mixed batches (validation_iters) beside the grid tables; this module
predicts each with `ProfiledCostModel` and reports the relative error |pred / measured - 1|
(median, p95, max) per operator table, per operator kind and per iteration, against the
targets: operator median <= 3% and p95 <= 8%, iteration median <= 5%.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from servesim.models.profile_schema import GEMM_OPS, OP_AXES
from servesim.models.shapes import BatchShape
from servesim.sim.profiled import ProfiledCostModel

TARGETS = {"op_median": 0.03, "op_p95": 0.08, "iteration_median": 0.05}
_KINDS = {"gemm": GEMM_OPS, "attention": ("attn_prefill", "attn_decode", "attn_prefill_packed"),
          "moe": ("moe_gate_up", "moe_down", "moe_fused", "topk_softmax", "moe_align", "moe_silu_mul")}


def kind_of(op: str) -> str:
    return next((k for k, ops in _KINDS.items() if op in ops), "elementwise")


def _batch(row: Any) -> BatchShape:
    tokens = tuple(int(v) for v in str(row.prefill_tokens).split())
    prefix = tuple(int(v) for v in str(row.prefill_prefix).split())
    return BatchShape(tokens, prefix, int(row.num_decodes), int(row.decode_context),
                      int(row.max_decode_context), int(row.num_logits))


def prediction_errors(model: ProfiledCostModel) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(held-out operators, iterations), each with measured_s, predicted_s, error, off_grid."""
    tables = model.profile.tables
    ops = tables.get("validation_ops", pd.DataFrame()).dropna(subset=["median_us"]).copy()
    preds = [model.table_seconds(str(op), (float(a), float(b), float(c))[: len(OP_AXES[str(op)])])
             for op, a, b, c in zip(ops.op, ops.a, ops.b, ops.c, strict=True)]
    ops["measured_s"] = ops.median_us * 1e-6
    ops["predicted_s"] = [p for p, _ in preds]
    ops["off_grid"] = [o for _, o in preds]
    ops["kind"] = [kind_of(str(op)) for op in ops.op]
    iters = tables.get("validation_iters", pd.DataFrame()).dropna(subset=["median_us"]).copy()
    iters["measured_s"] = iters.median_us * 1e-6
    iters["predicted_s"] = [model.step_time(_batch(r)) for r in iters.itertuples()]
    for frame in (ops, iters):
        frame["error"] = frame.predicted_s / frame.measured_s - 1.0
    return ops, iters


def _stats(errors: pd.Series) -> dict[str, float]:
    e = errors.abs().to_numpy(float)
    if not len(e):
        return {"n": 0}
    return {"n": len(e), "median": float(np.median(e)), "p95": float(np.percentile(e, 95)),
            "max": float(e.max()), "bias": float(np.median(errors))}


def report(model: ProfiledCostModel) -> dict[str, Any]:
    ops, iters = prediction_errors(model)
    per_op = {str(op): _stats(g.error) for op, g in ops.groupby("op", observed=True)}
    per_kind = {str(k): _stats(g.error) for k, g in ops.groupby("kind", observed=True)}
    overall, it = _stats(ops.error), _stats(iters.error)
    met = {"op_median": overall.get("median", 1.0) <= TARGETS["op_median"],
           "op_p95": overall.get("p95", 1.0) <= TARGETS["op_p95"],
           "iteration_median": it.get("median", 1.0) <= TARGETS["iteration_median"]}
    return {"model": model.arch.name, "gpu": model.gpu.name, "profile_date": model.profile.meta.get("date"),
            "grid": model.profile.meta.get("grid", {}).get("mode"), "targets": TARGETS, "met": met,
            "operators": overall, "per_kind": per_kind, "per_op": per_op, "iterations": it,
            "iteration_rows": iters[["batch_id", "prefill_tokens", "prefill_prefix", "num_decodes",
                                     "decode_context", "measured_s", "predicted_s", "error"]].to_dict("records")}


def markdown(rep: dict[str, Any]) -> str:
    """The report as a markdown table (errors in %)."""
    def row(name: str, s: dict[str, float]) -> str:
        if not s.get("n"):
            return f"| {name} | 0 | - | - | - | - |"
        return (f"| {name} | {s['n']} | {100 * s['median']:.1f} | {100 * s['p95']:.1f} | "
                f"{100 * s['max']:.1f} | {100 * s['bias']:+.1f} |")

    lines = [f"# {rep['model']} on {rep['gpu']}: profile accuracy ({rep['grid']} grid, {rep['profile_date']})",
             "", "|absolute error %| n | median | p95 | max | signed median |", "|---|---|---|---|---|---|",
             row("all operators", rep["operators"]), row("whole iterations", rep["iterations"])]
    lines += [row(f"kind: {k}", s) for k, s in sorted(rep["per_kind"].items())]
    lines += [row(op, s) for op, s in sorted(rep["per_op"].items())]
    met = ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in rep["met"].items())
    lines += ["", f"Targets: operator median <= 3%, p95 <= 8%; iteration median <= 5%. {met}."]
    return "\n".join(lines) + "\n"

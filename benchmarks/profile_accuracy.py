"""Prediction error of the shipped profiles on their own --validate measurements (CPU only).

For each shipped (GPU, model) profile: held-out operator shapes and whole-model iterations of
random mixed batches, measured on the GPU by `servesim profile --validate`, against what
ProfiledCostModel predicts from the grid tables. Writes the report beside the profile
(validation_report.json/.md) and to benchmarks/results/<gpu>-profile-<model>.json|md, plus
<gpu>-profile-summary.md.

    PYTHONPATH=. python benchmarks/profile_accuracy.py [--worst N] [--no-write]
    PYTHONPATH=. python benchmarks/profile_accuracy.py --profile DIR --model NAME [--gpu h200]

--worst N also prints each model's N held-out operators and iterations of largest error;
--no-write prints without writing any report. --profile evaluates one profile directory that
is not shipped (a new measurement) and writes its report into that directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from servesim.models.arch import load_model
from servesim.sim import profile_report
from servesim.sim.hardware import get_gpu
from servesim.sim.profile_tables import shipped_profiles, shipped_root
from servesim.sim.profiled import ProfiledCostModel

RESULTS = Path(__file__).parent / "results"


def pct(s: dict, key: str) -> str:
    return f"{100 * s[key]:.1f}" if s.get("n") else "-"


def worst(model: ProfiledCostModel, n: int) -> str:
    """The n held-out operators and iterations of largest relative error, as text."""
    ops, iters = profile_report.prediction_errors(model)
    lines = []
    for name, frame, cols in (("operators", ops, ["op", "a", "b", "c"]),
                              ("iterations", iters, ["prefill_tokens", "prefill_prefix", "num_decodes",
                                                     "decode_context", "max_decode_context"])):
        top = frame.assign(abs_error=frame.error.abs()).nlargest(n, "abs_error")
        top = top.assign(measured_us=top.measured_s * 1e6, predicted_us=top.predicted_s * 1e6)
        lines += [f"  worst {name}:", top[cols + ["measured_us", "predicted_us", "error"]].round(3).to_string()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worst", type=int, default=0, help="print the N worst held-out points per model")
    parser.add_argument("--no-write", action="store_true", help="print only; write no report")
    parser.add_argument("--profile", help="a profile directory to evaluate instead of the shipped ones")
    parser.add_argument("--model", help="the model of --profile")
    parser.add_argument("--gpu", default="h200", help="the GPU of --profile")
    args = parser.parse_args()
    if args.profile:
        if not args.model:
            parser.error("--profile needs --model")
        cost = ProfiledCostModel(load_model(args.model), get_gpu(args.gpu), args.profile)
        rep = profile_report.report(cost)
        o, i = rep["operators"], rep["iterations"]
        print(f"{args.profile}: op median / p95 / max {pct(o, 'median')} / {pct(o, 'p95')} / {pct(o, 'max')} %, "
              f"iteration {pct(i, 'median')} / {pct(i, 'p95')} / {pct(i, 'max')} %")
        if args.worst:
            print(worst(cost, args.worst))
        if not args.no_write:
            Path(args.profile, "validation_report.json").write_text(json.dumps(rep, indent=1) + "\n")
            Path(args.profile, "validation_report.md").write_text(profile_report.markdown(rep))
        return
    summary = ["| GPU | model | grid | op median % | op p95 % | op max % | iter median % | iter p95 % | "
               "iter max % | targets |", "|---|---|---|---|---|---|---|---|---|---|"]
    for gpu, model in shipped_profiles():
        cost = ProfiledCostModel(load_model(model), get_gpu(gpu))
        rep = profile_report.report(cost)
        o, i = rep["operators"], rep["iterations"]
        met = ", ".join(f"{k} {'ok' if v else 'MISS'}" for k, v in rep["met"].items())
        summary.append(f"| {gpu} | {model} | {rep['grid']} | {pct(o, 'median')} | {pct(o, 'p95')} | "
                       f"{pct(o, 'max')} | {pct(i, 'median')} | {pct(i, 'p95')} | {pct(i, 'max')} | {met} |")
        print(summary[-1])
        if args.worst:
            print(worst(cost, args.worst))
        if not args.no_write:
            text, md = json.dumps(rep, indent=1) + "\n", profile_report.markdown(rep)
            profile_dir = Path(str(shipped_root().joinpath(gpu).joinpath(model)))
            RESULTS.mkdir(exist_ok=True)
            for out in (profile_dir / "validation_report", RESULTS / f"{gpu}-profile-{model}"):
                Path(f"{out}.json").write_text(text)
                Path(f"{out}.md").write_text(md)
    if not args.no_write:
        (RESULTS / "h200-profile-summary.md").write_text("\n".join(summary) + "\n")


if __name__ == "__main__":
    main()

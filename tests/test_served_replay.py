"""benchmarks/pass_fidelity.py --cases served: the contexts of a validation run's decode steps,
rebuilt from its request table, on a committed H200 measurement."""

import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "results" / "h200-validate-4" / "vllm-load90"


def _pass_fidelity() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import pass_fidelity
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return pass_fidelity


def test_every_decode_step_of_a_served_run_is_rebuilt_from_its_requests():
    pf = _pass_fidelity()
    steps = pd.read_csv(RUN / "steps.csv.gz")
    contexts = pf.served_contexts(RUN)
    decode_only = steps[steps.num_prefills == 0]
    assert sorted(contexts) == decode_only.index.tolist()
    for k in decode_only.index[::50]:
        got, row = contexts[k], steps.loc[k]
        assert (len(got), sum(got), max(got)) == (row.num_decodes, row.decode_context, row.max_decode_context)
    rows = pf.served_rows(RUN)
    for lo, hi in pf.SERVED_BINS:
        held = [r for r in rows.values() if lo <= r["size"] <= hi]
        assert 1 <= len(held) <= pf.SERVED_PER_BIN
        assert sum(bool(r["kernels"]) for r in held) == 1
        for r in held:
            assert r["served_gpu_us"] == pytest.approx(1e6 * steps.gpu_s[r["step"]])


def test_a_request_table_that_does_not_match_the_steps_is_refused(tmp_path: Path):
    pf = _pass_fidelity()
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    served = pd.read_csv(run / "measured_requests.csv")
    served.loc[served.index[len(served) // 2], "num_prompt_tokens"] += 1  # a request one token longer
    served.to_csv(run / "measured_requests.csv", index=False)
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        pf.served_contexts(run)

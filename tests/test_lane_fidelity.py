"""benchmarks/lane_fidelity.py --measured: the committed H200 measurement of Nexus's decode
lanes priced again on the CPU, as the simulator prices a served step."""

import json
from pathlib import Path

from simkit import benchmark

ROOT = Path(__file__).resolve().parent.parent
MEASURED = ROOT / "benchmarks" / "results" / "h200-lane-fidelity-kernels.json"


def test_kernel_classes_split_a_pass_without_losing_time():
    lf = benchmark("lane_fidelity")
    kernels = {"_decode_attn_kernel": 400.0, "_decode_reduce_kernel": 50.0, "_gemm_splitk_kernel": 3000.0,
               "_splitk_reduce_kernel": 50.0, "_rmsnorm_kernel": 90.0, "Memcpy DtoD": 5.0}
    assert lf._kernel_classes(kernels) == [400.0, 50.0, 3050.0, 95.0]


def test_the_runtime_pass_is_priced_as_a_served_step(capsys):
    """A batch between two graph sizes is priced at the graph's factor with its padding rows; a
    batch at a graph size exactly as the profiler's pass of it."""
    lf = benchmark("lane_fidelity")
    result = json.loads(MEASURED.read_text())
    lf.report(result)
    out = capsys.readouterr().out
    rows = {(r["decode_sms"], r["decodes"]): r for r in result["rows"]}
    assert len(rows) == 24 and all(r["served_price_us"] > 0 for r in rows.values())
    for sms in (68, 76, 84, 92):
        at_size = rows[(sms, 16)]
        assert abs(at_size["served_price_us"] / at_size["priced_us"] - 1) < 1e-9
        assert rows[(sms, 9)]["served_price_us"] != rows[(sms, 9)]["priced_us"]
    assert "| 92 | 9 |" in out and "decode attention" in out

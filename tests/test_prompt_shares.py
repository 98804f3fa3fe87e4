"""Validate's record of the split controller's decisions: the share of prompt tokens that ran
at each prefill SM count, measured and predicted."""

from __future__ import annotations

import pandas as pd
from simkit import limits

from servesim.sim.state import IterationLog, SimResult
from servesim.validate import _prompt_shares, report_markdown


def test_prompt_tokens_are_counted_at_the_split_each_pass_started_on() -> None:
    log = IterationLog()
    log.add(0.0, 0.1, 100, 0, 0, 0)  # before the re-split: 40 SMs
    log.add(0.05, 0.06, 0, 8, 0, 1)  # a decode pass: not a prompt
    log.add(1.0, 1.1, 300, 0, 0, 0)  # starts at the re-split: 56 SMs
    predicted = SimResult([], log, [], limits(), 0, 1.1, {"sm_splits": [(0.0, 40), (1.0, 56)]})
    steps = pd.DataFrame({"partition": [0, 1, 0, 0], "sms": [40, 92, 24, 40],
                          "prefill_tokens": [100, 0, 200, 100]})
    shares = _prompt_shares(steps, predicted)["prompt_token_shares"]
    assert shares == {"measured": {"24": 0.5, "40": 0.5}, "predicted": {"40": 0.25, "56": 0.75}}
    text = report_markdown({"metrics": {}, "policy": "nexus", "model": "m", "device": "d", "cost_model": "c",
                            "requests": 0, "kv_blocks": 1, "prompt_token_shares": shares})
    assert "| measured | 50.0% | 50.0% | 0.0% |" in text and "| predicted | 0.0% | 25.0% | 75.0% |" in text


def test_no_shares_off_partitions() -> None:
    predicted = SimResult([], IterationLog(), [], limits(), 0, 0.0, {})
    assert _prompt_shares(pd.DataFrame({"partition": [-1], "sms": [0], "prefill_tokens": [5]}), predicted) == {}

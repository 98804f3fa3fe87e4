"""A Chrome/Perfetto timeline of the simulated GPU (open it in ui.perfetto.dev or
chrome://tracing): one track per SM partition with every iteration (prefill tokens, decodes),
instants for admissions, preemptions, finishes and rejections, and KV usage as a counter.
Times are microseconds of simulated time. Returns plain data; the CLI writes it."""

from __future__ import annotations

from typing import Any

from servesim.sim.engine import SimResult

_TRACKS = {0: "GPU", 1: "decode partition"}


def chrome_trace(result: SimResult, label: str = "servesim") -> dict[str, Any]:
    log = result.log
    partitioned = any(log.partition)
    names = {0: "prefill partition", 1: "decode partition"} if partitioned else _TRACKS
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": label}},
        *({"ph": "M", "name": "thread_name", "pid": 0, "tid": tid, "args": {"name": name}}
          for tid, name in names.items() if partitioned or tid == 0),
        {"ph": "M", "name": "thread_name", "pid": 0, "tid": 2, "args": {"name": "requests"}},
    ]
    total = result.limits.total_blocks
    for i in range(len(log.start_s)):
        start_us = log.start_s[i] * 1e6
        prefill, decodes = log.prefill_tokens[i], log.num_decodes[i]
        kind = "mixed" if prefill and decodes else "prefill" if prefill else "decode"
        events.append({
            "ph": "X", "name": kind, "pid": 0, "tid": int(log.partition[i]), "ts": start_us,
            "dur": (log.end_s[i] - log.start_s[i]) * 1e6,
            "args": {"prefill_tokens": prefill, "decodes": decodes},
        })
        events.append({"ph": "C", "name": "KV usage", "pid": 0, "ts": start_us,
                       "args": {"used_fraction": round(log.used_blocks[i] / total, 6)}})
    for t, what, rid in result.events:
        events.append({"ph": "i", "s": "t", "name": f"{what} {rid}", "pid": 0, "tid": 2,
                       "ts": t * 1e6, "args": {"request_id": rid, "event": what}})
    for t, sms in result.extra.get("sm_splits", []):
        events.append({"ph": "C", "name": "prefill SMs", "pid": 0, "ts": t * 1e6, "args": {"sms": sms}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}

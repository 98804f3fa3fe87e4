"""The SM-clock summary a validation report carries (nvidia-smi's CSV lines)."""

import datetime

import pandas as pd

from servesim.runtime.clocks import ClockMonitor, HostMonitor, clock_summary, host_summary
from servesim.validate import with_clocks


def test_clock_summary_flags_power_and_thermal_slowdowns_only():
    lines = ["2026/12/01 01:00:00.000, 1980, 1980, 0x0000000000000000, 400.5",
             "2026/12/01 01:00:00.100, 1755, 1980, 0x0000000000000004, 700.0",  # power cap
             "2026/12/01 01:00:00.200, 1980, 1980, 0x0000000000000001, [N/A]",  # idle: not a slowdown
             "2026/12/01 01:00:00.300, [N/A], 1980, 0x0, 100",  # unreadable sample: skipped
             "1980, 1980, 0x0",  # another format: skipped
             ""]
    s = clock_summary(lines)
    assert s["sm_clock_samples"] == 3
    assert s["sm_clock_median_mhz"] == 1980.0 and s["sm_clock_min_mhz"] == 1755.0
    assert abs(s["clock_slowed_share"] - 1 / 3) < 1e-12
    assert s["clock_slowed_reasons"] == "0x4"
    assert s["power_median_w"] == 550.25  # the sample without power left out


def test_clock_trace_is_timed_from_the_run_start_and_lands_on_the_steps():
    lines = [f"2026/12/01 01:00:0{i}.000, {1980 - 100 * i}, 1980, {'0x4' if i else '0x0'}, {500 + i}"
             for i in range(4)]
    start = datetime.datetime(2026, 12, 1, 1, 0, 0).timestamp()  # nvidia-smi prints local time
    monitor = ClockMonitor(None)
    monitor.lines = lines
    trace = monitor.trace(start + 0.5)
    assert [round(s.t_s, 6) for s in trace] == [-0.5, 0.5, 1.5, 2.5]
    steps = pd.DataFrame({"start_s": [0.0, 0.1, 0.9, 2.9, 10.0], "busy_s": [0.0, 0.01, 0.2, 0.02, 0.01]})
    timed = with_clocks(steps, trace)
    # Middles 0, 0.105, 1.0, 2.91, 10.005: the nearest samples -0.5 (a tie takes the earlier),
    # 0.5, 0.5 (a tie), 2.5, and the last one past the end.
    assert timed.sm_mhz.tolist() == [1980.0, 1880.0, 1880.0, 1680.0, 1680.0]
    assert timed.power_w.tolist() == [500.0, 501.0, 501.0, 503.0, 503.0]
    assert timed.power_capped.tolist() == [False, True, True, True, True]
    assert with_clocks(steps, []).equals(steps)
    # The host probe's samples (seconds from the start, us) land the same way, without clocks too.
    probed = with_clocks(steps, [], [(0.0, 1300.0), (1.2, 2600.0), (2.95, 1400.0)])
    assert probed.host_probe_us.tolist() == [1300.0, 1300.0, 2600.0, 1400.0, 1400.0]
    assert "sm_mhz" not in probed


def test_no_samples_off_the_gpu():
    with ClockMonitor(None) as clocks:
        pass
    assert clocks.summary() == {}


def test_host_summary_counts_slow_samples_against_the_fast_decile():
    lines = [f"{1.7e9 + i:.6f} 200000" for i in range(16)] + [f"{1.8e9 + i:.6f} 400000" for i in range(4)] \
        + ["garbage", "400000"]  # unreadable, or without its time: skipped
    s = host_summary(lines)
    assert s["host_probe_samples"] == 20
    assert s["host_probe_fast_us"] == 200.0 and s["host_probe_median_us"] == 200.0
    assert abs(s["host_slowed_share"] - 0.2) < 1e-12
    assert host_summary(lines[:5]) == {}


def test_host_monitor_samples_this_machine():
    import time
    with HostMonitor(period_ms=5) as host:
        time.sleep(0.5)
    s = host.summary()
    assert s["host_probe_samples"] >= 10
    assert 0 < s["host_probe_fast_us"] <= s["host_probe_median_us"]
    trace = host.trace(time.time())
    assert len(trace) == s["host_probe_samples"] and all(-5 < t <= 0 and us > 0 for t, us in trace)

"""The SM-clock summary a validation report carries (nvidia-smi's CSV lines)."""

from servesim.runtime.clocks import ClockMonitor, HostMonitor, clock_summary, host_summary


def test_clock_summary_flags_power_and_thermal_slowdowns_only():
    lines = ["1980, 1980, 0x0000000000000000",
             "1755, 1980, 0x0000000000000004",  # power cap
             "1980, 1980, 0x0000000000000001",  # idle: not a slowdown
             "[N/A], 1980, 0x0",  # unreadable sample: skipped
             ""]
    s = clock_summary(lines)
    assert s["sm_clock_samples"] == 3
    assert s["sm_clock_median_mhz"] == 1980.0 and s["sm_clock_min_mhz"] == 1755.0
    assert abs(s["clock_slowed_share"] - 1 / 3) < 1e-12
    assert s["clock_slowed_reasons"] == "0x4"


def test_no_samples_off_the_gpu():
    with ClockMonitor(None) as clocks:
        pass
    assert clocks.summary() == {}


def test_host_summary_counts_slow_samples_against_the_fast_decile():
    lines = [str(200_000)] * 16 + [str(400_000)] * 4 + ["garbage"]
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

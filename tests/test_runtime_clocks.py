"""The SM-clock summary a validation report carries (nvidia-smi's CSV lines)."""

from servesim.runtime.clocks import ClockMonitor, clock_summary


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

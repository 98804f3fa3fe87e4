"""Request workloads for the simulator: real traces and synthetic arrivals, with SLO classes.

`load_workload(spec, rng, base_dir)` is the one entry point: it turns a `WorkloadConfig` into
the request table the simulator replays (columns in `COLUMNS`). The readers, the synthetic
generators and the class rules are public for tools and tests.
"""

from servesim.traces.classes import ClassesConfig, ClassRule, Condition, assign_classes, parse_when
from servesim.traces.readers import FORMATS, SAMPLES, detect_format, load_trace, read_trace
from servesim.traces.synthetic import (
    LengthConfig,
    SyntheticConfig,
    arrival_times,
    clip_lengths,
    sample_lengths,
)
from servesim.traces.workload import COLUMNS, WorkloadConfig, load_workload, summarize

__all__ = [
    "COLUMNS",
    "FORMATS",
    "SAMPLES",
    "ClassRule",
    "ClassesConfig",
    "Condition",
    "LengthConfig",
    "SyntheticConfig",
    "WorkloadConfig",
    "arrival_times",
    "assign_classes",
    "clip_lengths",
    "detect_format",
    "load_trace",
    "load_workload",
    "parse_when",
    "read_trace",
    "sample_lengths",
    "summarize",
]

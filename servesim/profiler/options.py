"""The options of `servesim profile`, shared by the CLI and `python -m servesim.profiler.run`.
Torch-free, so the CLI can build its parser without the `gpu` extra installed."""

from __future__ import annotations

import argparse
import os


def add_profile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, help="preset or config.json (repeatable)")
    p.add_argument("--out", default="profiles", help="root of <gpu>/<model>/ profile directories")
    p.add_argument("--quick", action="store_true", help="coarser grid, fewer SM partitions")
    p.add_argument("--validate", action="store_true", help="also time held-out shapes and whole iterations")
    p.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1 (tiny grid)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--runtime-passes-only", action="store_true",
                   help="only time the runtime's whole prompt passes in serving's context, into the "
                        "existing profile under --out (its other tables kept)")
    only.add_argument("--ops-only", metavar="OP[,OP]",
                   help="only time these operators' whole-GPU points of the current grid, into the "
                        "existing profile under --out (their earlier rows replaced, the rest kept)")
    only.add_argument("--passes-only", action="store_true",
                   help="only time the grid's whole passes (decode-only, mixed, the Nexus lanes'), "
                        "into the existing profile under --out (their earlier rows replaced, the "
                        "runtime's prompt passes and the other tables kept)")
    p.add_argument("--missing", action="store_true",
                   help="with --ops-only or --passes-only: time only the grid points the profile "
                        "lacks (a grid made finer), keeping every row it has, so the points timed "
                        "before stay those of the card they were timed on")
    p.add_argument("--warm-workers", type=int, default=min(12, os.cpu_count() or 1),
                   help="processes compiling the kernels before timing (0 = none)")

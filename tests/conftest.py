"""Off the GPU every test runs servesim's Triton kernels under the interpreter. TRITON_INTERPRET
must be set before any kernel module is imported (the @triton.jit decorator reads it), and a test
file may import one through the package before a file that sets it is collected (run alone,
tests/test_profiled_cost_model.py then tests/test_profiler.py failed with "0 active drivers");
so it is set here, at collection, for a machine without CUDA. tests/gpu/ runs on a GPU, where it
stays unset."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

"""GPU tests run on a CUDA device (the H200); without one the whole folder is skipped, and its
modules are not even imported (so no kernel module is decorated outside interpreter mode)."""

from __future__ import annotations

import torch

collect_ignore_glob: list[str] = []
if not torch.cuda.is_available() or torch.version.cuda is None:
    collect_ignore_glob = ["test_*.py"]

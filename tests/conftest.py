"""Tests run on the CPU: Triton kernels go through Triton's interpreter there.

TRITON_INTERPRET must be set before any @triton.jit function is defined, so before the
package's kernels are imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

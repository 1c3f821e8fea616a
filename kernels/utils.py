"""Backend choice shared by the kernels."""

import os

import torch

BACKENDS = ("auto", "triton", "torch")

OP_TAGS = (torch.Tag.needs_exact_strides,) if hasattr(torch.Tag, "needs_exact_strides") else ()
"""Tags of the dit_sparse ops: Inductor hands them their inputs with the strides they were traced
with (broadcast index tables stay stride-0 views; q's layout decides the output's). Older torch
lacks the tag and applies its default constraint."""


def check_backend(backend: str):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(backend: str, x: torch.Tensor) -> bool:
    """Whether `backend` runs the Triton kernel for tensors on x's device.

    "auto": Triton on CUDA, the reference elsewhere. "triton" on a CPU tensor is only possible
    under the interpreter; anything else is an error that says so.
    """
    if backend == "torch":
        return False
    if x.is_cuda:
        return True
    if backend == "triton":
        if interpreting():
            return True
        raise ValueError(
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for Triton's CPU "
            "interpreter); use backend='torch' or 'auto' on the CPU"
        )
    return False


def cdiv(a: int, b: int) -> int:
    """Ceiling division on the host (`triton.cdiv` is a JIT callable: microseconds a call)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (>= 1), on the host without Triton's call overhead."""
    return 1 << max(0, n - 1).bit_length()

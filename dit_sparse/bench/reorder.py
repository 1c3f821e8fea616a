"""The position-major reordering pass of temporal heads on the GPU, against a plain copy of the
same bytes, at Wan2.1-1.3B 480p over rows per program x warps."""

from __future__ import annotations

import torch

from dit_sparse import TokenGrid
from dit_sparse.kernels.reorder import reorder_flagged_heads, reorder_tokens_reference

from .timing import cuda_time, write_gpu_results

GRID = TokenGrid(21, 30, 52)  # Wan2.1-1.3B 480x832x81
HEADS, HEAD_DIM = 12, 128
VARIANTS = tuple((block_s, warps) for block_s in (32, 64, 128, 256) for warps in (2, 4, 8))


def measure() -> tuple[list[dict], int]:
    """(one record per variant, clone first, the bytes read and written once) for q, k and v in
    the processors' (B, S, H, D) memory, every head flagged; each variant checked against the
    PyTorch reference."""
    S, order = GRID.num_tokens, GRID.order
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, S, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen).transpose(1, 2)
               for _ in range(3))
    flags = torch.ones(1, HEADS, dtype=torch.int8, device="cuda")
    moved = 2 * 3 * q.numel() * q.element_size()  # read and written once
    reference = reorder_tokens_reference(q, order)
    records = []
    clone_ms = cuda_time(lambda: [t.clone() for t in (q, k, v)])
    records.append(dict(variant="clone (copy ceiling)", ms=clone_ms, tb_per_s=moved / clone_ms / 1e9, exact=True))
    for block_s, warps in VARIANTS:
        ms = cuda_time(lambda: [reorder_flagged_heads(t, order, flags, block_s=block_s, num_warps=warps) for t in (q, k, v)])
        exact = torch.equal(reorder_flagged_heads(q, order, flags, block_s=block_s, num_warps=warps), reference)
        records.append(dict(variant=f"reorder block_s={block_s} warps={warps}", block_s=block_s, num_warps=warps,
                            ms=ms, tb_per_s=moved / ms / 1e9, exact=exact))
    return records, moved


def markdown(records: list[dict], moved: int, command: str, device: str) -> str:
    lines = [f"# Token reordering pass on {device}", "", f"Command: `{command}`", "",
             f"q, k and v of shape (1, {HEADS}, {GRID.num_tokens}, {HEAD_DIM}) bf16 in the processors' (B, S, H, D) "
             f"memory, every head reordered; {moved / 1e6:.0f} MB read and written. clone = the same bytes copied "
             "without reordering.", "",
             "| variant | ms | TB/s | equal to the reference |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['ms']:.4f} | {r['tb_per_s']:.2f} | {'yes' if r['exact'] else 'NO'} |" for r in records]
    return "\n".join(lines) + "\n"


def run(out, command: str) -> str:
    """Measure, write out/reorder_<gpu>.json and .md; returns the Markdown."""
    records, moved = measure()
    device = torch.cuda.get_device_name()
    md = markdown(records, moved, command, device)
    write_gpu_results(out, "reorder", device, dict(device=device, command=command, records=records), md)
    return md

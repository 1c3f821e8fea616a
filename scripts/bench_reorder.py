"""How fast the position-major reordering pass of temporal heads runs, against a plain copy.

At Wan2.1-1.3B 480p, (1, 12, 32760, 128) bf16 q, k and v laid out as the processors hand them
over (B, S, H, D memory, viewed as B, H, S, D), every head flagged: times
`reorder_flagged_heads` over q, k and v for rows per program x warps, and `torch.clone` of the
same three tensors (the copy bandwidth the pass can hope for). Checks each variant against
the PyTorch reference, prints a table, writes reorder_<gpu>.json / .md into --out.

    python scripts/bench_reorder.py --out docs/results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dit_sparse import TokenGrid
from dit_sparse.kernels.reorder import reorder_flagged_heads, reorder_tokens_reference
from dit_sparse.timing import cuda_time, write_gpu_results

GRID = TokenGrid(21, 30, 52)  # Wan2.1-1.3B 480x832x81
HEADS, HEAD_DIM = 12, 128
VARIANTS = [(block_s, warps) for block_s in (32, 64, 128, 256) for warps in (2, 4, 8)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_reorder needs a CUDA GPU")
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
    device = torch.cuda.get_device_name()
    command = "python scripts/bench_reorder.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Token reordering pass on {device}", "", f"Command: `{command}`", "",
             f"q, k and v of shape (1, {HEADS}, {S}, {HEAD_DIM}) bf16 in the processors' (B, S, H, D) memory, every head "
             f"reordered; {moved / 1e6:.0f} MB read and written. clone = the same bytes copied without reordering.", "",
             "| variant | ms | TB/s | equal to the reference |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['ms']:.4f} | {r['tb_per_s']:.2f} | {'yes' if r['exact'] else 'NO'} |" for r in records]
    md = "\n".join(lines) + "\n"
    write_gpu_results(args.out, "reorder", device, dict(device=device, command=command, records=records), md)
    print(md)


if __name__ == "__main__":
    main()

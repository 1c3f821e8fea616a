"""Block-sparse attention kernel benchmark on a CUDA GPU (also `dit-sparse bench`); see
dit_sparse/bench/kernels.py.

    python scripts/bench_kernels.py --shapes wan480,wan720 --out docs/results
    python scripts/bench_kernels.py --sweep --shapes wan480
"""

from dit_sparse.bench.kernels import main

if __name__ == "__main__":
    main()

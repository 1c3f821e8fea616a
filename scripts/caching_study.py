"""Entry point of the caching study (dit_sparse/study/caching_study.py says what it does)."""

from dit_sparse.study.caching_study import main

if __name__ == "__main__":
    main()

"""Entry point of the quality study (dit_sparse/study/quality_study.py says what it does)."""

from dit_sparse.study.quality_study import main

if __name__ == "__main__":
    main()

"""Step caches with sparse attention on the bundled demo model: see dit_sparse/study/step_cache_study.py."""

from dit_sparse.study.step_cache_study import main

if __name__ == "__main__":
    main()

"""The quantized kernel on the bundled demo model: see dit_sparse/study/quantized_study.py."""

from dit_sparse.study.quantized_study import main

if __name__ == "__main__":
    main()

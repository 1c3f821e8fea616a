"""Entry point of the attention census (dit_sparse/study/attention_census.py says what it does)."""

from dit_sparse.study.attention_census import main

if __name__ == "__main__":
    main()

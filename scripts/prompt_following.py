"""Do the demo model's clips follow their prompts: see dit_sparse/study/prompt_following.py."""

from dit_sparse.study.prompt_following import main

if __name__ == "__main__":
    main()

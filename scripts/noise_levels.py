"""Where along the noise schedule a demo model decides its clips: see dit_sparse/study/noise_levels.py."""

from dit_sparse.study.noise_levels import main

if __name__ == "__main__":
    main()

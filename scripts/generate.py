"""`dit-sparse generate` as a script: python scripts/generate.py --help"""

import sys

from dit_sparse.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))

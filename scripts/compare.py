"""`dit-sparse compare` as a script: python scripts/compare.py --help"""

import sys

from dit_sparse.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))

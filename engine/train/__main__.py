"""``python -m engine.train RUN_DIR [--resume]`` — see engine/train/program.py."""

import sys

from .program import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m incdet ...`` (used by ``torchrun -m incdet train ...``)."""
import sys

from incdet.cli import main

if __name__ == "__main__":
    sys.exit(main())

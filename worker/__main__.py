"""`python -m worker`: what `stillhouse worker` runs (see worker/main.py)."""

import sys

from worker.main import cli

if __name__ == "__main__":  # importing this module (tools that walk packages) runs nothing
    sys.exit(cli())

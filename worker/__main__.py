"""`python -m worker`: what `stillhouse worker` runs (see worker/main.py)."""

import sys

from worker.main import cli

sys.exit(cli())

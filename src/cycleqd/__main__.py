"""``python -m cycleqd``."""

from cycleqd.cli import main

main()

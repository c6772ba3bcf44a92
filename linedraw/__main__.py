"""`python -m linedraw ...` (also what `accelerate launch -m linedraw ...` runs)."""
import sys

from linedraw.cli import main

sys.exit(main())

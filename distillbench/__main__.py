"""``python -m distillbench``: the same command line as ``distillbench``."""

import sys

from distillbench.cli import main

sys.exit(main())

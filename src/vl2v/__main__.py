"""``python -m vl2v`` (and ``torchrun -m vl2v``) runs the command line."""

import sys

from vl2v.cli import main

sys.exit(main())

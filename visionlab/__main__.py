"""`python -m visionlab` is the `visionlab` command."""

import sys

from visionlab.cli import main

sys.exit(main())

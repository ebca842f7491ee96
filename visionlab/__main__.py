"""`python -m visionlab` is the `visionlab` command."""

import logging
import os
import sys

from visionlab.cli import main

status = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun the run has finished and left its process group; the interpreter's own
    # exit can still abort in gloo's teardown ("terminate called without an active
    # exception", about 1 run in 7 here), turning a finished run into a failed one.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)

"""`python -m swsl_cli`, the same as `swsl-train`."""

import sys

from swsl_cli.runner.cli import main

sys.exit(main())

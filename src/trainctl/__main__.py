"""`python -m trainctl`: the same command line as the `trainctl` console script."""

import sys

from trainctl.cli import main

sys.exit(main())

"""`python -m earmark.cli`: the `earmark` command without its console script."""

import sys

from earmark.cli import main

sys.exit(main())

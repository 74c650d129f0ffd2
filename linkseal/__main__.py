"""`python -m linkseal` is the `linkseal` command."""

import sys

from linkseal.cli import main

sys.exit(main())

"""``python -m convc``: the same as the ``convc`` command."""
import sys

from convc.cli import main

sys.exit(main())

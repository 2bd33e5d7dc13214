"""``python -m trainspect`` is the ``trainspect`` command."""

import sys

from trainspect.cli import main

sys.exit(main())

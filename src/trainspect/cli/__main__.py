"""``python -m trainspect.cli ...`` (e.g. under ``torchrun``, which launches modules with ``-m``)."""

import sys

from trainspect.cli import main

sys.exit(main())

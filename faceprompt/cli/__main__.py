"""``python -m faceprompt.cli`` (also what ``accelerate launch -m faceprompt.cli train`` runs)."""

import sys

from . import main

sys.exit(main())

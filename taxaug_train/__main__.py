"""``python -m taxaug_train`` (what ``torchrun ... -m taxaug_train`` runs)."""

import sys

from taxaug_train.cli import main

sys.exit(main())

"""``python -m taxaug_train`` (what ``torchrun ... -m taxaug_train`` runs)."""

import sys

try:
    from taxaug_train.cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load: the same one line as later in start-up
    print("taxaug-train: interrupted during start-up; nothing was saved", file=sys.stderr)
    sys.exit(130)

sys.exit(main())

"""``python -m crossattentiondet ...`` = ``cadet ...`` (handy under ``torchrun -m``)."""

import sys

from crossattentiondet.cli import main

sys.exit(main())

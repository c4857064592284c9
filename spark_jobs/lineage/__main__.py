"""``python -m spark_jobs.lineage IMAGE_ID | FILE | --model VERSION [--json]``: see trace.py."""

from __future__ import annotations

import sys

from spark_jobs.lineage.trace import main

if __name__ == "__main__":
    sys.exit(main())

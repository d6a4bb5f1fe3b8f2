"""CHAOS abdominal MR (and optionally CT liver) -> Dataset703_CHAOS_MR, Dataset704_CHAOS_CT.

Same as ``nnunet_unpaired convert chaos --input PATH [options]``; run with --help for the options. The converter
itself lives in ``nnunet_unpaired.conversion.chaos`` (see docs/datasets.md).
"""

import sys

from nnunet_unpaired.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main(["chaos", *sys.argv[1:]]))

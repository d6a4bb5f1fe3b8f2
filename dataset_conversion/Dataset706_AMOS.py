"""AMOS 2022 abdominal CT + MR -> Dataset706_AMOS_CT and Dataset707_AMOS_MR.

Same as ``nnunet_unpaired convert amos --input PATH [options]``; run with --help for the options. The converter
itself lives in ``nnunet_unpaired.conversion.amos`` (see docs/datasets.md).
"""

import sys

from nnunet_unpaired.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main(["amos", *sys.argv[1:]]))

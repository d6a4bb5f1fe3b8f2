"""MM-WHS 2017 cardiac CT + MR -> Dataset701_MMWHS_CT and Dataset702_MMWHS_MR.

Same as ``nnunet_unpaired convert mmwhs --input PATH [options]``; run with --help for the options. The converter
itself lives in ``nnunet_unpaired.conversion.mmwhs`` (see docs/datasets.md).
"""

import sys

from nnunet_unpaired.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main(["mmwhs", *sys.argv[1:]]))

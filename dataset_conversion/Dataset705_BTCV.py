"""BTCV / Synapse abdominal CT -> Dataset705_BTCV.

Same as ``nnunet_unpaired convert btcv --input PATH [options]``; run with --help for the options. The converter
itself lives in ``nnunet_unpaired.conversion.btcv`` (see docs/datasets.md).
"""

import sys

from nnunet_unpaired.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main(["btcv", *sys.argv[1:]]))

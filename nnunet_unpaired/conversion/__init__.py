"""Converters from public dataset archives to paired nnU-Net raw datasets (``nnunet_unpaired convert``).

One module per dataset, each with one entry function:

- :func:`nnunet_unpaired.conversion.mmwhs.convert_mmwhs`: MM-WHS 2017 cardiac CT (701) and MR (702);
- :func:`nnunet_unpaired.conversion.chaos.convert_chaos`: CHAOS abdominal MR (703) and CT liver (704);
- :func:`nnunet_unpaired.conversion.btcv.convert_btcv`: BTCV / Synapse abdominal CT (705);
- :func:`nnunet_unpaired.conversion.amos.convert_amos`: AMOS 2022 abdominal CT (706) and MR (707).

Shared pieces (label protocols, checks, reorientation, the atomic dataset writer) are in
:mod:`nnunet_unpaired.conversion.common`; argument parsing in :mod:`nnunet_unpaired.conversion.cli`.
The modules import SimpleITK, numpy and Pillow only (no torch). See docs/datasets.md.
"""

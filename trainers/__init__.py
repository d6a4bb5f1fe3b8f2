"""The folder nnU-Net's trainer lookup scans (point ``nnUNet_extTrainer`` here; ``nnunet_unpaired env`` prints it).

nnU-Net imports every module in this folder as a top-level module and evicts it afterwards, so each module here only
re-exports a class that is defined inside the installed ``nnunet_unpaired`` package (which keeps the classes picklable
for the data-augmentation workers). Keep these modules tiny and free of side effects.
"""

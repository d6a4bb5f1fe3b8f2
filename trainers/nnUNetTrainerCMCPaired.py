from nnunet_unpaired.training.cmc_paired import nnUNetTrainerCMCPaired  # noqa: F401

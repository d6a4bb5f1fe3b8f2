from nnunet_unpaired.training.maml import nnUNetTrainerMAML  # noqa: F401

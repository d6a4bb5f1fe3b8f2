from nnunet_unpaired.training.vanilla import nnUNetTrainerVanilla  # noqa: F401

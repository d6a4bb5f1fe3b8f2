from nnunet_unpaired.training.eam import nnUNetTrainerEAM  # noqa: F401

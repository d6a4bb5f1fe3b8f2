from nnunet_unpaired.training.ummkd import nnUNetTrainerUMMKD  # noqa: F401

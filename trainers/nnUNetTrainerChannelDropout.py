from nnunet_unpaired.training.channel_dropout import nnUNetTrainerChannelDropout  # noqa: F401

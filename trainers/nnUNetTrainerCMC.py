from nnunet_unpaired.training.cmc import (  # noqa: F401
    nnUNetTrainerCMC,
    nnUNetTrainerCMCNoSelfFusion,
    nnUNetTrainerCMCPublicForm,
)

from nnunet_unpaired.training.cmc import (  # noqa: F401
    nnUNetTrainerCMC,
    nnUNetTrainerCMCCACOnly,
    nnUNetTrainerCMCCSCOnly,
    nnUNetTrainerCMCLabelledOnly,
    nnUNetTrainerCMCNoSelfFusion,
    nnUNetTrainerCMCPublicForm,
    nnUNetTrainerCMCSelfTrainingOnly,
)

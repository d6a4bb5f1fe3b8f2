from nnunet_unpaired.training.glua import (  # noqa: F401
    nnUNetTrainerGLUA,
    nnUNetTrainerGLUAGlobalOnly,
    nnUNetTrainerGLUALocalOnly,
    nnUNetTrainerGLUAStyle,
    nnUNetTrainerSourceOnly,
)

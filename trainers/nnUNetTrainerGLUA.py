from nnunet_unpaired.training.glua import (  # noqa: F401
    nnUNetTrainerGLUA,
    nnUNetTrainerGLUAGlobalOnly,
    nnUNetTrainerGLUALocalOnly,
    nnUNetTrainerGLUALocalOnlyUnmasked,
    nnUNetTrainerGLUAUnmasked,
)
from nnunet_unpaired.training.glua_style import nnUNetTrainerGLUAStyle  # noqa: F401
from nnunet_unpaired.training.source_only import nnUNetTrainerSourceOnly  # noqa: F401

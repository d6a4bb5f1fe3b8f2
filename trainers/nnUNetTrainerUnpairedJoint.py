from nnunet_unpaired.training.unpaired_joint import (  # noqa: F401
    nnUNetTrainerUnpairedJoint,
    nnUNetTrainerUnpairedJointModalityNorm,
)

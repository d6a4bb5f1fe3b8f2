"""What tools above the trainers (the benchmark, the CLI) may know of them, importable without torch or nnU-Net.

The trainers read their configuration from environment variables (nnU-Net fixes the trainer's constructor); the
benchmark sets those variables and must know which training runs depend on which. It reads both from here, never
from a trainer module's private names. Each trainer module imports its own names from here, so the two cannot drift
(``tests/test_layers.py`` checks it).
"""

from __future__ import annotations

from nnunet_unpaired.training.budget import (ENV_EPOCHS, ENV_ITERS, ENV_NO_MIRRORING, ENV_SKIP_VALIDATION,  # noqa: F401
                                             ENV_SAVE_EVERY, ENV_SNAPSHOT_EVERY, ENV_TIMING, ENV_TORCH_THREADS, ENV_VAL_ITERS)
from nnunet_unpaired.training.seeding import ENV_SEED  # noqa: F401

#: prefix of every GLUA setting in the environment (``nnUNet_unpaired_glua_<setting>``)
GLUA_ENV_PREFIX = "nnUNet_unpaired_glua_"
#: the stage-1 checkpoint a GLUA stage-2 trainer loads (default: the stage-1 model folder of the same fold)
GLUA_ENV_STYLE_CHECKPOINT = GLUA_ENV_PREFIX + "style_checkpoint"
#: GLUA's stage 1: the image-to-image translation trained before the segmentation network
GLUA_STYLE_TRAINER = "nnUNetTrainerGLUAStyle"
#: trainer -> the trainer whose run must have finished (same dataset, plans, configuration, fold) before it
PREREQUISITES: dict[str, str] = {
    "nnUNetTrainerGLUA": GLUA_STYLE_TRAINER,
    "nnUNetTrainerGLUAGlobalOnly": GLUA_STYLE_TRAINER,
    "nnUNetTrainerGLUAUnmasked": GLUA_STYLE_TRAINER,
}
#: multi-channel trainers whose deployed network is nnU-Net's plain one: a missing channel is given to them as an
#: all-zero image (they have no missing-channel prediction of their own)
ZERO_FILLED_TRAINERS: frozenset[str] = frozenset({"nnUNetTrainerVanilla", "nnUNetTrainerChannelDropout"})
#: trainers that read the target dataset's IMAGES (never its labels) in their own training step
USES_TARGET_IMAGES: frozenset[str] = frozenset({"nnUNetTrainerGLUA", "nnUNetTrainerGLUAGlobalOnly",
                                                 "nnUNetTrainerGLUALocalOnly", "nnUNetTrainerGLUAUnmasked",
                                                 "nnUNetTrainerGLUALocalOnlyUnmasked"})

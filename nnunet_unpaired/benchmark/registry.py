"""The benchmark's table of methods: what the user types, the trainer that implements it, its kind, its baselines.

A method is a name the user types (``--methods vanilla joint eam``), the nnU-Net trainer class that implements it (by
NAME: the benchmark runs nnU-Net's commands, which find the class themselves), the KIND of experiment it needs, which
tells the harness how to train and predict it, and the baselines it must be compared with:

- ``single``: one model per modality, each trained on that modality alone (vanilla nnU-Net);
- ``unpaired``: one training run on dataset A with partner B (plan-pair), which writes model folders for both;
- ``uda``, ``semi``, ``multichannel``: experiments with settings of their own (modules of the benchmark, see
  :data:`nnunet_unpaired.benchmark.harness.EXPERIMENTS`).

The table belongs to the benchmark: trainer modules know nothing of it (layers point one way, README "Architecture").
A new method is one line in :data:`METHODS`; :func:`register` adds one at run time (tests, a user's own trainer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from nnunet_unpaired.errors import UserError

KINDS = ("single", "unpaired", "uda", "semi", "multichannel")
BASELINE = "vanilla"
JOINT = "joint"


@dataclass(frozen=True)
class Method:
    name: str
    trainer: str
    kind: str
    description: str = ""
    env: Dict[str, str] = field(default_factory=dict)  # extra environment for training (documented knobs)
    #: the methods this one is compared with (the benchmark adds them when they are not asked for)
    baselines: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} is not one of {KINDS}")


_PAIR = (BASELINE, JOINT)

#: every method of the package; one line each
METHODS: Tuple[Method, ...] = (
    Method(BASELINE, "nnUNetTrainerVanilla", "single",
           "stock nnU-Net, one model per modality trained on that modality alone"),
    Method(JOINT, "nnUNetTrainerUnpairedJoint", "unpaired",
           "one shared network trained on both modalities, nnU-Net's loss on each, no alignment",
           baselines=(BASELINE,)),
    Method("eam", "nnUNetTrainerEAM", "unpaired",
           "joint training + External Attention Module (semantic and structured consistency), Yang et al. 2023",
           baselines=_PAIR),
    Method("ummkd", "nnUNetTrainerUMMKD", "unpaired",
           "shared kernels, modality-specific normalization, class-wise KD (Dou et al. 2020)", baselines=_PAIR),
    Method("vanilla-dropout", "nnUNetTrainerChannelDropout", "multichannel",
           "vanilla nnU-Net trained with random channel dropout (p 0.5, one channel always kept); a missing channel "
           "is fed zero-filled, as to vanilla"),
    Method("maml", "nnUNetTrainerMAML", "multichannel",
           "modality-aware mutual learning on a paired multi-channel dataset, robust to missing channels",
           baselines=(BASELINE,)),
    Method("source-only", "nnUNetTrainerSourceOnly", "uda",
           "UDA lower bound: nnU-Net trained on the labelled source only, applied to the target",
           baselines=(BASELINE,)),
    Method("glua", "nnUNetTrainerGLUA", "uda",
           "GLUA (Su et al., JBHI 2023): style transfer (stage 1: nnUNetTrainerGLUAStyle) + gap-masked local "
           "feature alignment", baselines=(BASELINE, "source-only")),
    Method("glua-global", "nnUNetTrainerGLUAGlobalOnly", "uda",
           "GLUA ablation: global style transfer only (needs stage 1: nnUNetTrainerGLUAStyle)",
           baselines=(BASELINE, "source-only")),
    Method("glua-local", "nnUNetTrainerGLUALocalOnly", "uda",
           "GLUA ablation: gap-masked local feature alignment only", baselines=(BASELINE, "source-only")),
    Method("glua-unmasked", "nnUNetTrainerGLUAUnmasked", "uda",
           "GLUA ablation: global + local alignment with the gap mask's focusing off (gamma 0)",
           baselines=(BASELINE, "source-only")),
    Method("glua-local-unmasked", "nnUNetTrainerGLUALocalOnlyUnmasked", "uda",
           "GLUA ablation: local feature alignment only, without the gap mask's focusing (gamma 0)",
           baselines=(BASELINE, "source-only")),
    Method("cmc", "nnUNetTrainerCMC", "semi",
           "semi-supervised cross-modality collaboration: shared encoder, bottleneck fusion, CSC + CAC + mean-teacher "
           "pseudo-labels (ST) on unlabelled cases; predicts from one modality", baselines=_PAIR),
    Method("cmc-labelled-only", "nnUNetTrainerCMCLabelledOnly", "semi",
           "CMC ablation: the same architecture on the labelled cases only (no unlabelled term)", baselines=_PAIR),
    Method("cmc-csc", "nnUNetTrainerCMCCSCOnly", "semi",
           "CMC ablation: CSC the only unlabelled term", baselines=_PAIR),
    Method("cmc-cac", "nnUNetTrainerCMCCACOnly", "semi",
           "CMC ablation: CAC the only unlabelled term", baselines=_PAIR),
    Method("cmc-st", "nnUNetTrainerCMCSelfTrainingOnly", "semi",
           "CMC ablation: mean-teacher pseudo-labels (ST) the only unlabelled term", baselines=_PAIR),
)

_REGISTRY: Dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method at run time; registering the same name twice with a different definition is an error."""
    existing = load_all().get(method.name)
    if existing is not None and existing != method:
        raise ValueError(f"benchmark method {method.name!r} is registered twice ({existing} vs {method})")
    _REGISTRY[method.name] = method
    return method


def load_all() -> Dict[str, Method]:
    """Every method: the table, then those registered at run time."""
    return {**{m.name: m for m in METHODS}, **_REGISTRY}


def get(name: str) -> Method:
    methods = load_all()
    if name not in methods:
        raise UserError(f"unknown benchmark method {name!r}; available: {', '.join(sorted(methods))}")
    return methods[name]


def available() -> List[str]:
    return sorted(load_all())

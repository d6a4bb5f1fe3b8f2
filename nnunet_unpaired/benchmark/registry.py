"""The method registry of the benchmark: each trainer family adds its methods here when its module is imported.

A method is a name the user types (``--methods vanilla joint eam``), the nnU-Net trainer class that implements it,
and the KIND of experiment it needs, which tells the harness how to train and predict it:

- ``single``: one model per modality, each trained on that modality alone (vanilla nnU-Net);
- ``unpaired``: one training run on dataset A with partner B (plan-pair), which writes model folders for both;
- further kinds (``uda``, ``semi``, ``multichannel``) are added by the families that need them.

Families register at import time by calling :func:`register` at the bottom of their module; :func:`load_all` imports
every family module listed in :data:`FAMILY_MODULES`, so the registry is complete after it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from nnunet_unpaired.errors import UserError

KINDS = ("single", "unpaired", "uda", "semi", "multichannel")

# modules whose import registers methods; add a new family's module here
FAMILY_MODULES: Tuple[str, ...] = (
    "nnunet_unpaired.training.vanilla",
    "nnunet_unpaired.training.unpaired_joint",
    "nnunet_unpaired.training.eam",
    "nnunet_unpaired.training.ummkd",
    "nnunet_unpaired.training.maml",
    "nnunet_unpaired.training.glua",
    "nnunet_unpaired.training.cmc",
)


@dataclass(frozen=True)
class Method:
    name: str
    trainer: str
    kind: str
    description: str = ""
    env: Dict[str, str] = field(default_factory=dict)  # extra environment for training (documented knobs)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} is not one of {KINDS}")


_REGISTRY: Dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method; registering the same name twice with a different definition is an error."""
    existing = _REGISTRY.get(method.name)
    if existing is not None and existing != method:
        raise ValueError(f"benchmark method {method.name!r} is registered twice ({existing} vs {method})")
    _REGISTRY[method.name] = method
    return method


def load_all() -> Dict[str, Method]:
    for module in FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a family that exists but fails to import is a real error
                raise
    return dict(_REGISTRY)


def get(name: str) -> Method:
    methods = load_all()
    if name not in methods:
        raise UserError(f"unknown benchmark method {name!r}; available: {', '.join(sorted(methods))}")
    return methods[name]


def available() -> List[str]:
    return sorted(load_all())

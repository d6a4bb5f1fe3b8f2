"""``nnUNetTrainerVanilla``: the stock ``nnUNetTrainer``, unchanged except that the training length can be shortened
through the environment variables of :mod:`nnunet_unpaired.training.budget`. It is the vanilla baseline of the
benchmark: one model per modality, trained on that modality alone, with the same budget as the method it is compared
with."""

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_unpaired.training.budget import BudgetMixin


class nnUNetTrainerVanilla(BudgetMixin, nnUNetTrainer):
    pass

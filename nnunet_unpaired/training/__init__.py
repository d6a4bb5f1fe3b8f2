"""Trainers: thin nnU-Net trainer classes that compose the library's modules and losses (re-exported for nnU-Net by
the repository's ``trainers/`` folder)."""

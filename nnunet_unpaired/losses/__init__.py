"""Loss functions of the methods, one family per file, plain torch (no nnU-Net)."""

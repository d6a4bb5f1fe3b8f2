"""Training-only and network modules of the methods, plain ``nn.Module``s that know nothing of nnU-Net's trainers."""

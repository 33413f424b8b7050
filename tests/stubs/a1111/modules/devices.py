"""The host's torch device (A1111 picks CUDA/MPS/CPU at start-up)."""
import torch

device = torch.device("cpu")

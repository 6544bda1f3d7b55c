"""Target classifiers (`target`) and vision-language models (`vlm`) shared by the scripts."""

import torch


def pick_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

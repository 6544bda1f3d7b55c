"""Target classifiers (`target`) and vision-language models (`vlm`) shared by the scripts."""

import pickle

import torch

from core.errors import PipelineError


def pick_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else the CPU. A device this machine lacks is refused before any
    work, not at the first tensor moved there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PipelineError(f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            have = f"this machine has {count} (cuda:0 to cuda:{count - 1})" if count else "torch sees no CUDA GPU here"
            raise PipelineError(f"--device {name}: {have}; pass --device auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(f"--device {name}: torch sees no Apple GPU (MPS) here; pass --device auto or cpu")
    return device


def load_failure(e: Exception) -> str:
    """Why torch.load refused a file, in words that never invite running an untrusted pickle
    (torch's own message suggests weights_only=False, which would run any code inside it)."""
    if isinstance(e, pickle.UnpicklingError) and "weights only load failed" in str(e).lower():
        return ("a pickle holding Python objects beyond tensors, which cannot be loaded safely; where its source is "
                "trusted, convert it once to a plain state dict of tensors (torch.save(model.state_dict(), PATH)) "
                "or to safetensors, and pass that file")
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:150]}" if lines else type(e).__name__

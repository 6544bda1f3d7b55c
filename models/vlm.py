"""Vision-language models behind one small interface (models/vlm_base.py), so stage 3 does not care
which one it runs.

`load_vlm(model_clip, weights, device)` picks the model:
    medclip                     MedCLIP-ViT from a folder holding its pytorch_model.bin
    open_clip:NAME              any open_clip model; weights = pretrained tag, local checkpoint or
                                'random' (explicit random init, for tests); NAME may be a config .json
    phantom                     the demo world's CLIP (weights = its folder)
"""
from __future__ import annotations

from pathlib import Path

import torch

from core.digests import digest, file_digest
from core.errors import PipelineError
from models import load_failure
from models.vlm_base import DEFAULT_WEIGHTS, VLM


class OpenCLIP(VLM):
    """Any open_clip model: its own image transform and tokenizer (fixed-length, so batching is exact)."""

    def __init__(self, name: str, weights: str):
        super().__init__()
        import open_clip
        if name.endswith(".json"):
            if not Path(name).is_file():
                raise PipelineError(f"open_clip config {name} not found")
            open_clip.add_model_config(name)
            name = Path(name).stem
        pretrained = None if weights == "random" else (weights or None)
        if pretrained is None and weights != "random" and not name.startswith("hf-hub:"):
            raise PipelineError(f"open_clip:{name} needs --clip_weights (a pretrained tag such as 'openai', "
                                f"a local checkpoint, or 'random' for an untrained model)")
        try:
            self.model, _, self._transform = open_clip.create_model_and_transforms(name, pretrained=pretrained)
            self._tokenizer = open_clip.get_tokenizer(name)
        except Exception as e:
            why = load_failure(e)
            if why.startswith("a pickle"):  # torch refused the checkpoint: downloading again would not help
                raise PipelineError(f"--clip_weights {weights}: {why}") from None
            raise PipelineError(f"open_clip model {name!r} with weights {weights!r} did not load: {why} "
                                f"(offline? pass a local checkpoint as --clip_weights)") from None
        self.name = f"open_clip:{name}"
        self.model.eval()

    def preprocess(self, image):
        return self._transform(image.convert("RGB"))

    def embed_images(self, pixels):
        return self.model.encode_image(pixels)

    def embed_texts(self, texts):
        return self.model.encode_text(self._tokenizer(texts).to(self.device))


def weights_identity(model_clip: str, weights: str) -> str:
    """What identifies a VLM's weights for cache keys: the bytes of local files, else the tag."""
    path = Path(weights or DEFAULT_WEIGHTS.get(model_clip, ""))
    if str(path) and path.is_file():
        return file_digest(path)
    if str(path) and path.is_dir():
        return digest({f.name: file_digest(f) for f in sorted(path.iterdir()) if f.is_file()})
    return weights


def load_vlm(model_clip: str, weights: str = "", device: str | torch.device = "cpu") -> VLM:
    if model_clip in ("medclip", "medclip-vit"):
        from models.medclip import MedCLIP
        vlm = MedCLIP.from_dir(weights or DEFAULT_WEIGHTS[model_clip])
    elif model_clip.startswith("open_clip:"):
        vlm = OpenCLIP(model_clip[len("open_clip:"):], weights)
    elif model_clip == "phantom":
        from models.phantom_clip import PhantomCLIP
        vlm = PhantomCLIP.from_dir(weights or DEFAULT_WEIGHTS["phantom"])
    else:
        raise PipelineError(f"unknown --model_clip {model_clip!r}; use medclip, open_clip:NAME or phantom")
    return vlm.to(device).eval()

"""Vision-language models behind one small interface, so stage 3 does not care which one it runs.

A VLM turns PIL images and strings into L2-normalised embeddings of one dimension D:

    vlm.encode_images(list_of_pil) -> float32 [N, D]
    vlm.encode_texts(list_of_str)  -> float32 [N, D]

Subclasses give `preprocess` (PIL -> tensor), `embed_images` (batch tensor -> [B, D]) and
`embed_texts` (strings -> [B, D]). When padding changes a text embedding (MedCLIP pools over every
token, padding included), a subclass sets `pads_change_text = True` and gives `token_count`; then
every text batch holds prompts of one token length, which equals encoding them one at a time.

`load_vlm(model_clip, weights, device)` picks the model:
    medclip                     MedCLIP-ViT from a folder holding its pytorch_model.bin
    open_clip:NAME              any open_clip model; weights = pretrained tag, local checkpoint or
                                'random' (explicit random init, for tests); NAME may be a config .json
    phantom                     the demo world's CLIP (weights = its folder)
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from models import load_failure
from pipeline.cli import PipelineError


# Where each VLM's weights are looked for when --clip_weights is not given (see pretrained/README.md).
DEFAULT_WEIGHTS = {"medclip": "pretrained/medclip-vit", "medclip-vit": "pretrained/medclip-vit",
                   "phantom": "pretrained/phantom_clip"}


class VLM(nn.Module):
    name = "vlm"
    pads_change_text = False

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        raise NotImplementedError

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def token_count(self, text: str) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings of a batch of `preprocess`ed images."""
        return F.normalize(self.embed_images(pixels.to(self.device)).float(), dim=-1).cpu()

    def encode_images(self, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
        out = [self.encode_pixels(torch.stack([self.preprocess(im) for im in images[i:i + batch_size]]))
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 0)

    def text_batches(self, texts: list[str], batch_size: int = 256) -> list[list[int]]:
        """Indices of texts in batches that the encoder embeds exactly as it would each text alone: of
        one token length each where padding changes an embedding (MedCLIP's BERT), else in order."""
        if not self.pads_change_text:
            groups = {0: list(range(len(texts)))}
        else:
            groups = defaultdict(list)
            for i, t in enumerate(texts):
                groups[self.token_count(t)].append(i)
        return [idx[j:j + batch_size] for idx in groups.values() for j in range(0, len(idx), batch_size)]

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        out: list[torch.Tensor | None] = [None] * len(texts)
        for chunk in self.text_batches(texts, batch_size):
            emb = F.normalize(self.embed_texts([texts[i] for i in chunk]).float(), dim=-1).cpu()
            for i, e in zip(chunk, emb):
                out[i] = e
        return torch.stack(out) if out else torch.zeros(0, 0)


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
    from pipeline.cache import digest, file_digest
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

"""Vision-language models behind one small interface, so stage 3 does not care which one it runs.

A VLM turns PIL images and strings into L2-normalised embeddings of one dimension D:

    vlm.encode_images(list_of_pil) -> float32 [N, D]
    vlm.encode_texts(list_of_str)  -> float32 [N, D]

Subclasses give `preprocess` (PIL -> tensor), `embed_images` (batch tensor -> [B, D]) and
`embed_texts` (strings -> [B, D]). When padding changes a text embedding (MedCLIP pools over every
token, padding included), a subclass sets `pads_change_text = True` and gives `token_count`; then
every text batch holds prompts of one token length, which equals encoding them one at a time.

The loader (models/vlm.py) imports each model's module; those modules import only this one.
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

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
        batches = self.text_batches(texts, batch_size)
        # a concept set of 50,000 takes minutes: a bar, except for the one-batch calls (the fc metrics)
        for chunk in tqdm(batches, desc="texts", unit="batch", disable=len(batches) <= 1):
            emb = F.normalize(self.embed_texts([texts[i] for i in chunk]).float(), dim=-1).cpu()
            for i, e in zip(chunk, emb):
                out[i] = e
        return torch.stack(out) if out else torch.zeros(0, 0)

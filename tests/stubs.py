"""A VLM whose embeddings the test chooses, and that records every string it is asked to embed.

Its "weights" are a JSON file {"texts": {prompt: vector}, "image": vector}: the cosines, and so the
scores of stage 3, can be worked out by hand, and changing the file's bytes changes the embeddings
as new VLM weights would (conftest.py's recording_vlm fixture puts it in load_vlm's place). A prompt missing from the file gets a fixed vector of its own (so a run
with unexpected prompts finishes and the test can show which prompts arrived).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from models.vlm import VLM


class RecordingVLM(VLM):
    name = "recording"

    def __init__(self, weights: str):
        super().__init__()
        spec = json.loads(Path(weights).read_text())
        self.texts = {t: torch.tensor(v, dtype=torch.float32) for t, v in spec["texts"].items()}
        self.image = torch.tensor(spec["image"], dtype=torch.float32)
        self._param = torch.nn.Parameter(torch.zeros(1))  # VLM.device reads the first parameter
        self.text_calls: list[list[str]] = []
        self.images_seen = 0

    def _unknown(self, text: str) -> torch.Tensor:
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        return torch.randn(len(self.image), generator=torch.Generator().manual_seed(seed))

    def preprocess(self, image):
        return torch.zeros(1)

    def embed_images(self, pixels):
        self.images_seen += len(pixels)
        return self.image.expand(len(pixels), -1).clone()

    def embed_texts(self, texts):
        return torch.stack([self.texts[t] if t in self.texts else self._unknown(t) for t in texts])

    def encode_texts(self, texts, batch_size=256):
        self.text_calls.append(list(texts))
        return super().encode_texts(texts, batch_size)


def write_vlm_weights(path: Path, texts: dict[str, list[float]], image: list[float]) -> Path:
    path.write_text(json.dumps({"texts": texts, "image": image}))
    return path

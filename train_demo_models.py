"""Train the demo world's two models, reproducibly, on CPU: the target classifier and the VLM.

    python train_demo_models.py                 # ~20 minutes on 2 cores
    python train_demo_models.py --max_steps 2   # a smoke run

1. Writes the phantom world (dataset/phantom.py) unless it is there already.
2. Target: torchvision DenseNet-121 with 14 outputs, from scratch, BCE + Adam, on the phantoms at a
   reduced resolution through the very transform stage 2 applies (RGB, Resize, CenterCrop, ToTensor,
   Normalize 0.5056/0.252), so stage 2 reproduces it by setting its resize/crop to `target_res`.
3. VLM: PhantomCLIP (small CNN image tower; frozen all-MiniLM-L6-v2 + learned projection). Three
   losses: image <-> report contrastive (reports with the same findings count as matches); a softmax
   over prompts 'A chest x-ray image of a <word>' for the 14 finding names and every other noun of
   the phantom reports, whose target is the image's findings, so a finding's own name is the word
   that fits its image best; and a sigmoid per finding prompt, so one prompt's cosine ranks images.
4. Writes pretrained/phantom_densenet121.pth ({'model': fp16 state dict}), pretrained/phantom_clip/,
   and pretrained/demo_training.json: configuration, timings, metrics, and a check of the method on
   the fc layer (do the 14 class neurons get their class names as concepts?).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from cli import configure, main, print_config
from dataset.concepts import nouns as tagged_nouns, read_concepts, sentences
from dataset.nih import read_split
from dataset.phantom import CLASSES, TEMPLATE, WORDS, ensure_world

# world
world_dir = "data/phantom_world"  # where the phantom world is written (and read back from)
n_train = 3000  # training phantoms (also the probing set of the method check)
n_val = 500  # validation phantoms
n_test = 1000  # held-out phantoms for the reported metrics
world_size = 256  # side of the written PNGs, pixels
world_seed = 0  # the world's seed
# target
target_res = 96  # training resolution: stage 2 must use Resize(target_res), CenterCrop(target_res)
target_epochs = 4  # passes over the training phantoms
target_batch = 32  # images per step
target_lr = 1e-3  # Adam learning rate, cosine-decayed to 0
# vlm
clip_res = 96  # the VLM's input size
clip_dim = 128  # joint embedding dimension
clip_width = 32  # channels of the first CNN stage (doubling per stage)
clip_epochs = 8  # passes over the training phantoms
clip_batch = 64  # images per step
clip_lr = 2e-3  # AdamW learning rate, cosine-decayed to 0
report_weight = 0.5  # weight of the image <-> report loss against the two prompt losses
negative_set = "iu_xray_nouns"  # extra non-matching prompt words (a concept set name; '' for none)
# run
out_dir = "pretrained"  # where the weights and demo_training.json go
seed = 0  # torch seed for initialisation and batch order
threads = 2  # torch CPU threads
max_steps = 0  # > 0: stop each training after this many steps (smoke test)
reuse_target = False  # load out_dir's target checkpoint instead of training it (to iterate on the VLM)
method_check = True  # run the method on the fc layer with the MIMIC + phantom nouns and record the hits
config = configure(globals())

ROOT = Path(__file__).resolve().parent
MEAN, STD = 0.5056, 0.252  # stage 2's normalisation (medical_mae release)
P_ADAPTIVE, ALPHA = 93, 95  # the method's defaults (SPEC, stages 2 and 3)


def log(msg: str) -> None:
    print(msg, flush=True)


def auroc(y: np.ndarray, s: np.ndarray) -> list[float | None]:
    from sklearn.metrics import roc_auc_score
    return [float(roc_auc_score(y[:, k], s[:, k])) if 0 < y[:, k].sum() < len(y) else None for k in range(y.shape[1])]


def mean_of(xs) -> float:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else float("nan")


def batches(n: int, batch: int, epochs: int, generator_seed: int):
    """(step, total steps, indices) over reshuffled epochs; max_steps > 0 stops early (smoke runs)."""
    g = torch.Generator().manual_seed(generator_seed)
    total = math.ceil(n / batch) * epochs if not max_steps else max_steps
    step = 0
    while step < total:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            if step >= total:
                return
            yield step, total, perm[i:i + batch]
            step += 1


def cosine_lr(opt, step: int, total: int, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


# ----------------------------------------------------------------------------------------------

def train_target(x_tr: torch.Tensor, y_tr: torch.Tensor) -> tuple[nn.Module, dict]:
    from models.target import build_target
    torch.manual_seed(seed)
    model = build_target("densenet121")
    opt = torch.optim.Adam(model.parameters(), lr=target_lr)
    t0, losses = time.time(), []
    model.train()
    for step, total, idx in batches(len(x_tr), target_batch, target_epochs, seed):
        cosine_lr(opt, step, total, target_lr)
        loss = F.binary_cross_entropy_with_logits(model(to_target_input(x_tr[idx])), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == total:
            log(f"  target step {step + 1}/{total}  loss {np.mean(losses[-50:]):.4f}  {time.time() - t0:.0f}s")
    return model.eval(), dict(steps=len(losses), seconds=round(time.time() - t0, 1), final_loss=float(np.mean(losses[-50:])))


def to_target_input(u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, R, R] (already resized as stage 2 does) -> normalised 3-channel float."""
    return ((u8.float() / 255 - MEAN) / STD)[:, None].expand(-1, 3, -1, -1)


@torch.no_grad()
def target_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(to_target_input(x[i:i + 128])) for i in range(0, len(x), 128)])


# ----------------------------------------------------------------------------------------------

def train_clip(clip, x_tr: torch.Tensor, y_tr: torch.Tensor, rep_feat: torch.Tensor, prompt_feat: torch.Tensor) -> dict:
    """rep_feat [N, 384]: each training image's report; prompt_feat [14 + V, 384]: finding prompts then the others."""
    torch.manual_seed(seed)
    clip.image.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    clip.proj.reset_parameters()
    log_scale = nn.Parameter(torch.tensor(math.log(14.0)))  # CLIP's learned temperature
    sig = nn.Parameter(torch.tensor([10.0, -5.0]))  # sigmoid prompt loss: scale, bias
    params = list(clip.image.parameters()) + list(clip.proj.parameters()) + [log_scale, sig]
    opt = torch.optim.AdamW(params, lr=clip_lr, weight_decay=1e-4)
    t0, hist = time.time(), []
    K = len(CLASSES)
    clip.image.train()
    for step, total, idx in batches(len(x_tr), clip_batch, clip_epochs, seed + 1):
        cosine_lr(opt, step, total, clip_lr)
        y = y_tr[idx]
        fi = F.normalize(clip.image(x_tr[idx].float()), dim=-1)
        tp = F.normalize(clip.proj(prompt_feat), dim=-1)
        tr = F.normalize(clip.proj(rep_feat[idx]), dim=-1)
        scale = log_scale.exp().clamp(max=100)
        # which word describes this image best: its findings' names, among all report nouns
        ab = y.sum(1) > 0
        lp = scale * fi[ab] @ tp.T
        target = torch.cat([y[ab] / y[ab].sum(1, keepdim=True), torch.zeros(int(ab.sum()), len(tp) - K)], 1)
        loss_p = -(target * F.log_softmax(lp, 1)).sum(1).mean() if ab.any() else lp.sum() * 0
        # does this image show finding k: one sigmoid per finding prompt, across images
        loss_s = F.binary_cross_entropy_with_logits(sig[0] * fi @ tp[:K].T + sig[1], y)
        # image <-> report; reports of images with the same findings are all right answers
        same = (y[:, None, :] == y[None, :, :]).all(-1).float()
        lr_ = scale * fi @ tr.T
        loss_r = 0.5 * (-(same / same.sum(1, keepdim=True) * F.log_softmax(lr_, 1)).sum(1).mean()
                        - (same / same.sum(0, keepdim=True) * F.log_softmax(lr_, 0)).sum(0).mean())
        loss = loss_p + loss_s + report_weight * loss_r
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.append([loss.item(), loss_p.item(), loss_s.item(), loss_r.item()])
        if (step + 1) % 50 == 0 or step + 1 == total:
            h = np.mean(hist[-50:], 0)
            log(f"  clip step {step + 1}/{total}  loss {h[0]:.3f} (prompt {h[1]:.3f} sigmoid {h[2]:.3f} "
                f"report {h[3]:.3f})  {time.time() - t0:.0f}s")
    clip.eval()
    h = np.mean(hist[-50:], 0)
    return dict(steps=len(hist), seconds=round(time.time() - t0, 1), final_loss=dict(total=h[0], prompt=h[1], sigmoid=h[2], report=h[3]),
                logit_scale=float(log_scale.exp().detach()))


@torch.no_grad()
def embed_images(clip, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([F.normalize(clip.image(x[i:i + 256].float()), dim=-1) for i in range(0, len(x), 256)])


@torch.no_grad()
def project(clip, feats: torch.Tensor) -> torch.Tensor:
    return F.normalize(clip.proj(feats), dim=-1)


def clip_metrics(clip, x_te, y_te: np.ndarray, rep_te_feat, prompt_feat, n_vocab: int) -> dict:
    K = len(CLASSES)
    fi = embed_images(clip, x_te)
    tp = project(clip, prompt_feat)
    sims = (fi @ tp.T).numpy()
    zs = auroc(y_te, sims[:, :K])
    single = y_te.sum(1) == 1
    truth = y_te[single].argmax(1)
    pick14 = sims[single, :K].argmax(1)
    pickall = sims[single].argmax(1)
    per_class_pick = {CLASSES[k]: float((pick14[truth == k] == k).mean()) for k in range(K) if (truth == k).any()}
    # retrieval among the test reports: exact report, and a report with the same findings
    tr = project(clip, rep_te_feat)
    order = (fi @ tr.T).argsort(1, descending=True).numpy()
    n = len(order)
    exact1 = float(np.mean(order[:, 0] == np.arange(n)))
    exact5 = float(np.mean([(order[i, :5] == i).any() for i in range(n)]))
    same1 = float(np.mean([(y_te[order[i, 0]] == y_te[i]).all() for i in range(n)]))
    return dict(zero_shot_auroc={c: a for c, a in zip(CLASSES, zs)}, zero_shot_auroc_mean=mean_of(zs),
                single_finding_images=int(single.sum()),
                pick_among_14=float((pick14 == truth).mean()), pick_among_14_per_class=per_class_pick,
                pick_among_all_prompts=float((pickall == truth).mean()), n_prompts=int(len(tp)), n_vocab_negatives=n_vocab,
                retrieval_exact_r1=exact1, retrieval_exact_r5=exact5, retrieval_same_findings_r1=same1)


def method_check_fc(clip, acts: np.ndarray, fi: torch.Tensor, concepts: list[str]) -> dict:
    """Stages 2-3 on the fc layer: adaptive examples (p=93), S(c) with the template, alpha = 95."""
    tok = F.normalize(clip.encode_texts([f"{TEMPLATE} {c}" for c in concepts] + [TEMPLATE]), dim=-1)
    tc, t0 = tok[:-1], tok[-1]
    out, hits = {}, 0
    for k, cls in enumerate(CLASSES):
        a = acts[:, k]
        thr = a.max() - (a.max() - a.min()) * (1 - P_ADAPTIVE / 100)
        ex = np.flatnonzero(a > thr)
        f = fi[ex]
        S = ((f @ tc.T) - (f @ t0)[:, None]).sum(0).numpy()
        chosen = np.flatnonzero(S > ALPHA / 100 * S.max()) if S.max() > 0 else np.array([], int)
        chosen = chosen[np.argsort(-S[chosen])]
        words = [concepts[i] for i in chosen]
        hit = cls.lower() in words
        hits += hit
        top = np.argsort(-S)[:5]
        out[cls] = dict(n_examples=int(len(ex)), concepts=words[:10], hit=bool(hit),
                        rank_of_class_word=int((S > S[concepts.index(cls.lower())]).sum()) + 1 if cls.lower() in concepts else None,
                        top5=[[concepts[i], round(float(S[i]), 3)] for i in top])
    return dict(hits=hits, of=len(CLASSES), n_concepts=len(concepts), per_class=out)


# ----------------------------------------------------------------------------------------------

def run() -> None:
    torch.set_num_threads(threads)
    print_config("train_demo_models", config)
    t_start = time.time()
    timings = {}
    world = ROOT / world_dir if not os.path.isabs(world_dir) else Path(world_dir)
    out = ROOT / out_dir if not os.path.isabs(out_dir) else Path(out_dir)
    t = time.time()
    if ensure_world(world, n_train, n_val, n_test, world_size, world_seed):
        timings["world_s"] = round(time.time() - t, 1)
        log(f"wrote the phantom world to {world} in {timings['world_s']}s")
    else:
        log(f"phantom world at {world} (seed {world_seed}, {n_train}/{n_val}/{n_test})")

    # the world read back through its real formats
    names, labels = {}, {}
    for split in ("train", "val", "test"):
        names[split], labels[split] = read_split(world / f"{split}_official.txt")
        labels[split] = labels[split].astype(np.float32)
    with open(world / "annotation.json") as fh:
        ann = json.load(fh)
    reports = {split: {e["image_path"][0]: e["report"] for e in ann[split]} for split in ann}

    t = time.time()
    import torchvision.transforms as T
    from models.phantom_clip import PhantomCLIP
    clip = PhantomCLIP(dim=clip_dim, input_size=clip_res, width=clip_width)
    to_target = T.Compose([T.Resize(target_res), T.CenterCrop(target_res)])
    xt, xc = {}, {}
    for split in names:
        tt, cc = [], []
        for nm in names[split]:
            with Image.open(world / "images" / nm) as im:
                im.load()
            tt.append(np.asarray(to_target(im.convert("RGB")))[:, :, 0])
            cc.append(clip.preprocess(im).half())
        xt[split] = torch.from_numpy(np.stack(tt))
        xc[split] = torch.stack(cc)
    timings["load_s"] = round(time.time() - t, 1)
    log(f"loaded {sum(len(v) for v in names.values())} images in {timings['load_s']}s")

    # vlm first: it is quick and tells early whether the prompts separate the findings
    out.mkdir(parents=True, exist_ok=True)
    log("encoding texts with the frozen MiniLM ...")
    t = time.time()
    nouns = tagged_nouns(sentences(list(reports["train"].values())))  # stage 1 on the phantom reports
    # Negatives: the phantom reports' other nouns, and the IU X-ray reports' nouns (a corpus apart
    # from the MIMIC nouns the method is evaluated with), so that real radiology words the phantom
    # reports never use ('pneumomediastinum', ...) are not left to chance near the finding prompts.
    class_parts = {w for c in WORDS for w in c.split()}
    negatives = [w for w in dict.fromkeys(nouns + (read_concepts(negative_set)[1] if negative_set else []))
                 if w not in class_parts]
    prompts = [f"{TEMPLATE} {w}" for w in WORDS] + [f"{TEMPLATE} {w}" for w in negatives]

    def feats(texts: list[str]) -> torch.Tensor:
        return torch.cat([clip.text_features(texts[i:i + 128]) for i in range(0, len(texts), 128)])

    uniq = sorted(set(reports["train"].values()) | set(reports["test"].values()))
    ufeat = feats(uniq)
    pos = {r: i for i, r in enumerate(uniq)}
    rep_tr = ufeat[[pos[reports["train"][n]] for n in names["train"]]]
    rep_te = ufeat[[pos[reports["test"][n]] for n in names["test"]]]
    prompt_feat = feats(prompts)
    timings["text_encode_s"] = round(time.time() - t, 1)
    log(f"  {len(uniq)} unique reports, {len(prompts)} prompts ({len(negatives)} other report nouns) in {timings['text_encode_s']}s")
    log("training the VLM ...")
    cinfo = train_clip(clip, xc["train"], torch.from_numpy(labels["train"]), rep_tr, prompt_feat)
    timings["clip_s"] = cinfo["seconds"]
    cm = clip_metrics(clip, xc["test"], labels["test"], rep_te, prompt_feat, len(negatives))
    log(f"VLM zero-shot AUROC {cm['zero_shot_auroc_mean']:.4f}; single-finding images: right word among 14 "
        f"{cm['pick_among_14']:.3f}, among all {cm['n_prompts']} prompts {cm['pick_among_all_prompts']:.3f}")
    clip_dir = out / "phantom_clip"
    clip.save(clip_dir)
    reloaded = PhantomCLIP.from_dir(clip_dir)
    probe = [Image.open(world / "images" / n) for n in names["test"][:8]]
    d_img = float((reloaded.encode_images(probe) - clip.encode_images(probe)).abs().max())
    log(f"  reloaded {clip_dir}: max |image embedding difference| after fp16 {d_img:.4f}")

    # target
    target_path = out / "phantom_densenet121.pth"
    from models.target import load_target
    if reuse_target and target_path.is_file():
        log(f"reusing the target {target_path}")
        target = load_target("densenet121", target_path, need_head=True)[0]
        prev = json.loads((out / "demo_training.json").read_text())["target"] if (out / "demo_training.json").is_file() else {}
        tinfo = {k: prev.get(k) for k in ("steps", "seconds", "final_loss")}
    else:
        log("training the target DenseNet-121 ...")
        target, tinfo = train_target(xt["train"], torch.from_numpy(labels["train"]))
    timings["target_s"] = tinfo["seconds"]
    t = time.time()
    acts = {s: target_logits(target, xt[s]).numpy() for s in ("train", "val", "test")}
    val_auc, test_auc = auroc(labels["val"], acts["val"]), auroc(labels["test"], acts["test"])
    timings["target_eval_s"] = round(time.time() - t, 1)
    log(f"target AUROC val {mean_of(val_auc):.4f} test {mean_of(test_auc):.4f}")
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.half() if v.is_floating_point() else v for k, v in target.state_dict().items()},
                "arch": "densenet121", "classes": CLASSES, "resize": target_res, "crop": target_res}, target_path)
    # the saved half-precision checkpoint must load strictly and predict like the trained model
    loaded, head = load_target("densenet121", target_path, need_head=True)
    diff = float((target_logits(loaded, xt["test"][:64]) - torch.from_numpy(acts["test"][:64])).abs().max())
    log(f"  reloaded {target_path}: head {head}, max |logit difference| after fp16 {diff:.4f}")

    check = None
    t = time.time()
    if method_check:
        mimic = [w.strip() for w in (ROOT / "dataset" / "concept_set" / "mimic_nouns.txt").read_text().splitlines() if w.strip()]
        concepts = list(dict.fromkeys(nouns + mimic + ["pleural thickening"]))
        check = method_check_fc(reloaded, acts["train"], embed_images(reloaded, xc["train"]), concepts)
        log(f"method check on fc (probing set: train, {len(concepts)} concepts): {check['hits']}/14 class names found")
        for c, r in check["per_class"].items():
            log(f"  {c:<19} {'hit ' if r['hit'] else 'MISS'} rank {r['rank_of_class_word']}  n={r['n_examples']:<4} {r['concepts'][:4]}")
    timings["eval_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t_start, 1)

    report = dict(
        config=config,
        stage2=dict(resize=target_res, crop=target_res, mean=MEAN, std=STD,
                    note="feed the phantom PNGs through Resize(resize), CenterCrop(crop) to match training"),
        classes=CLASSES, timings=timings, torch=torch.__version__, threads=threads,
        target=dict(tinfo, checkpoint=str(target_path.relative_to(ROOT) if target_path.is_relative_to(ROOT) else target_path),
                    val_auroc=dict(zip(CLASSES, val_auc)), test_auroc=dict(zip(CLASSES, test_auc)),
                    val_auroc_mean=mean_of(val_auc), test_auroc_mean=mean_of(test_auc), fp16_reload_max_logit_diff=diff),
        vlm=dict(cinfo, **cm, fp16_reload_max_embedding_diff=d_img),
        method_check_fc=check,
    )
    (out / "demo_training.json").write_text(json.dumps(report, indent=1, default=float))
    log(f"wrote {target_path}, {clip_dir}/, {out / 'demo_training.json'}  ({timings['total_s']:.0f}s in all)")


if __name__ == "__main__":
    main(run)

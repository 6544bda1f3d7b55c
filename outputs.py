"""Where each stage writes, derived from the constants, so every script finds the others' outputs.

    {save_root}/{dataset}_{split}/{model}/{layer}/activations.pt                  stage 2, one pass
    .../{layer}/{adaptive93|top20}/examples.json, examples.csv, crops/           stage 2, selection
    {save_root}/{dataset}_{split}/vlm_{tag}/image_features.pt                    stage 3, per VLM
    {save_root}/vlm_{tag}/text_{concept_set}_{template_ver}.pt                   stage 3, per VLM
    .../{adaptive93|top20}/vlm_{tag}/{concept_set}_{template_ver}_{adaptive|plain}_a{alpha}/
        similarity.pt, concepts.json, metrics.json                               stage 3, matching
"""
from __future__ import annotations

import re
from pathlib import Path


def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def probe_dir(c: dict) -> Path:
    return Path(c["save_root"]) / f"{c['dataset']}_{c['split']}"


def layer_dir(c: dict) -> Path:
    return probe_dir(c) / c["model"] / _tag(c["layer"])


def selection_tag(c: dict) -> str:
    return f"adaptive{c['adaptive_percent']:g}" if c["selection"] == "adaptive" else f"top{c['topk']}"


def examples_dir(c: dict) -> Path:
    return layer_dir(c) / selection_tag(c)


def vlm_tag(c: dict) -> str:
    weights = Path(c["clip_weights"]).stem if c.get("clip_weights") else ""
    name = c["model_clip"].replace("open_clip:", "openclip-")
    if name.endswith(".json"):  # a config file: its stem names the model
        name = "openclip-" + Path(name).stem
    return _tag(name + (f"-{weights}" if weights else ""))


def concept_set_name(c: dict) -> str:
    return Path(c["concept_set"]).stem if c["concept_set"].endswith(".txt") else c["concept_set"]


def image_features_path(c: dict) -> Path:
    return probe_dir(c) / f"vlm_{vlm_tag(c)}" / "image_features.pt"


def text_features_path(c: dict) -> Path:
    return Path(c["save_root"]) / f"vlm_{vlm_tag(c)}" / f"text_{_tag(concept_set_name(c))}_{c['template_ver']}.pt"


def matching_dir(c: dict) -> Path:
    mode = "adaptive" if c["adaptive"] else "plain"
    return (examples_dir(c) / f"vlm_{vlm_tag(c)}" /
            f"{_tag(concept_set_name(c))}_{c['template_ver']}_{mode}_a{c['alpha']:g}")


# Classifier evaluation, ground-truth boxes and the visualisation:
#     {save_root}/{dataset}_test/{model}/eval/                 Threshold.csv, TestEval.csv, ... (val + test)
#     {save_root}/{dataset}_{box_source}/bbox/                 images with their boxes
#     {save_root}/{dataset}_{box_source}/{model}/visualization/ panels, total_results.json
def eval_dir(c: dict) -> Path:
    # AUROC is reported on the test split (thresholds come from val), so the folder is the test one.
    return probe_dir({**c, "split": "test"}) / c["model"] / "eval"


def bbox_dir(c: dict) -> Path:
    return probe_dir({**c, "split": c["box_source"]}) / "bbox"


def visualization_dir(c: dict) -> Path:
    return probe_dir({**c, "split": c["box_source"]}) / c["model"] / "visualization"

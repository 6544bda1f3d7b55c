"""The one loader of probe crops (pipeline/forward.py's probe_loader): every pass over probing images takes
it, its loader processes are capped by the open-file limit, and it pins memory on a GPU only."""
import re

import pytest
import torch

from conftest import REPO, make_probe_set
from dataset.nih import ProbeSet
from pipeline import forward
from pipeline.cli import PipelineError


def test_no_other_dataloader_is_built_outside_the_tests():
    built = [f"{p.relative_to(REPO)}" for p in REPO.rglob("*.py")
             if "tests" not in p.relative_to(REPO).parts and not p.relative_to(REPO).parts[0].startswith(".")
             and re.search(r"DataLoader\(", p.read_text(encoding="utf-8"))]
    assert built == ["pipeline/forward.py"]


def test_items_are_the_probe_sets_in_order(tmp_path):
    paths = sorted(make_probe_set(tmp_path / "p", n=5, size=24).iterdir())
    norm = {"channels": 1, "mean": (0.5,), "std": (0.25,)}
    got = torch.cat(list(forward.probe_loader(paths, 20, 16, 2, 0, torch.device("cpu"), **norm)))
    assert torch.equal(got, torch.stack([ProbeSet(paths, 20, 16, **norm)[i] for i in range(5)]))
    x, size = next(iter(forward.probe_loader(paths, 20, 16, 5, 0, torch.device("cpu"), sizes=True)))
    assert x.shape == (5, 3, 16, 16) and size.tolist() == [[24, 24]] * 5
    vlm = forward.probe_loader(paths, 20, 16, 5, 0, torch.device("cpu"), preprocess=lambda im: torch.zeros(2))
    assert next(iter(vlm)).shape == (5, 2)


def test_loader_processes_are_capped_by_the_open_file_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(forward, "workers_that_fit", lambda prefetch: 3)
    monkeypatch.setattr(forward.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    loader = forward.probe_loader([tmp_path / "a.png"], 20, 16, 1, -1, torch.device("cpu"))
    assert loader.num_workers == 3 and loader.prefetch_factor == forward.PREFETCH
    monkeypatch.setattr("pipeline.limits.workers_that_fit", lambda prefetch: 3)
    with pytest.raises(PipelineError, match="--num_workers 4: .* at most 3 fit"):
        forward.probe_loader([tmp_path / "a.png"], 20, 16, 1, 4, torch.device("cpu"))
    assert forward.probe_loader([tmp_path / "a.png"], 20, 16, 1, 0, torch.device("cpu")).num_workers == 0


def test_memory_is_pinned_for_a_gpu_only(tmp_path):
    # building a loader touches no device, so a GPU's can be asked for without one
    assert forward.probe_loader([tmp_path / "a.png"], 20, 16, 1, 0, torch.device("cuda")).pin_memory
    assert not forward.probe_loader([tmp_path / "a.png"], 20, 16, 1, 0, torch.device("cpu")).pin_memory

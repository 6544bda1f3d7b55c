"""The significance of a neuron's name: the statistic against plain loops, its calibration on
neurons that are random by construction, Benjamini-Hochberg on what step 3 stores, its bad options."""
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import false_discovery_control

from conftest import run_script, save_random_target
from evidence import TIE, null_order, pool_rows, significance


def plain_t(S_k, n, pool):
    """max over c of (S(k, c) - n mu_c) / (sigma_c sqrt(n)), mu and sigma (population) by loops."""
    P, best = len(pool), -math.inf
    for c in range(len(pool[0])):
        col = [row[c] for row in pool]
        mu = sum(col) / P
        sigma = math.sqrt(sum((v - mu) ** 2 for v in col) / P)
        if sigma > 0:
            best = max(best, (S_k[c] - n * mu) / (sigma * math.sqrt(n)))
    return best


def test_statistic_equals_a_literal_loop():
    """t and p of each neuron, recomputed with loops over the same draws: equal, p exactly."""
    rng = random.Random(4)
    P, C, R = 7, 4, 300
    pool = [[rng.gauss(0, 1) for _ in range(C)] for _ in range(P)]
    pool[3] = list(pool[5])  # two images alike: ties among the draws
    others = [[rng.gauss(0.3, 1) for _ in range(C)] for _ in range(5)]  # example images outside the pool
    # (rows of the pool or of the others, size): sizes 1, 2, 3, the whole pool and more than the pool
    examples = [[("pool", 5)], [("pool", 0), ("other", 1)], [("other", 0), ("other", 2), ("other", 3)],
                [("pool", i) for i in range(P)], [("other", i % 5) for i in range(9)], [("pool", 2), ("pool", 3)]]
    rows = {"pool": pool, "other": others}
    S = [[sum(rows[w][i][c] for w, i in ex) for c in range(C)] for ex in examples]
    sizes = [len(ex) for ex in examples]
    t, p, p95 = significance(torch.tensor(S, dtype=torch.float64), sizes, torch.tensor(pool, dtype=torch.float64), R, 11)

    order = null_order(P, R, max(sizes), 11).tolist()
    for r in order:  # each row: permutations of the pool, one after another
        assert sorted(r[:P]) == list(range(P)) and sorted(r[P:2 * P]) == list(range(P))
    for k, n in enumerate(sizes):
        t_k = plain_t(S[k], n, pool)
        assert t[k].item() == pytest.approx(t_k, rel=1e-12, abs=1e-12)
        null = [plain_t([sum(pool[i][c] for i in r[:n]) for c in range(C)], n, pool) for r in order]
        assert p[k].item() == (1 + sum(t_r >= t_k - TIE * (1 + abs(t_k)) for t_r in null)) / (R + 1), k
        assert p95[k].item() == pytest.approx(np.percentile(null, 95), rel=1e-12, abs=1e-12)  # the view's bar
    assert p[3].item() == 1.0  # every draw of the whole pool is the pool itself: no evidence
    assert 0 < p[0].item() < 1  # one image: about one draw in P is that image (or its twin)


def test_null_is_seeded_and_its_draws_do_not_depend_on_other_sizes():
    a, b = null_order(50, 20, 10, 3), null_order(50, 20, 120, 3)
    assert torch.equal(a, b[:, :10]) and torch.equal(null_order(50, 20, 50, 3), b[:, :50]) and b.shape == (20, 150)
    assert not torch.equal(a, null_order(50, 20, 10, 4))
    assert pool_rows(10, 20, 0) == list(range(10))
    sub = pool_rows(1000, 30, 5)
    assert sub == pool_rows(1000, 30, 5) != pool_rows(1000, 30, 6)
    assert len(set(sub)) == 30 and sub == sorted(sub) and 0 <= sub[0] and sub[-1] < 1000


def test_p_is_calibrated_for_random_example_sets():
    """2,000 neurons whose examples are random subsets of the pool: about 5% have p <= 0.05."""
    g = np.random.default_rng(0)
    P, C, K = 300, 40, 2000
    # correlated concepts with unequal spreads, as real scores are
    pool = torch.tensor(g.normal(size=(P, 8)) @ g.normal(size=(8, C)) + g.normal(scale=0.5, size=(P, C)))
    sizes = g.integers(1, 60, K).tolist()
    S = torch.stack([pool[torch.tensor(g.choice(P, n, replace=False))].sum(0) for n in sizes])
    _, p, _ = significance(S, sizes, pool, 1000, 0)
    share, se = float((p <= 0.05).double().mean()), math.sqrt(0.05 * 0.95 / K)
    assert abs(share - 0.05) <= 3 * se, share


def test_chosen_examples_are_significant():
    """The power side: examples picked for a high score on one concept get small p."""
    g = np.random.default_rng(1)
    pool = torch.tensor(g.normal(size=(200, 30)))
    top = torch.argsort(pool[:, 7], descending=True)
    sizes = [3, 10, 25]
    S = torch.stack([pool[top[:n]].sum(0) for n in sizes])
    _, p, _ = significance(S, sizes, pool, 500, 0)
    assert (p <= 1 / 501 + 1e-12).all(), p


# ---- step 3 end to end: what concepts.json stores

TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def plain_bh(p):
    """q_(i) = min over j >= i of p_(j) m / j, the p sorted ascending (Benjamini-Hochberg)."""
    m, order = len(p), sorted(range(len(p)), key=lambda i: p[i])
    q, run = [0.0] * m, 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        run = min(run, p[i] * m / rank)
        q[i] = run
    return q


def test_step3_stores_z_p_q_and_significance(probe_set, tmp_path):
    clip = tmp_path / "tiny-clip.json"
    clip.write_text(json.dumps(TINY_CLIP))
    ckpt = save_random_target(tmp_path / "d.pth", "densenet121")
    obj = torch.load(ckpt, weights_only=True)
    obj["model"]["classifier.weight"][3] = 0.0  # logit 3 is its bias on every image: a dead neuron
    torch.save(obj, ckpt)
    out = tmp_path / "res"
    proc = run_script("example_selection.py", "--data_root", str(probe_set), "--checkpoint", str(ckpt),
                      "--resize", "64", "--crop", "64", "--num_workers", "0", "--save_root", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]

    def stage3(*extra):
        proc = run_script("concept_matching.py", "--model_clip", f"open_clip:{clip}", "--clip_weights", "random",
                          "--num_workers", "0", "--save_root", str(out), "--metric_encoders", "", *extra)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout, json.loads(next(out.rglob("concepts.json")).read_text())

    log, c = stage3("--null_draws", "200", "--fdr", "0.5")
    assert "and the null pool's 64 (64 new)" in log  # every probing image: the pool, the examples among them
    dead, live = c["neurons"][3], [n for n in c["neurons"] if n["status"] != "dead"]
    assert dead["status"] == "dead" and all(dead[k] is None for k in ("z", "p", "q", "significant", "null_p95"))
    assert len(live) == 13 and all(1 / 201 <= n["p"] <= 1 and n["n_examples"] > 0 for n in live)
    p = [n["p"] for n in live]
    q = [n["q"] for n in live]
    assert q == pytest.approx(false_discovery_control(p, method="bh").tolist(), abs=1e-15)
    assert q == pytest.approx(plain_bh(p), abs=1e-12)
    assert [n["significant"] for n in live] == [v <= 0.5 for v in q]
    n_sig = sum(v <= 0.5 for v in q)
    assert f"significant: {n_sig} of 13 (q <= 0.5)" in log
    # the significance constants are in the key; MAMMI's own names do not move with them
    log2, c2 = stage3()
    assert "and the null pool's 64 (0 new)" in log2 and c2["key"] != c["key"]
    strip = lambda ns: [{k: v for k, v in n.items() if k not in ("z", "p", "q", "significant", "null_p95")} for n in ns]
    assert strip(c2["neurons"]) == strip(c["neurons"])
    assert [n["z"] for n in c2["neurons"]] == [n["z"] for n in c["neurons"]]  # t does not depend on the draws
    assert c2["config"]["null_draws"] == 1000 and c["config"]["fdr"] == 0.5


@pytest.mark.parametrize("option,value,allowed", [("--null_draws", "99", ">= 100"), ("--fdr", "0", "in (0, 1)"),
                                                  ("--fdr", "1", "in (0, 1)"), ("--null_pool", "0", ">= 1")])
def test_bad_significance_options_are_refused(tmp_path, option, value, allowed):
    proc = run_script("concept_matching.py", option, value, "--data_root", str(tmp_path / "nowhere"),
                      "--save_root", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{option} {value}" in lines[0] and allowed in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())


# ---- the model-randomisation sanity check

def test_reinitialise_changes_every_weight_and_is_seeded():
    from models.target import build_target, reinitialise
    net = build_target("densenet121")
    with torch.no_grad():  # stand-ins for trained weights and batch-norm statistics
        for p in net.parameters():
            p.normal_()
        for name, b in net.named_buffers():
            if "running" in name:
                b.fill_(3.0)
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    assert reinitialise(net, 0) == []  # DenseNet: every parameter belongs to a module that resets itself
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is left as it was
    first = {k: v.clone() for k, v in net.state_dict().items()}
    params = [k for k, _ in net.named_parameters()]
    assert all(not torch.equal(first[k], trained[k]) for k in params)
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in first.items() if k.endswith("running_mean"))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    reinitialise(net, 0)
    assert all(torch.equal(net.state_dict()[k], first[k]) for k in first)  # the same seed, the same weights
    reinitialise(net, 1)
    assert not torch.equal(net.state_dict()["features.conv0.weight"], first["features.conv0.weight"])


def test_reinitialise_names_parameters_it_cannot_reset():
    from models.target import reinitialise

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.scale = torch.nn.Parameter(torch.full((2,), 5.0))

    net = Scaled()
    assert reinitialise(net, 0) == ["scale"] and torch.equal(net.scale, torch.full((2,), 5.0))


def test_sanity_check_writes_both_targets_apart(probe_set, tmp_path):
    """Both targets in their own folders on one set of caches; the target of --checkpoint random is
    untrained, and the check calls it target, never trained, with the fdr its names were tested at."""
    clip = tmp_path / "tiny-clip.json"
    clip.write_text(json.dumps(TINY_CLIP))
    out = tmp_path / "res"
    proc = run_script("sanity_check.py", "--data_root", str(probe_set), "--checkpoint", "random", "--resize", "64",
                      "--crop", "64", "--num_workers", "0", "--save_root", str(out), "--model_clip", f"open_clip:{clip}",
                      "--clip_weights", "random", "--metric_encoders", "", "--null_draws", "200", "--layer", "fc",
                      "--fdr", "0.2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    probe = out / "nih14_train"
    trained = torch.load(probe / "densenet121" / "fc" / "activations.pt", weights_only=True)
    rand = torch.load(probe / "densenet121-reinit0" / "fc" / "activations.pt", weights_only=True)
    assert rand["config"]["reinit_seed"] == 0 and trained["config"]["reinit_seed"] == -1
    assert rand["key"] != trained["key"] and not torch.allclose(rand["activations"], trained["activations"])
    report = json.loads((probe / "densenet121-reinit0" / "sanity.json").read_text())
    assert (probe / "densenet121-reinit0" / "sanity.png").is_file()
    for which, folder in (("target", "densenet121"), ("reinitialised", "densenet121-reinit0")):
        side = report["layers"]["fc"][which]
        run = json.loads(Path(side["concepts_json"]).read_text())
        assert Path(side["concepts_json"]).is_relative_to(probe / folder)
        live = [n for n in run["neurons"] if n["status"] != "dead"]
        assert side["live"] == len(live) and side["significant"] == sum(n["significant"] for n in live)
        assert side["fdr"] == 0.2
    assert report["layers"]["fc"]["target"]["untrained"] is True  # as step 2 marked it
    said = proc.stdout[proc.stdout.index("== Sanity check"):]
    assert "(q <= 0.2)" in said and "fc: target (untrained: --checkpoint random)" in said and "re-initialised" in said
    assert not re.search(r"(?<!un)trained", said), said
    # one image folder and one text cache serve both targets: nothing embedded twice
    assert len(list(out.rglob("image_features.pt"))) == 1 and len(list(out.rglob("text_*.pt"))) == 1

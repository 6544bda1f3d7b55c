"""The significance of a neuron's name: the statistic against plain loops, its calibration on
neurons that are random by construction, Benjamini-Hochberg on what step 3 stores, its bad options."""
import json
import math
import random
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import false_discovery_control

from conftest import REPO, TINY_CLIP, densenet_of, make_probe_set, model_input, run_script, save_random_target
from mammi.evidence import (
    TIE,
    name_test,
    null_names,
    null_order,
    p_values,
    pool_needed,
    pool_rows,
    smallest_p,
    smallest_q,
)


def plain_null(pool, draw):
    """max over c of the mean of s over the drawn rows: the score of the name the method gives them."""
    return max(sum(pool[i][c] for i in draw) / len(draw) for c in range(len(pool[0])))


def plain_p(m, null):
    return (1 + sum(m_r >= m - TIE * (1 + abs(m)) for m_r in null)) / (len(null) + 1)


def test_name_test_equals_a_literal_loop():
    """Every name's p and each neuron's 95th percentile, recomputed with loops over the same draws:
    equal, p exactly, whatever chunks the draws are summed in."""
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
    # each neuron's names: its best concept first (the one tested), then its others in descending S
    scores = [[v / n for v in sorted(S_k, reverse=True)] for S_k, n in zip(S, sizes)]
    s_pool = torch.tensor(pool, dtype=torch.float64)

    order = null_order(P, R, max(sizes), 11).tolist()
    for r in order:  # each row: permutations of the pool, one after another
        assert sorted(r[:P]) == list(range(P)) and sorted(r[P:2 * P]) == list(range(P))
    for budget in (1 << 23, 40, 1):  # one chunk; several draws and images at a time; one score at a time
        p, p95 = name_test(scores, sizes, s_pool, R, 11) if budget == 1 << 23 else (None, None)
        null = null_names(s_pool, sizes, R, 11, budget=budget)
        for k, n in enumerate(sizes):
            plain = [plain_null(pool, r[:n]) for r in order]
            assert null[n].tolist() == pytest.approx(plain, rel=1e-12, abs=1e-12), (budget, n)
            if p is not None:
                assert p[k] == [plain_p(m, plain) for m in scores[k]], k
                assert p95[k] == pytest.approx(np.percentile(plain, 95), rel=1e-12, abs=1e-12)  # the view's bar
    p, _ = name_test(scores, sizes, s_pool, R, 11)
    assert p[3][0] == 1.0  # every draw of the whole pool is the pool itself: no evidence
    assert 0 < p[0][0] < 1  # one image: about one draw in P is that image (or its twin)
    assert all(a <= b for pk in p for a, b in zip(pk, pk[1:]))  # a lower-scoring name never has a smaller p


def test_a_tie_counts_as_at_least_as_extreme():
    null = torch.tensor([0.1, 0.3, 0.3 + 1e-12, 0.5], dtype=torch.float64)
    assert p_values(torch.tensor([0.3, 0.3000001, 0.6, -1.0], dtype=torch.float64), null).tolist() == [4 / 5, 2 / 5, 1 / 5, 5 / 5]


def test_null_is_seeded_and_its_draws_do_not_depend_on_other_sizes():
    a, b = null_order(50, 20, 10, 3), null_order(50, 20, 120, 3)
    assert torch.equal(a, b[:, :10]) and torch.equal(null_order(50, 20, 50, 3), b[:, :50]) and b.shape == (20, 150)
    assert not torch.equal(a, null_order(50, 20, 10, 4))
    assert pool_rows(10, 20, 0) == list(range(10))
    sub = pool_rows(1000, 30, 5)
    assert sub == pool_rows(1000, 30, 5) != pool_rows(1000, 30, 6)
    assert len(set(sub)) == 30 and sub == sorted(sub) and 0 <= sub[0] and sub[-1] < 1000


def test_p_is_calibrated_for_random_example_sets():
    """2,000 neurons whose examples are random subsets of the pool, each named by its best concept:
    about 5% have p <= 0.05 (H0 true by construction)."""
    g = np.random.default_rng(0)
    P, C, K = 300, 40, 2000
    # correlated concepts with unequal spreads and means, as real scores are
    pool = torch.tensor(g.normal(size=(P, 8)) @ g.normal(size=(8, C)) + g.normal(scale=0.5, size=(P, C))
                        + g.normal(size=C))
    sizes = g.integers(1, 60, K).tolist()
    S = torch.stack([pool[torch.tensor(g.choice(P, n, replace=False))].sum(0) for n in sizes])
    p, _ = name_test([[S_k.max().item() / n] for S_k, n in zip(S, sizes)], sizes, pool, 1000, 0)
    share, se = float(np.mean([pk[0] <= 0.05 for pk in p])), math.sqrt(0.05 * 0.95 / K)
    assert abs(share - 0.05) <= 3 * se, share


def test_chosen_examples_are_significant():
    """The power side: examples picked for a high score on one concept get small p."""
    g = np.random.default_rng(1)
    pool = torch.tensor(g.normal(size=(200, 30)))
    top = torch.argsort(pool[:, 7], descending=True)
    sizes = [3, 10, 25]
    S = torch.stack([pool[top[:n]].sum(0) for n in sizes])
    p, _ = name_test([[S_k.max().item() / n] for S_k, n in zip(S, sizes)], sizes, pool, 500, 0)
    assert all(pk[0] <= 1 / 501 + 1e-12 for pk in p), p


def test_reachable_p_and_q_and_the_pool_that_would_do():
    """Hand counts: C(13, 1) = 13 subsets of one image, C(13, 3) = 286, C(12, 2) = 66."""
    assert smallest_p(13, 1, 1000) == 1 / 13
    assert smallest_p(13, 3, 1000) == 1 / 286
    assert smallest_p(2000, 1, 1000) == 1 / 1001 and smallest_p(10 ** 6, 400, 1000) == 1 / 1001
    assert smallest_p(5, 7, 1000) == 1.0  # more examples than the pool: every draw is the pool
    assert smallest_q([1 / 13] * 5) == pytest.approx(1 / 13)
    assert smallest_q([0.01, 0.04, 0.04]) == pytest.approx(0.03) and smallest_q([]) == 1.0
    # one image per neuron: p >= 1/|P| and q = p, so q <= 0.05 first at |P| = 20
    assert pool_needed([1, 1, 1], 1000, 0.05) == 20
    # with 12 images a 2-example neuron reaches 1/66, and BH over three gives 3/66 <= 0.05; 11 give 3/55 > 0.05
    assert pool_needed([1, 1, 2], 1000, 0.05) == 12
    assert pool_needed([1], 10, 0.05) is None  # 1 / 11 > 0.05 whatever the pool


# ---- step 3 end to end: what concepts.json stores


def plain_bh(p):
    """q_(i) = min over j >= i of p_(j) m / j, the p sorted ascending (Benjamini-Hochberg)."""
    m, order = len(p), sorted(range(len(p)), key=lambda i: p[i])
    q, run = [0.0] * m, 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        run = min(run, p[i] * m / rank)
        q[i] = run
    return q


def plain_scores(img, text, template):
    """s(x, c) = cos(x, c) - cos(x, T), by numpy, in float64."""
    unit = lambda v: np.asarray(v, dtype=np.float64) / np.linalg.norm(np.asarray(v, dtype=np.float64), axis=-1,
                                                                     keepdims=True)
    x = unit(img)
    return x @ unit(text).T - (x @ unit(template))[:, None]


def stage2_then_3(probe, tmp_path, *extra, dead=None):
    clip = tmp_path / "tiny-clip.json"
    clip.write_text(json.dumps(TINY_CLIP))
    ckpt = save_random_target(tmp_path / "d.pth", "densenet121")
    if dead is not None:
        obj = torch.load(ckpt, weights_only=True)
        obj["model"]["classifier.weight"][dead] = 0.0  # the logit is its bias on every image: a dead neuron
        torch.save(obj, ckpt)
    out = tmp_path / "res"
    proc = run_script("example_selection.py", "--data_root", str(probe), "--checkpoint", str(ckpt),
                      "--resize", "64", "--crop", "64", "--num_workers", "0", "--save_root", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]

    def stage3(*more):
        proc = run_script("concept_matching.py", "--model_clip", f"open_clip:{clip}", "--clip_weights", "random",
                          "--num_workers", "0", "--save_root", str(out), "--metric_encoders", "", *extra, *more)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout, json.loads(next(out.rglob("concepts.json")).read_text())
    return out, stage3


def test_step3_tests_each_name_against_the_naming_replayed(probe_set, tmp_path):
    """Every name's p recomputed from the stored features by loops: the pool a seeded subset of the
    whole probing set (not the examples), the statistic the mean score of the name shown."""
    out, stage3 = stage2_then_3(probe_set, tmp_path, dead=3)
    log, c = stage3("--null_draws", "200", "--fdr", "0.5", "--null_pool", "40")
    assert "and the null pool's 40" in log
    feats = torch.load(next(out.rglob("image_features.pt")), weights_only=True)
    text = torch.load(next(out.rglob("text_*.pt")), weights_only=True)
    row = {i: r for r, i in enumerate(feats["image_ids"])}
    s = plain_scores(feats["features"], text["features"], text["template"])
    column = {name: j for j, name in enumerate(text["concepts"])}
    probe_names = sorted(p.name for p in probe_set.iterdir())  # the split file lists them in this order
    pool = [s[row[probe_names[r]]].tolist() for r in pool_rows(64, 40, 0)]
    examples = json.loads(next(out.rglob("examples.json")).read_text())["neurons"]

    dead = c["neurons"][3]
    assert dead["status"] == "dead"
    fields = ("tested", "m", "p", "q", "significant", "null_p95")
    named = [n for n in c["neurons"] if n["status"] == "ok"]
    assert all(n[k] is None for n in c["neurons"] if n["status"] != "ok" for k in fields)
    assert len(named) >= 8
    order = null_order(40, 200, max(n["n_examples"] for n in named), 0).tolist()
    for n in named:
        ids = [e["image_id"] for e in examples[n["neuron"]]["examples"]]
        size = len(ids)
        assert n["tested"] == n["concepts"][0]["concept"] and n["n_examples"] == size
        S_k = s[[row[i] for i in ids]].sum(0)
        assert n["tested"] == text["concepts"][int(S_k.argmax())]  # the first name is the best concept
        assert n["m"] == pytest.approx(S_k.max() / size, rel=1e-9)
        null = [plain_null(pool, r[:size]) for r in order]
        assert n["p"] == plain_p(S_k.max() / size, null)
        assert [x["p"] for x in n["concepts"]] == [plain_p(S_k[column[x["concept"]]] / size, null)
                                                   for x in n["concepts"]]
        assert n["null_p95"] == pytest.approx(np.percentile(null, 95), rel=1e-9)
    p, q = [n["p"] for n in named], [n["q"] for n in named]
    assert q == pytest.approx(false_discovery_control(p, method="bh").tolist(), abs=1e-15)
    assert q == pytest.approx(plain_bh(p), abs=1e-12)
    assert [n["significant"] for n in named] == [v <= 0.5 for v in q]
    n_sig = sum(v <= 0.5 for v in q)
    assert c["evidence"] == {"testable": True, "tested": len(named), "significant": n_sig, "fdr": 0.5, "draws": 200,
                             "pool": 40, "p_min": pytest.approx(1 / 201), "pool_needed": None}
    assert f"significant names: {n_sig} of {len(named)} named neurons (q <= 0.5" in log
    # the test's constants are in the key; MAMMI's own names do not move with them
    log2, c2 = stage3()
    assert "and the null pool's 64" in log2 and c2["key"] != c["key"]
    keep = lambda ns: [{k: v for k, v in n.items() if k not in fields + ("concepts",)} for n in ns]
    assert keep(c2["neurons"]) == keep(c["neurons"])
    names = lambda ns: [[(x["concept"], x["score"]) for x in n["concepts"]] for n in ns]
    assert names(c2["neurons"]) == names(c["neurons"])
    assert [n["tested"] for n in c2["neurons"]] == [n["tested"] for n in c["neurons"]]
    assert c2["config"]["null_draws"] == 1000 and c["config"]["fdr"] == 0.5


def test_a_probing_set_too_small_to_test_says_so(tmp_path):
    """5 images: no example set is one of more than C(5, 2) = 10 alike, so p >= 1/10 and q >= 1/10 > 0.05
    whatever the draws: the step says so with the numbers and the size that would do, and stores no verdict."""
    probe = make_probe_set(tmp_path / "probe", n=5)
    _, stage3 = stage2_then_3(probe, tmp_path)
    log, c = stage3()
    sizes = [n["n_examples"] for n in c["neurons"] if n["status"] == "ok"]
    assert sizes
    line = next(ln for ln in log.splitlines() if "not testable" in ln)
    assert "a pool of 5 images" in line and "fdr 0.05" in line
    want = pool_needed(sizes, 1000, 0.05)
    assert want > 5 and f"a probing set of at least {want} images" in line
    assert c["evidence"]["testable"] is False and c["evidence"]["pool_needed"] == want
    assert all(n["p"] is None and n["significant"] is None and n["tested"] is None for n in c["neurons"])


def test_more_null_draws_than_memory_holds_are_refused_with_the_number_that_fits(probe_set, tmp_path, monkeypatch):
    """The null's draws are held at once (null_order ranks the pool for each): beyond what memory holds they are
    refused before any image is embedded, naming the most that fit; that many run, one more is refused."""
    from pipeline import limits
    monkeypatch.setattr(limits, "available_memory", lambda: 10**6)
    clip = tmp_path / "tiny-clip.json"
    clip.write_text(json.dumps(TINY_CLIP))
    ckpt = save_random_target(tmp_path / "d.pth", "densenet121")
    out = tmp_path / "res"
    proc = run_script("example_selection.py", "--data_root", str(probe_set), "--checkpoint", str(ckpt),
                      "--resize", "64", "--crop", "64", "--num_workers", "0", "--save_root", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    stage3 = lambda draws: run_script("concept_matching.py", "--model_clip", f"open_clip:{clip}", "--clip_weights",
                                      "random", "--num_workers", "0", "--save_root", str(out), "--metric_encoders", "",
                                      "--null_draws", str(draws))
    proc = stage3(10**5)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--null_draws 100000: 100000 random example sets of up to" in lines[0] and "of the pool's 64 images" in lines[0]
    fit = int(re.search(r"at most (\d+) fit: pass --null_draws \1 or less", lines[0])[1])
    assert 100 <= fit < 10**5 and not list(out.rglob("image_features.pt"))
    assert stage3(fit + 1).returncode == 2
    proc = stage3(fit)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(next(out.rglob("concepts.json")).read_text())["config"]["null_draws"] == fit


@pytest.mark.parametrize("option,value,allowed", [("--null_draws", "99", "in [100, 10**7]"), ("--fdr", "0", "in (0, 1)"),
                                                  ("--fdr", "1", "in (0, 1)"), ("--null_pool", "0", "in [1, 10**7]")])
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
    assert reinitialise(net, 0, "densenet121") == []  # DenseNet: every parameter belongs to a module that resets itself
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is left as it was
    first = {k: v.clone() for k, v in net.state_dict().items()}
    params = [k for k, _ in net.named_parameters()]
    assert all(not torch.equal(first[k], trained[k]) for k in params)
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in first.items() if k.endswith("running_mean"))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    reinitialise(net, 0, "densenet121")
    assert all(torch.equal(net.state_dict()[k], first[k]) for k in first)  # the same seed, the same weights
    reinitialise(net, 1, "densenet121")
    assert not torch.equal(net.state_dict()["features.conv0.weight"], first["features.conv0.weight"])


def test_reinitialise_names_parameters_it_cannot_reset():
    from models.target import reinitialise

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.scale = torch.nn.Parameter(torch.full((2,), 5.0))

    net = Scaled()
    assert reinitialise(net, 0, "densenet121") == ["scale"] and torch.equal(net.scale, torch.full((2,), 5.0))


def test_a_layer_without_live_neurons_is_0_of_0(probe_set, tmp_path, monkeypatch):
    """One probing image: no neuron has an activation above its own adaptive threshold, so every neuron of
    both targets is dead; the layer has no share of significant neurons, and says 0 of 0. The target of
    --checkpoint random is untrained: the check calls it target, never trained, at the fdr it was given."""
    clip = tmp_path / "tiny-clip.json"
    clip.write_text(json.dumps(TINY_CLIP))
    out = tmp_path / "res"
    proc = run_script("sanity_check.py", "--data_root", str(probe_set), "--checkpoint", "random", "--resize", "64",
                      "--crop", "64", "--num_workers", "0", "--save_root", str(out), "--model_clip", f"open_clip:{clip}",
                      "--clip_weights", "random", "--metric_encoders", "", "--layer", "fc", "--max_images", "1",
                      "--fdr", "0.2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "nih14_train" / "densenet121-reinit0" / "sanity.json").read_text())
    for which in ("target", "reinitialised"):
        side = report["layers"]["fc"][which]
        assert (side["live"], side["significant"], side["share"], side["first_concepts"]) == (0, 0, None, [])
        assert side["fdr"] == 0.2
    assert report["layers"]["fc"]["target"]["untrained"] is True  # as step 2 marked it
    said = proc.stdout[proc.stdout.index("== Sanity check"):]
    assert "fc: target (untrained: --checkpoint random) 0 of 0 names significant, re-initialised 0 of 0 names " \
           "significant;" in said and "(q <= 0.2)" in said
    assert not re.search(r"(?<!un)trained", said), said
    monkeypatch.setattr(sys, "argv", ["sanity_check.py"])
    fig = runpy.run_path(str(REPO / "sanity_check.py"), run_name="constants_only")["figure"](report["layers"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["0/0", "0/0"]


def test_sanity_check_writes_both_targets_apart(probe_set, tmp_path):
    """--sanity_seed 2: the target and the one re-initialised with seed 2, each in its folder; the latter's
    activations (fc: the logits) are those of the checkpoint re-initialised by hand with seed 2, not seed 0's."""
    clip = tmp_path / "tiny-clip.json"
    clip.write_text(json.dumps(TINY_CLIP))
    ckpt = save_random_target(tmp_path / "d.pth", "densenet121")
    out = tmp_path / "res"
    proc = run_script("sanity_check.py", "--data_root", str(probe_set), "--checkpoint", str(ckpt), "--resize", "64",
                      "--crop", "64", "--num_workers", "0", "--save_root", str(out), "--model_clip", f"open_clip:{clip}",
                      "--clip_weights", "random", "--metric_encoders", "", "--null_draws", "200", "--layer", "fc",
                      "--sanity_seed", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    probe = out / "nih14_train"
    trained = torch.load(probe / "densenet121" / "fc" / "activations.pt", weights_only=True)
    rand = torch.load(probe / "densenet121-reinit2" / "fc" / "activations.pt", weights_only=True)
    assert rand["config"]["reinit_seed"] == 2 and trained["config"]["reinit_seed"] == -1
    assert rand["key"] != trained["key"] and not torch.allclose(rand["activations"], trained["activations"])
    ex = json.loads((probe / "densenet121-reinit2" / "fc" / "adaptive93" / "examples.json").read_text())
    x = torch.stack([model_input(probe_set / name, ex["config"]) for name in rand["image_ids"]])
    with torch.no_grad():
        by_hand = {seed: densenet_of(ckpt, seed)(x) for seed in (0, 2)}
    assert torch.allclose(rand["activations"], by_hand[2], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(by_hand[0], by_hand[2], rtol=1e-2, atol=1e-2)  # another seed, other weights
    report = json.loads((probe / "densenet121-reinit2" / "sanity.json").read_text())
    assert (probe / "densenet121-reinit2" / "sanity.png").is_file()
    for which, folder in (("target", "densenet121"), ("reinitialised", "densenet121-reinit2")):
        side = report["layers"]["fc"][which]
        run = json.loads(Path(side["concepts_json"]).read_text())
        assert Path(side["concepts_json"]).is_relative_to(probe / folder)
        live = [n for n in run["neurons"] if n["status"] != "dead"]
        assert side["live"] == len(live) and side["significant"] == sum(n["significant"] is True for n in live)
        assert side["tested"] == sum(n["status"] == "ok" for n in live) == run["evidence"]["tested"]
        assert side["untrained"] is False
    assert "fc: target" in proc.stdout and "re-initialised" in proc.stdout
    # one image folder and one text cache serve both targets: nothing embedded twice
    assert len(list(out.rglob("image_features.pt"))) == 1 and len(list(out.rglob("text_*.pt"))) == 1

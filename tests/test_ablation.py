"""Ablation of the named neurons (pipeline/ablation.py, ablation.py): which neurons a finding names, the
statistic against hand-computed numbers and a literal loop, the forward hook against the exact linear
shortcut, and the step from the command line with its bad inputs."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_script
from mammi.ablation import finding_stats, hook_drops, linear_drops, linear_map, named_neurons, positives, random_sets
from models.layers import tap
from pipeline.ablation import OUTPUTS
from pipeline.cli import constants_of

MISSING = -1


def rec(k, concepts, status="ok"):
    return {"neuron": k, "status": status, "concepts": [{"concept": c, "score": 1.0} for c in concepts]}


def test_a_finding_is_named_by_itself_or_all_of_its_words():
    """N_f: a concept equal to the finding, or concepts holding each of its words (case, '_' and '-' aside),
    live neurons only."""
    records = [rec(0, ["effusion"]), rec(1, ["pleural"]), rec(2, ["thickening", "mass"]),
               rec(3, ["pleural thickening"]), rec(4, ["Pleural_Thickening"]), rec(5, ["pleural effusion"]),
               rec(6, ["mass"], status="dead"), rec(7, ["masses"]), rec(8, ["thick"]), rec(9, []),
               rec(10, ["Effusion "], status="ok")]
    assert named_neurons(records, "Effusion") == [0, 10]
    assert named_neurons(records, "Pleural_Thickening") == [3, 4]  # one word alone names no finding
    assert named_neurons(records, "pleural thickening") == [3, 4]
    assert named_neurons(records, "Mass") == [2]
    assert named_neurons(records, "Hernia") == []


# A tiny case computed by hand: 4 images, 3 neurons, 2 classes, logits = A @ W.T (no bias).
A = torch.tensor([[1., 0., 2.], [0., 1., 1.], [2., 1., 0.], [1., 1., 1.]])
W = torch.tensor([[1., 2., 0.], [0., 1., -1.]])
LABELS = np.array([[1, 0], [0, 1], [1, 1], [0, MISSING]])


def test_statistic_by_hand():
    """Finding 0, N_f = {0, 1}, random sets {0, 2}, {1, 2}, {0, 1}: each number worked out on paper."""
    # class 0 logits 1, 2, 4, 3: SD (n - 1) sqrt(5/3); class 1 logits -2, 0, 1, 0: SD sqrt(19/12).
    # class 0 positives: images 0 and 2, mean contribution of neurons 0, 1, 2 to its logit: 1.5, 1, 0;
    # class 1 positives: images 1 and 2, of neurons 0, 1, 2: 0, 1, -0.5.
    sets = [[0, 1], [0, 2], [1, 2], [0, 1]]
    drops = linear_drops(A, W, positives(LABELS), sets)
    assert drops.tolist() == [[2.5, 1.0], [1.5, -0.5], [1.0, 0.5], [2.5, 1.0]]
    logits = A.double() @ W.double().T
    sd = logits.std(0, correction=1)
    assert torch.allclose(sd, torch.tensor([math.sqrt(5 / 3), math.sqrt(19 / 12)], dtype=torch.float64))
    got = finding_stats(drops / sd, 0, [1])
    s0 = math.sqrt(5 / 3)
    assert got["effect"] == pytest.approx(2.5 / s0, rel=1e-12)
    assert got["random_mean"] == pytest.approx((5 / 3) / s0, rel=1e-12)        # (1.5 + 1 + 2.5) / 3
    assert got["random_sd"] == pytest.approx(math.sqrt(7 / 12) / s0, rel=1e-12)  # deviations -1/6, -2/3, 5/6
    assert got["z"] == pytest.approx((5 / 6) / math.sqrt(7 / 12), rel=1e-12)    # 1.0911
    assert got["other_classes"] == pytest.approx(1 / math.sqrt(19 / 12), rel=1e-12)
    # the same drops by forward passes of a network whose head reads A
    net = nn.Sequential(nn.Identity(), nn.Linear(3, 2, bias=False)).double().eval()
    net[1].weight.data = W.double()
    hooked = hook_drops(net, "penultimate", [A.double()[:3], A.double()[3:]], positives(LABELS), sets,
                        torch.device("cpu"))
    assert torch.allclose(hooked, drops, rtol=0, atol=1e-12)


def test_a_constant_random_band_has_no_z():
    effects = torch.tensor([[2.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    got = finding_stats(effects, 0, [])
    assert got["z"] is None and got["random_sd"] == 0.0 and got["other_classes"] is None


def literal(acts, weight, labels, sets, f, others=None):
    """The statistic with loops: drops image by image, SDs and means by their formulas; others: the classes
    of other_classes (default: every class but f)."""
    N, K = len(acts), len(acts[0])
    C = len(weight)
    logits = [[sum(acts[x][k] * weight[c][k] for k in range(K)) for c in range(C)] for x in range(N)]

    def sd(c):
        m = sum(logits[x][c] for x in range(N)) / N
        return math.sqrt(sum((logits[x][c] - m) ** 2 for x in range(N)) / (N - 1))

    def effect(s, c):
        pos = [x for x in range(N) if labels[x][c] == 1]
        # the drop when the channels of s are zeroed: the logit as it is minus the logit without them
        drop = [logits[x][c] - sum(acts[x][k] * weight[c][k] for k in range(K) if k not in s) for x in pos]
        return sum(drop) / len(drop) / sd(c)

    named, rand = sets[0], sets[1:]
    e = effect(named, f)
    r = [effect(s, f) for s in rand]
    mean = sum(r) / len(r)
    rsd = math.sqrt(sum((v - mean) ** 2 for v in r) / (len(r) - 1))
    others = [c for c in range(C) if c != f] if others is None else others
    return {"effect": e, "random_mean": mean, "random_sd": rsd, "z": (e - mean) / rsd,
            "other_classes": sum(effect(named, c) for c in others) / len(others)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistic_matches_a_literal_loop(seed):
    g = torch.Generator().manual_seed(seed)
    N, K, C = 40, 12, 4
    acts = torch.rand(N, K, generator=g, dtype=torch.float64) * 3
    weight = torch.randn(C, K, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (N, C), generator=g).numpy()
    labels[:5, 2] = MISSING
    sets = [[1, 4, 7]] + random_sets(list(range(K)), 3, 30, seed).tolist()
    logits = acts @ weight.T
    got = finding_stats(linear_drops(acts, weight, positives(labels), sets) / logits.std(0, correction=1), 1,
                        [0, 2, 3])
    want = literal(acts.tolist(), weight.tolist(), labels.tolist(), sets, 1)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_ablate_draws_only_live_neurons_and_leaves_the_finding_out_of_the_other_classes(tmp_path):
    """ablate() on a split given by hand, 12 neurons and 4 classes: neurons 2, 5 and 9 are dead (5 names
    effusion) and, with activations 50 times the others', would dominate any random set that drew one; Nodule
    has positives but a constant logit (not usable), Hernia none (no finding). Each row against the literal
    loop, its random sets drawn from the live neurons listed here, its other classes the usable findings but
    itself: Effusion's is Mass alone, Mass's Effusion alone."""
    from pipeline.ablation import ablate
    g = torch.Generator().manual_seed(3)
    N, K = 30, 12
    dead = [2, 5, 9]
    live = [0, 1, 3, 4, 6, 7, 8, 10, 11]
    acts = torch.rand(N, K, generator=g, dtype=torch.float64)
    acts[:, dead] *= 50
    weight = torch.rand(4, K, generator=g, dtype=torch.float64) + 0.5
    weight[2] = 0  # Nodule's logit is 0 on every image
    labels = torch.randint(0, 2, (N, 4), generator=g).numpy()
    labels[:, 3] = 0  # no image positive for Hernia
    labels[:3, 1] = MISSING
    names = {1: ["effusion"], 4: ["Effusion", "rib"], 5: ["effusion"], 7: ["mass"], 8: ["nodule"]}
    records = [rec(k, names.get(k, ["rib"]), status="dead" if k in dead else "ok") for k in range(K)]
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps({"neurons": records}))
    data = {"activations_key": "by hand", "split": "test", "what": "split by hand", "layer": "penultimate",
            "classes": ["Effusion", "Mass", "Nodule", "Hernia"], "findings": [0, 1, 2], "labels": labels,
            "tensors": lambda: {"acts": acts, "logits": acts @ weight.T, "weight": weight, "net": None}}
    draws, seed = 40, 5
    rows = {r["finding"]: r for r in ablate(path, records, data, draws, seed)["findings"]}
    assert list(rows) == ["effusion", "mass", "nodule"]
    assert rows["nodule"]["neurons"] == [8] and rows["nodule"]["z"] is None  # named, but no logit SD to divide by
    for f, named, others in ((0, [1, 4], [1]), (1, [7], [0])):
        row = rows[data["classes"][f].lower()]
        assert row["neurons"] == named
        sets = [named] + random_sets(live, len(named), draws, seed).tolist()
        want = literal(acts.tolist(), weight.tolist(), labels.tolist(), sets, f, others)
        for k, v in want.items():
            assert row[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (f, k)


def test_random_sets_are_seeded_subsets_of_the_live_neurons():
    live = [0, 2, 3, 5, 8, 9, 11]
    sets = random_sets(live, 3, 500, 7)
    assert sets.shape == (500, 3)
    assert all(len(set(s)) == 3 and set(s) <= set(live) for s in sets.tolist())
    assert torch.equal(sets, random_sets(live, 3, 500, 7))
    assert not torch.equal(sets, random_sets(live, 3, 500, 8))
    # one seeded order per draw: a smaller set is the start of the larger one, whatever the finding
    assert torch.equal(random_sets(live, 2, 500, 7), sets[:, :2])
    # uniform: each live neuron in about 3/7 of the sets
    share = torch.tensor([(sets == k).any(1).double().mean() for k in live])
    assert (share - 3 / 7).abs().max() < 0.08, share


class Small(nn.Module):
    """A conv block, global pooling and a linear head, as the penultimate layer of the real targets."""
    def __init__(self, scale=1.0):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        self.classifier = nn.Linear(8, 5)
        self.scale = scale

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3))) * self.scale


@pytest.mark.parametrize("layer", ["penultimate", "features", "features.0", "fc"])
def test_hook_ablation_equals_the_linear_shortcut(layer):
    """Zeroing channels by a hook gives the drops of the exact shortcut: at the head's input, at the conv
    block's output and its conv's (ReLU and the mean keep a zero channel zero), and at the logits (W = I)."""
    torch.manual_seed(0)
    net = Small().eval()
    x = torch.randn(24, 3, 12, 12)
    labels = torch.randint(0, 2, (24, 5)).numpy()
    labels[0] = 1  # every class has positives
    with torch.no_grad(), tap(net, "fc" if layer == "fc" else "penultimate") as store:
        logits = net(x)
        acts = store["a"]
    weight = linear_map(net, "fc" if layer == "fc" else "penultimate", acts, logits)
    assert weight is not None
    K = acts.shape[1]
    sets = [[1, 3], [0], list(range(K))] + random_sets(list(range(K)), 2, 6, 0).tolist()
    want = linear_drops(acts, weight, positives(labels), sets)
    got = hook_drops(net, layer, [x[:10], x[10:]], positives(labels), sets, torch.device("cpu"))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    assert want.abs().max() > 0.01


def test_no_shortcut_where_the_logits_are_not_the_heads_output():
    """A model that rescales its head's output is ablated by hooks, not by the head's weight."""
    torch.manual_seed(0)
    net = Small(scale=2.0).eval()
    x = torch.randn(8, 3, 12, 12)
    with torch.no_grad(), tap(net, "penultimate") as store:
        logits = net(x)
    assert linear_map(net, "penultimate", store["a"], logits) is None
    assert linear_map(net, "features", store["a"], logits) is None


# ---- the step from the command line

@pytest.fixture(scope="module")
def run(probe_set, densenet_ckpt, tmp_path_factory):
    """Step 2 of a random DenseNet-121 (penultimate) on the generated set, and a concepts.json naming a
    few neurons for findings by hand (the format every describer writes)."""
    out = tmp_path_factory.mktemp("abl") / "res"
    proc = run_script("example_selection.py", "--data_root", str(probe_set), "--checkpoint", str(densenet_ckpt),
                      "--resize", "64", "--crop", "64", "--num_workers", "0", "--layer", "penultimate",
                      "--save_root", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ex = out / "nih14_train" / "densenet121" / "penultimate" / "adaptive93" / "examples.json"
    return ex


def concepts_file(folder, ex, names, n_neurons=1024):
    # inside the results folder, two folders below its examples.json, where a reader finds them
    folder = Path(ex).parent / "by-hand" / "-".join(folder.parts[-2:])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "concepts.json"
    neurons = [rec(k, names.get(k, ["rib"])) for k in range(n_neurons)]
    examples_key = json.loads(Path(ex).read_text())["key"]  # a concepts.json of these very examples
    path.write_text(json.dumps({"key": "hand-made", "examples_key": examples_key, "config": {"examples": str(ex)},
                                "neurons": neurons}))
    return path


def ablation(*args):
    return run_script("ablation.py", "--num_workers", "0", "--ablation_draws", "20", *args)


def test_ablation_writes_its_table_and_reuses_it(run, tmp_path):
    ex = run
    path = concepts_file(tmp_path / "run", ex, {3: ["effusion"], 7: ["Effusion", "mass"], 9: ["pleural", "thickening"],
                                                       11: ["pleural"]})  # 11: one word of it names none
    proc = ablation("--ablation_concepts", str(path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = json.loads((path.parent / "ablation.json").read_text())
    assert got["method"] == "linear" and got["split"] == "test" and got["draws"] == 20
    rows = {r["finding"]: r for r in got["findings"]}
    assert rows["effusion"]["neurons"] == [3, 7] and rows["mass"]["neurons"] == [7]
    assert rows["pleural thickening"]["neurons"] == [9] and rows["hernia"]["n_neurons"] == 0
    assert rows["hernia"]["z"] is None and rows["hernia"]["effect"] is None
    for r in (rows["effusion"], rows["mass"]):
        assert all(isinstance(r[k], float) for k in ("effect", "random_mean", "random_sd", "z", "other_classes"))
    csv = (path.parent / "ablation.csv").read_text().splitlines()
    assert csv[0] == "finding,n_neurons,effect,random_mean,random_sd,z,other_classes,n_images" and len(csv) == 15
    assert (path.parent / "ablation.png").stat().st_size > 1000
    assert "z" in proc.stdout and "effusion" in proc.stdout
    # the held-out split had no step-2 activations: one pass; the second run reuses the table
    again = ablation("--ablation_concepts", str(path))
    assert again.returncode == 0 and f"reusing {path.parent / 'ablation.json'}" in again.stdout
    assert "one pass" not in again.stdout
    assert json.loads((path.parent / "ablation.json").read_text()) == got
    # another seed is another key
    other = ablation("--ablation_concepts", str(path), "--ablation_seed", "1")
    assert other.returncode == 0 and "reusing" not in other.stdout
    assert json.loads((path.parent / "ablation.json").read_text())["seed"] == 1


def test_step_2_activations_of_the_split_are_reused(run, probe_set, densenet_ckpt, tmp_path):
    """Step 2 run on the held-out split with the same constants: its activations and logits serve, no
    pass of ablation's own; the same numbers as that pass."""
    ex = run
    out = ex.parents[4]
    first = concepts_file(tmp_path / "a", ex, {3: ["effusion"], 7: ["mass"]})
    proc = ablation("--ablation_concepts", str(first))
    assert proc.returncode == 0 and "one pass" in proc.stdout, proc.stderr[-2000:]
    proc = run_script("example_selection.py", "--data_root", str(probe_set), "--checkpoint", str(densenet_ckpt),
                      "--resize", "64", "--crop", "64", "--num_workers", "0", "--layer", "penultimate",
                      "--split", "test", "--save_root", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    second = concepts_file(tmp_path / "b", ex, {3: ["effusion"], 7: ["mass"]})
    proc = ablation("--ablation_concepts", str(second), "--resize", "64", "--crop", "64")
    assert proc.returncode == 0, proc.stderr[-2000:]
    split_acts = out / "nih14_test" / "densenet121" / "penultimate" / "activations.pt"
    assert f"reusing {split_acts}" in proc.stdout and "one pass" not in proc.stdout, proc.stdout[-2000:]
    a, b = (json.loads((p.parent / "ablation.json").read_text())["findings"] for p in (first, second))
    assert [r["finding"] for r in a if r["z"] is not None] == [r["finding"] for r in b if r["z"] is not None] \
        == ["effusion", "mass"]
    assert [r["z"] for r in a if r["z"]] == pytest.approx([r["z"] for r in b if r["z"]], rel=1e-5)


def test_a_layer_without_named_neurons_is_a_note(run, tmp_path):
    ex = run
    path = concepts_file(tmp_path / "none", ex, {})
    proc = ablation("--ablation_concepts", str(path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "note: no live neuron of the penultimate layer is named for any of the" in proc.stdout
    assert all(r["n_neurons"] == 0 for r in json.loads((path.parent / "ablation.json").read_text())["findings"])


def test_no_labels_for_the_split_is_one_line(probe_set, densenet_ckpt, tmp_path):
    out = tmp_path / "res"
    proc = run_script("example_selection.py", "--data_root", str(probe_set), "--labels", "none",
                      "--checkpoint", str(densenet_ckpt), "--resize", "64", "--crop", "64", "--num_workers", "0",
                      "--layer", "penultimate", "--save_root", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ex = next(out.rglob("penultimate/adaptive93/examples.json"))
    path = concepts_file(tmp_path / "run", ex, {})
    (path.parent / "ablation.json").write_text("{}")  # an earlier output: left as it is
    proc = ablation("--ablation_concepts", str(path))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "has no labels (--labels none)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (path.parent / "ablation.json").read_text() == "{}"
    assert not (path.parent / "ablation.csv").exists() and not (path.parent / "ablation.png").exists()
    # the describer table leaves the faithfulness column out, saying why
    proc = run_script("compare_describers.py", "--mammi_run", str(path), "--describers", "label_auc",
                      "--sensitivity_percents", "", "--metric_encoders", "", "--num_workers", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "faithfulness skipped: the probing set under" in proc.stdout
    table = json.loads((path.parent / "describers" / "describers.json").read_text())
    assert "has no labels" in table["faithfulness_skipped"] and "faithfulness" not in table["rows"]["mammi"]


FC_REASON = "at the fc layer each neuron is a class's logit, so zeroing the neurons named for a finding"


def test_at_fc_nothing_is_ablated_and_the_describer_table_says_why(probe_set, densenet_ckpt, tmp_path):
    """At fc each neuron is a class's logit: zeroing the neurons named for a finding and reading its logit
    tests nothing. ablation.py says so in one line, exits 0 and writes nothing (removing an earlier table
    there, which a reader would show); compare_describers.py leaves its faithfulness column out, saying why,
    on a labelled split where it could otherwise ablate."""
    out = tmp_path / "res"
    proc = run_script("example_selection.py", "--data_root", str(probe_set), "--checkpoint", str(densenet_ckpt),
                      "--resize", "64", "--crop", "64", "--num_workers", "0", "--layer", "fc", "--save_root", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ex = next(out.rglob("fc/adaptive93/examples.json"))
    path = concepts_file(tmp_path / "run", ex, {2: ["effusion"], 4: ["mass"], 7: ["effusion"]}, n_neurons=14)
    for f in OUTPUTS:
        (path.parent / f).write_text("an earlier table")
    proc = ablation("--ablation_concepts", str(path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [proc.stdout.strip()] and proc.stdout.startswith("ablation not run: " + FC_REASON)
    assert [f for f in OUTPUTS if (path.parent / f).exists()] == []
    (path.parent / "ablation.json").write_text("an earlier table")
    rival = path.parent / "describers" / "label_auc" / "ablation.json"
    rival.parent.mkdir(parents=True)
    rival.write_text("an earlier table")
    proc = run_script("compare_describers.py", "--mammi_run", str(path), "--describers", "label_auc",
                      "--sensitivity_percents", "", "--metric_encoders", "", "--num_workers", "0")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = json.loads((path.parent / "describers" / "describers.json").read_text())
    assert table["faithfulness_skipped"].startswith(FC_REASON)
    assert [n for n, r in table["rows"].items() if "faithfulness" in r] == []
    assert "faithfulness: median z" not in proc.stdout and "faithfulness skipped: " + FC_REASON in proc.stdout
    assert not (path.parent / "ablation.json").exists() and not rival.exists()


def test_faithfulness_is_the_median_z_of_each_describers_ablation(run, tmp_path):
    """On the penultimate layer of a labelled split, compare_describers.py ablates MAMMI's names and each
    rival's and puts in its row the median z of its ablation.json over the findings with named neurons."""
    path = concepts_file(tmp_path / "run", run, {3: ["effusion"], 7: ["mass"], 9: ["nodule"], 11: ["mass"]})
    proc = run_script("compare_describers.py", "--mammi_run", str(path), "--describers", "label_auc",
                      "--sensitivity_percents", "", "--metric_encoders", "", "--num_workers", "0",
                      "--ablation_draws", "20")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = json.loads((path.parent / "describers" / "describers.json").read_text())
    assert "faithfulness_skipped" not in table and "faithfulness: median z" in proc.stdout
    for name, where in (("mammi", path.parent), ("label_auc", path.parent / "describers" / "label_auc")):
        z = [r["z"] for r in json.loads((where / "ablation.json").read_text())["findings"] if r["z"] is not None]
        assert z and table["rows"][name]["faithfulness"] == {"median_z": float(np.median(z)), "findings": len(z),
                                                             "of": 14}


def test_default_constants():
    c = constants_of("ablation.py")
    assert (c["ablation_split"], c["ablation_draws"], c["ablation_seed"]) == ("test", 200, 0)


def test_bad_constants_are_one_line(run, tmp_path):
    ex = run
    path = concepts_file(tmp_path / "run", ex, {3: ["effusion"]})
    for args, words in ((["--ablation_split", "train"], "ablation_split must be one of val | test"),
                        (["--ablation_draws", "5"], "ablation_draws must be in [10, 10**7]"),
                        (["--ablation_concepts", str(tmp_path / "missing.json")], "not found")):
        proc = ablation("--ablation_concepts", str(path), *args)
        assert proc.returncode == 2 and words in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (path.parent / "ablation.json").exists()


def test_a_run_folder_is_taken_for_its_concepts_json(run, tmp_path):
    """--ablation_concepts takes the folder of a run as gallery.py's --runs does: the concepts.json directly
    inside it (a MAMMI run's, whose describers/ below hold the rivals'), else the only one below it."""
    ex = run
    path = concepts_file(tmp_path / "folder", ex, {3: ["effusion"]})
    (path.parent / "describers" / "label_auc").mkdir(parents=True)
    (path.parent / "describers" / "label_auc" / "concepts.json").write_text(path.read_text())
    proc = ablation("--ablation_concepts", str(path.parent))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (path.parent / "ablation.json").is_file() and not (path.parent / "describers" / "label_auc" /
                                                             "ablation.json").exists()
    proc = ablation("--ablation_concepts", str(path.parent / "describers"))  # the only one below
    assert proc.returncode == 0 and (path.parent / "describers" / "label_auc" / "ablation.json").is_file()
    (path.parent / "describers" / "topk_mean").mkdir()
    (path.parent / "describers" / "topk_mean" / "concepts.json").write_text(path.read_text())
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, words in ((path.parent / "describers", "holds 2 concepts.json below it"),
                          (empty, "holds no concepts.json")):
        proc = ablation("--ablation_concepts", str(folder))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"--ablation_concepts {folder} {words}" in proc.stderr and "Traceback" not in proc.stderr


def test_more_draws_than_memory_holds_are_refused_with_the_number_that_fits(run, tmp_path, monkeypatch):
    """With 10 MB available, a random set over the 1,024 penultimate neurons and 14 classes takes
    8 * (7 * 1024 + 14) = 57,456 bytes at its peak: 174 fit (10**7 // 57,456), 175 do not."""
    from pipeline import limits
    monkeypatch.setattr(limits, "available_memory", lambda: 10**7)
    path = concepts_file(tmp_path / "memory", run, {3: ["effusion"]})
    for draws in ("100000", "175"):
        proc = ablation("--ablation_concepts", str(path), "--ablation_draws", draws)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"--ablation_draws {draws}: {draws} random sets of up to 1024 neurons need" in proc.stderr
        assert "at most 174 fit: pass --ablation_draws 174 or less" in proc.stderr
    assert not (path.parent / "ablation.json").exists()
    proc = ablation("--ablation_concepts", str(path), "--ablation_draws", "174")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((path.parent / "ablation.json").read_text())["draws"] == 174

"""A user's model file runs inside one guard: an exception, sys.exit or argparse while it is imported,
built or run ends the step with one line naming the file (never the file's own exit status or usage),
and a forward that returns anything but logits [batch, classes] is named for what it returned. A module
that runs several times in one forward pass is read, listed and zeroed at its last call."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from conftest import refused, unlabeled_stage2
from mammi.ablation import hook_drops
from models.layers import layer_table, taps
from models.target import load_target

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread

HEADER = "import sys\nimport torch\nimport torch.nn as nn\n\n\n"
NET = '''class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x).mean((2, 3))
        return {RETURN}


def build():
    return Net()
'''


def forward_returning(expr: str) -> str:
    return HEADER + NET.replace("{RETURN}", expr)


ARGPARSE = "import argparse\n\nparser = argparse.ArgumentParser()\nparser.add_argument('--lr', type=float)\n"
CASES = {  # the file, then what the one line says (the file's name is checked for every case)
    "import raises": (HEADER + "raise ValueError('no GPU config found')\n" + NET.replace("{RETURN}", "h"),
                      ["mine.py raised ValueError while imported at mine.py:6", "no GPU config found", "fix the file"]),
    "import exits": (HEADER + "sys.exit(3)\n" + NET.replace("{RETURN}", "h"),
                     ["mine.py exited with status 3 while imported", "sys.exit inside the model's code"]),
    "import runs argparse": (HEADER + ARGPARSE + "args = parser.parse_args()\n" + NET.replace("{RETURN}", "h"),
                             ["mine.py exited with status 2 while imported",
                              "argparse inside the model's code read the step's command line",
                              "unrecognized arguments: --dataset"]),
    "import has a syntax error": (HEADER + "def broken(:\n", ["mine.py raised SyntaxError while imported at mine.py:6"]),
    "build exits": (forward_returning("self.fc(h)").replace("    return Net()", "    sys.exit(3)"),
                    ["mine.py:build exited with status 3 (sys.exit inside the model's code)", "must return"]),
    "build exits with a message": (forward_returning("self.fc(h)").replace("    return Net()", "    sys.exit('no')"),
                                   ["mine.py:build exited with status 1 (sys.exit inside the model's code: no)"]),
    "build raises": (forward_returning("self.fc(h)").replace("    return Net()", "    return Net(7)"),
                     ["mine.py:build raised TypeError at mine.py:18"]),
    "forward raises": (forward_returning("self.fc(h.view(-1, 5))"),
                       ["mine.py:build raised RuntimeError in the model's forward at mine.py:14", "--crop"]),
    "forward exits": (forward_returning("sys.exit(3)"),
                      ["mine.py:build exited with status 3 in the model's forward", "sys.exit"]),
    "forward returns a dict": (forward_returning("{'logits': self.fc(h), 'features': h}"),
                               ["returned a dict (keys 'logits', 'features'), not logits",
                                "[batch, classes] ([3, K] here)", "out['logits']"]),
    "forward returns a tuple": (forward_returning("self.fc(h), h"), ["returned a tuple of 2 items, not logits"]),
    "forward returns a list": (forward_returning("[self.fc(h)]"), ["returned a list of 1 items, not logits"]),
    "forward returns a scalar": (forward_returning("float(self.fc(h).sum())"), ["returned a float, not logits"]),
    "forward returns one value per image": (forward_returning("self.fc(h)[:, 0]"),
                                            ["returned a tensor of shape [3], not logits"]),
    "forward returns maps": (forward_returning("self.conv(x)"), ["returned a tensor of shape [3, 4, 30, 30]"]),
    "forward returns another batch": (forward_returning("self.fc(h)[:1]"), ["returned a tensor of shape [1, 3]"]),
    "forward returns integers": (forward_returning("self.fc(h).argmax(1, keepdim=True)"),
                                 ["returned a tensor of shape [3, 1] and dtype torch.int64"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_file_that_fails_is_one_line_naming_it(images, tmp_path, case):
    text, words = CASES[case]
    (tmp_path / "mine.py").write_text(text)
    out = tmp_path / "res"
    proc = unlabeled_stage2(images, out, f"{tmp_path / 'mine.py'}:build", "--layer", "fc")
    line = refused(proc, "mine.py", *words)
    assert line.startswith(f"error: --model {tmp_path / 'mine.py'}:build: "), line
    assert not (out / "mine_all").exists() or not list((out / "mine_all").rglob("*.pt"))


SCALED = HEADER + '''class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def reset_parameters(self, scale{DEFAULT}):
        {BODY}

    def forward(self, x):
        return x * self.weight


''' + NET.replace("self.fc = nn.Linear(4, 3)", "self.fc = nn.Linear(4, 3)\n        self.scaled = Scaled()").replace(
    "{RETURN}", "self.scaled(self.fc(h))")


@pytest.mark.parametrize("default, body, words", [
    ("", "self.weight.data.fill_(scale)", ["raised TypeError while its modules were re-initialised",
                                           "reset_parameters() missing 1 required positional argument: 'scale'"]),
    ("=1.0", "raise ValueError('scale must be set first')",
     ["raised ValueError while its modules were re-initialised (reset_parameters(), for --reinit_seed) at mine.py:12",
      "scale must be set first"])])
def test_a_reset_parameters_of_the_users_own_is_called_inside_the_guard(images, tmp_path, default, body, words):
    """--reinit_seed (sanity_check.py) calls every module's reset_parameters(); one of the user's own that takes
    an argument, or fails, is the user's code failing: one line naming the file, as in its import, build and
    forward."""
    (tmp_path / "mine.py").write_text(SCALED.replace("{DEFAULT}", default).replace("{BODY}", body))
    assert unlabeled_stage2(images, tmp_path / "trained", f"{tmp_path / 'mine.py'}:build", "--layer", "fc").returncode == 0
    proc = unlabeled_stage2(images, tmp_path / "res", f"{tmp_path / 'mine.py'}:build", "--layer", "fc", "--reinit_seed", "0")
    line = refused(proc, *words)
    assert line.startswith(f"error: --model {tmp_path / 'mine.py'}:build: mine.py:build raised "), line
    assert not list((tmp_path / "res").rglob("*.pt"))


def test_the_guarded_forward_is_the_model_as_written(images, tmp_path, capsys):
    """The guard changes nothing a working model computes, keeps what it writes to stderr, and a copy
    of the model runs its own weights."""
    (tmp_path / "ok.py").write_text(forward_returning("self.fc(h)").replace(
        "        h = self", "        print('warming up', file=sys.stderr)\n        h = self"))
    net, _ = load_target(f"{tmp_path / 'ok.py'}:build", None, need_head=True)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        plain = net.fc(net.conv(x).mean((2, 3)))
        assert torch.equal(net(x), plain)
        twin = copy.deepcopy(net)
        twin.fc.bias.add_(1.0)
        assert torch.allclose(twin(x), plain + 1.0) and torch.equal(net(x), plain)
    assert capsys.readouterr().err.count("warming up") == 3


def test_layer_list_of_a_failing_user_file_is_the_same_line(images, tmp_path):
    (tmp_path / "mine.py").write_text(forward_returning("{'logits': self.fc(h)}"))
    refused(unlabeled_stage2(images, tmp_path / "res", f"{tmp_path / 'mine.py'}:build", "--layer", "list"),
            "returned a dict (keys 'logits')")


# ---- a module that runs several times in one forward pass

class SharedReLU(nn.Module):
    """One ReLU after each of two convolutions, as a ResNet block uses it: its second call is the output."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).mean((2, 3)))


def by_hand(net, x, zero=()):
    """The second ReLU's output (channels `zero` set to 0) and the logits, written out."""
    block = torch.relu(net.conv2(torch.relu(net.conv1(x))))
    block[:, list(zero)] = 0
    return block, net.fc(block.mean((2, 3)))


def test_a_module_run_twice_is_read_at_its_last_call(capsys):
    torch.manual_seed(0)
    net, x = SharedReLU().eval(), torch.randn(5, 3, 8, 8)
    with torch.no_grad(), taps(net, ["relu", "conv1"]) as store:
        for _ in range(2):  # the note is said once, not once per batch
            net(x)
    block, _ = by_hand(net, x)
    assert torch.allclose(store["relu"], block.mean((2, 3)), atol=1e-6)
    out = capsys.readouterr().out
    assert out.count("note:") == 1, out
    assert "--layer relu: the module runs 2 times in each forward pass; its last call (the block's output) is " \
           "read, the 1 before it are left out" in out
    rows = {name: shape for name, shape, _ in layer_table(net, x)}
    assert rows["relu"] == "[5, 4, 8, 8] (2 calls: the last read)" and rows["conv1"] == "[5, 4, 8, 8]"


def test_torchvision_resnet_block_relu_reads_the_block_output(capsys):
    """torchvision's BasicBlock applies its one ReLU twice (a Bottleneck three times): the ReLU read is
    the block's own output."""
    torch.manual_seed(0)
    net, x = torchvision.models.resnet18(num_classes=3).eval(), torch.randn(2, 3, 64, 64)
    with torch.no_grad(), taps(net, ["layer4.1.relu", "layer4.1"]) as store:
        net(x)
    assert torch.equal(store["layer4.1.relu"], store["layer4.1"])
    assert "--layer layer4.1.relu: the module runs 2 times" in capsys.readouterr().out
    rows = layer_table(torchvision.models.resnet50(num_classes=3).eval(), x)
    assert [r for r in rows if r[0] in ("fc", "layer4.2.relu")] == [
        ("fc", "[2, 3]", "3"),  # the model's outputs, then its head module fc: each once per pass
        ("layer4.2.relu", "[2, 2048, 2, 2] (3 calls: the last read)", "2048"), ("fc", "[2, 3]", "3")]


def test_ablation_zeroes_the_call_that_is_read():
    """hook_drops at a module run twice equals zeroing the block's output by hand (the first call untouched)."""
    torch.manual_seed(0)
    net, x = SharedReLU().eval(), torch.randn(7, 3, 8, 8)
    pos = torch.as_tensor(np.random.default_rng(0).integers(0, 2, (7, 3)), dtype=torch.float64)
    pos[0] = 1  # every class has a positive
    sets = [[0], [1, 3], [0, 1, 2, 3]]
    got = hook_drops(net, "relu", [x[:4], x[4:]], pos, sets, torch.device("cpu"))
    want = torch.zeros(len(sets), 3, dtype=torch.float64)
    with torch.no_grad():
        base = by_hand(net, x)[1].double()
        for i, s in enumerate(sets):
            drop = base - by_hand(net, x, s)[1].double()
            for c in range(3):
                want[i, c] = sum(drop[j, c] for j in range(7) if pos[j, c]) / pos[:, c].sum()
    assert torch.allclose(got, want, atol=1e-6)

"""pipeline/cli.py, what the command line says: numbers that refuse NaN and infinity (lists too), an option
name never taken as a value, an experiment file that exits or fails named in one line, the closest option named
for a mistyped one, only the constants not at their defaults printed (all with --verbose yes), two examples per
step in --help, long lists that say how many were left out, and a torchrun rank that stops quietly when another
one failed. Experiment files and upstream settings: one set of constants for every step, and a later step that
refuses a constant contradicting what the output it reads has stored."""
import ast
import json
import os
import shlex
import subprocess
import sys

import pytest

from conftest import REPO, TINY_CLIP, make_probe_set, refused, run_script, save_random_target
from core.text import at_most
from pipeline import cli
from pipeline.cli import PipelineError

STEP = "example_selection.py"


def configure(argv, script=STEP):
    """configure() on a step's real header (its constants, specs and reads), without running the step."""
    scope = {**cli.constants_of(script), "__file__": str(REPO / script)}
    return cli._configure(scope, list(argv), cli.reads_of(script))


def refusal(argv, script=STEP) -> str:
    with pytest.raises(PipelineError) as e:
        configure(argv, script)
    return str(e.value)


# ---- numbers: NaN and infinity refused, in lists too

@pytest.mark.parametrize("option, value", [("mean", "nan"), ("std", "inf"), ("mean", "0.5,nan"),
                                           ("std", "0.5,-inf,0.5"), ("mean", "0.5,,0.5"), ("mean", "half")])
def test_list_valued_numbers_refuse_nan_infinity_and_text(option, value):
    assert refusal([f"--{option}", value]).startswith(f"--{option} {value}: {option} must be comma-separated finite")


def test_list_valued_numbers_keep_their_declared_range():
    assert "each > 0" in refusal(["--std", "0.5,0"])
    c = configure(["--mean", "0.5,0.4,-0.3", "--std", "0.25"])
    assert (c["mean"], c["std"]) == ("0.5,0.4,-0.3", "0.25")
    assert configure([])["mean"] == ""  # empty: the model family's own


def test_scalar_numbers_refuse_nan_and_infinity():
    assert refusal(["--adaptive_percent", "nan"]).startswith("--adaptive_percent nan:")
    assert refusal(["--alpha", "inf"], "concept_matching.py").startswith("--alpha inf:")


def test_non_finite_numbers_from_an_experiment_file_are_refused(tmp_path):
    exp = tmp_path / "exp.py"
    exp.write_text('mean = "0.5,nan"\n')
    assert refusal([str(exp)]) == f"{exp}: mean = '0.5,nan': mean must be comma-separated finite numbers"
    exp.write_text('adaptive_percent = float("inf")\n')
    assert refusal([str(exp)]).startswith(f"{exp}: adaptive_percent = inf:")
    exp.write_text("mean = [0.5, 0.5, 0.5]\n")  # a list is not a constant: said, not silently ignored
    assert refusal([str(exp)]).startswith(f"{exp}: mean = [0.5, 0.5, 0.5] is a list")


def test_a_nan_mean_ends_the_step_with_one_line_and_writes_nothing(tmp_path):
    proc = run_script(STEP, "--mean", "0.5,nan", "--save_root", str(tmp_path / "out"), "--device", "cpu")
    assert refused(proc) == "error: --mean 0.5,nan: mean must be comma-separated finite numbers"
    assert not (tmp_path / "out").exists()


# ---- an option name is never a value

@pytest.mark.parametrize("argv", [["--save_root", "--layer", "fc"], ["--save_root=--layer", "--layer", "fc"],
                                  ["--layer", "fc", "--save_root"]])
def test_an_option_with_no_value_is_refused(argv):
    message = refusal(argv)
    assert message.startswith("--save_root needs a value")
    assert ("not the option --layer" in message) == (argv[0] != "--layer")


def test_an_option_taken_as_a_value_writes_nothing(tmp_path):
    proc = run_script(STEP, "--save_root", "--layer", "fc", "--device", "cpu", cwd=tmp_path)
    assert refused(proc).startswith("error: --save_root needs a value, not the option --layer")
    assert list(tmp_path.iterdir()) == []


def test_a_value_ending_in_py_is_a_value_not_an_experiment_file():
    assert configure(["--classes", "names.py"])["classes"] == "names.py"


# ---- an experiment file that exits or fails

@pytest.mark.parametrize("body, said", [
    ("import sys\nsys.exit(0)\n", "exited (SystemExit(0))"),
    ("raise SystemExit(3)\n", "exited (SystemExit(3))"),
    ("import sys\nsys.exit()\n", "exited (SystemExit(None))"),
    ("import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr')\np.parse_args()\n",
     "exited (SystemExit(2)) while being read, printing 'example_selection.py: error: unrecognized arguments"),
    ("topk = 1 / 0\n", "failed while being read (ZeroDivisionError: division by zero)"),
])
def test_an_experiment_file_that_exits_or_fails_is_named(tmp_path, body, said, monkeypatch):
    monkeypatch.setattr(sys, "argv", [STEP, "exp.py", "--layer", "fc"])  # what argparse reads
    exp = tmp_path / "exp.py"
    exp.write_text(body)
    message = refusal([str(exp)])
    assert message.startswith(f"experiment file {exp} ") and said in message, message


def test_an_experiment_file_that_exits_0_ends_the_step_with_status_2(tmp_path):
    exp = tmp_path / "exp.py"
    exp.write_text("import argparse\nargparse.ArgumentParser().parse_args(['--help'])\n")
    proc = run_script(STEP, str(exp), "--save_root", str(tmp_path / "out"), "--device", "cpu")
    line = refused(proc)  # argparse's usage and help are not printed: quoted in the line, at most
    assert line.startswith(f"error: experiment file {exp} exited (SystemExit(0))") and proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_what_an_experiment_file_prints_is_kept_when_it_runs(tmp_path, capsys):
    exp = tmp_path / "exp.py"
    exp.write_text("print('probing the small set')\ntopk = 7\n")
    assert configure([str(exp)])["topk"] == 7
    assert capsys.readouterr().out == "probing the small set\n"


def test_an_experiment_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Windows editors start UTF-8 files with a BOM (EF BB BF), which Python's own reader of source files
    skips; a coding line (PEP 263) is honoured as Python honours it."""
    exp = tmp_path / "exp.py"
    exp.write_bytes(b"\xef\xbb\xbf# probing with a smaller k\ntopk = 7\nsave_root = 'r\xc3\xa9sultats'\n")
    got = configure([str(exp)])
    assert (got["topk"], got["save_root"]) == (7, "résultats")
    exp.write_bytes(b"# -*- coding: latin-1 -*-\nsave_root = 'r\xe9sultats'\n")
    assert configure([str(exp)])["save_root"] == "résultats"


# ---- the closest option for a mistyped one

@pytest.mark.parametrize("typed, meant", [("data-root", "data_root"), ("Data_Root", "data_root"), ("layr", "layer"),
                                          ("adaptive-percnt", "adaptive_percent"), ("verbos", "verbose")])
def test_an_unknown_option_names_the_closest_one(typed, meant):
    assert refusal([f"--{typed}", "x"]) == f"unknown option --{typed}; did you mean --{meant}?"


@pytest.mark.parametrize("name, extra", [("data_root", 12), ("verbose", 9), ("adaptive_percent", 21)])
def test_the_closest_option_is_named_from_six_tenths_alike(name, extra):
    """difflib's ratio is 2M/T, M the characters matched and T those of both names. An option name followed by
    letters that no option holds matches all of itself and nothing more: 2L/(2L + extra). data_root + 12:
    18/30 = 0.6, verbose + 9: 14/23 = 0.609 and adaptive_percent + 21: 32/53 = 0.604 are named; one letter more
    (18/31 = 0.581, 14/24 = 0.583, 32/54 = 0.593) is not."""
    assert not any("q" in n for n in cli.accepted_names(STEP))  # the padding matches no option
    assert refusal([f"--{name}{'q' * extra}", "x"]) == f"unknown option --{name}{'q' * extra}; did you mean --{name}?"
    far = f"{name}{'q' * (extra + 1)}"
    assert refusal([f"--{far}", "x"]) == f"unknown option --{far}; see --help for the known ones"


@pytest.mark.parametrize("typed", ["dataroot", "data_rot", "DATA-ROOT", "data_roots"])
def test_near_misspellings_of_data_root_name_it(typed):
    """16/17, 16/17, equal once folded, 18/19: each far above the cut-off, and data_root the closest."""
    assert refusal([f"--{typed}", "x"]) == f"unknown option --{typed}; did you mean --data_root?"


def test_an_unknown_option_with_nothing_close_points_at_help():
    assert refusal(["--zzzzqqq", "1"]) == "unknown option --zzzzqqq; see --help for the known ones"


def test_an_experiment_file_with_a_mistyped_constant_names_the_closest_one(tmp_path):
    exp = tmp_path / "exp.py"
    exp.write_text("adaptive_percnt = 90.0\n")
    assert refusal([str(exp)]) == f"{exp}: adaptive_percnt is not a constant of any step; did you mean adaptive_percent?"


# ---- quiet by default, everything with --verbose yes

def test_a_step_prints_only_the_constants_not_at_their_defaults_with_where_each_was_set(tmp_path, capsys):
    exp = tmp_path / "exp.py"
    exp.write_text("topk = 7\nseed = 0\nsave_root = 'elsewhere'\n")  # seed = 0 is its default
    c = configure([str(exp), "--layer", "penultimate", "--topk", "9", "--batch_size", "64"])
    cli.print_config("example_selection", c)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"== example_selection: 3 of {len(c)} constants not at their defaults (--verbose yes lists all)",
                     f"  {exp}: save_root = 'elsewhere'",
                     "  the command line: layer = 'penultimate', topk = 9"]


def test_a_step_at_its_defaults_says_so_in_one_line(capsys):
    cli.print_config("example_selection", configure([]))
    n = len(configure([]))
    assert capsys.readouterr().out == f"== example_selection: all {n} constants at their defaults (--verbose yes lists all)\n"


def test_verbose_prints_every_resolved_constant(tmp_path, capsys):
    exp = tmp_path / "exp.py"
    exp.write_text("verbose = True\n")  # from an experiment file too
    for argv in (["--verbose", "yes"], [str(exp)]):
        c = configure(argv)
        cli.print_config("example_selection", c)
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "== example_selection" and len(lines) == 1 + len(c)
        assert {line.split("=")[0].strip() for line in lines[1:]} == set(cli.constant_names(STEP)) | {"verbose"}


def test_verbose_is_taken_by_every_step_and_is_a_run_setting():
    from pipeline.outputs import RUN_SETTINGS
    assert "verbose" in RUN_SETTINGS
    for script in cli.STEPS:
        assert "verbose" in cli.accepted_names(script), script
        assert configure(["--verbose", "yes"], script)["verbose"] is True


# ---- two examples per step in --help, from its docstring

@pytest.mark.parametrize("script", cli.STEPS)
def test_help_shows_the_two_examples_of_the_step_docstring(script):
    doc = ast.get_docstring(ast.parse((REPO / script).read_text()), clean=False)
    shown = cli.examples(doc)
    assert len(shown) == 2, shown
    for example in shown:  # commands a user types: this step, with options it takes
        words = shlex.split(example.split(" # ")[0])
        assert script in words and words[0] in ("python", "torchrun"), example
        options = {w.split("=")[0][2:] for w in words if w.startswith("--")} - {"nproc_per_node"}
        assert options <= set(cli.accepted_names(script)), example
    proc = run_script(script, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert "examples:\n" in text and all(f"  {e}\n" in text for e in shown)


def test_examples_are_the_indented_commands_of_a_docstring():
    doc = "Title.\n\n    python a.py --x 1\n    torchrun --nproc_per_node 2 a.py\nnot python b.py\n    pythonic\n"
    assert cli.examples(doc) == ["python a.py --x 1", "torchrun --nproc_per_node 2 a.py"]


# ---- long lists say how many were left out

def test_at_most_says_how_many_were_left_out():
    assert at_most(["a", "b", "c", "d", "e"], 3) == "a, b, c … (and 2 more)"
    assert at_most(["a", "b", "c"], 3) == "a, b, c"
    assert at_most([1, 2], 5, sep=" | ") == "1 | 2"
    assert at_most([], 3) == ""


def test_messages_that_cut_a_list_say_how_many_were_left_out(tmp_path, capsys):
    from dataset.concepts import read_concepts
    from dataset.nih import resolve_images
    from dataset.probe import read_classes
    classes = tmp_path / "classes.txt"
    classes.write_text("a\na\nb\nb\nc\nc\nd\nd\ne\n")
    with pytest.raises(PipelineError, match=r"names a, b, c … \(and 1 more\) twice"):
        read_classes(classes)
    (tmp_path / "images").mkdir()
    with pytest.raises(PipelineError, match=r"\(first: x1.png, x2.png, x3.png … \(and 2 more\)\)"):
        resolve_images(tmp_path / "images", [f"x{i}.png" for i in range(1, 6)])
    words = tmp_path / "words.txt"
    words.write_text("\n".join(w for i in range(7) for w in (f"w{i}", f"W{i}")) + "\n")
    read_concepts(str(words))
    assert "(W0, W1, W2, W3, W4 … (and 2 more))" in capsys.readouterr().out
    from pipeline.guard import interrupted
    assert interrupted([f"p{i}" for i in range(5)]) == ("interrupted; kept the 5 complete output(s) written before it: "
                                                         "p0, p1, p2 … (and 2 more); nothing half-written")


# ---- torchrun: the other ranks stop quietly when one meets bad input

def test_a_rank_stops_quietly_when_another_rank_fails(tmp_path):
    images = make_probe_set(tmp_path / "probe", n=13, size=32, seed=5)  # batches of 4: rank 0 0-7, rank 1 8-12
    (images / "00000011_000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 8)
    ckpt = save_random_target(tmp_path / "t.pth", "densenet121", seed=2)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / STEP), "--data_root", str(images), "--checkpoint", str(ckpt), "--resize", "32",
                           "--crop", "32", "--num_workers", "0", "--batch_size", "4", "--save_root", str(tmp_path / "o")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    err = proc.stderr
    assert proc.returncode != 0
    assert err.count("00000011_000.png: cannot read the image") == 1, err[-3000:]
    ranks_said = [line for line in err.splitlines() if line.startswith("[rank")]  # a rank's traceback, as torch prints it
    assert ranks_said == [] and "Connection closed by peer" not in err, err[-3000:]
    assert err.count("stopped because another rank failed") <= 1


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, probe_set, densenet_ckpt):
    """An experiment file for the generated probing set, and a function to rewrite one constant."""
    root = tmp_path_factory.mktemp("exp")
    clip = root / "tiny-clip.json"
    clip.write_text(json.dumps(TINY_CLIP))
    path = root / "exp.py"
    values = {"dataset": "probe", "data_root": str(probe_set), "checkpoint": str(densenet_ckpt), "resize": 64,
              "crop": 64, "num_workers": 0, "save_root": str(root / "res"), "model_clip": f"open_clip:{clip}",
              "clip_weights": "random", "metric_encoders": "all-minilm-l6-v2", "adaptive_percent": 93.0}

    def write(**change):
        values.update(change)
        path.write_text("# a test experiment\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items()))
        return str(path)

    write()
    return write, root / "res"


def test_one_threshold_in_the_experiment_file_reaches_every_step(experiment):
    write, res = experiment
    exp = write(adaptive_percent=80.0)
    for script in ("example_selection.py", "concept_matching.py"):
        proc = run_script(script, exp, "--layer", "fc")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    layer = res / "probe_train" / "densenet121" / "fc"
    ex = json.loads((layer / "adaptive80" / "examples.json").read_text())
    assert ex["config"]["adaptive_percent"] == 80.0 and ex["config"]["resize"] == 64
    concepts = next((layer / "adaptive80").glob("vlm_*/*/concepts.json"))
    stored = json.loads(concepts.read_text())["config"]
    # step 3 records the selection it was given by the examples, not its own defaults
    assert stored["adaptive_percent"] == 80.0 and stored["checkpoint"] == ex["config"]["checkpoint"]
    assert not (layer / "adaptive93").exists()  # nothing was read or written at the default threshold
    write(adaptive_percent=93.0)


def test_a_constant_that_contradicts_the_stored_one_is_refused(experiment):
    write, res = experiment
    exp = write()
    assert run_script("example_selection.py", exp, "--layer", "fc").returncode == 0
    examples = res / "probe_train" / "densenet121" / "fc" / "adaptive93" / "examples.json"
    # --examples names the run; a selection that disagrees with it is refused, naming both values
    line = refused(run_script("concept_matching.py", exp, "--examples", str(examples),
                                     "--adaptive_percent", "80"), "80", "93", str(examples), bars=False)
    assert "--adaptive_percent" in line
    refused(run_script("concept_matching.py", exp, "--examples", str(examples), "--resize", "256"),
            "--resize", "256", "64", bars=False)
    # the same value, given again, is not a contradiction
    proc = run_script("concept_matching.py", exp, "--examples", str(examples), "--adaptive_percent", "93")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bad_experiment_files_are_one_line(tmp_path):
    bad = tmp_path / "typo.py"
    bad.write_text("adaptive_precent = 80\n")
    refused(run_script("example_selection.py", str(bad)), str(bad), "adaptive_precent", bars=False)
    wrong_type = tmp_path / "type.py"
    wrong_type.write_text("topk = 'twenty'\n")
    refused(run_script("example_selection.py", str(wrong_type)), "topk", "int", bars=False)
    refused(run_script("example_selection.py", str(tmp_path / "absent.py")), "absent.py", bars=False)
    # a constant another step owns is not taken by a step that neither owns nor reads it
    refused(run_script("example_selection.py", "--alpha", "90"), "--alpha", bars=False)


def test_help_lists_own_and_upstream_constants_with_their_comments():
    proc = run_script("concept_matching.py", "--help")
    assert proc.returncode == 0
    own, upstream = proc.stdout.split("constants of example_selection.py")
    assert "--alpha" in own and "keep concepts with S > alpha% of the neuron's best S" in own
    assert "--adaptive_percent" in upstream and "p of the adaptive threshold" in upstream
    assert "--alpha" not in upstream


def test_no_step_redeclares_an_upstream_constant():
    """Each constant has one home: a step that reads another step's constants does not define them."""
    from pipeline.cli import ROOT, STEPS, constant_names
    run_settings = {"batch_size", "num_workers", "device"}  # each step's own, by design
    home = {}
    for step in STEPS:
        if not (ROOT / step).is_file():
            continue
        for name in set(constant_names(step)) - run_settings:
            assert name not in home, f"{name} is declared by both {home[name]} and {step}"
            home[name] = step


# ---- a step's constants, read from its header without running it

HEADER = '''"""A step whose header would fail if it were run."""
import a_module_that_is_not_installed
from dataset.concepts import TEMPLATE
raise SystemExit("the header ran")
topk: ">= 1" = 3                # how many
layer = "fc"
template = TEMPLATE
save_crops = False
_private = 1
config = configure(globals(),
                   reads=("example_selection.py",
                          "concept_matching.py"))
'''


def test_a_steps_constants_are_read_from_its_header_without_running_it(tmp_path):
    """Defaults, ranges, comments and reads come from the source alone: the header's failing import and its
    exit never run, and a default imported from a project module is that module's literal."""
    from pipeline import cli
    step = tmp_path / "step.py"
    step.write_text(HEADER)
    assert cli.constants_of(step) == {"topk": 3, "layer": "fc", "template": "A chest x-ray image of a",
                                      "save_crops": False}
    assert cli.specs_of(step) == {"topk": ">= 1"}
    assert cli._comments(step) == {"topk": "how many"}
    assert cli.reads_of(step) == ("example_selection.py", "concept_matching.py")
    accepted = cli.accepted_names(step)
    assert {"topk", "alpha", "adaptive_percent", "verbose"} <= set(accepted)  # own, step 3's, step 2's, every step's


def test_a_computed_default_is_refused_naming_its_line(tmp_path):
    from pipeline import cli
    step = tmp_path / "computed.py"
    step.write_text('topk = len("abc")\nconfig = configure(globals())\n')
    with pytest.raises(cli.PipelineError) as e:
        cli.constants_of(step)
    assert str(e.value).startswith(f"{step}:1: topk = len('abc'): a step's constant defaults to a literal")


def test_a_configure_call_over_several_lines_still_names_the_steps_it_reads():
    """compare_describers.py's call spans lines; every step it reads lends it its constants."""
    import ast

    from pipeline import cli
    tree = ast.parse((cli.ROOT / "compare_describers.py").read_text())
    call = next(n for n in tree.body if cli._is_configure(n))
    assert call.end_lineno > call.lineno
    assert cli.reads_of("compare_describers.py") == ("example_selection.py", "concept_matching.py", "bbox_img.py",
                                                     "ablation.py", "target_model_perform.py")
    accepted = set(cli.accepted_names("compare_describers.py"))
    for name in ("wpmi_a", "topk", "alpha", "box_file", "ablation_draws", "val_split_file"):
        assert name in accepted, name


def test_no_module_executes_source_but_the_experiment_file_reader():
    """exec/eval are called in one place, to read an experiment file: a step's source is parsed, never run."""
    import ast
    import subprocess
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    assert "pipeline/cli.py" in tracked
    calls = set()
    for rel in tracked:
        if rel.startswith("tests/") or not (REPO / rel).is_file():
            continue
        tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
        for fn in [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            inner = {id(m) for f in ast.walk(fn) if f is not fn and isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                     for m in ast.walk(f)}
            for n in ast.walk(fn):
                if id(n) not in inner and isinstance(n, ast.Call) and isinstance(n.func, ast.Name) \
                        and n.func.id in ("exec", "eval"):
                    calls.add((rel, getattr(fn, "name", "<module>"), n.func.id))
    assert calls == {("pipeline/cli.py", "read_experiment", "exec")}


# ---- one way to run a sub-step

SUB_STEP = '''"""A step that prints its constants."""
import json
from pipeline.cli import PipelineError, configure, main
topk: ">= 1" = 20
alpha = 95.0
layer = "fc"
config = configure(globals())


def run():
    if layer == "fail":
        raise PipelineError("--layer fail: this step fails")
    print("got " + json.dumps({k: config[k] for k in ("topk", "alpha", "layer")}))


if __name__ == "__main__":
    main(run)
'''


@pytest.fixture
def caller(tmp_path):
    """A sub-step, and the Config of a script that reads its constants, run with an experiment file and
    options of its own and of the sub-step."""
    from pipeline import cli
    step = tmp_path / "sub.py"
    step.write_text(SUB_STEP)
    exp = tmp_path / "exp.py"
    exp.write_text("alpha = 50.0\n")
    config = cli._configure({"alpha": 1.0, "__file__": str(tmp_path / "caller.py")},  # its own alpha
                            [str(exp), "--topk", "7", "--alpha", "2", "--layer=typed"], (str(step),))
    return step, exp, config


def test_a_sub_step_gets_the_callers_files_and_options_it_takes(caller, capsys):
    """The experiment file and --topk as typed reach the step; the caller's own --alpha does not; a shared
    value the step does not take is left out; this run's --layer replaces the typed one."""
    import json

    from pipeline import cli
    step, exp, config = caller
    cli.run_step(str(step), config, shared={"resize": 64}, layer="mine")
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"$ python {step} {exp} --topk 7 --layer mine"
    assert json.loads(out[-1][len("got "):]) == {"topk": 7, "alpha": 50.0, "layer": "mine"}
    cli.run_step(str(step), config, shared={"topk": 3, "resize": 64})
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"$ python {step} {exp} --layer typed --topk 3"


def test_a_sub_step_that_fails_stops_its_caller_with_one_line(caller, capsys):
    from pipeline import cli
    step, exp, config = caller
    log = step.parent / "logs" / "01_sub.log"
    with pytest.raises(cli.PipelineError) as e:
        cli.run_step(str(step), config, log=log, layer="fail")
    assert str(e.value).startswith(f"{step} failed (its error is above, all it printed in {log});")
    said = capsys.readouterr()
    assert said.out == f"$ python {step} {exp} --topk 7 --layer fail\n"
    assert said.err == "error: --layer fail: this step fails\n"
    assert log.read_text(encoding="utf-8") == "error: --layer fail: this step fails\n"
    with pytest.raises(cli.PipelineError, match="takes no --resize"):
        cli.run_step(str(step), config, resize=64)

"""Experiment files and upstream settings: one set of constants for every step, and a later step
that refuses a constant contradicting what the output it reads has stored."""
import json

import pytest

from conftest import REPO, run_script
from test_pipeline import TINY_CLIP


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


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


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
    line = one_line_error(run_script("concept_matching.py", exp, "--examples", str(examples),
                                     "--adaptive_percent", "80"), "80", "93", str(examples))
    assert "--adaptive_percent" in line
    one_line_error(run_script("concept_matching.py", exp, "--examples", str(examples), "--resize", "256"),
                   "--resize", "256", "64")
    # the same value, given again, is not a contradiction
    proc = run_script("concept_matching.py", exp, "--examples", str(examples), "--adaptive_percent", "93")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bad_experiment_files_are_one_line(tmp_path):
    bad = tmp_path / "typo.py"
    bad.write_text("adaptive_precent = 80\n")
    one_line_error(run_script("example_selection.py", str(bad)), str(bad), "adaptive_precent")
    wrong_type = tmp_path / "type.py"
    wrong_type.write_text("topk = 'twenty'\n")
    one_line_error(run_script("example_selection.py", str(wrong_type)), "topk", "int")
    one_line_error(run_script("example_selection.py", str(tmp_path / "absent.py")), "absent.py")
    # a constant another step owns is not taken by a step that neither owns nor reads it
    one_line_error(run_script("example_selection.py", "--alpha", "90"), "--alpha")


def test_help_lists_own_and_upstream_constants_with_their_comments():
    proc = run_script("concept_matching.py", "--help")
    assert proc.returncode == 0
    own, upstream = proc.stdout.split("constants of example_selection.py")
    assert "--alpha" in own and "keep concepts with S > alpha% of the neuron's best S" in own
    assert "--adaptive_percent" in upstream and "p of the adaptive threshold" in upstream
    assert "--alpha" not in upstream


def test_no_step_redeclares_an_upstream_constant():
    """Each constant has one home: a step that reads another step's constants does not define them."""
    from pipeline.cli import STEPS, constant_names
    from pipeline.cli import ROOT
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

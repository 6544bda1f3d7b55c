"""Offline, a metric encoder whose weights are not in the local cache is one note, once per run, and
nothing else: no library log lines, warnings or retries; the libraries' logging is as before afterwards."""
import os
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import logging
    from pipeline.text_metrics import cosine_metrics
    levels = [logging.getLogger(n).level for n in ("huggingface_hub", "open_clip", "sentence_transformers")]
    handlers = list(logging.getLogger().handlers)
    named = [{{"concepts": [{{"concept": "mass"}}]}}]
    for _ in range(2):  # a second describer scored in the same run: no second note
        got = cosine_metrics(named, ["Mass"], "medclip,clip-vit-b-16,all-mpnet-base-v2", {medclip!r})
    assert all(v == {{"error": "not in the local cache"}} for v in got.values()), got
    assert [logging.getLogger(n).level for n in ("huggingface_hub", "open_clip", "sentence_transformers")] == levels
    assert logging.getLogger().handlers == handlers
""")


def test_each_missing_encoder_is_one_note_and_nothing_else(tmp_path):
    empty = tmp_path / "hf"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE", "SENTENCE_TRANSFORMERS"))}
    env.update(HF_HOME=str(empty), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(medclip=str(tmp_path / "no-medclip"))], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [f"note: metric encoder {e} not in the local cache; "
                                        "its cosine column is left out"
                                        for e in ("medclip", "clip-vit-b-16", "all-mpnet-base-v2")]
    assert proc.stderr == ""

"""Installation and drop-in use: the .pth hook, --user-dir, the same command line as
masked_lm (CLI and fairseq-hydra-train with fairseq's RoBERTa pre-training YAML)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PACKAGE_DIR, TINY_MODEL, json_log, run_fairseq

fairseq = pytest.importorskip("fairseq")
ROBERTA_PRETRAINING = Path(fairseq.__file__).parent / "examples" / "roberta" / "config" / "pretraining"


def python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=300)


def test_hook_registers_task_and_criterion_when_fairseq_is_imported():
    proc = python("import fairseq.tasks as t, fairseq.criterions as c; "
                  "print('gpts_mlm' in t.TASK_REGISTRY, 'gpts_masked_lm' in c.CRITERION_REGISTRY)")
    assert proc.stdout.split()[-2:] == ["True", "True"], proc.stderr[-2000:]
    disabled = python("import fairseq.tasks as t; print('gpts_mlm' in t.TASK_REGISTRY)", GPTS_FAIRSEQ_NO_HOOK="1")
    assert disabled.stdout.split()[-1] == "False"


def test_hook_registers_when_a_gpts_fairseq_module_imports_fairseq_first():
    """The controller imports fairseq while it is itself mid-import: registering then would be a
    circular import (it was a RuntimeWarning and no task). The hook waits for the next import."""
    proc = python("import warnings; warnings.simplefilter('error', RuntimeWarning)\n"
                  "import gpts_fairseq.interactions.controller\n"
                  "import wave  # any import after it\n"
                  "import fairseq.tasks as t; print('gpts_mlm' in t.TASK_REGISTRY)")
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "True", proc.stderr[-2000:]


def test_hook_costs_nothing_without_fairseq():
    proc = python("import sys; print(sorted(m for m in ('torch', 'fairseq', 'gpts_fairseq.tasks') if m in sys.modules))")
    assert proc.stdout.strip() == "[]", proc.stderr
    proc = python("import sys; print('gpts_fairseq._fairseq_hook' in sys.modules)")
    assert proc.stdout.strip() == "True"  # the hook is installed, yet imported nothing heavy


def test_user_dir_cli_prints_the_package_and_works_with_the_hook(tiny_corpus, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gpts_fairseq", "user-dir"], capture_output=True, text=True)
    assert proc.returncode == 0 and Path(proc.stdout.strip()) == PACKAGE_DIR
    run = run_fairseq([tiny_corpus, *TINY_MODEL, "--user-dir", proc.stdout.strip(), "--task", "gpts_mlm",
                       "--criterion", "gpts_masked_lm", "--max-update", "2", "--no-save", "--save-dir", tmp_path])
    assert "duplicate" not in run.stderr.lower() and json_log(run, "valid")


def test_same_command_line_as_masked_lm(tiny_corpus, tmp_path):
    """Only the task name changes (no --user-dir: the hook registers it)."""
    base = [tiny_corpus, *TINY_MODEL, "--criterion", "masked_lm", "--max-update", "6", "--no-save",
            "--num-workers", "1", "--mask-prob", "0.2", "--sample-break-mode", "complete"]
    losses = {}
    for task in ("masked_lm", "gpts_mlm"):
        proc = run_fairseq([*base, "--task", task, "--save-dir", tmp_path / task])
        valid = json_log(proc, "valid")
        assert valid, proc.stderr[-2000:]
        losses[task] = float(valid[-1]["valid_loss"])
    assert abs(losses["gpts_mlm"] - losses["masked_lm"]) < 1.0  # same model, same data: close losses


@pytest.mark.skipif(not (ROBERTA_PRETRAINING / "base.yaml").exists(), reason="fairseq's RoBERTa YAML is not installed")
def test_hydra_with_fairseqs_roberta_pretraining_yaml(tiny_corpus, tmp_path):
    overrides = [
        "task._name=gpts_mlm", f"task.data={tiny_corpus}", "task.tokens_per_sample=64",
        "+task.gpts_policy=gp-ts", "+task.gpts_interaction_updates=2",
        "common.fp16=false", "common.cpu=true", "common.log_interval=1", "dataset.batch_size=8",
        "dataset.num_workers=0", "optimization.max_update=6", "optimization.update_freq=[1]",
        "lr_scheduler.warmup_updates=1", "model._name=roberta_base", "+model.encoder_layers=1",
        "+model.encoder_embed_dim=32", "+model.encoder_ffn_embed_dim=64", "+model.encoder_attention_heads=2",
        "model.max_positions=64", f"checkpoint.save_dir={tmp_path / 'save'}", f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", str(ROBERTA_PRETRAINING),
                           "--config-name", "base", *overrides], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    history = (tmp_path / "save" / "gpts_history.jsonl").read_text().splitlines()
    assert len(history) == 3  # interactions ended at updates 2 and 4, the last at --max-update 6

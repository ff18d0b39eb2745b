"""gpts-report on synthetic save dirs whose numbers are known by hand.

Synthetic runs (validated every 10 updates, budget 40):
    constant-0.15 seed 1: 10.0  9.0  8.0  7.5      (its log also holds a stale 99.0 at update 40)
    constant-0.15 seed 2: 10.0  9.2  8.2  7.7      -> target = mean final = 7.6
    gp-ts-rho     seed 1:  9.5  8.0  7.55 7.2      -> reaches 7.6 at update 30
    gp-ts-rho     seed 2:  9.6  8.1  7.61 7.4      -> reaches 7.6 at update 40
                  mean:    9.55 8.05 7.58 7.3      -> reaches 7.6 at update 30 (0.75 of the budget)
    gp-ts-psi     seed 1:  9.0  8.0  7.0  6.5      -> reaches at 30
    random        seed 1: 10.1  9.5  9.0  8.5      -> not reached
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
from matplotlib import image as mpimg  # noqa: E402

from gpts_fairseq.report import cli  # noqa: E402
from gpts_fairseq.report.history import (  # noqa: E402
    Run,
    RunFormatError,
    RunInfo,
    discover_runs,
    load_run,
    read_history,
    read_valid_curve,
    run_from_result,
)
from gpts_fairseq.report.plots import choose_interactions  # noqa: E402
from gpts_fairseq.report.summary import (  # noqa: E402
    final_loss,
    format_duration,
    mean_curve,
    one_sided_upper_bound,
    reference_target,
    updates_to_reach,
)

UPDATES = [10, 20, 30, 40]
RHO_ARMS = [round(0.05 * k, 2) for k in range(1, 11)]


def fairseq_log(curve, stale=None, stdout_style=False) -> str:
    """Lines as fairseq 0.12 writes them with --log-format json --log-file: bare messages, and
    each stats line once per progress bar created so far (its file handlers accumulate)."""
    prefix = {"valid": "2026-11-22 18:45:14 | INFO | valid | ", "train_inner": "2026-11-22 18:45:11 | INFO | train_inner | ",
              "train": "2026-11-22 18:45:27 | INFO | train | "} if stdout_style else {}
    lines = [
        "{'_name': None, 'common': {'_name': None, 'log_format': 'json', 'seed': 1}}",
        "RobertaModel(",
        '  (encoder): RobertaEncoder(',
        'begin dry-run validation on "valid" subset',
    ]
    for update, loss in (stale or []):
        lines.append(prefix.get("valid", "") + f'{{"epoch": 1, "valid_loss": "{loss}", "valid_ppl": "9.9", '
                     f'"valid_num_updates": "{update}"}}')
    for k, (update, loss) in enumerate(zip(UPDATES, curve)):
        lines.append(prefix.get("train_inner", "") + f'{{"epoch": 1, "update": 0.1, "loss": "12.9", '
                     f'"num_updates": "{update}"}}')
        lines += [prefix.get("valid", "") + f'{{"epoch": 1, "valid_loss": "{loss}", "valid_ppl": "2893.54", '
                  f'"valid_wps": "52528.6", "valid_num_updates": "{update}"}}'] * (k + 1)
    lines.append(prefix.get("train", "") + '{"epoch": 1, "train_loss": "9.467", "train_num_updates": "40"}')
    return "\n".join(lines) + "\n"


def posterior(dims, picked):
    if len(dims) == 1:
        arms = [[r] for r in RHO_ARMS]
    else:
        arms = [[r, g, lam] for r in RHO_ARMS[:4] for g in (0.0, 0.1, 0.2) for lam in (0.0, 0.1)]
    arms_np = np.array(arms)
    mean = -np.abs(arms_np[:, 0] - picked)
    return {"dims": dims, "arms": arms, "mean": mean.tolist(), "std": (0.1 + 0.01 * np.arange(len(arms))).tolist()}


def history(curve, policy, rhos, dims=None):
    lines, prev = [], 11.0
    for k, (update, loss, rho) in enumerate(zip(UPDATES, curve, rhos)):
        psi = {"mask_prob": rho, "leave_unmasked_prob": 0.1, "random_token_prob": 0.1}
        lines.append(json.dumps({
            "interaction": k, "epoch": 1, "update": update - 10, "end_update": update, "psi": psi,
            "prev_val_loss": prev, "val_loss": loss, "reward": (prev - loss) / prev, "policy": policy,
            "next_psi": psi, "decision_time_s": 0.01,
            "posterior": posterior(dims, rho) if dims else None,
        }))
        prev = loss
    return "\n".join(lines) + "\n"


def make_run(root: Path, label, policy, seed, curve, rhos, dims=None, stale=None, psi=None) -> Path:
    save = root / label / f"seed{seed}"
    save.mkdir(parents=True)
    (save / "train.log").write_text(fairseq_log(curve, stale))
    (save / "gpts_history.jsonl").write_text(history(curve, policy, rhos, dims))
    RunInfo(label=label, policy=policy, seed=seed, corpus="synthetic", budget_updates=40, psi=psi).write(save)
    return save


REF = {"mask_prob": 0.15, "leave_unmasked_prob": 0.1, "random_token_prob": 0.1}


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "constant-0.15", "constant", 1, [10.0, 9.0, 8.0, 7.5], [0.15] * 4, stale=[(40, 99.0)], psi=REF)
    make_run(root, "constant-0.15", "constant", 2, [10.0, 9.2, 8.2, 7.7], [0.15] * 4, psi=REF)
    make_run(root, "gp-ts-rho", "gp-ts", 1, [9.5, 8.0, 7.55, 7.2], [0.3, 0.2, 0.15, 0.25], dims=["mask_prob"])
    make_run(root, "gp-ts-rho", "gp-ts", 2, [9.6, 8.1, 7.61, 7.4], [0.1, 0.2, 0.15, 0.25], dims=["mask_prob"])
    make_run(root, "gp-ts-psi", "gp-ts", 1, [9.0, 8.0, 7.0, 6.5], [0.05, 0.1, 0.15, 0.2],
             dims=["mask_prob", "leave_unmasked_prob", "random_token_prob"])
    make_run(root, "random", "random", 1, [10.1, 9.5, 9.0, 8.5], [0.4, 0.05, 0.5, 0.3])
    return root


def test_valid_curve_reads_fairseq_json_lines_later_line_wins(runs_root):
    curve = read_valid_curve(runs_root / "constant-0.15" / "seed1" / "train.log")
    assert curve == [(10, 10.0), (20, 9.0), (30, 8.0), (40, 7.5)]


def test_valid_curve_also_reads_captured_stdout(tmp_path):
    path = tmp_path / "stdout.log"
    path.write_text(fairseq_log([9.0, 8.5, 8.25, 8.0], stdout_style=True))
    assert read_valid_curve(path) == [(10, 9.0), (20, 8.5), (30, 8.25), (40, 8.0)]


def test_history_round_trip_values(runs_root):
    inter = read_history(runs_root / "gp-ts-rho" / "seed1" / "gpts_history.jsonl")
    assert [i.update for i in inter] == [0, 10, 20, 30]
    assert [i.psi["mask_prob"] for i in inter] == [0.3, 0.2, 0.15, 0.25]
    assert inter[1].reward == pytest.approx((9.5 - 8.0) / 9.5)
    assert inter[0].posterior.arms.shape == (10, 1)


def test_numbers_by_hand(runs_root):
    runs = discover_runs([runs_root])
    assert len(runs) == 6
    target = reference_target(runs)
    assert target == pytest.approx(7.6)
    gp = [r for r in runs if r.info.label == "gp-ts-rho"]
    assert [updates_to_reach(r.val_curve, target) for r in gp] == [30, 40]
    assert [loss for _, loss in mean_curve(gp)] == pytest.approx([9.55, 8.05, 7.58, 7.3])


@pytest.mark.parametrize("seconds, says", [(0, "0m00s"), (59.6, "1m00s"), (247, "4m07s"), (3599.4, "59m59s"),
                                            (3600, "1h00m"), (3 * 3600 + 5 * 60 + 59, "3h05m"), (-3, "0m00s")])
def test_durations_print_one_way(seconds, says):
    assert format_duration(seconds) == says


def test_final_loss_of_the_last_validations_and_the_one_sided_bound():
    run = Run("r", RunInfo(label="x"), [], [(10, 5.0), (20, 4.0), (30, 3.5), (40, 3.0)])
    assert final_loss(run) == 3.0 and final_loss(run, 3) == pytest.approx(3.5)
    assert final_loss(Run("e", RunInfo(label="x"), [], [])) is None
    # mean 0.002, sd 0.003, n 9: t(0.90, 8) = 1.3968 -> 0.002 + 1.3968 * 0.001
    diffs = [0.002 + 0.003 * z for z in (-1.5, -1, -0.5, 0, 0, 0, 0.5, 1, 1.5)]
    sd = float(np.std(diffs, ddof=1))
    assert one_sided_upper_bound(diffs, 0.9) == pytest.approx(0.002 + 1.396815 * sd / 3, rel=1e-5)
    assert one_sided_upper_bound(diffs, 0.5) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="at least 2 values"):
        one_sided_upper_bound([0.1])


def test_report_writes_every_plot_and_the_right_table(runs_root, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main([str(runs_root), "--out", str(out)]) == 0
    assert str(out / "summary.md") in capsys.readouterr().out
    for name in ["val_loss.png", "psi.png", "reward.png", "posterior_gp-ts-rho_seed_1.png",
                 "posterior_gp-ts-rho_seed_2.png", "posterior_gp-ts-psi_seed_1.png"]:
        pixels = mpimg.imread(out / name)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300
        assert np.ptp(pixels[..., :3]) > 0.5, f"{name} is blank"
    assert not list(out.glob("posterior_constant*")) and not list(out.glob("posterior_random*"))
    text = (out / "summary.md").read_text()
    assert "Target loss: 7.600 (mean final loss of the constant" in text
    # per policy: mean ± sample std of final losses; seed-mean curve vs target
    assert "| constant-0.15 | 2 | 7.600 ± 0.141 | 40 (1.00) |" in text
    assert "| gp-ts-rho | 2 | 7.300 ± 0.141 | 30 (0.75) |" in text
    assert "| gp-ts-psi | 1 | 6.500 | 30 (0.75) |" in text
    assert "| random | 1 | 8.500 | not reached |" in text
    # per run
    assert "| constant-0.15 seed 1 | constant-0.15 | 1 | 40 | 7.500 | 40 (1.00) |" in text
    assert "| constant-0.15 seed 2 | constant-0.15 | 2 | 40 | 7.700 | not reached |" in text
    assert "| gp-ts-rho seed 2 | gp-ts-rho | 2 | 40 | 7.400 | 40 (1.00) |" in text
    for name in ["val_loss.png", "psi.png", "reward.png", "posterior_gp-ts-psi_seed_1.png"]:
        assert f"]({name})" in text


def test_target_option_and_chosen_interactions(runs_root, tmp_path):
    out = tmp_path / "report"
    args = [str(runs_root / "gp-ts-rho" / "seed1"), str(runs_root / "random" / "seed1"),
            "--out", str(out), "--target-loss", "9.05", "--interactions", "1,-1"]
    assert cli.main(args) == 0
    text = (out / "summary.md").read_text()
    assert "Target loss: 9.050 (given with --target-loss)" in text
    assert "| gp-ts-rho seed 1 | gp-ts-rho | 1 | 40 | 7.200 | 20 (0.50) |" in text
    assert "| random seed 1 | random | 1 | 40 | 8.500 | 30 (0.75) |" in text
    run = load_run(runs_root / "gp-ts-rho" / "seed1")
    assert [i.interaction for i in choose_interactions(run, [1, -1, 3, 7])] == [1, 3]
    assert [i.interaction for i in choose_interactions(run, None)] == [1, 2, 3]


def test_without_reference_runs_there_is_no_target(runs_root, tmp_path):
    out = tmp_path / "report"
    assert cli.main([str(runs_root / "random"), "--out", str(out)]) == 0
    text = (out / "summary.md").read_text()
    assert "No target loss" in text and "| random | 1 | 8.500 | no target |" in text


def test_result_json_round_trip_gives_the_same_table(runs_root, tmp_path):
    results = []
    for run in discover_runs([runs_root]):
        path = tmp_path / f"{run.info.label}-{run.info.seed}.json"
        path.write_text(json.dumps(run.to_result()))
        results.append(str(path))
    back = run_from_result(json.loads((tmp_path / "gp-ts-rho-1.json").read_text()))
    assert back.val_curve == [(10, 9.5), (20, 8.0), (30, 7.55), (40, 7.2)] and back.final_val_loss == 7.2
    assert [p["psi"]["mask_prob"] for p in back.to_result()["psi_sequence"]] == [0.3, 0.2, 0.15, 0.25]
    assert cli.main([*results, "--out", str(tmp_path / "from_json")]) == 0
    text = (tmp_path / "from_json" / "summary.md").read_text()
    assert "| gp-ts-rho | 2 | 7.300 ± 0.141 | 30 (0.75) |" in text


def test_run_without_run_json_is_labelled_by_its_history(runs_root):
    save = runs_root / "gp-ts-rho" / "seed1"
    (save / "run.json").unlink()
    run = load_run(save)
    assert run.info.label == "gp-ts" and run.info.seed is None and run.final_val_loss == 7.2


def test_a_record_being_written_is_ignored(tmp_path):
    path = tmp_path / "gpts_history.jsonl"
    good = history([9.0, 8.0], "random", [0.2, 0.3])
    path.write_text(good + '{"interaction": 2, "upd')
    assert len(read_history(path)) == 2


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.pop("reward"), "missing key(s) reward"),
        (lambda r: r["psi"].update(mask_prob=1.5), "psi.mask_prob must be in [0, 1]"),
        (lambda r: r.update(update=-1), "'update' must be an integer >= 0"),
        (lambda r: r.update(val_loss="8.1"), "'val_loss' must be a number"),
        (lambda r: r.update(end_update=0, update=5), "'end_update' (0) is before 'update' (5)"),
        (lambda r: r.update(posterior={"dims": ["mask_prob"], "arms": [[0.1]], "mean": [1, 2], "std": [1]}),
         "one arm row per mean/std value"),
    ],
)
def test_bad_history_names_the_line_and_key(tmp_path, edit, message):
    record = json.loads(history([9.0], "random", [0.2]).splitlines()[0])
    edit(record)
    path = tmp_path / "gpts_history.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(RunFormatError) as err:
        read_history(path)
    assert f"{path}:1" in str(err.value) and message in str(err.value)


def test_out_of_order_history_is_rejected(tmp_path):
    lines = history([9.0, 8.0, 7.0], "random", [0.2, 0.3, 0.4]).splitlines()
    path = tmp_path / "gpts_history.jsonl"
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    with pytest.raises(RunFormatError, match="consecutive"):
        read_history(path)


def test_cli_errors_are_clear(tmp_path, capsys):
    assert cli.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "not a save dir" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main([str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no save dirs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([str(empty), "--target-loss", "nan"])
    assert "--target-loss: expected a finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([str(empty), "--interactions", "1,x"])
    assert "--interactions" in capsys.readouterr().err


def test_module_entry_point_runs(runs_root, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "m"
    proc = subprocess.run([sys.executable, "-m", "gpts_fairseq.report", str(runs_root / "random"), "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert str(out / "summary.md") in proc.stdout
    assert math.isfinite(load_run(runs_root / "random" / "seed1").final_val_loss)


# -- gpts-report on real fairseq-train runs ------------------------------------------------------

REAL_BUDGET, REAL_EVERY = 20, 5


def _train_real(tiny_corpus, save, policy_args):
    from conftest import PACKAGE_DIR, TINY_MODEL, run_fairseq

    save.mkdir(parents=True)
    return run_fairseq([
        tiny_corpus, *TINY_MODEL, "--user-dir", PACKAGE_DIR, "--task", "gpts_mlm", "--criterion", "gpts_masked_lm",
        *policy_args, "--gpts-interaction-updates", REAL_EVERY, "--gpts-reward-batches", 3, "--max-valid-steps", 2,
        "--validate-interval-updates", REAL_EVERY, "--validate-interval", 1000, "--max-update", REAL_BUDGET, "--num-workers", 0, "--no-save",
        "--save-dir", save, "--log-file", save / "train.log",
    ])


@pytest.fixture(scope="module")
def real_runs(tiny_corpus, tmp_path_factory):
    """A gp-ts (ρ) and a constant-0.15 fairseq-train run, 20 updates, side by side."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import json_log

    root = tmp_path_factory.mktemp("real")
    specs = {"gp-ts-rho": ["--gpts-policy", "gp-ts", "--gpts-arms", "rho"], "constant-0.15": ["--gpts-policy", "constant"]}
    with ThreadPoolExecutor(2) as pool:
        procs = dict(zip(specs, pool.map(lambda kv: _train_real(tiny_corpus, root / kv[0], kv[1]), specs.items())))
    for label, args in specs.items():
        RunInfo(label=label, policy=args[1], seed=7, budget_updates=REAL_BUDGET, psi=REF).write(root / label)
    # the numbers as fairseq printed them on stdout (independent of the report's log-file parser)
    curves = {label: [(int(r["valid_num_updates"]), float(r["valid_loss"])) for r in json_log(proc, "valid")]
              for label, proc in procs.items()}
    return root, curves


def _figure_lines(monkeypatch):
    """Record the lines of every figure the report saves: {file name: [[(label, xs, ys), ...] per axes]}."""
    from gpts_fairseq.report import plots

    drawn, save = {}, plots._save

    def recording_save(fig, path):
        drawn[Path(path).name] = [[(line.get_label(), list(line.get_xdata()), list(line.get_ydata()))
                                   for line in ax.get_lines()] for ax in fig.axes]
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", recording_save)
    return drawn


def _line(axes, label, panel=0):
    lines = axes[panel]
    found = [(xs, ys) for name, xs, ys in lines if name == label]
    assert len(found) == 1, f"expected one line {label!r}, got {[name for name, _, _ in lines]}"
    return found[0]


def test_report_on_real_fairseq_runs(real_runs, tmp_path, monkeypatch):
    root, curves = real_runs
    history = [json.loads(line) for line in (root / "gp-ts-rho" / "gpts_history.jsonl").read_text().splitlines()]
    ends = list(range(REAL_EVERY, REAL_BUDGET + 1, REAL_EVERY))
    for label, curve in curves.items():
        assert [u for u, _ in curve] == ends, label
    # the run really is what the report will describe: 4 interactions (the last ended by
    # --max-update), reward = relative drop of the reference loss on the same batches that fairseq validated
    assert [(r["update"], r["end_update"]) for r in history] == [(0, 5), (5, 10), (10, 15), (15, 20)]
    valid = dict(curves["gp-ts-rho"])
    for r in history:
        assert round(r["val_loss"], 3) == pytest.approx(valid[r["end_update"]], abs=1.5e-3)
    drawn = _figure_lines(monkeypatch)

    out = tmp_path / "report"
    assert cli.main([str(root), "--out", str(out)]) == 0

    posterior_png = "posterior_gp-ts-rho_seed_7.png"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(["val_loss.png", "psi.png", "reward.png", posterior_png])
    for name in drawn:
        pixels = mpimg.imread(out / name)
        assert pixels.shape[0] > 200 and np.ptp(pixels[..., :3]) > 0.5, f"{name} is blank"
    # validation loss: each run's curve is the log's
    for label, curve in curves.items():
        assert _line(drawn["val_loss.png"], f"{label} (n=1)") == ([u for u, _ in curve], [x for _, x in curve])
    target = curves["constant-0.15"][-1][1]
    assert _line(drawn["val_loss.png"], f"target {target:.3f}")[1] == [target, target]
    # psi: the history's steps to the end; constant flat at 0.15
    segments = [(r["update"], r["end_update"], r["psi"]) for r in history]
    assert len(drawn["psi.png"]) == 3  # rho, gamma, lambda
    for panel, dim in enumerate(["mask_prob", "leave_unmasked_prob", "random_token_prob"]):
        xs, ys = _line(drawn["psi.png"], "gp-ts-rho", panel)
        assert xs == [u for a, b, _ in segments for u in (a, b)] and ys == [psi[dim] for *_, psi in segments for _ in (0, 1)]
        assert _line(drawn["psi.png"], "constant-0.15", panel) == ([0, REAL_BUDGET], [REF[dim]] * 2)
    # rewards per interaction, from the history
    assert _line(drawn["reward.png"], "gp-ts-rho (n=1)") == ([0, 1, 2, 3], [r["reward"] for r in history])
    # posterior after interactions 1 and 2 (the first is the prior): the recorded GP mean over rho
    for k in (1, 2):
        post = history[k]["posterior"]
        order = np.argsort([a[0] for a in post["arms"]])
        label = f"posterior mean after interaction {k} (γ=0.1, λ=0.1)"
        panel = next(n for n, lines in enumerate(drawn[posterior_png]) if any(name == label for name, _, _ in lines))
        xs, ys = _line(drawn[posterior_png], label, panel)
        assert xs == [post["arms"][i][0] for i in order] and ys == [post["mean"][i] for i in order]

    # the table: final losses and updates to reach constant-0.15's final loss, from the log
    text = (out / "summary.md").read_text()
    assert f"Target loss: {target:.3f} (mean final loss of the constant" in text
    assert "2 run(s); update budget 20." in text
    gp_final = curves["gp-ts-rho"][-1][1]
    reached = next((u for u, x in curves["gp-ts-rho"] if x <= target), None)
    reach = "not reached" if reached is None else f"{reached} ({reached / REAL_BUDGET:.2f})"
    assert f"| gp-ts-rho | 1 | {gp_final:.3f} | {reach} |" in text
    assert f"| constant-0.15 | 1 | {target:.3f} | 20 (1.00) |" in text
    assert f"| gp-ts-rho seed 7 | gp-ts-rho | 7 | 20 | {gp_final:.3f} | {reach} |" in text


def _trend_run(prior_sd=1.5, effect=0.01, sd=0.004, count=11):
    """A gp-ts run over the ρ grid whose first posterior is the prior (flat, ± prior_sd) and
    whose later ones are an arm effect of size ``effect`` peaking at a moving ρ, ± ``sd``."""
    from gpts_fairseq.report.history import Interaction, Posterior

    arms = np.array(RHO_ARMS[::-1]).reshape(-1, 1)  # unsorted on purpose
    inters = []
    for k in range(count):
        peak = 0.1 + 0.03 * k
        mean = np.zeros(len(arms)) if k == 0 else effect * np.exp(-((arms[:, 0] - peak) / 0.1) ** 2)
        std = np.full(len(arms), prior_sd if k == 0 else sd)
        psi = {"mask_prob": RHO_ARMS[k % len(RHO_ARMS)], **{n: v for n, v in REF.items() if n != "mask_prob"}}
        inters.append(Interaction(k, 1, 40 * k, 40 * (k + 1), psi, 8.0, 7.9, 0.01, "gp-ts", 0.05,
                                  Posterior(("mask_prob",), arms, mean, std, quantity="arm_effect"),
                                  next_psi={**psi, "mask_prob": peak}))
    return Run("trend", RunInfo(label="gp-ts-trend", policy="gp-ts", seed=1), inters, [(40, 8.0)])


def _capture_figures(monkeypatch):
    from gpts_fairseq.report import plots

    figures, save = [], plots._save

    def capturing_save(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", capturing_save)
    return figures


def test_posterior_ranges_are_set_from_the_data_shown(tmp_path, monkeypatch):
    """Each posterior curve is drawn on a y range set by its own band, not by the prior of
    interaction 0 (±1.5 here, 100 times the later curves); the colour scale of the map of
    interactions × arms spans the largest deviation of a mean from its mean over the arms in
    the later half of the interactions."""
    from matplotlib.collections import QuadMesh

    from gpts_fairseq.report.plots import plot_posterior

    run = _trend_run()
    figures = _capture_figures(monkeypatch)
    assert plot_posterior(run, tmp_path / "posterior.png", [0, 5, 10]) is not None
    (fig,) = figures
    for k in (5, 10):
        post = run.interactions[k].posterior
        order = np.argsort(post.arms[:, 0])
        mean, std = post.mean[order], post.std[order]
        low, high = float((mean - std).min()), float((mean + std).max())
        holders = [ax for ax in fig.axes for line in ax.get_lines()
                   if len(line.get_ydata()) == len(mean) and np.allclose(line.get_ydata(), mean)]
        assert holders, f"no curve of the posterior mean after interaction {k}"
        for ax in holders:
            bottom, top = ax.get_ylim()
            assert bottom <= low and top >= high, f"interaction {k}: the band leaves the axes"
            assert top - bottom <= 2 * (high - low), (
                f"interaction {k}: y range {top - bottom:.3g} for a band of {high - low:.3g}: not set from it")
    shape = (len(run.interactions), len(RHO_ARMS))
    meshes = [c for ax in fig.axes for c in ax.collections if isinstance(c, QuadMesh) and c.get_array().shape == shape]
    assert len(meshes) == 1, "one map of interactions x arms"
    deviation = max(float(np.abs(i.posterior.mean - i.posterior.mean.mean()).max()) for i in run.interactions[5:])
    assert meshes[0].get_clim() == pytest.approx((-deviation, deviation))


def test_verdict_and_what_each_policy_played_by_hand(runs_root, tmp_path):
    runs = discover_runs([runs_root])
    sentences = cli.report_verdict(runs)
    assert sentences == [
        "gp-ts-psi reached constant-0.15's final loss (7.600) at update 30 of 40 and ended at 6.500 (-1.100 bits); "
        "it played ρ ≥ 0.15 in 2 of 4 interactions (mean ρ 0.125).",
        "gp-ts-rho (mean of 2 seeds) reached constant-0.15's final loss (7.600) at update 30 of 40 and ended at "
        "7.300 (-0.300 bits); it played ρ ≥ 0.15 in 7 of 8 interactions (mean ρ 0.200).",
        "random did not reach constant-0.15's final loss (7.600) in 40 updates and ended at 8.500 (+0.900 bits); "
        "it played ρ ≥ 0.15 in 3 of 4 interactions (mean ρ 0.312).",
        "By final loss: gp-ts-psi 6.500, gp-ts-rho 7.300, constant-0.15 7.600, random 8.500.",
    ]
    # a constant run at another rho raises the bar the played rho is counted against
    high = make_run(tmp_path / "more", "constant-0.30", "constant", 1, [9.0, 8.0, 7.4, 7.0], [0.3] * 4,
                    psi={**REF, "mask_prob": 0.3})
    runs.append(load_run(high))
    out = tmp_path / "report"
    cli.write_report(runs, out)
    text = (out / "summary.md").read_text()
    for expected in ("it played ρ ≥ 0.30 in 1 of 8 interactions (mean ρ 0.200)",
                     "constant-0.30 reached constant-0.15's final loss (7.600) at update 30 of 40 and ended at 7.000",
                     "| constant-0.30 | – | 0.300 (fixed) | all | – |",
                     "| constant-0.15 | – | 0.150 (fixed) | none | – |"):
        assert expected in text
    # rewards: mean over both seeds' interactions, first and last averaged over the seeds
    gp = [r for r in runs if r.info.label == "gp-ts-rho"]
    rewards = [[i.reward for i in r.interactions] for r in gp]
    cell = (f"{np.mean(rewards):+.4f} ({np.mean([r[0] for r in rewards]):+.4f} → "
            f"{np.mean([r[-1] for r in rewards]):+.4f})")
    assert f"| gp-ts-rho | 8 | 0.200 (0.10–0.30) | 1 of 8 | {cell} |" in text


SUITE_RUN = Path(__file__).resolve().parents[1] / "benchmarks/results/pretrain-prereg/linux/gp-ts-trend/seed1.json"


def test_replayed_posteriors_reproduce_the_runs_decisions(tmp_path):
    """A pre-registered suite run (result JSON, no posteriors kept): replaying its rewards
    through a bandit built from its fairseq arguments draws every ψ the run drew, so the
    posteriors are the run's; a history that the bandit would not have produced is refused."""
    from gpts_fairseq.report.replay import ReplayMismatch, replay_posteriors

    data = json.loads(SUITE_RUN.read_text())
    run = run_from_result(data, str(SUITE_RUN))
    assert all(i.posterior is None for i in run.interactions)
    replayed = replay_posteriors(run)
    assert [i.next_psi for i in replayed.interactions] == [i.next_psi for i in run.interactions]
    posts = [i.posterior for i in replayed.interactions]
    assert len(posts) == len(run.interactions) == 11
    assert all(p.quantity == "arm_effect" and p.arms.shape == (10, 1) and p.fixed == {
        "leave_unmasked_prob": 0.1, "random_token_prob": 0.1} for p in posts)
    assert np.allclose(posts[0].mean, 0.0) and np.ptp(posts[-1].mean) > 0.005  # one reward: no arm effect yet
    data["interactions"][3]["next_psi"]["mask_prob"] = 0.45
    with pytest.raises(ReplayMismatch, match="after interaction 3"):
        replay_posteriors(run_from_result(data, "tampered"))
    out = tmp_path / "report"
    assert cli.main([str(SUITE_RUN), "--replay-posteriors", "--out", str(out)]) == 0
    assert (out / "posterior_gp-ts-trend_seed_1.png").is_file()


def test_reward_range_is_set_by_the_later_rewards_when_the_first_dwarfs_them(tmp_path, monkeypatch):
    from gpts_fairseq.report.plots import plot_rewards

    rewards = [0.3, 0.01, 0.02, -0.005, 0.015]
    run = _trend_run(count=len(rewards))
    run.interactions = [dataclasses.replace(i, reward=r) for i, r in zip(run.interactions, rewards)]
    figures = _capture_figures(monkeypatch)
    plot_rewards([run], tmp_path / "reward.png")
    bottom, top = figures[0].axes[0].get_ylim()
    assert bottom <= -0.005 and 0.02 <= top < 0.03  # the later rewards fill the axes
    assert any("+0.300 (off the scale)" in text.get_text() for text in figures[0].axes[0].texts)

"""benchmarks/pretrain.py and corpora.py: entropy, pilot budget, interaction length, command
lines, resumability, compute accounting and the pre-registered criteria."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import corpora, harness, pretrain


def _option(cmd, name):
    return cmd[cmd.index(name) + 1]


# -- corpora ---------------------------------------------------------------------------------


def test_previous_token_entropy_of_a_toy_stream():
    # stream a b </s> a c </s>: only 'a' has two successors (b, c, 1 each): 2/5 of the pairs x 1 bit
    assert corpora.previous_token_entropy(["a b", "a c"]) == pytest.approx(0.4)
    # x y x y x y </s>: 'x' is always followed by 'y'; 'y' by 'x' twice and '</s>' once
    assert corpora.previous_token_entropy(["x y x y x y"]) == pytest.approx(
        2 / 6 * math.log2(3 / 2) + 1 / 6 * math.log2(3))
    with pytest.raises(ValueError, match="at least two tokens"):
        corpora.previous_token_entropy([""])


def test_entropy_matches_a_direct_count_on_char_tokens():
    lines = corpora.tokenize_lines(["the cat sat on the mat", "a hat"], "char")
    stream = [t for line in lines for t in [*line.split(), "</s>"]]
    pairs = list(zip(stream, stream[1:]))
    h = 0.0
    for a, b in set(pairs):
        n_ab = pairs.count((a, b))
        n_a = sum(1 for x, _ in pairs if x == a)
        h -= n_ab / len(pairs) * math.log2(n_ab / n_a)
    assert corpora.previous_token_entropy(lines) == pytest.approx(h)


def test_a_user_file_is_split_into_a_contiguous_tail(tmp_path):
    train, valid = corpora.split_text([f"line {k}" for k in range(20)] + ["", "  "])
    assert train == [f"line {k}" for k in range(18)] and valid == ["line 18", "line 19"]
    with pytest.raises(ValueError, match="at least 2 non-empty lines"):
        corpora.split_text(["only", ""])
    with pytest.raises(ValueError, match="--text-name"):
        corpora.prepare_text("linux", tmp_path / "x.txt", data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="--text: no file"):
        corpora.prepare_text("mine", tmp_path / "missing.txt", data_root=tmp_path)



def test_preprocess_encodes_with_a_given_dictionary_and_names_the_failure(tmp_path):
    from fairseq.data import Dictionary, data_utils

    text = tmp_path / "text.tok"
    text.write_text("a b c\nc b a a\n")
    corpora.preprocess(tmp_path / "own", trainpref=text)
    own = Dictionary.load(str(tmp_path / "own" / "dict.txt"))
    assert [own.index(t) for t in "abc"] == [4, 5, 6]  # after the 4 specials, by count
    given = tmp_path / "given.txt"
    given.write_text("c 1\nb 1\nz 1\na 1\n")
    corpora.preprocess(tmp_path / "shared", given, testpref=text)
    rows = data_utils.load_indexed_dataset(str(tmp_path / "shared" / "test"), None, "mmap")
    assert rows[0].tolist() == [7, 5, 4, 2]  # a b c </s> in the given dictionary (4 specials first)
    with pytest.raises(RuntimeError, match="fairseq-preprocess failed for .*broken"):
        corpora.preprocess(tmp_path / "broken", tmp_path / "no-such-dict.txt", testpref=text)

# -- pilot and interaction length ----------------------------------------------------------


def test_budget_is_a_quarter_past_the_crossing_clamped():
    curve = [(25, 5.0), (50, 4.0), (75, 3.9), (100, 3.5)]
    assert pretrain.crossing_update(curve, 3.95) == 75
    assert pretrain.crossing_update(curve, 3.0) is None
    assert pretrain.budget_from_crossing(None) == 4000
    assert pretrain.budget_from_crossing(1000) == 1500  # 1250 -> the floor
    assert pretrain.budget_from_crossing(1999) == 2500  # 2498.75, rounded up to 50
    assert pretrain.budget_from_crossing(2000) == 2500
    assert pretrain.budget_from_crossing(3500) == 4000  # 4375 -> the ceiling


def test_reward_noise_recovers_planted_noise_around_a_smooth_trend():
    rng = np.random.default_rng(0)
    updates = np.arange(25, 4001, 25)
    trend = 3.0 + 2.0 / np.sqrt(updates / 25)
    curve = list(zip(updates.tolist(), (trend + rng.normal(0, 0.01, updates.size)).tolist()))
    # independent noise: a difference has sd sqrt(2) * 0.01, divided by a loss of ~3.1; each
    # local quadratic (17 validations) absorbs about an eighth of it
    for length in (50, 100, 400):
        sigma = pretrain.reward_noise(curve, length, 400, 4000)
        assert sigma == pytest.approx(0.87 * math.sqrt(2) * 0.01 / 3.1, rel=0.15)
    # the trend itself is not counted as noise: a noiseless curve has (almost) none
    assert pretrain.reward_noise(list(zip(updates.tolist(), trend.tolist())), 100, 400, 4000) < 1e-4
    with pytest.raises(ValueError, match="validations in"):
        pretrain.reward_noise(curve[:5], 25, 0, 4000)


def test_interaction_length_rule():
    def row(corpus, length, sigma, overhead, decisions):
        effect = pretrain.ARM_EFFECT_PER_UPDATE * pretrain.ARM_GAP * length
        return {"corpus": corpus, "interaction_updates": length, "reward_noise_sd": sigma, "arm_effect": effect,
                "effect_to_noise": effect / sigma, "overhead_share": overhead, "decisions": decisions}
    # 50: too much overhead; 100: overhead fine but the effect is below one noise sd on 'b'
    rows = [row("a", 50, 0.001, 0.04, 40), row("b", 50, 0.001, 0.04, 40),
            row("a", 100, 0.001, 0.02, 20), row("b", 100, 0.003, 0.02, 20),
            row("a", 200, 0.001, 0.01, 10), row("b", 200, 0.003, 0.01, 10),
            row("a", 400, 0.001, 0.005, 4), row("b", 400, 0.003, 0.005, 4)]
    assert pretrain.choose_interaction_length(rows) == (200, True)
    rows = [r for r in rows if r["interaction_updates"] != 200]
    assert pretrain.choose_interaction_length(rows) == (100, False)  # none meets all three: the fallback


# -- command lines, results ----------------------------------------------------------------


def _command(tmp_path, policy, seed, settings):
    return pretrain.run_spec("linux", tmp_path / "data", policy, seed, settings).command(tmp_path / "save")


def test_every_policy_maps_to_the_documented_task_options(tmp_path):
    settings = pretrain.Settings(budget_updates=400, interaction_updates=20)
    cmds = {name: _command(tmp_path, p, 3, settings) for name, p in pretrain.POLICIES.items()}
    for cmd in cmds.values():
        assert _option(cmd, "--task") == "gpts_mlm" and _option(cmd, "--criterion") == "gpts_masked_lm"
        assert _option(cmd, "--gpts-valid-masking") == "reference"
        assert _option(cmd, "--max-update") == "400" and _option(cmd, "--total-num-update") == "400"
        assert _option(cmd, "--validate-interval-updates") == "20" and _option(cmd, "--gpts-interaction-updates") == "20"
        assert _option(cmd, "--seed") == "3" and _option(cmd, "--warmup-updates") == "40"
    assert _option(cmds["constant-0.45"], "--mask-prob") == "0.45"
    assert _option(cmds["schedule-0.30-0.15"], "--gpts-schedule-end") == "0.15,0.1,0.1"
    assert _option(cmds["gp-ts-trend"], "--gpts-reward-model") == "trend"
    assert _option(cmds["gp-ts-trend"], "--gpts-arms") == "rho"
    assert "--gpts-reward-model" not in cmds["gp-ts-rho"]
    assert [p for p in pretrain.POLICIES][-1] == "gp-ts-trend"  # after the baselines of each block
    pilot = _command(tmp_path, pretrain.POLICIES["constant-0.15"], 0,
                     pretrain.pilot_settings(pretrain.Settings(budget_updates=4000, interaction_updates=100)))
    assert _option(pilot, "--validate-interval-updates") == "25" and _option(pilot, "--gpts-interaction-updates") == "4000"
    specs = [pretrain.run_spec("linux", tmp_path / "data", p, seed, settings)
             for p in pretrain.POLICIES.values() for seed in (1, 2)]
    assert len({s.fingerprint() for s in specs}) == 1  # every policy and seed shares the settings


@pytest.mark.parametrize("argv, message", [
    (["--budget-updates", "0"], "--budget-updates must be >= 1"),
    (["--budget-updates", "10", "--interaction-updates", "11"], "--interaction-updates must be in [1, --budget-updates=10]"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--eval-batches", "-1"], "--eval-batches must be >= 0"),
    (["--text", "a", "b", "c"], "--text takes one file or a TRAIN VALID pair"),
])
def test_bad_options_fail_before_any_work(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pretrain.main([*argv, "--results-root", str(tmp_path / "r"), "--data-root", str(tmp_path / "d"),
                       "--work-root", str(tmp_path / "w")])
    assert not (tmp_path / "d").exists() and not (tmp_path / "w").exists()


class _Prepared(Exception):
    """Raised by the stand-in for prepare_text: the driver got as far as preparing the user's text."""


def test_text_without_corpus_runs_the_users_text_only(tmp_path, monkeypatch):
    asked = []

    def shared(corpus, *args, **kwargs):
        asked.append(corpus)
        return tmp_path / corpus

    def users(name, *args, **kwargs):
        raise _Prepared(name)

    monkeypatch.setattr(pretrain.corpora, "prepare", shared)
    monkeypatch.setattr(pretrain.corpora, "prepare_text", users)
    with pytest.raises(_Prepared, match="mine"):
        pretrain.main(["--text", str(tmp_path / "my.txt"), "--text-name", "mine", "--results-root", str(tmp_path / "r"),
                       "--work-root", str(tmp_path / "w"), "--data-root", str(tmp_path / "d")])
    assert asked == []  # no shared corpus prepared, so none piloted or run


def _fake_result(root, corpus, policy, seed, curve, budget=None, compute=None):
    path = harness.result_path(root, corpus, policy, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    budget = budget or 10 * len(curve)
    info = {"label": policy, "policy": pretrain.POLICIES[policy].gpts_policy, "seed": seed, "corpus": corpus,
            "budget_updates": budget, "psi": dict(zip(("mask_prob", "leave_unmasked_prob", "random_token_prob"),
                                                      pretrain.POLICIES[policy].psi)),
            "arms": None, "context": None, "fairseq_args": []}
    settings = {"budget_updates": budget, "interaction_updates": 10, "eval_batches": 12}
    path.write_text(json.dumps({
        "name": f"seed{seed}", "corpus": corpus, "policy": policy, "seed": seed, "budget_updates": budget,
        "final_val_loss": curve[-1], "val_curve": [[10 * (k + 1), x] for k, x in enumerate(curve)],
        "wall_time_s": 60.0 + seed, "psi_sequence": [], "interactions": [], "run_info": info,
        "settings": settings, "compute": compute,
    }))
    return path


def test_finished_runs_are_skipped_and_other_settings_refused(tmp_path, monkeypatch):
    path = _fake_result(tmp_path, "linux", "random", 1, [9.0, 8.0, 7.0, 6.0])  # as committed: no fingerprint
    monkeypatch.setattr(harness, "_train", lambda *a: pytest.fail("a finished run was rerun"))
    spec = pretrain.run_spec("linux", tmp_path, pretrain.POLICIES["random"], 1,
                             pretrain.Settings(budget_updates=40, interaction_updates=10))
    assert harness.run(spec, tmp_path, tmp_path / "w")["final_val_loss"] == 6.0
    path.write_text(json.dumps({**json.loads(path.read_text()), "fingerprint": spec.fingerprint(),
                                "arm_args": list(spec.arm_args)}))
    assert harness.run(spec, tmp_path, tmp_path / "w")["final_val_loss"] == 6.0
    for other in (pretrain.Settings(budget_updates=80, interaction_updates=10),
                  pretrain.Settings(budget_updates=40, interaction_updates=20)):
        with pytest.raises(ValueError, match="seed1.json was run with other settings .fingerprint"):
            harness.run(pretrain.run_spec("linux", tmp_path, pretrain.POLICIES["random"], 1, other), tmp_path, tmp_path)


def test_compute_accounting_from_fairseq_throughput(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("\n".join(json.dumps(x) for x in [
        {"epoch": 1, "wps": "10000", "wpb": "2000", "num_updates": "50"},  # 0.2 s per update
        {"epoch": 1, "wps": "8000", "wpb": "2000", "num_updates": "100"},
        {"epoch": 1, "wps": "12000", "wpb": "2000", "num_updates": "150"},
        {"epoch": 1, "valid_loss": "4.0", "valid_wps": "40000", "valid_wpb": "2000", "valid_num_updates": "100"},
    ]) + "\n")
    costs = harness.read_log(log)
    assert (costs.update_s, costs.forward_cost_updates) == pytest.approx((0.2, 0.25))  # forward 0.05 s = 1/4 update
    costs = {"update_s": costs.update_s, "forward_cost_updates": costs.forward_cost_updates}

    class Decision:
        decision_time_s = 0.1
    settings = pretrain.Settings(budget_updates=1000, interaction_updates=100, eval_batches=12)
    gp = pretrain.compute_accounting(costs, [Decision()] * 9, settings, pretrain.POLICIES["gp-ts-trend"])
    # 10 passes x 12 batches x 0.25 + 0.9 s / 0.2 s = 30 + 4.5 update-equivalents
    assert gp["reward_update_equivalents"] == pytest.approx(34.5)
    assert gp["charged_update_equivalents"] == pytest.approx(1034.5)
    assert gp["interaction_overhead_share"] == pytest.approx((3 + 0.5) / 100)
    const = pretrain.compute_accounting(costs, [Decision()] * 9, settings, pretrain.POLICIES["constant-0.15"])
    assert const["charged_update_equivalents"] == 1000
    assert pretrain.charged_compute(gp, pretrain.POLICIES["gp-ts-trend"], 500, 100, 12) == pytest.approx(500 + 6 * 3.5)


# -- the pre-registered criteria -----------------------------------------------------------

CORPORA = ("wikitext-2", "linux", "war-and-peace")
# a reward pass of 12 batches costs 4 updates; 8 passes over the 80-update run
REWARD_COST = {"update_s": 1.0, "forward_cost_updates": 1 / 3, "reward_passes": 8, "reward_batches": 12,
               "decision_s": 0.0, "reward_update_equivalents": 32.0, "charged_update_equivalents": 112.0,
               "interaction_overhead_share": 0.4}


def _suite(root, trend_shift, random_shift, seeds=(1, 2, 3), skip=()):
    """constant-0.15 goes 9 8 7 6 5 4 4 (final 4.0 = mean of its last three), constant-0.30 ends
    0.01 lower (the best fixed rho), random ends at +random_shift, gp-ts-trend reaches 4.0 at
    update 40 and ends at 4.0 + trend_shift, plus a per-seed wobble."""
    base = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 4.0, 4.0]
    for corpus in CORPORA:
        for seed in seeds:
            wobble = 0.001 * seed
            _fake_result(root, corpus, "constant-0.15", seed, [x + wobble for x in base])
            _fake_result(root, corpus, "constant-0.30", seed, [x + wobble - 0.01 for x in base])
            _fake_result(root, corpus, "constant-0.45", seed, [x + wobble + 0.02 for x in base])
            _fake_result(root, corpus, "random", seed, [x + wobble + random_shift for x in base])
            if (corpus, seed) not in skip:
                trend = [9.0, 7.0, 5.0, 4.0 + wobble] + [4.0 + wobble + trend_shift] * 4
                _fake_result(root, corpus, "gp-ts-trend", seed, trend, compute=REWARD_COST)


def _criteria(root):
    per_corpus = {c: pretrain.load_results(root, c) for c in CORPORA}
    return {c.name: c for c in pretrain.score(per_corpus, CORPORA)}


def test_criteria_pass_when_the_new_policy_is_faster_close_to_the_best_and_beats_random(tmp_path):
    _suite(tmp_path, trend_shift=-0.012, random_shift=0.005)
    got = _criteria(tmp_path)
    # (a) reaches 4.0 + wobble <= target at update 40 of 80, after 5 reward passes (updates 0,
    # 10, ..., 40) of 4 updates each: (40 + 20) / 80 = 0.75 of the compute, on every corpus
    assert got["a"].status == "PASS" and "3 of 3 complete corpora pass" in got["a"].detail
    assert "wikitext-2: 0.75 of constant-0.15's compute (update 40 of 80)" in got["a"].detail
    # (b) gap to constant-0.30: -0.002 on every pair, sd 0 -> bound -0.002
    assert got["b"].status == "PASS" and "mean gap -0.0020 bits" in got["b"].detail
    assert got["c"].status == "PASS" and "on 9 of 9 same-seed pairs" in got["c"].detail


def test_criteria_fail_and_report_their_numbers(tmp_path):
    _suite(tmp_path, trend_shift=0.0, random_shift=-0.001)
    got = _criteria(tmp_path)
    assert got["a"].status == "PASS"  # still early: only (b) and (c) fail
    assert got["b"].status == "FAIL" and "mean gap +0.0100 bits" in got["b"].detail
    assert got["c"].status == "FAIL" and "on 0 of 9 same-seed pairs" in got["c"].detail


def test_criteria_are_incomplete_while_pairs_are_missing(tmp_path):
    _suite(tmp_path, trend_shift=-0.012, random_shift=0.005, skip={("linux", 3), ("war-and-peace", 2)})
    got = _criteria(tmp_path)
    assert {c.status for c in got.values()} == {"incomplete"}
    assert "linux: incomplete" in got["a"].detail and "1 of 1 complete corpora pass" in got["a"].detail
    assert "incomplete: 7 of 9 pairs" in got["b"].detail and "incomplete: 7 of 9 pairs" in got["c"].detail


def test_summary_prints_the_criteria_and_tables(tmp_path):
    _suite(tmp_path, trend_shift=-0.012, random_shift=0.005, seeds=(1,))
    text = pretrain.write_summary(tmp_path, work_root=tmp_path / "work").read_text()
    assert "- (c) **incomplete**: lower final loss than random on 3 of 3 same-seed pairs" in text
    assert "| linux | gp-ts-trend | 1 | 3.989 | -0.0120 (1/1) |" in text
    assert "| linux | gp-ts-trend | 1 | 1.000 | 8 | 32 | 112 | 40.0% |" in text
    # the block row: no schedule or GP-TS-rho run here; gaps to constant-0.30 and to random
    assert "| linux | 1 | 4.001 | 3.991 | 4.021 | – | 4.006 | – | 3.989 | -0.002 | -0.017 |" in text
    assert (tmp_path / "delta_vs_constant.png").is_file()
    assert (tmp_path / "linux" / "report" / "val_loss.png").is_file()

"""benchmarks/harness.py: resume of a suite, fingerprint, portable paths, the entropy check,
progress lines and the shared warm start (fake fairseq-train runs; one real e2e test)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import corpora, harness
from gpts_fairseq.events import EVENTS_FILE, EventLog

MODEL = ("--arch", "roberta_base", "--encoder-layers", "2", "--encoder-embed-dim", "32",
         "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--max-positions", "64",
         "--tokens-per-sample", "64", "--sample-break-mode", "none", "--batch-size", "8",
         "--required-batch-size-multiple", "1", "--optimizer", "adam", "--lr", "0.003")
VALIDATE = ("--validate-interval-updates", "2", "--validate-interval", "1000000", "--max-valid-steps", "1")


def _spec(tmp_path, arm="a", seed=1, budget=4, **kw):
    data = tmp_path / "data-char-0123"
    data.mkdir(exist_ok=True)
    return harness.RunSpec(corpus="toy", data_dir=data, arm=arm, seed=seed, budget_updates=budget,
                           model=MODEL, fairseq=VALIDATE, **kw)


def _log_line(**stats):
    return json.dumps({k: str(v) for k, v in stats.items()}) + "\n"


class FakeFairseq:
    """Stands in for harness._train: writes the log a run of ``losses`` (one per 2 updates)
    would, an events file, and interval checkpoints when the spec keeps them."""

    def __init__(self, losses=(6.0, 5.0), events=()):
        self.losses, self.events, self.calls = list(losses), list(events), []

    def __call__(self, spec, save_dir, stop):
        self.calls.append((spec.arm, spec.seed))
        lines, stopped = [], False
        for k, loss in enumerate(self.losses, 1):
            update = 2 * k
            lines += [_log_line(epoch=1, num_updates=update, train_wall=0.5, wps=1000, wpb=100),
                      _log_line(epoch=1, valid_loss=loss, valid_num_updates=update, valid_wps=4000, valid_wpb=100)]
            if spec.keep_checkpoints:
                torch.save({"cfg": {"seed": spec.seed}, "args": None, "model": {"w": torch.full((2,), float(update))},
                            "optimizer_history": [{"num_updates": update}], "extra_state": {"data": "x"},
                            "last_optimizer_state": {"adam": 1}}, save_dir / f"checkpoint_1_{update}.pt")
            (save_dir / harness.LOG_FILE).write_text("".join(lines))
            if stop is not None and stop(harness.read_curve(save_dir)):
                stopped = True
                break
        if self.events:
            (save_dir / EVENTS_FILE.format(name="growth")).write_text("".join(json.dumps(e) + "\n" for e in self.events))
        return (-15 if stopped else 0), stopped, 3.0


@pytest.fixture
def fake(monkeypatch):
    fake = FakeFairseq(events=[{"event": "growth", "update": 2, "loss_before": 6.0, "loss_after": 6.1}])
    monkeypatch.setattr(harness, "_train", fake)
    return fake


def test_fingerprint_is_shared_by_arms_and_seeds_and_names_the_settings(tmp_path):
    base = _spec(tmp_path)
    assert base.fingerprint() == _spec(tmp_path, arm="b", seed=2, arm_args=("--mask-prob", "0.3")).fingerprint()
    assert base.fingerprint() == _spec(tmp_path, threads=2).fingerprint()  # threads change no result
    assert base.fingerprint() != _spec(tmp_path, budget=6).fingerprint()
    assert base.fingerprint() != harness.RunSpec(**{**base.__dict__, "model": MODEL + ("--dropout", "0.1")}).fingerprint()
    warm = harness.WarmStart(tmp_path / "w.pt", "f00", 10, 3.0, 3.5, 0.2)
    assert base.fingerprint() != _spec(tmp_path, warm_start=warm).fingerprint()


def test_command_line_and_bad_specs(tmp_path):
    cmd = _spec(tmp_path, keep_checkpoints=False).command(tmp_path / "save")
    assert cmd[cmd.index("--max-update") + 1] == "4" and cmd[cmd.index("--seed") + 1] == "1"
    assert "--no-save" not in cmd and cmd[cmd.index("--task") + 1] == "gpts_mlm"
    assert cmd[cmd.index("--save-interval-updates") + 1] == "500"  # a multiple of the validation interval, 2
    every_300 = harness.RunSpec(**{**_spec(tmp_path).__dict__, "fairseq": ("--validate-interval-updates", "300")})
    assert every_300.resume_checkpoints()[:2] == ["--save-interval-updates", "600"]
    unvalidated = harness.RunSpec(**{**_spec(tmp_path).__dict__, "fairseq": ()})
    assert unvalidated.resume_checkpoints()[:2] == ["--save-interval-updates", "500"]
    with pytest.raises(ValueError, match="need --validate-interval-updates"):
        harness.warm_start(unvalidated, 0.5, tmp_path / "store", tmp_path / "work", entropy_bits=3.5)
    assert "--save-interval-updates" not in _spec(tmp_path, keep_checkpoints=True).command(tmp_path / "save")
    warm = harness.WarmStart(tmp_path / "w" / "checkpoint.pt", "f00", 10, 3.0, 3.5, 0.2)
    assert str(tmp_path / "w" / "checkpoint.pt") in _spec(tmp_path, warm_start=warm).command(tmp_path / "save")
    with pytest.raises(ValueError, match="budget_updates must be >= 1"):
        _spec(tmp_path, budget=0)
    with pytest.raises(ValueError, match="--jobs must be >= 1"):
        harness.run_suite([_spec(tmp_path)], tmp_path / "r", tmp_path / "w", jobs=0)


def test_result_schema_events_and_portable_paths(tmp_path, fake):
    result = harness.run(_spec(tmp_path), tmp_path / "results", tmp_path / "work",
                         finish=lambda save_dir, r: {"where": str(save_dir / "x"), "final": r["val_curve"][-1][1]})
    assert result["val_curve"] == [[2, 6.0], [4, 5.0]] and result["exit_code"] == 0
    assert result["train_wall_curve"] == [[2, 0.5], [4, 1.0]]
    assert result["compute"] == {"update_s": 0.1, "forward_cost_updates": pytest.approx(0.25), "updates": 4,
                                 "train_wall_s": 1.0}
    assert result["events"]["growth"][0]["loss_after"] == 6.1 and result["final"] == 5.0
    assert result["where"] == "<save>/x" and result["fingerprint"] == _spec(tmp_path).fingerprint()
    text = harness.result_path(tmp_path / "results", "toy", "a", 1).read_text()
    assert str(tmp_path) not in text and "<data>" in text and "<user-dir>" in text
    assert json.loads(text) == result
    with pytest.raises(ValueError, match="machine path"):
        harness.check_portable({"x": [str(harness.REPO_ROOT / "y")]}, {}, tmp_path / "r.json")


def test_a_failed_run_is_an_error_not_a_result(tmp_path, monkeypatch):
    def crashed(spec, save_dir, stop):
        (save_dir / "stdout.log").write_text("terminate called without an active exception\n")
        return -6, False, 1.0

    monkeypatch.setattr(harness, "_train", crashed)
    with pytest.raises(harness.RunFailed, match="exit code -6"):
        harness.run(_spec(tmp_path), tmp_path / "results", tmp_path / "work")
    assert not harness.result_path(tmp_path / "results", "toy", "a", 1).exists()


def test_a_suite_resumes_finished_runs_restart_killed_ones_and_reports_progress(tmp_path, fake):
    specs = [_spec(tmp_path, arm=arm, seed=seed) for seed in (1, 2) for arm in ("a", "b")]
    results, work = tmp_path / "results", tmp_path / "work"
    harness.run(specs[0], results, work)
    killed = harness.save_dir_of(work, specs[1])
    killed.mkdir(parents=True)
    (killed / "stale.pt").write_text("half a run")
    lines = []
    out = harness.run_suite(specs, results, work, jobs=2, print_fn=lines.append)
    assert [(r["arm"], r["seed"]) for r in out] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert sorted(fake.calls) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]  # a/1 once, before the suite
    assert not (killed / "stale.pt").exists()
    assert lines[0].startswith("1 of 4 runs finished earlier; 3 to run")
    assert [line.split("]")[0] for line in lines[1:]] == ["[2/4", "[3/4", "[4/4"]
    assert "final 5.000 bits, 3 s; mean 3 s/run" in lines[1] and lines[-1].endswith("~0m00s left")
    fake.calls.clear()
    assert harness.run_suite(specs, results, work, print_fn=lines.append) == out and fake.calls == []
    other = [harness.RunSpec(**{**s.__dict__, "budget_updates": 6}) for s in specs]
    with pytest.raises(ValueError, match="seed1.json was run with other settings .fingerprint"):
        harness.run_suite(other, results, work, print_fn=lines.append)


def test_a_killed_run_goes_on_from_its_checkpoint_and_a_finished_one_is_not_retrained(tmp_path, monkeypatch):
    """A save dir with checkpoint_last.pt and the spec's own run.json is resumed in place (fake
    fairseq: the log of the first part stays, the second appends); other arguments, or no
    checkpoint, start over; a checkpoint at the budget is only scored. Checkpoints go after."""
    spec, results, work = _spec(tmp_path), tmp_path / "results", tmp_path / "work"
    calls = []

    def killed_at(update):
        def train(spec, save_dir, stop):
            calls.append(sorted(p.name for p in save_dir.iterdir()))
            lines = [_log_line(epoch=1, num_updates=u, train_wall=0.5, wps=1000, wpb=100) +
                     _log_line(epoch=1, valid_loss=8.0 - u, valid_num_updates=u) for u in range(2, update + 1, 2)]
            with open(save_dir / harness.LOG_FILE, "a") as log:
                log.write("".join(lines))
            torch.save({"optimizer_history": [{"num_updates": update}]}, save_dir / "checkpoint_last.pt")
            if update < spec.budget_updates:
                raise KeyboardInterrupt  # killed
            return 0, False, 3.0
        return train

    monkeypatch.setattr(harness, "_train", killed_at(2))
    with pytest.raises(KeyboardInterrupt):
        harness.run(spec, results, work)
    save_dir = harness.save_dir_of(work, spec)
    assert harness.resume_point(save_dir, harness.portable(spec.command(save_dir)[1:],
                                                           harness.places_of(spec, save_dir, work))) == 2
    monkeypatch.setattr(harness, "_train", killed_at(4))
    result = harness.run(spec, results, work)
    assert calls[1] == ["checkpoint_last.pt", "run.json", "train.log"]  # the first part was kept
    assert result["resumed_at_update"] == 2 and result["val_curve"] == [[2, 6.0], [4, 4.0]]
    assert not list(save_dir.glob("*.pt"))

    other = harness.RunSpec(**{**spec.__dict__, "seed": 2})  # another run's save dir would not match
    other_dir = harness.save_dir_of(work, other)
    other_dir.mkdir(parents=True)
    (other_dir / "run.json").write_text(json.dumps({"fairseq_args": ["--other"]}))
    torch.save({"optimizer_history": [{"num_updates": 2}]}, other_dir / "checkpoint_last.pt")
    assert harness.run(other, results, work)["resumed_at_update"] is None and calls[-1] == ["run.json"]  # afresh

    finished = harness.RunSpec(**{**spec.__dict__, "seed": 3})
    monkeypatch.setattr(harness, "_train", killed_at(4))
    harness.run(finished, results, work)
    harness.result_path(results, "toy", "a", 3).unlink()  # killed after fairseq ended, before the result
    torch.save({"optimizer_history": [{"num_updates": 4}]}, harness.save_dir_of(work, finished) / "checkpoint_last.pt")
    calls.clear()
    again = harness.run(finished, results, work)
    assert calls == [] and again["resumed_at_update"] == 4 and again["val_curve"] == [[2, 6.0], [4, 4.0]]


def test_share_of_the_budget_below_the_previous_token_entropy(tmp_path):
    curve = [(100, 5.0), (200, 3.0), (300, 3.6), (400, 2.9)]
    assert harness.passed_previous_token_entropy(curve, 3.5) == pytest.approx(0.5)
    assert harness.passed_previous_token_entropy(curve, 3.5, budget_updates=800) == pytest.approx(0.25)
    assert harness.passed_previous_token_entropy(curve, 6.0) == 1.0
    data = tmp_path / "prepared"
    data.mkdir()
    (data / "train.tok").write_text("a b a b\na c\n")
    bits = corpora.previous_token_entropy(["a b a b", "a c"])
    assert harness.passed_previous_token_entropy([(10, bits - 0.01)], data) == 1.0
    assert harness.passed_previous_token_entropy([(10, bits + 0.01)], data) == 0.0
    with pytest.raises(ValueError, match="empty curve"):
        harness.passed_previous_token_entropy([], 3.0)
    # a result: over its budget, or over the updates it ran where its stop rule ended it
    result = {"val_curve": [list(p) for p in curve], "budget_updates": 800, "stopped_early": False}
    assert harness.share_below_entropy(result, 3.5) == pytest.approx(0.25)
    assert harness.share_below_entropy(dict(result, stopped_early=True), 3.5) == pytest.approx(0.5)


def test_warm_start_is_trained_once_below_the_margin_and_stores_weights_only(tmp_path, monkeypatch):
    fake, trained_in = FakeFairseq(losses=(6.0, 4.0, 3.2, 2.5, 2.0)), []
    monkeypatch.setattr(harness, "_train", lambda spec, save_dir, stop: trained_in.append(save_dir) or fake(spec, save_dir, stop))
    spec = _spec(tmp_path, arm="warm", budget=10)
    made = harness.warm_start(spec, margin_bits=0.5, store_root=tmp_path / "store", work_root=tmp_path / "work",
                              entropy_bits=3.5)
    assert (made.update, made.loss) == (8, 2.5) and fake.calls == [("warm", 1)]  # the first below 3.5 - 0.5
    stored = torch.load(made.checkpoint, weights_only=False)
    assert torch.equal(stored["model"]["w"], torch.full((2,), float(made.update)))
    assert stored["last_optimizer_state"] is None and stored["optimizer_history"][-1]["num_updates"] == 0
    assert "data" not in stored["extra_state"]
    record = json.loads((made.checkpoint.parent / "warm_start.json").read_text())
    assert record["warm_start"]["fingerprint"] == made.fingerprint and str(tmp_path) not in json.dumps(record)
    assert trained_in == [tmp_path / "work" / "warm-start" / spec.corpus / made.fingerprint]  # keyed: other
    assert not trained_in[0].exists()  # settings train side by side; the save dir is removed once stored
    again = harness.warm_start(spec, 0.5, tmp_path / "store", tmp_path / "work", entropy_bits=3.5)
    assert again == made and fake.calls == [("warm", 1)]  # reused, not retrained
    other = harness.warm_start(spec, 1.2, tmp_path / "store", tmp_path / "work", entropy_bits=3.5)
    assert other.fingerprint != made.fingerprint and (other.update, other.loss) == (10, 2.0) and len(fake.calls) == 2
    assert trained_in[-1].name == other.fingerprint
    with pytest.raises(harness.RunFailed, match="no saved validation below"):
        harness.warm_start(spec, 3.0, tmp_path / "store", tmp_path / "work", entropy_bits=3.5)


def test_a_killed_warm_start_goes_on_from_its_last_checkpoint(tmp_path, monkeypatch):
    spec, seen = _spec(tmp_path, arm="warm", budget=10), []

    def killed(saves_last):
        def train(spec_, save_dir, stop):
            seen.append(sorted(p.name for p in save_dir.iterdir()))
            (save_dir / "partial.log").write_text("")
            if saves_last:
                torch.save({"optimizer_history": [{"num_updates": 4}]}, save_dir / "checkpoint_last.pt")
            raise KeyboardInterrupt
        return train

    def warm():
        return harness.warm_start(spec, 0.5, tmp_path / "store", tmp_path / "work", entropy_bits=3.5)

    for saves_last in (False, True):
        monkeypatch.setattr(harness, "_train", killed(saves_last))
        with pytest.raises(KeyboardInterrupt):
            warm()
    fake = FakeFairseq(losses=(6.0, 4.0, 3.2, 2.5))
    monkeypatch.setattr(harness, "_train", lambda s, d, stop: seen.append(sorted(p.name for p in d.iterdir()))
                        or fake(s, d, stop))
    assert warm().update == 8
    # killed before its first checkpoint: starts over; killed after one: goes on in the same save dir
    assert seen == [["run.json"], ["run.json"], ["checkpoint_last.pt", "partial.log", "run.json"]]


@pytest.mark.e2e
def test_arms_from_a_warm_start_begin_with_its_weights(tiny_corpus, tmp_path):
    """Real fairseq-train: a warm start past a (generous) entropy, then two arms with other
    seeds and masking at lr 0 for one update: both hold exactly the stored weights (trained 4
    updates from seed 3's initialisation, so no initialisation of theirs can match them)."""
    store, work, results = tmp_path / "store", tmp_path / "work", tmp_path / "results"
    base = harness.RunSpec(corpus="tiny", data_dir=tiny_corpus, arm="warm", seed=3, budget_updates=40, model=MODEL,
                           fairseq=("--validate-interval-updates", "4", "--validate-interval", "1000000",
                                    "--max-valid-steps", "1"), tokenizer="word")
    made = harness.warm_start(base, margin_bits=0.0, store_root=store, work_root=work, entropy_bits=20.0)
    assert made.update == 4  # the first validation is below 20 bits
    warm = torch.load(made.checkpoint, weights_only=False)["model"]

    def one_update(arm, seed, mask):
        spec = harness.RunSpec(corpus="tiny", data_dir=tiny_corpus, arm=arm, seed=seed, budget_updates=1,
                               model=(*MODEL[:-1], "0"), fairseq=("--save-interval-updates", "1"),
                               arm_args=("--mask-prob", mask), tokenizer="word", keep_checkpoints=True,
                               warm_start=made)
        weights = {}
        result = harness.run(spec, results, work, finish=lambda save_dir, r: weights.update(torch.load(
            save_dir / "checkpoint_1_1.pt", weights_only=False)["model"]) or {})
        assert result["warm_start"] == made.record()
        return weights

    for weights in [one_update("low", 1, "0.15"), one_update("high", 2, "0.45")]:
        assert weights.keys() == warm.keys() and all(torch.equal(weights[k], warm[k]) for k in warm)


@pytest.mark.e2e
def test_a_killed_run_resumes_exactly_with_real_fairseq(tiny_corpus, tmp_path, monkeypatch):
    """Real fairseq-train: a run whose first part ends at its checkpoint at update 8 (as if killed
    just after it) and is then run again through the harness validates exactly as a run that
    was never interrupted."""
    monkeypatch.setattr(harness, "CHECKPOINT_UPDATES", 8)
    spec = harness.RunSpec(corpus="tiny", data_dir=tiny_corpus, arm="a", seed=5, budget_updates=12, model=MODEL,
                           fairseq=("--validate-interval-updates", "4", "--validate-interval", "1000000",
                                    "--max-valid-steps", "1"), tokenizer="word")
    whole = harness.run(spec, tmp_path / "whole", tmp_path / "whole-work")
    real_train = harness._train

    def killed_after_update_8(spec, save_dir, stop):
        real_train(harness.RunSpec(**{**spec.__dict__, "budget_updates": 8}), save_dir, stop)
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "_train", killed_after_update_8)
    with pytest.raises(KeyboardInterrupt):
        harness.run(spec, tmp_path / "parts", tmp_path / "parts-work")
    monkeypatch.setattr(harness, "_train", real_train)
    parts = harness.run(spec, tmp_path / "parts", tmp_path / "parts-work")
    assert parts["resumed_at_update"] == 8 and whole["resumed_at_update"] is None
    assert parts["val_curve"] == whole["val_curve"] and [u for u, _ in whole["val_curve"]] == [4, 8, 12]
    assert not list(harness.save_dir_of(tmp_path / "parts-work", spec).glob("*.pt"))


# The records of gpts_fairseq.growth and gpts_fairseq.subsets (their EVENT_SCHEMA), by hand.
GROWTH_SCHEMA = {"growth": {"stage": int, "layers": int, "ffn": int, "tokens": int, "parameters": int, "depth": str,
                            "width_noise": float, "optimizer": str, "seconds": float, "checksum": float,
                            "loss_before": (float, type(None)), "loss_after": (float, type(None))}}
SUBSETS_SCHEMA = {"selection": {"epoch": int, "kind": str, "selector": str, "fraction": float, "size": int,
                                "count": int, "feature_seconds": float, "greedy_seconds": float, "hash": str,
                                "file": (str, type(None))}}


def _write_events(save_dir, name, schema, records):
    log = EventLog(str(save_dir), name, schema)
    for record in records:
        log.write(record)


def test_growth_and_subset_results_come_from_the_event_files(tmp_path, monkeypatch):
    from benchmarks import growth, subsets

    fake = FakeFairseq(losses=(6.0, 5.0))

    def with_events(spec, save_dir, stop):
        out = fake(spec, save_dir, stop)
        grow = {"stage": 1, "layers": 4, "ffn": 512, "tokens": 128, "parameters": 10, "depth": "stack",
                "width_noise": 0.01, "optimizer": "carry", "seconds": 0.1, "checksum": 1.5}
        _write_events(save_dir, "growth", GROWTH_SCHEMA, [
            {"event": "growth", "update": 2, **grow, "loss_before": 6.0, "loss_after": 6.25},
            {"event": "growth", "update": 2, **grow, "loss_before": None, "loss_after": None}])  # a rank that did not measure
        pick = {"kind": "ingenious", "selector": "ingenious", "fraction": 0.25, "size": 5, "count": 20,
                "hash": "ab", "file": None}
        _write_events(save_dir, "subsets", SUBSETS_SCHEMA, [
            {"event": "selection", "update": 0, "epoch": 2, **pick, "feature_seconds": 0.5, "greedy_seconds": 0.25},
            {"event": "selection", "update": 2, "epoch": 3, **pick, "feature_seconds": 0.5, "greedy_seconds": 0.25}])
        return out

    monkeypatch.setattr(harness, "_train", with_events)
    settings = growth.Settings(budget_updates=4, valid_every=2)
    schedule = {"stages": "", "updates": 4, "flops_per_update": [1.0], "stage_updates": [4], "budget_flops": 4.0}
    monkeypatch.setattr(growth, "plan", lambda arm, settings, vocab: schedule)
    result = harness.run(growth.run_spec("toy", tmp_path, "compound", 1, settings, schedule), tmp_path / "r",
                         tmp_path / "w", finish=growth.run_fields(settings, {"toy": 100}))
    assert result["growths"] == [{"update": 2, "loss_before": 6.0, "loss_after": 6.25}]
    assert result["curve"][0] == {"update": 2, "loss": 6.0, "flops": 2.0, "train_wall_s": 0.5}
    result = harness.run(subsets.run_spec("toy", tmp_path, "ingenious", 1, 4), tmp_path / "r", tmp_path / "w",
                         finish=subsets.run_fields)
    assert [s["epoch"] for s in result["selections"]] == [2, 3] and result["selection_s"] == 1.5
    assert result["seconds_per_update"] == 0.25 and result["selection_update_equivalents"] == 6.0

"""benchmarks/subsets_past.py with the selection events the extension writes: the ingenious arm
turns the facility-location report on, S3 is scored from the first selection's event, the
report's seconds are not charged, and the summary works before any run."""

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from test_subsets import clustered_features, config

from benchmarks import harness, subsets_past
from gpts_fairseq.events import EventLog, read_events
from gpts_fairseq.subsets import epochs as subset_epochs
from gpts_fairseq.subsets import validate_subset_config
from gpts_fairseq.subsets.epochs import EVENT_SCHEMA, EpochSubsets


def test_the_ingenious_arm_asks_for_the_report():
    args = options.parse_args_and_arch(options.get_training_parser(), [
        "data", "--task", "gpts_mlm", "--arch", "roberta_base", *subsets_past.ARMS["ingenious"]])
    task = convert_namespace_to_omegaconf(args).task
    validate_subset_config(task)
    assert task.subset_report_facility_location == subsets_past.RANDOM_SUBSETS == 100
    assert all("--subset-report-facility-location" not in args for arm, args in subsets_past.ARMS.items()
               if arm != "ingenious")


class _Blocks:
    def __len__(self):
        return 200


def first_selection_events(tmp_path, monkeypatch, seed):
    """The events of an ingenious run's first selection as the extension writes them (the
    driver's ingenious options; features of clustered blocks)."""
    monkeypatch.setattr(subset_epochs, "block_features", lambda *a, **k: clustered_features(200, seed=seed))
    save_dir = tmp_path / f"seed{seed}"
    cfg = config(seed=seed, subset_selector="ingenious", subset_warmup_epochs=0, subset_partition_size=80,
                 subset_report_facility_location=subsets_past.RANDOM_SUBSETS)
    subsets = EpochSubsets(cfg, str(save_dir), pad_idx=1, write=False,
                           events=EventLog(str(save_dir), "subsets", EVENT_SCHEMA), update=lambda: 0)
    subsets.for_epoch(1, _Blocks(), model=None, feature_batches=lambda: [])
    return {name: read_events(str(save_dir), name) for name in harness.event_names(save_dir)}


def ingenious_results(tmp_path, monkeypatch, seeds=(1, 2)):
    return [{"corpus": "wikitext-2", "arm": "ingenious", "seed": seed,
             "events": first_selection_events(tmp_path, monkeypatch, seed)} for seed in seeds]


def test_s3_is_scored_from_the_selection_events(tmp_path, monkeypatch):
    results = ingenious_results(tmp_path, monkeypatch)
    verdict = subsets_past.separation(results, wanted=2)
    assert verdict.status in ("PASS", "FAIL")
    for result in results:
        record = result["events"]["subsets"][0]
        randoms = torch.tensor(record["facility_location_random"], dtype=torch.float64)
        z = (record["facility_location"] - randoms.mean()) / randoms.std()
        kept = (record["facility_location"] - randoms.mean()) / (record["facility_location_greedy"] - randoms.mean())
        assert f"seed {result['seed']}: z {z:+.1f}, {kept:.0%} of the greedy's gain" in verdict.detail
    above = all(r["events"]["subsets"][0]["facility_location"] > max(r["events"]["subsets"][0]["facility_location_random"])
                for r in results)
    assert verdict.status == ("PASS" if above else "FAIL")
    assert subsets_past.separation(results, wanted=3).status == "incomplete"


def test_s3_needs_the_report_at_the_warm_start(tmp_path, monkeypatch):
    results = ingenious_results(tmp_path, monkeypatch)
    later = [{**results[0], "events": {"subsets": [{**results[0]["events"]["subsets"][0], "update": 50}]}}]
    assert "not on the warm start's features" in subsets_past.separation(later, wanted=1).detail
    off = [{**results[0], "events": {"subsets": [{**results[0]["events"]["subsets"][0],
                                                  "facility_location_random": None}]}}]
    verdict = subsets_past.separation(off, wanted=1)
    assert verdict.status == "incomplete" and "carries no facility-location values" in verdict.detail


def test_the_report_is_not_charged(tmp_path, monkeypatch):
    (result,) = ingenious_results(tmp_path, monkeypatch, seeds=(1,))
    record = result["events"]["subsets"][0]
    result.update(compute={"train_wall_s": 10.0, "updates": 100})
    fields = subsets_past.run_fields(tmp_path, result)
    assert fields["facility_location_s"] == record["facility_location_seconds"] > 0
    assert fields["selection_s"] == pytest.approx(record["feature_seconds"] + record["greedy_seconds"])
    assert fields["selection_update_equivalents"] == pytest.approx(fields["selection_s"] / 0.1)


def test_summary_before_any_run(tmp_path, monkeypatch, capsys):
    """``--summary-only`` on an empty results directory: every criterion incomplete."""
    monkeypatch.setattr(subsets_past, "RESULTS", tmp_path / "subsets-past")
    monkeypatch.setattr(subsets_past, "data_dir", lambda corpus: tmp_path / corpus)
    monkeypatch.setattr(harness, "corpus_entropy", lambda data_dir: 3.5)
    assert subsets_past.main(["--summary-only"]) == 0
    summary = (tmp_path / "subsets-past" / "summary.md").read_text()
    assert summary in capsys.readouterr().out
    assert "- (S1) **incomplete**: 0 of 8 pairs" in summary and "- (S2) **incomplete**: 0 of 8 pairs" in summary
    assert "- (S3) **incomplete**: 0 of 8 ingenious runs" in summary

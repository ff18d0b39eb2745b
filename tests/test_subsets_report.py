"""--subset-report-facility-location: the values against a brute-force numpy computation, keyed
randomness, and the selection record it fills (the selection itself unchanged)."""

import numpy as np
import pytest
import torch
from test_subsets import brute_force_greedy, clustered_features, config

from gpts_fairseq.events import EventLog, read_events
from gpts_fairseq.runtime import keyed_generator
from gpts_fairseq.subsets import epochs as subset_epochs
from gpts_fairseq.subsets.epochs import EVENT_SCHEMA, EpochSubsets
from gpts_fairseq.subsets.selection import facility_location_report, random_partitions

PARTITION_SIZE = 15


def numpy_facility_location(features, partitions, subset):
    """Σ over partitions of Σ_i max(0, max_{j∈S} cos(x_i, x_j)), float64, one item at a time."""
    x = features.double().numpy()
    member = set(subset.tolist())
    total = 0.0
    for part in partitions:
        unit = x[part.numpy()] / np.linalg.norm(x[part.numpy()], axis=1, keepdims=True)
        chosen = [k for k, index in enumerate(part.tolist()) if index in member]
        for i in range(len(part)):
            total += max([0.0] + [float(unit[i] @ unit[j]) for j in chosen])
    return total


def partition_sizes(partitions, subset):
    member = set(subset.tolist())
    return [sum(index in member for index in part.tolist()) for part in partitions]


def case(seed=0, count=41):
    features = clustered_features(count, dim=6, clusters=4, seed=seed)
    partitions = random_partitions(count, PARTITION_SIZE, torch.Generator().manual_seed(seed))
    chosen = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 1))[:11].sort().values
    return features, partitions, chosen


@pytest.mark.parametrize("seed", [0, 1])
def test_report_equals_brute_force(seed):
    features, partitions, chosen = case(seed)
    sizes = partition_sizes(partitions, chosen)
    assert len(partitions) == 3 and sum(sizes) == 11
    report = facility_location_report(features, partitions, chosen, random_count=5,
                                      generator=torch.Generator().manual_seed(3))
    assert report["facility_location"] == pytest.approx(numpy_facility_location(features, partitions, chosen), abs=1e-5)
    # the uniform subsets, drawn as documented: partition by partition, the subsets in turn
    generator, draws = torch.Generator().manual_seed(3), [[] for _ in range(5)]
    for part, size in zip(partitions, sizes):
        for r in range(5):
            draws[r].append(part[torch.randperm(len(part), generator=generator)[:size]])
    randoms = [numpy_facility_location(features, partitions, torch.cat(d)) for d in draws]
    np.testing.assert_allclose(report["facility_location_random"], randoms, atol=1e-5)
    assert len(set(report["facility_location_random"])) > 1
    # the exact greedy's first picks, S's size in every partition (textbook greedy in numpy)
    greedy = torch.cat([part[torch.as_tensor(brute_force_greedy(
        torch.nn.functional.normalize(features[part].double(), dim=1) @ torch.nn.functional.normalize(
            features[part].double(), dim=1).T)[0][:size])] for part, size in zip(partitions, sizes)])
    assert partition_sizes(partitions, greedy) == sizes
    assert report["facility_location_greedy"] == pytest.approx(numpy_facility_location(features, partitions, greedy),
                                                               abs=1e-5)
    assert report["facility_location_greedy"] >= max(report["facility_location_random"])


def test_report_of_an_empty_partition_share_and_the_whole_set():
    features, partitions, _ = case(2)
    everything = torch.arange(len(features))
    report = facility_location_report(features, partitions, everything, random_count=2,
                                      generator=torch.Generator().manual_seed(0))
    # S = every item: each covers itself (K_ii = 1), so f = the item count, whichever subset
    assert report["facility_location"] == pytest.approx(len(features))
    assert report["facility_location_greedy"] == pytest.approx(len(features))
    assert report["facility_location_random"] == pytest.approx([len(features)] * 2)
    first = partitions[0]  # a subset inside one partition: the others contribute 0
    report = facility_location_report(features, partitions, first[:3], random_count=2,
                                      generator=torch.Generator().manual_seed(0))
    assert report["facility_location"] == pytest.approx(numpy_facility_location(features, partitions, first[:3]),
                                                        abs=1e-5)


def test_report_is_keyed_and_independent_of_thread_count():
    features, partitions, chosen = case(3, count=300)

    def report(epoch, threads=1):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return facility_location_report(features, partitions, chosen, random_count=20,
                                            generator=keyed_generator(7, "facility-location-random", epoch))
        finally:
            torch.set_num_threads(before)

    first = report(1)
    assert report(1) == first and report(1, threads=4) == first  # bitwise: the same floats
    other = report(2)
    assert other["facility_location_random"] != first["facility_location_random"]
    assert (other["facility_location"], other["facility_location_greedy"]) == (
        first["facility_location"], first["facility_location_greedy"])


class _Blocks:
    def __init__(self, count):
        self.count = count

    def __len__(self):
        return self.count


def _selection(tmp_path, monkeypatch, name, **options):
    """One ingenious selection of epoch 1 as with --no-save (nothing written but the event),
    features from ``clustered_features``; returns (indices, its event records)."""
    features = clustered_features(120, seed=6)
    monkeypatch.setattr(subset_epochs, "block_features", lambda *args, **kwargs: features)
    save_dir = tmp_path / name
    events = EventLog(str(save_dir), "subsets", EVENT_SCHEMA)
    cfg = config(subset_selector="ingenious", subset_warmup_epochs=0, subset_partition_size=50, **options)
    subsets = EpochSubsets(cfg, str(save_dir), pad_idx=1, write=False, events=events, update=lambda: 0)
    indices = subsets.for_epoch(1, _Blocks(120), model=None, feature_batches=lambda: [])
    assert not (save_dir / "subset").exists()
    return indices, read_events(str(save_dir), "subsets")


def test_selection_record_carries_the_report_and_the_selection_is_unchanged(tmp_path, monkeypatch):
    plain, (plain_record,) = _selection(tmp_path, monkeypatch, "plain")
    assert plain_record["facility_location"] is None and plain_record["facility_location_random"] is None
    assert plain_record["facility_location_seconds"] == 0.0
    indices, (record,) = _selection(tmp_path, monkeypatch, "report", subset_report_facility_location=30)
    assert torch.equal(indices, plain) and record["hash"] == plain_record["hash"]
    assert len(record["facility_location_random"]) == 30 and record["facility_location_seconds"] > 0
    features = clustered_features(120, seed=6)
    partitions = random_partitions(120, 50, keyed_generator(1, "partitions"))  # config's seed 1
    expected = facility_location_report(features, partitions, indices, random_count=30,
                                        generator=keyed_generator(1, "facility-location-random", 1))
    assert {key: record[key] for key in expected} == expected

"""Subset selection without fairseq-train: greedy against brute force, sampling, files, options."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gpts_fairseq.subsets import SubsetConfig, validate_subset_config
from gpts_fairseq.subsets.dataset import EpochSubsetDataset
from gpts_fairseq.runtime import keyed_generator, single_thread
from gpts_fairseq.subsets.epochs import EpochSubsets
from gpts_fairseq.subsets.selection import (
    cosine_kernel,
    facility_location_orders,
    lazy_greedy,
    partition_budgets,
    random_partitions,
    sample_from_gains,
    stochastic_greedy,
    taylor_softmax,
)
from gpts_fairseq.subsets.store import load_subset, save_subset, subset_hash, subset_path


def clustered_features(count, dim=16, clusters=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g) * 3
    labels = torch.randint(clusters, (count,), generator=g)
    return centres[labels] + torch.randn(count, dim, generator=g)


def brute_force_greedy(kernel):
    """Textbook greedy in float64: every step evaluates every remaining candidate."""
    k = kernel.double().numpy()
    coverage = np.zeros(len(k))
    remaining = np.ones(len(k), dtype=bool)
    order, gains = [], []
    for _ in range(len(k)):
        all_gains = np.maximum(k - coverage[None, :], 0).sum(1)
        all_gains[~remaining] = -np.inf
        best = int(np.argmax(all_gains))
        order.append(best)
        gains.append(all_gains[best])
        coverage = np.maximum(coverage, k[best])
        remaining[best] = False
    return np.array(order), np.array(gains)


def facility_location(kernel, chosen):
    return float(kernel[list(chosen)].double().clamp(min=0).max(0).values.sum()) if chosen else 0.0


@pytest.mark.parametrize("count,seed", [(64, 0), (300, 1), (512, 2)])
def test_lazy_greedy_equals_brute_force(count, seed):
    kernel = cosine_kernel(clustered_features(count, seed=seed))
    order, gains = lazy_greedy(kernel)
    ref_order, ref_gains = brute_force_greedy(kernel)
    assert sorted(order.tolist()) == list(range(count))
    np.testing.assert_allclose(gains.numpy(), ref_gains, atol=1e-4)
    agree = int(np.argmax(order.numpy() != ref_order)) if (order.numpy() != ref_order).any() else count
    assert agree >= count // 2  # the orders may part only where later gains tie within rounding
    # gains are the marginal values of the prefix sets
    for k in (1, 5, 20):
        assert gains[:k].sum().item() == pytest.approx(facility_location(kernel, order[:k].tolist()), abs=1e-3)


def test_lazy_greedy_budget_and_ties_to_lower_index():
    kernel = torch.ones(5, 5)  # every candidate covers everything: all first gains tie at 5
    order, gains = lazy_greedy(kernel, budget=3)
    assert order.tolist() == [0, 1, 2] and gains.tolist() == [5.0, 0.0, 0.0]


def test_stochastic_greedy_close_to_lazy_and_keyed():
    kernel = cosine_kernel(clustered_features(400, seed=3))
    lazy_order, _ = lazy_greedy(kernel)
    a, gains_a = stochastic_greedy(kernel, epsilon=0.01, generator=torch.Generator().manual_seed(5))
    b, gains_b = stochastic_greedy(kernel, epsilon=0.01, generator=torch.Generator().manual_seed(5))
    c, _ = stochastic_greedy(kernel, epsilon=0.01, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and torch.equal(gains_a, gains_b) and not torch.equal(a, c)
    assert sorted(a.tolist()) == list(range(400))
    for k in (10, 100):
        assert facility_location(kernel, a[:k].tolist()) >= (1 - 1 / math.e - 0.01) * facility_location(
            kernel, lazy_order[:k].tolist())


def test_partitions_budgets_and_taylor_softmax():
    parts = random_partitions(1003, 100, torch.Generator().manual_seed(0))
    assert len(parts) == 11 and sorted(torch.cat(parts).tolist()) == list(range(1003))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    budgets = partition_budgets([len(p) for p in parts], 250)
    assert sum(budgets) == 250 and all(abs(b - 250 * len(p) / 1003) < 1 for b, p in zip(budgets, parts))
    assert partition_budgets([3, 1], 4) == [3, 1]
    p = taylor_softmax(torch.tensor([0.0, 1.0, 2.0]), temperature=1.0)
    np.testing.assert_allclose(p.numpy(), np.array([1.0, 2.5, 5.0]) / 8.5)
    hot = taylor_softmax(torch.tensor([0.0, 10.0]), temperature=100.0)
    assert hot[1] / hot[0] == pytest.approx(1 + 0.1 + 0.005)  # high T flattens towards uniform


def _select(features, seed, epoch, partition_size=128, fraction=0.25):
    parts = random_partitions(len(features), partition_size, keyed_generator(seed, "partitions"))
    orders, gains = facility_location_orders(features, parts, greedy="lazy", epsilon=0.01,
                                             generator=keyed_generator(seed, "greedy", epoch))
    return sample_from_gains(orders, gains, round(fraction * len(features)), 1.0,
                             keyed_generator(seed, "sample", epoch))


def test_sampling_prefers_high_gains_and_is_keyed():
    features = clustered_features(600, seed=4)
    a = _select(features, seed=1, epoch=2)
    assert len(a) == 150 and len(set(a.tolist())) == 150 and torch.equal(a, a.sort().values)
    assert torch.equal(a, _select(features, seed=1, epoch=2))
    assert not torch.equal(a, _select(features, seed=1, epoch=3))
    # each partition's first greedy pick (gain ~ its size) is drawn with near certainty
    parts = random_partitions(600, 128, keyed_generator(1, "partitions"))
    firsts = [int(part[lazy_greedy(cosine_kernel(features[part]))[0][0]]) for part in parts]
    assert set(firsts) <= set(a.tolist())


def test_selection_independent_of_thread_count():
    features = clustered_features(700, seed=5)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 4):
            torch.set_num_threads(count)
            results.append(_select(features, seed=9, epoch=4))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])
    assert torch.get_num_threads() == threads


def test_single_thread_restores_the_thread_count():
    threads = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads


def test_store_round_trip_and_corruption(tmp_path):
    indices = torch.tensor([1, 5, 9])
    digest = save_subset(str(tmp_path), 3, indices, {"kind": "ingenious"})
    assert digest == subset_hash(indices) != subset_hash(torch.tensor([1, 5, 8]))
    record = load_subset(str(tmp_path), 3)
    assert torch.equal(record["indices"], indices) and record["kind"] == "ingenious"
    assert load_subset(str(tmp_path), 4) is None
    assert [p.name for p in (tmp_path / "subset").iterdir()] == ["epoch_3.pt"]  # no temporary left
    torch.save({**record, "indices": torch.tensor([1, 5, 8])}, subset_path(str(tmp_path), 3))
    with pytest.raises(ValueError, match="corrupt"):
        load_subset(str(tmp_path), 3)


def config(**overrides):
    return SimpleNamespace(**{**SubsetConfig().__dict__, "seed": 1, **overrides})


@pytest.mark.parametrize("option,value,message", [
    ("subset_fraction", 0.0, r"--subset-fraction must be in \(0, 1\]"),
    ("subset_fraction", 1.5, r"--subset-fraction must be in \(0, 1\]"),
    ("subset_warmup_epochs", -1, "--subset-warmup-epochs must be an integer >= 0"),
    ("subset_resample_epochs", 0, "--subset-resample-epochs must be an integer >= 1"),
    ("subset_partition_size", 1, "--subset-partition-size must be an integer >= 2"),
    ("subset_feature_layer", -2, "--subset-feature-layer must be -1"),
    ("subset_stochastic_epsilon", 1.0, r"--subset-stochastic-epsilon must be in \(0, 1\)"),
    ("subset_temperature", 0.0, "--subset-temperature must be > 0"),
    ("subset_report_facility_location", -1, "--subset-report-facility-location must be an integer >= 0"),
    ("subset_report_facility_location", 2.5, "--subset-report-facility-location must be an integer >= 0"),
])
def test_bad_option_is_named(option, value, message):
    validate_subset_config(config())
    with pytest.raises(ValueError, match=message):
        validate_subset_config(config(**{option: value}))


def test_facility_location_report_needs_ingenious():
    validate_subset_config(config(subset_selector="ingenious", subset_report_facility_location=100))
    with pytest.raises(ValueError, match="--subset-report-facility-location .* needs --subset-selector ingenious, "
                                         "got random-online"):
        validate_subset_config(config(subset_selector="random-online", subset_report_facility_location=100))


def test_selection_schedule():
    def epochs(**kw):
        subsets = EpochSubsets(config(**kw), "unused", pad_idx=1)
        return [subsets.selection_epoch_of(e) for e in range(1, 9)]

    assert epochs(subset_selector="ingenious", subset_warmup_epochs=1, subset_resample_epochs=3) == [1, 2, 2, 2, 5, 5, 5, 8]
    assert epochs(subset_selector="random-online", subset_warmup_epochs=0) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert epochs(subset_selector="random-fixed", subset_warmup_epochs=2) == [1, 2, 3, 3, 3, 3, 3, 3]
    subsets = EpochSubsets(config(subset_selector="ingenious", subset_warmup_epochs=2), "unused", pad_idx=1)
    assert [subsets.kind_of(e) for e in (1, 2, 3)] == ["warmup", "warmup", "ingenious"]


class _Blocks:
    def __init__(self, order):
        self.order = np.asarray(order)
        self.sizes = np.full(len(order), 4)

    def __len__(self):
        return len(self.order)

    def ordered_indices(self):
        return self.order

    def __getitem__(self, index):
        return index


def test_epoch_subset_dataset_keeps_order_and_original_indices():
    wrapped = EpochSubsetDataset(_Blocks([4, 0, 3, 1, 2, 5]), [0, 2, 5])
    assert wrapped.ordered_indices().tolist() == [0, 2, 5]
    wrapped = EpochSubsetDataset(_Blocks([5, 2, 4, 0, 3, 1]), [0, 2, 5])
    assert wrapped.ordered_indices().tolist() == [5, 2, 0]
    assert wrapped[5] == 5 and len(wrapped) == 6 and not wrapped.can_reuse_epoch_itr_across_epochs


def tiny_roberta(layers=2):
    from argparse import Namespace

    from fairseq.data import Dictionary
    from fairseq.models.roberta import RobertaModel, base_architecture

    dictionary = Dictionary()
    for symbol in [*"abcdefgh", "<mask>"]:
        dictionary.add_symbol(symbol)
    args = Namespace(arch="roberta_base", encoder_layers=layers, encoder_embed_dim=16, encoder_ffn_embed_dim=32,
                     encoder_attention_heads=2, max_positions=32, tokens_per_sample=32, dropout=0.5)
    base_architecture(args)
    torch.manual_seed(0)
    return RobertaModel.build_model(args, SimpleNamespace(source_dictionary=dictionary)), dictionary


class _TokenBlocks:
    """Blocks of token ids, collated like gpts_mlm's training set (right-padded, with ids)."""

    def __init__(self, blocks, pad):
        self.blocks, self.pad = blocks, pad

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, index):
        return {"id": index, "tokens": self.blocks[index]}

    def collater(self, items):
        from fairseq.data import data_utils

        return {"id": torch.tensor([item["id"] for item in items]),
                "net_input": {"src_tokens": data_utils.collate_tokens([item["tokens"] for item in items], self.pad)}}


def test_block_features_eval_mode_rng_untouched_and_padding_ignored():
    from gpts_fairseq.subsets.features import block_features

    model, dictionary = tiny_roberta()
    g = torch.Generator().manual_seed(1)
    blocks = [torch.randint(4, 12, (int(n),), generator=g) for n in torch.randint(5, 30, (10,), generator=g)]
    dataset = _TokenBlocks(blocks, dictionary.pad())
    model.train()
    rng = torch.random.get_rng_state()
    together = block_features(model, dataset, [list(range(10))], layer=-1, pad_idx=dictionary.pad())
    assert model.training and torch.equal(torch.random.get_rng_state(), rng)
    alone = block_features(model, dataset, [[i] for i in range(10)], layer=-1, pad_idx=dictionary.pad())
    assert together.shape == (10, 16)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)  # pads do not count; no dropout
    embeddings = block_features(model, dataset, [list(range(10))], layer=0, pad_idx=dictionary.pad())
    assert not torch.allclose(embeddings, together)
    with pytest.raises(ValueError, match=r"--subset-feature-layer must be in \[0, 2\]"):
        block_features(model, dataset, [[0]], layer=3, pad_idx=dictionary.pad())


def _padded_blocks(dictionary, count=7, seed=2):
    """Right-padded token blocks of different lengths (every batch but one has pads)."""
    from fairseq.data import data_utils

    g = torch.Generator().manual_seed(seed)
    blocks = [torch.randint(4, 12, (int(n),), generator=g) for n in torch.randint(5, 30, (count,), generator=g)]
    return data_utils.collate_tokens(blocks, dictionary.pad())


def test_truncated_features_equal_the_full_forward_bit_for_bit():
    """The pass stops at the feature layer (no layer above it runs) and its states are the whole
    forward's inner_states, bit for bit, at every layer, with and without padding."""
    from gpts_fairseq.compat.models import truncatable_encoder, truncated_states
    from gpts_fairseq.subsets.features import mean_pooled_states

    model, dictionary = tiny_roberta(layers=4)
    model.eval()
    encoder = truncatable_encoder(model)
    assert encoder is model.encoder.sentence_encoder
    calls = [0] * 4
    for i, layer in enumerate(encoder.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    padded = _padded_blocks(dictionary)
    unpadded = padded[:, :5][padded[:, :5].ne(dictionary.pad()).all(1)]
    assert padded.eq(dictionary.pad()).any() and len(unpadded) > 1
    with torch.no_grad():
        for tokens in (padded, unpadded):
            states = model(tokens, features_only=True, return_all_hiddens=True)[1]["inner_states"]
            for index, expected in enumerate(states):
                calls[:] = [0] * 4
                assert torch.equal(truncated_states(encoder, tokens, index), expected)
                assert calls == [1] * index + [0] * (4 - index)  # nothing above the feature layer ran
            sample = {"net_input": {"src_tokens": tokens}}
            for layer in (-1, 0, 2, 4):
                assert torch.equal(mean_pooled_states(model, sample, layer, dictionary.pad()),
                                   mean_pooled_states(model, sample, layer, dictionary.pad(), full_forward=True))


class _Wrapped(torch.nn.Module):
    """A model without fairseq's RoBERTa structure whose forward returns inner_states."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, **kwargs):
        return self.model(tokens, **kwargs)


class _NoStates(_Wrapped):
    def forward(self, tokens, **kwargs):
        return self.model(tokens)[0], {}


def test_other_models_fall_back_to_the_full_forward():
    from gpts_fairseq.compat.models import truncatable_encoder
    from gpts_fairseq.subsets.features import block_features

    model, dictionary = tiny_roberta(layers=3)
    tokens = _padded_blocks(dictionary, count=6)
    dataset = _TokenBlocks([row[row.ne(dictionary.pad())] for row in tokens], dictionary.pad())
    batches = [[0, 1, 2], [3, 4, 5]]
    expected = block_features(model, dataset, batches, layer=-1, pad_idx=dictionary.pad())
    assert truncatable_encoder(_Wrapped(model)) is None
    assert torch.equal(block_features(_Wrapped(model), dataset, batches, layer=-1, pad_idx=dictionary.pad()), expected)
    with pytest.raises(ValueError, match="needs a model whose forward.*returns inner_states"):
        block_features(_NoStates(model), dataset, batches, layer=-1, pad_idx=dictionary.pad())


def test_truncated_features_of_a_growing_model_equal_its_full_forward():
    """gpts_roberta_grow (2 of 4 layers active: the inactive ones pass x through) is truncated too."""
    from test_growth import VOCAB, build

    from gpts_fairseq.compat.models import truncatable_encoder, truncated_states

    model = build("--grow-stages", "0:layers=2,ffn=32,tokens=32;5:layers=4,ffn=64,tokens=32").eval()
    encoder = truncatable_encoder(model)
    assert encoder is not None and [layer.active for layer in encoder.layers] == [True, True, False, False]
    tokens = torch.randint(4, VOCAB, (3, 32), generator=torch.Generator().manual_seed(0))
    tokens[0, 20:] = encoder.padding_idx
    with torch.no_grad():
        states = model(tokens, features_only=True, return_all_hiddens=True)[1]["inner_states"]
        assert all(torch.equal(truncated_states(encoder, tokens, index), expected)
                   for index, expected in enumerate(states))

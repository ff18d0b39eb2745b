"""Same options, same statistics as fairseq's MaskTokensDataset.

The two draw from different generators, so masks are compared in distribution. Comparable
inputs: rows without bos/eos (fairseq counts and may select them; we never do) that start
with a word start in whole-word mode (fairseq drops tokens before a row's first word start).
fairseq can also draw ``<mask>`` as a "random" token (it only zeroes the first nspecial ids);
with 1,000 ids that is below the tolerances here.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from gpts_fairseq.masking import Psi
from masking_cases import MASK, PAD, VOCAB, make_spec, run_reference

fairseq_data = pytest.importorskip("fairseq.data")
# fairseq's whole-word path calls np.split on a torch tensor (a numpy 2 deprecation, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIGMAS = 5.0
WORD_START = np.arange(VOCAB) % 3 == 0
COUNTS = np.concatenate([np.ones(4), 1000.0 - np.arange(4, VOCAB - 1), [1.0]])


def fairseq_dictionary():
    dictionary = fairseq_data.Dictionary()
    for index in range(4, VOCAB - 1):
        dictionary.add_symbol(f"w{index}", n=int(COUNTS[index]))
    assert dictionary.add_symbol("<mask>") == MASK and len(dictionary) == VOCAB
    return dictionary


def rows_without_specials(seed, count, min_len=8, max_len=120, word_aligned=False):
    rng = np.random.default_rng(seed)
    rows = [rng.integers(4, MASK, size=length) for length in rng.integers(min_len, max_len, count)]
    if word_aligned:
        for row in rows:
            row[0] = 3 * rng.integers(2, (MASK - 1) // 3)  # a word start
    return [torch.from_numpy(row) for row in rows]


def fairseq_masks(rows, psi, **options):
    """(source, target) rows from fairseq's MaskTokensDataset at epoch 1."""
    dictionary = fairseq_dictionary()
    common = dict(
        vocab=dictionary, pad_idx=PAD, mask_idx=MASK, seed=1, mask_prob=psi.mask_prob,
        leave_unmasked_prob=psi.leave_unmasked_prob, random_token_prob=psi.random_token_prob,
        **options,
    )
    masked = []
    for return_masked_tokens in (False, True):
        dataset = fairseq_data.MaskTokensDataset(
            rows, return_masked_tokens=return_masked_tokens, **common
        )
        dataset.set_epoch(1)
        masked.append([dataset[index] for index in range(len(rows))])
    return masked


def our_masks(rows, psi, **options):
    length = max(len(row) for row in rows)
    tokens = torch.full((len(rows), length), PAD, dtype=torch.int64)
    for index, row in enumerate(rows):
        tokens[index, : len(row)] = row
    source, target = run_reference(tokens, make_spec(**options), psi, seed=1, step=1)
    return (
        [source[i, : len(row)] for i, row in enumerate(rows)],
        [target[i, : len(row)] for i, row in enumerate(rows)],
    )


def kind_counts(rows, sources, targets):
    """Totals of (selected, <mask>, unchanged, randomised) tokens."""
    totals = np.zeros(4, dtype=np.int64)
    for row, source, target in zip(rows, sources, targets):
        selected = target != PAD
        masked = selected & (source == MASK)
        unchanged = selected & (source == row)
        totals += [int(selected.sum()), int(masked.sum()), int(unchanged.sum()),
                   int((selected & ~masked & ~unchanged).sum())]
    return totals


def assert_same_proportion(hits_a, trials_a, hits_b, trials_b):
    pooled = (hits_a + hits_b) / (trials_a + trials_b)
    sigma = math.sqrt(pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b))
    assert abs(hits_a / trials_a - hits_b / trials_b) <= SIGMAS * sigma, (
        hits_a / trials_a, hits_b / trials_b,
    )


def assert_same_mean(values_a, values_b):
    a, b = np.asarray(values_a, float), np.asarray(values_b, float)
    error = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(a.mean() - b.mean()) <= SIGMAS * error, (a.mean(), b.mean(), error)


def selected_per_row(targets):
    return np.array([int((target != PAD).sum()) for target in targets])


@pytest.mark.parametrize("psi", [Psi(0.15, 0.1, 0.1), Psi(0.4, 0.3, 0.2)])
def test_exact_counts_and_kind_fractions_match(psi):
    rows = rows_without_specials(21, 1500)
    fairseq_source, fairseq_target = fairseq_masks(rows, psi)
    our_source, our_target = our_masks(rows, psi, exact=True)

    lengths = np.array([len(row) for row in rows])
    floor = np.floor(psi.mask_prob * lengths)
    theirs, ours = selected_per_row(fairseq_target), selected_per_row(our_target)
    for counts in (theirs, ours):  # fairseq's num_mask = int(ρ n + u): floor or ceil
        assert np.all((counts == floor) | (counts == floor + 1))
    assert_same_proportion(int((theirs > floor).sum()), len(rows), int((ours > floor).sum()), len(rows))

    fairseq_totals = kind_counts(rows, fairseq_source, fairseq_target)
    our_totals = kind_counts(rows, our_source, our_target)
    for kind in (1, 2, 3):  # <mask>, unchanged, randomised among the selected
        assert_same_proportion(fairseq_totals[kind], fairseq_totals[0], our_totals[kind], our_totals[0])


def test_bernoulli_matches_fairseq_on_average():
    """Bernoulli mode has fairseq's expected counts, with binomial rather than ±1 spread."""
    psi = Psi(0.15, 0.1, 0.1)
    rows = rows_without_specials(22, 1500)
    _, fairseq_target = fairseq_masks(rows, psi)
    _, our_target = our_masks(rows, psi, exact=False)
    assert_same_mean(selected_per_row(fairseq_target), selected_per_row(our_target))


def test_whole_word_expansion_matches():
    psi = Psi(0.3, 0.1, 0.1)
    rows = rows_without_specials(23, 800, word_aligned=True)
    whole_words = torch.from_numpy(WORD_START.astype(np.uint8))
    fairseq_source, fairseq_target = fairseq_masks(rows, psi, mask_whole_words=whole_words)
    our_source, our_target = our_masks(rows, psi, exact=True, word_start=WORD_START)

    words = np.array([int(WORD_START[row.numpy()].sum()) for row in rows])
    floor = np.floor(psi.mask_prob * words)
    for targets in (fairseq_target, our_target):
        selected_words = np.array(
            [int(((target != PAD) & torch.from_numpy(WORD_START)[row]).sum()) for row, target in zip(rows, targets)]
        )
        assert np.all((selected_words == floor) | (selected_words == floor + 1))
    assert_same_mean(selected_per_row(fairseq_target), selected_per_row(our_target))
    fairseq_totals = kind_counts(rows, fairseq_source, fairseq_target)
    our_totals = kind_counts(rows, our_source, our_target)
    for kind in (1, 2, 3):
        assert_same_proportion(fairseq_totals[kind], fairseq_totals[0], our_totals[kind], our_totals[0])


def selected_runs(targets):
    """Lengths of the maximal runs of selected tokens, per row."""
    runs = []
    for target in targets:
        edges = np.diff(np.concatenate([[0], (target != PAD).numpy().astype(int), [0]]))
        runs.append(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
    return runs


@pytest.mark.parametrize("length_param,stdev", [(3, 0.0), (3, 1.0), (2, 2.0)])
def test_span_expansion_matches(length_param, stdev):
    """Coverage per row is ≈ ρ n whatever the spans; the runs tell the span lengths apart."""
    psi = Psi(0.2, 0.1, 0.1)
    rows = rows_without_specials(24, 1200)
    _, fairseq_target = fairseq_masks(
        rows, psi, mask_multiple_length=length_param, mask_stdev=stdev
    )
    _, our_target = our_masks(
        rows, psi, exact=True, mask_multiple_length=length_param, mask_stdev=stdev
    )
    assert_same_mean(selected_per_row(fairseq_target), selected_per_row(our_target))
    theirs, ours = selected_runs(fairseq_target), selected_runs(our_target)
    assert_same_mean([len(runs) for runs in theirs], [len(runs) for runs in ours])
    histograms = [
        np.bincount(np.minimum(np.concatenate(runs), 12), minlength=13)[1:]
        for runs in (theirs, ours)
    ]
    assert stats.chi2_contingency(np.stack(histograms)).pvalue > 1e-4


def test_frequency_weighted_replacement_matches():
    psi = Psi(0.5, 0.0, 1.0)
    rows = rows_without_specials(25, 800)
    fairseq_source, fairseq_target = fairseq_masks(rows, psi, freq_weighted_replacement=True)
    our_source, our_target = our_masks(rows, psi, exact=True, freq_weighted=True, counts=COUNTS)

    def histogram(sources, targets):
        drawn = torch.cat([source[target != PAD] for source, target in zip(sources, targets)])
        counts = np.bincount(drawn.numpy(), minlength=VOCAB)
        bins = np.minimum(np.arange(VOCAB) // 50, 19)  # 20 bins of descending frequency
        return np.bincount(bins, weights=counts, minlength=20)

    table = np.stack([histogram(fairseq_source, fairseq_target), histogram(our_source, our_target)])
    assert stats.chi2_contingency(table).pvalue > 1e-4

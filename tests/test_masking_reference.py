"""The numpy reference: Philox known answers, a literal per-row reading of
docs/masking-algorithm.md as an oracle, invariants, determinism and layout independence."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpts_fairseq.masking import MaskingSpec, MaskTokensArgs, Psi
from gpts_fairseq.masking.philox import philox4x32, seed_key
from gpts_fairseq.masking.reference import mask_tokens_reference, threshold
from masking_cases import DEFAULT_PSI, MASK, PAD, SPECIALS, make_spec, random_batch, run_reference

# Random123 known-answer vectors for Philox4x32-10 (counter, key, output).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(word) for word in philox4x32(counter, key)) == expected


def test_philox_vectorised_equals_scalar():
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, size=(4, 50), dtype=np.uint64)
    key = (0x12345678, 0x9ABCDEF0)
    vectorised = np.stack(philox4x32(tuple(counters), key))
    for column in range(50):
        scalar = philox4x32(tuple(int(c) for c in counters[:, column]), key)
        assert [int(w) for w in scalar] == list(vectorised[:, column])


def test_seed_key_reads_seed_as_uint64():
    assert seed_key(0x0123456789ABCDEF) == (0x89ABCDEF, 0x01234567)
    assert seed_key(-1) == (0xFFFFFFFF, 0xFFFFFFFF)


def test_threshold_bounds():
    assert threshold(0.0) == 0
    assert threshold(1.0) == 2**32
    assert threshold(0.5) == 2**31
    assert threshold(2.0**-32) == 1


def literal_mask_row(row, sample_id, seed, step, rho, gamma, lam, length_param, exact, spec):
    """docs/masking-algorithm.md read line by line, one row, scalar draws: the test oracle."""
    key = seed_key(seed)

    def word(stream, c0, index):
        return int(philox4x32((c0, sample_id, step, stream), key)[index])

    def thr(x):
        return min(math.floor(x * 2**32), 2**32)

    maskable, word_start = spec.maskable.tolist(), spec.word_start.tolist()
    replace_cdf, span_cdf = spec.replace_cdf.tolist(), spec.span_cdf.tolist()
    vocab = len(maskable)
    is_maskable = [0 <= x < vocab and maskable[x] for x in row]
    units = []
    for t, x in enumerate(row):
        if not is_maskable[t]:
            continue
        if not word_start or t == 0 or not is_maskable[t - 1] or word_start[x]:
            units.append([t])
        else:
            units[-1].append(t)
    first = [unit[0] for unit in units]
    n = len(units)
    if exact:
        k = math.floor((rho * n) / length_param + word(3, 0, 0) * 2.0**-32)
        k = min(max(k, 0), n)
        by_priority = sorted(range(n), key=lambda i: (word(1, first[i] >> 2, first[i] & 3), i))
        starts = by_priority[:k]
    else:
        starts = [i for i in range(n) if word(0, first[i] >> 2, first[i] & 3) < thr(rho / length_param)]
    chosen = set()
    for i in starts:
        u_len = word(2, first[i], 2)
        span = next(m for m in range(len(span_cdf)) if u_len < span_cdf[m])
        chosen.update(range(i, min(i + span, n)))
    source, target = list(row), [spec.pad_idx] * len(row)
    for j in chosen:
        kind = word(2, first[j], 0)
        for t in units[j]:
            target[t] = row[t]
            if kind < thr(gamma):
                continue
            if kind < thr(gamma + lam):
                source[t] = next(v for v in range(vocab) if word(2, t, 1) < replace_cdf[v])
            else:
                source[t] = spec.mask_idx
    return source, target


probabilities = st.sampled_from([0.0, 0.05, 0.15, 0.5, 0.999, 1.0])


@st.composite
def masking_cases(draw):
    vocab = draw(st.integers(6, 40))
    pad, mask = 1, vocab - 1
    specials = draw(st.lists(st.integers(0, vocab - 1), max_size=3)) + [0, 2]
    maskable = [v not in specials + [pad, mask] for v in range(vocab)]
    if not any(maskable):
        specials = [0]
        maskable = [v not in (0, pad, mask) for v in range(vocab)]
    counts = draw(st.lists(st.integers(0, 5), min_size=vocab, max_size=vocab))
    freq_weighted = draw(st.booleans()) and any(c > 0 and m for c, m in zip(counts, maskable))
    length_param = draw(st.integers(1, 4))
    spec = MaskingSpec.build(
        vocab_size=vocab, special_ids=specials, mask_idx=mask, pad_idx=pad,
        exact=draw(st.booleans()),
        word_start=draw(st.none() | st.lists(st.booleans(), min_size=vocab, max_size=vocab)),
        counts=counts, freq_weighted=freq_weighted, mask_multiple_length=length_param,
        mask_stdev=draw(st.sampled_from([0.0, 0.0, 0.7, 2.0])),
    )
    rho = draw(probabilities)
    gamma = draw(probabilities)
    lam = draw(probabilities.filter(lambda value: value + gamma <= 1.0))
    batch, length = draw(st.integers(1, 4)), draw(st.integers(1, 24))
    rows = draw(
        st.lists(
            st.lists(st.integers(-2, vocab + 2), min_size=length, max_size=length),
            min_size=batch, max_size=batch,
        )
    )
    sample_ids = draw(st.lists(st.integers(0, 2**32 - 1), min_size=batch, max_size=batch))
    seed = draw(st.integers(0, 2**64 - 1)) - 2**63  # the op receives a signed int64
    step = draw(st.integers(0, 2**32 - 1))
    return spec, Psi(rho, gamma, lam), rows, sample_ids, seed, step


@settings(max_examples=150, deadline=None)
@given(masking_cases())
def test_reference_matches_literal_reading_of_the_algorithm(case):
    spec, psi, rows, sample_ids, seed, step = case
    tokens = torch.tensor(rows, dtype=torch.int64)
    source, target = mask_tokens_reference(MaskTokensArgs.build(
        tokens, torch.tensor(sample_ids, dtype=torch.int64), spec, psi, seed=seed, step=step,
    ))
    for b, row in enumerate(rows):
        expected = literal_mask_row(
            row, sample_ids[b], seed, step, psi.mask_prob, psi.leave_unmasked_prob,
            psi.random_token_prob, spec.mask_multiple_length, spec.exact, spec,
        )
        assert (source[b].tolist(), target[b].tolist()) == expected


MODES = {
    "bernoulli": dict(exact=False),
    "exact": dict(exact=True),
    "whole-word": dict(exact=True, word_start=np.arange(1000) % 3 == 0),
    "spans": dict(exact=False, mask_multiple_length=3),
    "normal-spans": dict(exact=True, mask_multiple_length=2, mask_stdev=1.5),
    "freq-weighted": dict(exact=False, freq_weighted=True, counts=np.arange(1000) % 7),
}


@pytest.mark.parametrize("mode", MODES)
def test_invariants(mode):
    spec = make_spec(**MODES[mode])
    tokens = random_batch(1, 48, 80)
    source, target = run_reference(tokens, spec, Psi(0.4, 0.2, 0.4))
    selected = target != PAD
    special = torch.isin(tokens, torch.tensor(SPECIALS + (MASK,)))
    assert selected.any() and (~selected & ~special).any()
    assert not (selected & special).any()
    assert torch.equal(target[selected], tokens[selected])
    assert torch.equal(source[~selected], tokens[~selected])
    changed = selected & (source != tokens)
    random_tokens = source[changed & (source != MASK)]
    assert random_tokens.numel() > 0
    assert not torch.isin(random_tokens, torch.tensor(SPECIALS + (MASK,))).any()
    if mode == "freq-weighted":  # zero-count ids are never drawn
        assert (random_tokens % 7 != 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_layout_independence(mode):
    """Each row's output depends only on (seed, step, its sample id, its tokens)."""
    spec = make_spec(**MODES[mode])
    tokens = random_batch(2, 16, 60)
    ids = torch.arange(100, 116, dtype=torch.int64)
    source, target = run_reference(tokens, spec, DEFAULT_PSI, sample_ids=ids)

    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    permuted = run_reference(tokens[order], spec, DEFAULT_PSI, sample_ids=ids[order])
    assert torch.equal(permuted[0], source[order]) and torch.equal(permuted[1], target[order])

    padded_tokens = torch.cat([tokens, torch.full((16, 37), PAD)], dim=1)
    padded = run_reference(padded_tokens, spec, DEFAULT_PSI, sample_ids=ids)
    assert torch.equal(padded[0][:, :60], source) and (padded[0][:, 60:] == PAD).all()
    assert torch.equal(padded[1][:, :60], target) and (padded[1][:, 60:] == PAD).all()

    other_rows = random_batch(3, 5, 60)
    mixed_tokens = torch.cat([other_rows, tokens[3:9]])
    mixed_ids = torch.cat([torch.arange(5, dtype=torch.int64), ids[3:9]])
    mixed = run_reference(mixed_tokens, spec, DEFAULT_PSI, sample_ids=mixed_ids)
    assert torch.equal(mixed[0][5:], source[3:9]) and torch.equal(mixed[1][5:], target[3:9])

    narrow = run_reference(tokens.to(torch.int32), spec, DEFAULT_PSI, sample_ids=ids)
    assert narrow[0].dtype == torch.int32 and narrow[1].dtype == torch.int32
    assert torch.equal(narrow[0].long(), source) and torch.equal(narrow[1].long(), target)


def test_determinism_and_dependence_on_seed_step_and_sample_id():
    spec, tokens = make_spec(), random_batch(4, 32, 64)
    first = run_reference(tokens, spec, DEFAULT_PSI, seed=3, step=2)
    again = run_reference(tokens.clone(), spec, DEFAULT_PSI, seed=3, step=2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for changed in (
        run_reference(tokens, spec, DEFAULT_PSI, seed=4, step=2),
        run_reference(tokens, spec, DEFAULT_PSI, seed=3, step=3),
        run_reference(tokens, spec, DEFAULT_PSI, seed=3, step=2, sample_ids=torch.arange(1, 33)),
    ):
        assert not torch.equal(changed[1], first[1])


@pytest.mark.parametrize("exact", [False, True])
def test_extreme_probabilities(exact):
    spec, tokens = make_spec(exact=exact), random_batch(5, 16, 40)
    ordinary = ~torch.isin(tokens, torch.tensor(SPECIALS))
    _, target = run_reference(tokens, spec, Psi(0.0, 0.1, 0.1))
    assert (target == PAD).all()
    source, target = run_reference(tokens, spec, Psi(1.0, 0.0, 0.0))
    assert torch.equal(target != PAD, ordinary) and (source[ordinary] == MASK).all()
    source, _ = run_reference(tokens, spec, Psi(1.0, 1.0, 0.0))
    assert torch.equal(source, tokens)
    source, _ = run_reference(tokens, spec, Psi(1.0, 0.0, 1.0))
    assert not (source[ordinary] == MASK).any()
    assert (source[ordinary] != tokens[ordinary]).float().mean() > 0.99


def test_out_of_vocabulary_ids_are_never_selected():
    spec = make_spec(exact=False)
    tokens = torch.tensor([[5, -3, 1000, 2**40, 6, 7]], dtype=torch.int64)
    source, target = run_reference(tokens, spec, Psi(1.0, 0.0, 0.0))
    assert target.tolist() == [[5, PAD, PAD, PAD, 6, 7]]
    assert source.tolist() == [[MASK, -3, 1000, 2**40, MASK, MASK]]


@pytest.mark.parametrize("shape", [(0, 5), (3, 0)])
def test_raw_reference_accepts_an_empty_batch(shape):
    """The public mask_tokens rejects empty batches; the raw reference just returns empties."""
    source, target = run_reference(torch.zeros(shape, dtype=torch.int32), make_spec(), DEFAULT_PSI)
    assert source.shape == target.shape == shape and source.dtype == torch.int32

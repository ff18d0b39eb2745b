"""The public masking API: validation with clear messages, dispatch, the fallback warning."""

import sys
import types
import warnings

import numpy as np
import pytest
import torch

import gpts_fairseq.masking as masking
from gpts_fairseq.masking import MaskingSpec, Psi, mask_tokens
from masking_cases import DEFAULT_PSI, MASK, PAD, VOCAB, make_spec, random_batch, run_reference


@pytest.fixture
def reference_only(monkeypatch):
    """Pretend the extension is not built, and reset the once-only warning."""
    monkeypatch.setattr(masking, "_compiled_op", lambda: None)
    monkeypatch.setattr(masking, "_fallback_warned", False)


@pytest.mark.parametrize(
    "values,message",
    [
        ((1.5, 0.1, 0.1), "mask_prob must be in [0, 1], got 1.5"),
        ((-0.1, 0.1, 0.1), "mask_prob must be in [0, 1], got -0.1"),
        ((0.15, float("nan"), 0.1), "leave_unmasked_prob must be in [0, 1], got nan"),
        ((0.15, 0.1, 2), "random_token_prob must be in [0, 1], got 2.0"),
        ((0.15, 0.6, 0.5), "leave_unmasked_prob + random_token_prob must be <= 1"),
        (("x", 0.1, 0.1), "mask_prob must be a number in [0, 1], got 'x'"),
    ],
)
def test_psi_rejects_out_of_range_values(values, message):
    with pytest.raises(ValueError) as error:
        Psi(*values)
    assert message in str(error.value)


def test_psi_names_the_callers_options():
    names = ("--mask-prob", "--leave-unmasked-prob", "--random-token-prob")
    with pytest.raises(ValueError, match=r"--mask-prob must be in \[0, 1\], got 1.5"):
        Psi.from_options(1.5, 0.1, 0.1, names=names)
    with pytest.raises(ValueError, match="--leave-unmasked-prob \\+ --random-token-prob must be <= 1"):
        Psi.from_options(0.1, 0.7, 0.7, names=names)
    psi = Psi.from_options("0.3", 0, 1, names=names)
    assert psi == Psi(0.3, 0.0, 1.0) and psi.as_dict() == {
        "mask_prob": 0.3, "leave_unmasked_prob": 0.0, "random_token_prob": 1.0,
    }


def test_psi_is_frozen_and_hashable():
    psi = Psi(0.15, 0.1, 0.1)
    with pytest.raises(AttributeError):
        psi.mask_prob = 0.2
    assert hash(psi) == hash(Psi(0.15, 0.1, 0.1))


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(mask_idx=VOCAB), f"mask_idx must be in [0, {VOCAB})"),
        (dict(mask_idx=-1), f"mask_idx must be in [0, {VOCAB})"),
        (dict(pad_idx=VOCAB + 5), f"pad_idx must be in [0, {VOCAB})"),
        (dict(special_ids=[0, 5000]), "special_ids entry must be in"),
        (dict(mask_multiple_length=0), "mask_multiple_length must be >= 1, got 0"),
        (dict(mask_multiple_length=2.5), "mask_multiple_length must be an integer, got 2.5"),
        (dict(mask_idx=True), "mask_idx must be an integer, got True"),
        (dict(mask_stdev="wide"), "mask_stdev must be a number >= 0, got 'wide'"),
        (dict(mask_stdev=-1.0), "mask_stdev must be finite and >= 0"),
        (dict(vocab_size=0), "vocab_size must be >= 1"),
        (dict(word_start=[True] * 10), f"word_start must have one flag per vocabulary id ({VOCAB})"),
        (dict(freq_weighted=True), "freq_weighted replacement needs counts"),
        (dict(freq_weighted=True, counts=np.ones(3)), "counts must have one entry per vocabulary id"),
        (dict(freq_weighted=True, counts=-np.ones(VOCAB)), "counts must be finite and >= 0"),
        (dict(special_ids=range(VOCAB)), "no maskable token id"),
        (
            dict(freq_weighted=True, counts=np.eye(1, VOCAB, 0)[0]),
            "no maskable token id has a positive count",
        ),
    ],
)
def test_spec_rejects_bad_options(options, message):
    with pytest.raises(ValueError) as error:
        make_spec(**options)
    assert message in str(error.value)


def test_spec_tables():
    spec = make_spec(word_start=torch.arange(VOCAB) % 2 == 0, mask_multiple_length=3)
    assert spec.maskable.dtype == torch.bool and spec.maskable.shape == (VOCAB,)
    assert not spec.maskable[[0, 1, 2, 3, MASK]].any() and spec.maskable[4:MASK].all()
    assert spec.word_start.dtype == torch.bool and spec.word_start.shape == (VOCAB,)
    assert spec.span_cdf.tolist() == [0, 0, 0, 2**32]
    cdf = spec.replace_cdf
    assert cdf.dtype == torch.int64 and (cdf[:4] == 0).all() and (cdf[MASK - 1 :] == 2**32).all()
    assert (cdf.diff() >= 0).all()
    assert make_spec().word_start.shape == (0,)
    assert make_spec().span_cdf.tolist() == [0, 2**32]
    assert spec.tables("cpu") is spec.tables(torch.device("cpu"))
    from_tensors = make_spec(
        special_ids=torch.tensor([0, 1, 2, 3]), mask_idx=np.int64(MASK), mask_multiple_length=np.int32(3)
    )
    assert torch.equal(from_tensors.maskable, spec.maskable) and from_tensors.mask_multiple_length == 3


@pytest.mark.parametrize(
    "tokens,error,message",
    [
        (torch.zeros(2, 3, dtype=torch.float32), TypeError, "tokens must be int32 or int64"),
        (torch.zeros(2, 3, dtype=torch.int16), TypeError, "tokens must be int32 or int64"),
        (torch.zeros(6, dtype=torch.int64), ValueError, "tokens must be 2-D"),
        (torch.zeros(0, 8, dtype=torch.int64), ValueError, "tokens must be a non-empty batch"),
        (torch.zeros(2, 0, dtype=torch.int64), ValueError, "tokens must be a non-empty batch"),
        ([[5, 6]], TypeError, "tokens must be a torch.Tensor"),
    ],
)
def test_mask_tokens_rejects_bad_tokens(tokens, error, message, reference_only):
    ids = torch.arange(len(tokens))
    with pytest.raises(error, match=message):
        mask_tokens(tokens, make_spec(), DEFAULT_PSI, seed=1, step=1, sample_ids=ids)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(seed=-1), r"seed must be in \[0, 2\*\*63\)|seed must be in \[0, 9223372036854775808\)"),
        (dict(seed=2**63), "seed must be in"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(step=2**32), "step must be in"),
        (dict(step=-1), "step must be in"),
        (dict(sample_ids=torch.arange(3)), r"sample_ids must have shape \[4\]"),
        (dict(sample_ids=torch.tensor([0, 1, 2, 2**32])), r"sample_ids must be in \[0, 2\*\*32\)"),
        (dict(sample_ids=torch.tensor([0, -1, 2, 3])), r"sample_ids must be in \[0, 2\*\*32\)"),
        (dict(sample_ids=torch.zeros(4)), "sample_ids must be integers"),
    ],
)
def test_mask_tokens_rejects_bad_arguments(kwargs, message, reference_only):
    arguments = dict(seed=1, step=1, sample_ids=torch.arange(4))
    arguments.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        mask_tokens(random_batch(0, 4, 10), make_spec(), DEFAULT_PSI, **arguments)


def test_mask_tokens_rejects_wrong_spec_or_psi_types(reference_only):
    tokens = random_batch(0, 2, 10)
    with pytest.raises(TypeError, match="psi must be a Psi"):
        mask_tokens(tokens, make_spec(), (0.15, 0.1, 0.1), seed=1, step=1, sample_ids=[0, 1])
    with pytest.raises(TypeError, match="spec must be a MaskingSpec"):
        mask_tokens(tokens, None, DEFAULT_PSI, seed=1, step=1, sample_ids=[0, 1])


def test_fallback_equals_reference_warns_once_and_accepts_non_contiguous_input(reference_only):
    spec, tokens = make_spec(exact=False), random_batch(1, 8, 30)
    wide = tokens.t().contiguous().t()  # same values, column-major
    assert not wide.is_contiguous() and torch.equal(wide, tokens)
    ids = torch.arange(8, dtype=torch.int32)  # any integer dtype, or a list
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = mask_tokens(wide, spec, DEFAULT_PSI, seed=5, step=2, sample_ids=ids)
        second = mask_tokens(tokens, spec, DEFAULT_PSI, seed=5, step=2, sample_ids=list(range(8)))
    fallback = [w for w in caught if "pip install --no-build-isolation -e ." in str(w.message)]
    assert len(fallback) == 1 and issubclass(fallback[0].category, RuntimeWarning)
    expected = run_reference(tokens, spec, DEFAULT_PSI, seed=5, step=2)
    for got in (first, second):
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_dispatches_to_the_compiled_op_when_available(monkeypatch):
    calls = []

    def fake_op(arguments):
        calls.append(arguments)
        return "source", "target"

    fake_ops = types.SimpleNamespace(is_available=lambda: True, mask_tokens=fake_op)
    monkeypatch.setitem(sys.modules, "gpts_fairseq.masking.ops", fake_ops)
    spec, tokens = make_spec(mask_multiple_length=2), random_batch(2, 3, 12)
    psi = Psi(0.2, 0.3, 0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mask_tokens(tokens, spec, psi, seed=9, step=4, sample_ids=[7, 8, 9]) == (
            "source", "target",
        )
    (arguments,) = calls
    assert torch.equal(arguments[0], tokens) and arguments[1].tolist() == [7, 8, 9]
    assert arguments[1].dtype == torch.int64
    assert all(a is b for a, b in zip(arguments[2:6], spec.tables("cpu")))
    assert arguments[6:] == (9, 4, 0.2, 0.3, 0.4, 2, True, MASK, PAD)


def test_unavailable_op_falls_back(monkeypatch):
    fake_ops = types.SimpleNamespace(is_available=lambda: False, mask_tokens=None)
    monkeypatch.setitem(sys.modules, "gpts_fairseq.masking.ops", fake_ops)
    assert masking._compiled_op() is None

"""The compiled op torch.ops.gpts.mask_tokens (csrc/): opcheck, bit-exactness against the numpy
reference, independence of thread count / batch order / padding, argument checks."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpts_fairseq.masking import MaskTokensArgs, Psi
from gpts_fairseq.masking import ops
from gpts_fairseq.masking.reference import TWO_POW_32, mask_tokens_reference
from masking_cases import MASK, PAD, VOCAB, make_spec, random_batch

built = pytest.mark.skipif(not ops.is_available(), reason="extension not built")


def raw_args(tokens, spec, psi, *, seed=7, step=1, sample_ids=None):
    """The op's arguments for a batch, a MaskingSpec and a Psi."""
    if sample_ids is None:
        sample_ids = torch.arange(tokens.shape[0], dtype=torch.int64)
    return MaskTokensArgs.build(tokens, sample_ids, spec, psi, seed=seed, step=step)


def assert_same(actual, expected):
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        assert torch.equal(a, e), f"{int((a != e).sum())} positions differ"


OPTION_SETS = {
    "bernoulli": dict(exact=False),
    "exact": dict(exact=True),
    "whole_word": dict(exact=True, word_start=np.arange(VOCAB) % 3 == 0),
    "spans": dict(exact=False, mask_multiple_length=3, mask_stdev=1.0),
    "exact_spans_words": dict(
        exact=True, word_start=np.arange(VOCAB) % 2 == 0, mask_multiple_length=2
    ),
}


def test_extension_is_built():
    assert ops.is_available(), "build it with: pip install --no-build-isolation -e ."


@built
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_opcheck(options, dtype):
    tokens = random_batch(0, 6, 20, dtype=dtype)
    args = raw_args(tokens, make_spec(**options), Psi(0.4, 0.2, 0.3))
    torch.library.opcheck(torch.ops.gpts.mask_tokens.default, tuple(args))


@st.composite
def kernel_cases(draw):
    """Random shapes, options, psi (extremes included), keys and out-of-vocabulary ids."""
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    batch, length = draw(st.integers(1, 9)), draw(st.integers(1, 70))
    tokens = random_batch(seed, batch, length, min_len=1)
    if draw(st.booleans()):  # a few ids outside the vocabulary: never maskable
        flat = tokens.view(-1)
        flat[rng.integers(0, flat.numel(), size=2)] = torch.tensor([-5, VOCAB + 3])
    probability = st.sampled_from([0.0, 1.0, 0.15, 0.5]) | st.floats(0.0, 1.0)
    gamma = draw(probability)
    psi = Psi(draw(probability), gamma, draw(probability) * (1.0 - gamma))
    word_start = rng.random(VOCAB) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    counts = rng.integers(0, 50, size=VOCAB)
    spec = make_spec(
        exact=draw(st.booleans()),
        word_start=word_start if draw(st.booleans()) else None,
        mask_multiple_length=draw(st.integers(1, 4)),
        mask_stdev=draw(st.sampled_from([0.0, 0.7, 2.5])),
        freq_weighted=draw(st.booleans()),
        counts=counts,
    )
    dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    sample_ids = torch.from_numpy(rng.integers(0, 2**32, size=batch, dtype=np.int64))
    return raw_args(
        tokens.to(dtype), spec, psi, seed=draw(st.integers(0, 2**63 - 1)),
        step=draw(st.integers(0, 2**32 - 1)), sample_ids=sample_ids,
    )


@built
@settings(max_examples=300, deadline=None)
@given(kernel_cases())
def test_kernel_equals_reference(args):
    assert_same(ops.mask_tokens(args), mask_tokens_reference(args))


def large_batch(options, dtype=torch.int64):
    """Big enough for at::parallel_for to split the work over threads."""
    tokens = random_batch(3, 64, 512, min_len=100, dtype=dtype)
    sample_ids = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:64]
    return raw_args(tokens, make_spec(**options), Psi(0.2, 0.1, 0.3), sample_ids=sample_ids)


@built
@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_thread_count_does_not_change_output(options):
    args = large_batch(options)
    threads = torch.get_num_threads()
    try:
        outputs = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            outputs.append(ops.mask_tokens(args))
    finally:
        torch.set_num_threads(threads)
    for other in outputs[1:]:
        assert_same(other, outputs[0])
    assert_same(outputs[0], mask_tokens_reference(args))


@built
@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_rows_permuted_or_padded_mask_the_same(options):
    args = large_batch(options, dtype=torch.int32)
    source, target = ops.mask_tokens(args)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    permuted = args._replace(tokens=args.tokens[order].contiguous(), sample_ids=args.sample_ids[order].contiguous())
    assert_same(ops.mask_tokens(permuted), (source[order], target[order]))
    padded = args._replace(tokens=torch.nn.functional.pad(args.tokens, (0, 37), value=PAD))
    padded_source, padded_target = ops.mask_tokens(padded)
    assert_same((padded_source[:, :512], padded_target[:, :512]), (source, target))
    assert bool((padded_source[:, 512:] == PAD).all() and (padded_target[:, 512:] == PAD).all())


@built
@pytest.mark.parametrize("seed", range(5))
def test_fast_path_equals_general_path(seed):
    """A three-entry span table of constant length 1 forces the per-row path; same masks."""
    args = raw_args(random_batch(seed, 16, 64), make_spec(exact=False), Psi(0.3, 0.2, 0.4))
    general = args._replace(span_cdf=torch.tensor([0, TWO_POW_32, TWO_POW_32], dtype=torch.int64))
    source, target = ops.mask_tokens(args)
    assert_same(ops.mask_tokens(general), (source, target))
    assert 0 < int((target != PAD).sum()) < target.numel()


@built
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
def test_empty_batch_gives_empty_outputs(shape):
    tokens = torch.empty(shape, dtype=torch.int64)
    args = raw_args(tokens, make_spec(), Psi(0.15, 0.1, 0.1))
    source, target = ops.mask_tokens(args)
    assert source.shape == target.shape == shape and source.dtype == torch.int64


def replaced(name, value):
    def change(args):
        return args._replace(**{name: value(getattr(args, name)) if callable(value) else value})

    return change


BAD_INPUTS = {
    "tokens float": (replaced("tokens", lambda t: t.float()), TypeError, "tokens must be int32 or int64"),
    "tokens 1-D": (replaced("tokens", lambda t: t[0]), ValueError, "tokens must be 2-D"),
    "tokens non-contiguous": (replaced("tokens", lambda t: t.t()), ValueError, "tokens must be contiguous"),
    "sample_ids int32": (replaced("sample_ids", lambda s: s.int()), TypeError, "sample_ids must be int64"),
    "sample_ids shape": (replaced("sample_ids", lambda s: s[:-1]), ValueError, "sample_ids must have shape [4]"),
    "sample_ids range": (replaced("sample_ids", lambda s: s - 1), ValueError, "sample_ids must be in [0, 2**32)"),
    "maskable dtype": (replaced("maskable", lambda m: m.int()), TypeError, "maskable must be Bool"),
    "word_start shape": (replaced("word_start", torch.ones(5, dtype=torch.bool)), ValueError, "word_start must be empty or have shape [1000]"),
    "replace_cdf dtype": (replaced("replace_cdf", lambda c: c.int()), TypeError, "replace_cdf must be Long"),
    "replace_cdf shape": (replaced("replace_cdf", lambda c: c[:-1]), ValueError, "replace_cdf must have shape [1000]"),
    "replace_cdf end": (replaced("replace_cdf", lambda c: c - 1), ValueError, "replace_cdf must end with 2**32"),
    "span_cdf short": (replaced("span_cdf", torch.tensor([TWO_POW_32])), ValueError, "span_cdf must have Lmax + 1 >= 2"),
    "span_cdf end": (replaced("span_cdf", torch.tensor([0, 5])), ValueError, "span_cdf must end with 2**32"),
    "step negative": (replaced("step", -1), ValueError, "step must be in [0, 2**32)"),
    "step too large": (replaced("step", TWO_POW_32), ValueError, "step must be in [0, 2**32)"),
    "mask_prob": (replaced("mask_prob", 1.5), ValueError, "mask_prob must be in [0, 1]"),
    "mask_prob nan": (replaced("mask_prob", float("nan")), ValueError, "mask_prob must be in [0, 1]"),
    "leave_unmasked_prob": (replaced("leave_unmasked_prob", -0.1), ValueError, "leave_unmasked_prob must be in [0, 1]"),
    "random_token_prob": (replaced("random_token_prob", 2.0), ValueError, "random_token_prob must be in [0, 1]"),
    "gamma + lambda": (replaced("random_token_prob", 0.95), ValueError, "leave_unmasked_prob + random_token_prob must be <= 1"),
    "mask_multiple_length": (replaced("mask_multiple_length", 0), ValueError, "mask_multiple_length must be >= 1"),
    "mask_idx": (replaced("mask_idx", VOCAB), ValueError, "mask_idx must be in [0, 1000)"),
    "pad_idx": (replaced("pad_idx", -1), ValueError, "pad_idx must be in [0, 1000)"),
}


@built
@pytest.mark.parametrize("change,error,message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_rejected_naming_the_argument(change, error, message):
    args = raw_args(random_batch(0, 4, 12), make_spec(), Psi(0.15, 0.1, 0.1))
    with pytest.raises(error, match=re.escape(message)):
        ops.mask_tokens(change(args))


READS_VALUES = {"sample_ids range", "replace_cdf end", "span_cdf end"}  # real kernels only
METADATA_INPUTS = {name: case for name, case in BAD_INPUTS.items() if name not in READS_VALUES}


@built
@pytest.mark.parametrize("change,error,message", METADATA_INPUTS.values(), ids=METADATA_INPUTS.keys())
def test_fake_kernel_rejects_bad_input_like_the_real_one(change, error, message):
    """Under FakeTensorMode (torch.compile's tracing) no kernel runs: the fake kernel's checks
    must raise what the CPU kernel raises."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = change(raw_args(random_batch(0, 4, 12), make_spec(), Psi(0.15, 0.1, 0.1)))
    with FakeTensorMode() as mode:
        fake = MaskTokensArgs(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        with pytest.raises(error, match=re.escape(message)):
            ops.mask_tokens(fake)


@built
def test_argument_bundle_matches_the_schema():
    """MaskTokensArgs (Python) and the TORCH_LIBRARY schema (C++) name the same arguments in
    the same order, so ``torch.ops.gpts.mask_tokens(*args)`` binds each to its name."""
    schema = torch.ops.gpts.mask_tokens.default._schema
    assert [argument.name for argument in schema.arguments] == list(MaskTokensArgs._fields)


@built
def test_fake_kernel_gives_shapes_and_dtype():
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = raw_args(random_batch(0, 4, 12, dtype=torch.int32), make_spec(), Psi(0.15, 0.1, 0.1))
    with FakeTensorMode() as mode:
        fake = MaskTokensArgs(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        source, target = ops.mask_tokens(fake)
    assert source.shape == target.shape == (4, 12) and target.dtype == torch.int32


@built
def test_public_api_uses_the_compiled_op():
    from gpts_fairseq.masking import mask_tokens

    spec, psi = make_spec(exact=True), Psi(0.15, 0.1, 0.1)
    tokens = random_batch(5, 8, 30)
    ids = torch.arange(8)
    expected = mask_tokens_reference(raw_args(tokens, spec, psi, seed=3, step=2, sample_ids=ids))
    assert_same(mask_tokens(tokens, spec, psi, seed=3, step=2, sample_ids=ids), expected)
    assert int((expected[0] == MASK).sum()) > 0


def cuda(test):
    """GPU-only: marked ``gpu``, skipped without CUDA."""
    needs_cuda = pytest.mark.skipif(not (ops.is_available() and torch.cuda.is_available()), reason="no CUDA")
    return pytest.mark.gpu(needs_cuda(test))


def on_cuda(args):
    return MaskTokensArgs(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))


@cuda
@settings(max_examples=100, deadline=None)
@given(kernel_cases())
def test_cuda_equals_cpu(args):
    source, target = ops.mask_tokens(on_cuda(args))
    assert source.device.type == "cuda"
    assert_same((source.cpu(), target.cpu()), ops.mask_tokens(args))


@cuda
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_cuda_large_batch_on_a_side_stream(options, dtype):
    args = large_batch(options, dtype)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        source, target = ops.mask_tokens(on_cuda(args))
    stream.synchronize()
    assert_same((source.cpu(), target.cpu()), ops.mask_tokens(args))


@cuda
def test_cuda_rejects_tables_on_another_device():
    args = on_cuda(raw_args(random_batch(0, 4, 12), make_spec(), Psi(0.15, 0.1, 0.1)))
    args = args._replace(replace_cdf=args.replace_cdf.cpu())
    with pytest.raises(ValueError, match="replace_cdf must be on the device of tokens"):
        ops.mask_tokens(args)

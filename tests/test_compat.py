"""Contract tests of the fairseq boundary (gpts_fairseq.compat): one per touchpoint of fairseq's
private or copied internals. A failure names the touchpoint, so a fairseq upgrade that changes
one says where to look."""

import argparse
import contextlib
import inspect
import queue
import threading
import types

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.data.encoders import utils as encoder_utils
from fairseq.data.encoders.hf_bert_bpe import BertBPE
from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE
from fairseq.data.iterators import BackgroundConsumer
from fairseq.models.roberta.model import RobertaModel
from fairseq.models.transformer import TransformerEncoderBase
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask
from omegaconf import OmegaConf

from gpts_fairseq import compat
from gpts_fairseq.compat import data as compat_data
from gpts_fairseq.compat import models as compat_models


@contextlib.contextmanager
def touchpoint(name: str):
    """Turn any failure inside into one that names the fairseq touchpoint."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 (the point is to name whatever broke)
        pytest.fail(f"fairseq touchpoint {name} changed (gpts_fairseq/compat): {type(error).__name__}: {error}")


def test_supported_range_holds_the_installed_fairseq_and_warns_outside():
    import fairseq

    assert compat.check_fairseq_version(fairseq.__version__)
    with pytest.warns(RuntimeWarning, match=r"fairseq>=0.12.2,<0.13, not fairseq 0.13.0"):
        assert not compat.check_fairseq_version("0.13.0")


def test_checkpoint_globals_load_a_broadcast_state(tmp_path):
    from fairseq.distributed import utils as distributed_utils

    with touchpoint("distributed.utils._TensorPlaceholder (checkpoint broadcast)"):
        state = {"args": argparse.Namespace(lr=[0.1]), "cfg": OmegaConf.create({"a": [1, {"b": None}]}),
                 "placeholder": distributed_utils._TensorPlaceholder(0)}
        torch.save(state, tmp_path / "state.pt")
        compat.allow_fairseq_checkpoints()
        loaded = torch.load(tmp_path / "state.pt", weights_only=True)
        assert loaded["placeholder"].index == 0 and loaded["cfg"].a[1].b is None


def test_prefetch_threads_stop_when_told():
    with touchpoint("data.iterators.BackgroundConsumer._max_len/_queue (prefetch stop at exit)"):
        def endless():
            while True:
                yield torch.zeros(1)

        consumer = BackgroundConsumer(queue.Queue(2), endless(), None, None)
        consumer.daemon = True
        consumer.start()
        compat.stop_prefetch_threads()
        consumer.join(5)
        assert not consumer.is_alive() and consumer not in threading.enumerate()


def test_load_dataset_split_gives_masked_lm_blocks(tiny_corpus):
    cfg = MaskedLMConfig(data=str(tiny_corpus), tokens_per_sample=32)
    task = MaskedLMTask(cfg, Dictionary.load(str(tiny_corpus / "dict.txt")))
    with touchpoint("tasks.masked_lm.MaskedLMTask._load_dataset_split (token blocks)"):
        assert list(inspect.signature(MaskedLMTask._load_dataset_split).parameters) == ["self", "split", "epoch",
                                                                                          "combine"]
        blocks = compat_data.token_blocks(task, "valid", 1, False)
        assert len(blocks) > 10 and all(blocks[i][0] == task.dictionary.bos() for i in range(10))
        assert max(len(blocks[i]) for i in range(len(blocks))) <= 32


def test_unmasked_dataset_has_masked_lm_layout(tiny_corpus):
    """masked_lm's load_dataset with γ = 1 leaves every token as it is: its dataset and ours give
    the same ids in the same order and the same source tokens."""
    cfg = MaskedLMConfig(data=str(tiny_corpus), tokens_per_sample=32, leave_unmasked_prob=1.0, random_token_prob=0.0,
                         seed=3)
    task = MaskedLMTask(cfg, Dictionary.load(str(tiny_corpus / "dict.txt")))
    with touchpoint("tasks.masked_lm.MaskedLMTask.load_dataset (dataset layout)"):
        task.load_dataset("valid")
        theirs = task.dataset("valid")
        ours = compat_data.unmasked_dataset(compat_data.token_blocks(task, "valid", 1, False),
                                            pad_idx=task.dictionary.pad(), seed=3, include_index=cfg.include_index)
        assert (theirs.ordered_indices() == ours.ordered_indices()).all()
        order = ours.ordered_indices()[:8].tolist()
        a, b = theirs.collater([theirs[i] for i in order]), ours.collater([ours[i] for i in order])
        assert torch.equal(a["id"], b["id"]) and torch.equal(a["net_input"]["src_tokens"], b["net_input"]["src_tokens"])
        assert set(a) - {"target"} == set(b) and set(a["net_input"]) == set(b["net_input"])  # we mask later


def _dictionary(symbols):
    dictionary = Dictionary()
    for symbol in symbols:
        dictionary.add_symbol(symbol)
    dictionary.pad_to_multiple_(8)  # madeupword fillers, as fairseq-preprocess writes them
    return dictionary


@pytest.mark.parametrize("bpe_class, symbols", [
    (SentencepieceBPE, ["\u2581the", "re", "\u2581cat", "s", "\u2581a"]),
    (BertBPE, ["the", "##re", "cat", "##s", "a"]),
])
def test_word_starts_equal_fairseq_whole_word_mask(monkeypatch, bpe_class, symbols):
    """The flags equal fairseq's get_whole_word_mask with that tokenizer's own rule
    (``is_beginning_of_word``), for every id but ``<mask>`` (always a start here)."""
    dictionary = _dictionary(symbols)
    rule = types.SimpleNamespace(is_beginning_of_word=lambda piece: bpe_class.is_beginning_of_word(None, piece))
    monkeypatch.setattr(encoder_utils.encoders, "build_bpe", lambda args: rule)
    with touchpoint("data.encoders.utils.get_whole_word_mask (word starts)"):
        expected = encoder_utils.get_whole_word_mask(argparse.Namespace(), dictionary).bool()
        assert torch.equal(compat_data.word_starts(dictionary), expected)


def test_batch_iterator_arguments_are_bound_by_name():
    from fairseq.tasks import FairseqTask

    with touchpoint("tasks.FairseqTask.get_batch_iterator (signature)"):
        arguments = compat_data.batch_iterator_arguments(None, "dataset", (100, None), {"epoch": 3})
        assert (arguments["max_tokens"], arguments["max_sentences"], arguments["epoch"]) == (100, None, 3)
        positional = compat_data.batch_iterator_arguments(None, "dataset", (None, 8, None, False, 1, 1, 1, 0, 0, 4), {})
        assert (positional["max_sentences"], positional["epoch"]) == (8, 4)
        assert {"epoch", "max_tokens", "max_sentences"} <= set(inspect.signature(FairseqTask.get_batch_iterator).parameters)


def test_roberta_build_model_defaults_max_positions_as_copied():
    with touchpoint("models.roberta.RobertaModel.build_model (max_positions default)"):
        source = inspect.getsource(RobertaModel.build_model)
        assert "args.tokens_per_sample = task.max_positions()" in source
        assert "args.max_positions = args.tokens_per_sample" in source
        args = argparse.Namespace()
        compat_models.default_max_positions(args, types.SimpleNamespace(max_positions=lambda: 48))
        assert (args.tokens_per_sample, args.max_positions) == (48, 48)


def test_encoder_layers_are_wrapped_as_fairseq_wraps_its_own():
    with touchpoint("models.transformer.TransformerEncoderBase.build_encoder_layer (FSDP wrap)"):
        source = inspect.getsource(TransformerEncoderBase.build_encoder_layer)
        assert "fsdp_wrap(layer, min_num_params=min_params_to_wrap)" in source
        layer = torch.nn.Linear(2, 2)
        assert compat_models.wrap_encoder_layer(layer, types.SimpleNamespace(min_params_to_wrap=10**8)) is layer


def test_truncated_states_follow_the_encoder_forward():
    """The steps copied from TransformerEncoderBase.forward_scriptable give its states bit for bit
    (tests/test_subsets.py checks every layer, padded and not, and what runs)."""
    from test_subsets import tiny_roberta

    model, dictionary = tiny_roberta(layers=2)
    model.eval()
    tokens = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
    with touchpoint("models.transformer.TransformerEncoderBase.forward_scriptable (truncated features)"):
        encoder = compat_models.truncatable_encoder(model)
        assert encoder is model.encoder.sentence_encoder
        with torch.no_grad():
            states = model(tokens, features_only=True, return_all_hiddens=True)[1]["inner_states"]
            assert all(torch.equal(compat_models.truncated_states(encoder, tokens, index), expected)
                       for index, expected in enumerate(states))

"""masked_lm's data, unmasked, and the arguments of fairseq's batch iterator.

- ``token_blocks``: masked_lm's token blocks of a split (bos-prefixed) by its private
  ``MaskedLMTask._load_dataset_split`` (loading, shortening, blocking: every masked_lm data
  option keeps its meaning);
- ``unmasked_dataset``: the dataset layout of masked_lm's ``load_dataset`` (ids, right-padded
  tokens, lengths, shuffled then sorted by size) without its masking datasets;
- ``word_starts``: per-id "begins a word" flags for whole-word masking. fairseq's public helper
  (``data.encoders.utils.get_whole_word_mask``) asks the ``--bpe`` model, which a dataclass task
  does not receive in fairseq 0.12; the flags are read from the pieces instead, with the same
  rule for specials and ``madeupword`` fillers (the contract test checks them against the helper
  with fairseq's sentencepiece and wordpiece conventions);
- ``batch_iterator_arguments``: epoch and batch size of a ``get_batch_iterator`` call, bound to
  ``FairseqTask.get_batch_iterator``'s signature however they were passed.
"""

import inspect

import numpy as np
import torch
from fairseq.data import (
    IdDataset,
    NestedDictionaryDataset,
    NumelDataset,
    NumSamplesDataset,
    RightPadDataset,
    SortDataset,
    data_utils,
)
from fairseq.tasks import FairseqTask
from fairseq.tasks.masked_lm import MaskedLMTask

SENTENCEPIECE_WORD_START = "\u2581"
WORDPIECE_CONTINUATION = "##"
_ITERATOR_SIGNATURE = inspect.signature(FairseqTask.get_batch_iterator)


def token_blocks(task: MaskedLMTask, split: str, epoch: int, combine: bool):
    """masked_lm's blocks of ``split``: a dataset of 1-D token tensors with ``sizes``."""
    return MaskedLMTask._load_dataset_split(task, split, epoch, combine)


def unmasked_dataset(blocks, *, pad_idx: int, seed: int, include_index: bool):
    """masked_lm's training/validation dataset over ``blocks``, with clean tokens."""
    with data_utils.numpy_seed(seed):
        shuffle = np.random.permutation(len(blocks))
    net_input = {"src_tokens": RightPadDataset(blocks, pad_idx=pad_idx), "src_lengths": NumelDataset(blocks, reduce=False)}
    if include_index:
        net_input["src_id"] = IdDataset()
    dataset = NestedDictionaryDataset(
        {"id": IdDataset(), "net_input": net_input, "nsentences": NumSamplesDataset(),
         "ntokens": NumelDataset(blocks, reduce=True)},
        sizes=[blocks.sizes],
    )
    return SortDataset(dataset, sort_order=[shuffle, blocks.sizes])


def word_starts(dictionary) -> torch.Tensor:
    """bool [V]: sentencepiece pieces start a word with '▁', wordpiece pieces continue one with
    '##'; specials, ``madeupword`` fillers and ``<mask>`` always start one."""
    symbols, nspecial = dictionary.symbols, dictionary.nspecial
    if any(s.startswith(SENTENCEPIECE_WORD_START) for s in symbols[nspecial:]):
        begins = [s.startswith(SENTENCEPIECE_WORD_START) for s in symbols]
    elif any(s.startswith(WORDPIECE_CONTINUATION) for s in symbols[nspecial:]):
        begins = [not s.startswith(WORDPIECE_CONTINUATION) for s in symbols]
    else:
        raise ValueError(
            "--mask-whole-words: cannot tell word starts in this dictionary (no sentencepiece '\u2581' "
            "or wordpiece '##' pieces); use a sentencepiece/wordpiece vocabulary or drop the option")
    return torch.tensor([b or i < nspecial or s.startswith("madeupword") or s == "<mask>"
                         for i, (s, b) in enumerate(zip(symbols, begins))])


def batch_iterator_arguments(task, dataset, args, kwargs) -> dict:
    """The arguments of ``task.get_batch_iterator(dataset, *args, **kwargs)`` by name, defaults
    filled in (``epoch``, ``max_tokens``, ``max_sentences``, ...)."""
    bound = _ITERATOR_SIGNATURE.bind(task, dataset, *args, **kwargs)
    bound.apply_defaults()
    return bound.arguments

"""Block features for selection: the model's hidden states at one layer, averaged over a block's
tokens (INGENIOUS's representation), computed in eval mode, sharded over data-parallel ranks."""

import torch
from fairseq import utils

from ..distributed import fork_rngs
from .options import MIDDLE_LAYER
from .selection import one_thread


def mean_pooled_states(model, sample, layer: int, pad_idx: int) -> torch.Tensor:
    """[B, C] float32: the hidden state after ``layer`` (0 = embeddings), averaged over each
    block's non-pad tokens. Needs a fairseq encoder model that returns ``inner_states``
    (RoBERTa/BERT-style ``masked_lm`` architectures do)."""
    tokens = sample["net_input"]["src_tokens"]
    _, extra = model(tokens, features_only=True, return_all_hiddens=True)
    states = extra.get("inner_states") if isinstance(extra, dict) else None
    if not states:
        raise ValueError("--subset-selector ingenious needs a model whose forward(features_only=True, "
                         "return_all_hiddens=True) returns inner_states (e.g. --arch roberta_*)")
    index = len(states) // 2 if layer == MIDDLE_LAYER else layer
    if index >= len(states):
        raise ValueError(f"--subset-feature-layer must be in [0, {len(states) - 1}] for this model "
                         f"(0 = embeddings), got {layer}")
    hidden = states[index].transpose(0, 1).float()  # T x B x C -> B x T x C
    keep = tokens.ne(pad_idx).unsqueeze(-1).to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def block_features(model, dataset, batches, *, layer: int, pad_idx: int, rank: int = 0, world_size: int = 1,
                   group=None, dst: int = 0) -> torch.Tensor | None:
    """[N, C] features of every block of ``dataset`` on rank ``dst`` (None elsewhere).
    ``model`` is the task's own (unwrapped) model: each rank runs its forward alone.

    Rank r featurises batches r, r + W, ... of ``batches`` (fixed batches: a block's feature does
    not depend on the rank count), on one thread, with the model in eval mode and the global RNGs
    left as they were; the shards are summed into rank ``dst``'s zero-filled table.
    """
    device = next(model.parameters()).device
    was_training = model.training
    table = None
    model.eval()
    try:
        with fork_rngs(), torch.no_grad(), one_thread():
            for batch in batches[rank::world_size]:
                sample = utils.apply_to_sample(lambda t: t.to(device), dataset.collater([dataset[i] for i in batch]))
                pooled = mean_pooled_states(model, sample, layer, pad_idx).cpu()
                if table is None:
                    table = torch.zeros(len(dataset), pooled.shape[1])
                table[sample["id"].cpu()] = pooled
    finally:
        model.train(was_training)
    if world_size > 1:
        width = torch.tensor([0 if table is None else table.shape[1]], dtype=torch.long)
        torch.distributed.all_reduce(width, op=torch.distributed.ReduceOp.MAX, group=group)
        if table is None:
            table = torch.zeros(len(dataset), int(width))
        table = table.to(device)
        torch.distributed.reduce(table, dst=dst, group=group)
        table = table.cpu()
        return table if torch.distributed.get_rank() == dst else None
    return table

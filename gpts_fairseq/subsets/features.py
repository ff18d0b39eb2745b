"""Block features for selection: the model's hidden states at one layer, averaged over a block's
tokens (INGENIOUS's representation), computed in eval mode, sharded over data-parallel ranks.

A feature needs the encoder only up to its layer: for fairseq's RoBERTa/BERT-style encoders the
pass stops there (no layers above it, no final layer norm, no LM head); other models that return
``inner_states`` run their whole forward."""

import torch
from fairseq import utils

from ..compat.models import truncatable_encoder, truncated_states
from ..runtime import collective_device, fork_rngs, single_thread
from .options import MIDDLE_LAYER


def state_index(layer: int, num_layers: int) -> int:
    """Index of ``--subset-feature-layer`` among the L + 1 states (0 = embeddings)."""
    index = (num_layers + 1) // 2 if layer == MIDDLE_LAYER else layer
    if index > num_layers:
        raise ValueError(f"--subset-feature-layer must be in [0, {num_layers}] for this model "
                         f"(0 = embeddings), got {layer}")
    return index


def check_feature_layer(model, layer: int) -> None:
    """ValueError naming ``--subset-feature-layer`` when ``model``'s encoder (fairseq's
    RoBERTa-style ``encoder.sentence_encoder.layers``) has fewer layers, before training; other
    models are checked at their first feature pass."""
    layers = getattr(getattr(getattr(model, "encoder", None), "sentence_encoder", None), "layers", None)
    if layers is not None:
        state_index(layer, len(layers))


def full_forward_states(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """T x B x C: ``inner_states`` of the model's whole forward at ``layer``."""
    _, extra = model(tokens, features_only=True, return_all_hiddens=True)
    states = extra.get("inner_states") if isinstance(extra, dict) else None
    if not states:
        raise ValueError("--subset-selector ingenious needs a model whose forward(features_only=True, "
                         "return_all_hiddens=True) returns inner_states (e.g. --arch roberta_*)")
    return states[state_index(layer, len(states) - 1)]


def mean_pooled_states(model, sample, layer: int, pad_idx: int, *, full_forward: bool = False) -> torch.Tensor:
    """[B, C] float32: the hidden state after ``layer`` (0 = embeddings), averaged over each
    block's non-pad tokens; computed up to that layer only when the model allows it (see
    ``compat.models.truncatable_encoder``), or always by the whole forward with ``full_forward``."""
    tokens = sample["net_input"]["src_tokens"]
    encoder = None if full_forward else truncatable_encoder(model)
    if encoder is None:
        states = full_forward_states(model, tokens, layer)
    else:
        states = truncated_states(encoder, tokens, state_index(layer, len(encoder.layers)))
    hidden = states.transpose(0, 1).float()  # T x B x C -> B x T x C
    keep = tokens.ne(pad_idx).unsqueeze(-1).to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def feature_batches(dataset, *, max_tokens: int | None, max_sentences: int | None) -> list:
    """The batches of a feature pass: the training batch size over the dataset's own order, so a
    block's feature depends on the data and the batch size only (not on the rank count)."""
    return dataset.batch_by_size(dataset.ordered_indices(), max_tokens=max_tokens, max_sentences=max_sentences)


def block_features(model, dataset, batches, *, layer: int, pad_idx: int, rank: int = 0, world_size: int = 1,
                   group=None, dst: int = 0, full_forward: bool = False) -> torch.Tensor | None:
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
        with fork_rngs(), torch.no_grad(), single_thread():
            for batch in batches[rank::world_size]:
                sample = utils.apply_to_sample(lambda t: t.to(device), dataset.collater([dataset[i] for i in batch]))
                pooled = mean_pooled_states(model, sample, layer, pad_idx, full_forward=full_forward).cpu()
                if table is None:
                    table = torch.zeros(len(dataset), pooled.shape[1])
                table[sample["id"].cpu()] = pooled
    finally:
        model.train(was_training)
    if world_size > 1:
        width = torch.tensor([0 if table is None else table.shape[1]], dtype=torch.long, device=collective_device(group))
        torch.distributed.all_reduce(width, op=torch.distributed.ReduceOp.MAX, group=group)
        if table is None:
            table = torch.zeros(len(dataset), int(width))
        table = table.to(collective_device(group))
        torch.distributed.reduce(table, dst=dst, group=group)
        table = table.cpu()
        return table if torch.distributed.get_rank() == dst else None
    return table

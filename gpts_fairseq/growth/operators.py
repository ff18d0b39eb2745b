"""Growth operators on fairseq encoder layers, weights and optimizer state together.

Tensors keep their allocated (target) shapes; an operator rewrites values only. What each
preserves (measured in tests/test_growth.py and README "Progressive growth"):
- ``tile_ffn`` (Net2Net): unit j of the grown FFN copies unit ``j mod old``; fc2 columns are
  divided by the number of copies, so the layer's output is unchanged (post-LN and pre-LN)
  up to float rounding; noise > 0 on the copies' fc1 rows breaks their symmetry (without it
  Adam keeps the copies identical forever) at the price of a small change of the function.
- ``stack_layer``: the new layer copies an active one. Preserves nothing exactly: a copied
  layer still transforms its input.
- ``zero_residual_branches``: the new layer's attention output and fc2 are zero, so both
  residual branches add nothing. Exact with pre-LN (the layer is the identity); with post-LN
  the layer still applies its two LayerNorms to the stream, so the function changes.

Optimizer state: ``state`` is a torch optimizer's per-parameter state (``optimizer.state``),
or None. ``carry`` moves the state with the weights (a copied unit or layer gets its
source's moments and step, fc1 moments of tiled units scaled like their gradients: 1/c and
1/c² for second moments), so the first step after growth is the size it would have been.
Zero-initialised layers and ``reset`` drop the state: the next step starts Adam afresh
(step 1, bias-corrected). The trap both avoid: a carried step count with zero moments
(measured in tests/test_growth.py).
"""

from __future__ import annotations

import torch

OPTIMIZER_MODES = ("carry", "reset")
DEPTH_MODES = ("stack", "zero")


def _second_moment(name: str) -> bool:
    return "sq" in name  # Adam's exp_avg_sq, max_exp_avg_sq; first moments (exp_avg, momentum) otherwise


def _remap(tensor: torch.Tensor, dim: int, source: torch.Tensor, scale: torch.Tensor | None) -> None:
    """tensor[..., j, ...] = tensor[..., source[j], ...] * scale[j] along ``dim``, for j < len(source)."""
    grown = tensor.index_select(dim, source.to(tensor.device))
    if scale is not None:
        shape = [1] * tensor.dim()
        shape[dim] = -1
        grown = grown * scale.to(device=tensor.device, dtype=tensor.dtype).view(shape)
    tensor.narrow(dim, 0, len(source)).copy_(grown)


def tiling(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Net2Net's map for ``old`` -> ``new`` units: unit j copies ``j mod old``; and each
    source's number of copies (the divisor of its fc2 column)."""
    source = torch.arange(new) % old
    copies = torch.bincount(source, minlength=old).to(torch.float64)
    return source, copies


@torch.no_grad()
def tile_ffn(layer, old: int, new: int, *, noise: float, generator: torch.Generator,
             state=None, optimizer: str = "carry") -> None:
    """Grow the FFN of ``layer`` (a fairseq encoder layer) from its first ``old`` to its first
    ``new`` units, function-preserving (noise 0); ``noise`` is the std of the Gaussian added to
    the copies' fc1 rows, relative to the std of the old fc1 rows."""
    if not 0 < old <= new <= layer.fc1.out_features:
        raise ValueError(f"tile_ffn: need 0 < old <= new <= {layer.fc1.out_features}, got old={old}, new={new}")
    if new == old:
        return
    source, copies = tiling(old, new)
    divisor = copies[source]  # per grown unit
    fc1, fc2 = layer.fc1, layer.fc2
    scale_std = fc1.weight[:old].std() if noise > 0 else None
    _remap(fc1.weight, 0, source, None)
    _remap(fc1.bias, 0, source, None)
    _remap(fc2.weight, 1, source, 1.0 / divisor)
    if noise > 0:
        draw = torch.randn(new - old, fc1.in_features, generator=generator, dtype=torch.float64)
        fc1.weight[old:new] += (draw * float(scale_std) * noise).to(fc1.weight)
    if state is None:
        return
    for param, dim, power in ((fc1.weight, 0, 1), (fc1.bias, 0, 1), (fc2.weight, 1, 0)):
        if param not in state:
            continue
        if optimizer == "reset":
            del state[param]
            continue
        for name, value in state[param].items():
            if torch.is_tensor(value) and value.shape == param.shape:
                exponent = power * (2 if _second_moment(name) else 1)
                _remap(value, dim, source, divisor.pow(-exponent) if exponent else None)


@torch.no_grad()
def stack_layer(target, source, *, state=None, optimizer: str = "carry") -> None:
    """``target`` becomes a copy of ``source`` (weights, and under ``carry`` their optimizer
    state; under ``reset`` the target starts Adam afresh)."""
    for (name, dst), src in zip(target.named_parameters(), source.parameters()):
        dst.copy_(src)
        if state is None:
            continue
        state.pop(dst, None)
        if optimizer == "carry" and src in state:
            state[dst] = {key: value.clone() if torch.is_tensor(value) else value
                          for key, value in state[src].items()}


@torch.no_grad()
def zero_residual_branches(layer, *, state=None) -> None:
    """Zero the attention output projection and fc2 of ``layer``; its optimizer state is
    dropped (there is nothing to carry)."""
    for module in (layer.self_attn.out_proj, layer.fc2):
        module.weight.zero_()
        if module.bias is not None:
            module.bias.zero_()
    if state is not None:
        for param in layer.parameters():
            state.pop(param, None)


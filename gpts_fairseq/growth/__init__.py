"""Progressive growth (CompoundGrow, Gu et al., NAACL 2021) inside fairseq-train.

- ``stages``: --grow-stages, parsed and checked;
- ``operators``: Net2Net FFN tiling, layer stacking, zero-initialised layers (with their
  optimizer state);
- ``model``: the architecture ``gpts_roberta_grow`` (registered on import);
- ``flops``: FLOPs per update of the active sub-network;
- ``extension``: the training extension a ``gpts_roberta_grow`` model turns on (grow when due,
  re-warm the LR, fold rows to the stage's length, one event per growth).
"""

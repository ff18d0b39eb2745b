"""fairseq criterion ``gpts_masked_lm``: masked_lm's loss plus masking statistics."""

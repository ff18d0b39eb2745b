"""The names of ψ's three fields and fairseq's default ψ, with no imports, so that readers of
the history file (gpts-report) need neither torch nor GPyTorch."""

PSI_FIELDS = ("mask_prob", "leave_unmasked_prob", "random_token_prob")
FAIRSEQ_DEFAULT_PSI = {"mask_prob": 0.15, "leave_unmasked_prob": 0.1, "random_token_prob": 0.1}

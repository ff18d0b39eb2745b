"""Runs fairseq-train with gpts_mlm's mask_sample recorded: every masked batch as one JSON line
(rank, split, step, psi, sample ids, masked tokens) in $GPTS_RECORD_PREFIX.<rank>.jsonl.

    python tests/fairseq_recorder.py DATA --task gpts_mlm ...   (the fairseq-train arguments)
"""

import json
import os

import fairseq  # noqa: F401  (registers gpts_mlm through the install hook or --user-dir)
import torch
from fairseq_cli.train import cli_main

from gpts_fairseq.tasks.gpts_mlm import VALID_STEP, GPTSMaskedLMTask

_original = GPTSMaskedLMTask.mask_sample


def recording_mask_sample(self, sample, psi, step):
    masked = _original(self, sample, psi, step)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    with open(f"{os.environ['GPTS_RECORD_PREFIX']}.{rank}.jsonl", "a") as handle:
        handle.write(json.dumps({"rank": rank, "valid": step == VALID_STEP, "step": step, "psi": psi.as_dict(),
                                 "ids": sample["id"].tolist(),
                                 "sources": masked["net_input"]["src_tokens"].tolist()}) + "\n")
    return masked


GPTSMaskedLMTask.mask_sample = recording_mask_sample

if __name__ == "__main__":
    cli_main()

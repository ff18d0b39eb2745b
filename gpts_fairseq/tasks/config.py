"""The config of task ``gpts_mlm``: masked_lm's options, the masking options, and the options of
every registered training extension (each extension's ``config`` dataclass)."""

from dataclasses import dataclass

from fairseq.tasks.masked_lm import MaskedLMConfig
from omegaconf import II

from ..extensions.registry import EXTENSIONS
from ..masking.options import MaskingConfig

EXTENSION_CONFIGS = tuple(dict.fromkeys(ext.config for ext in EXTENSIONS if ext.config is not None))


@dataclass
class GPTSMaskedLMConfig(*EXTENSION_CONFIGS, MaskingConfig, MaskedLMConfig):
    max_update: int = II("optimization.max_update")
    max_epoch: int = II("optimization.max_epoch")
    save_dir: str = II("checkpoint.save_dir")

"""One-shot architecture search (AutoTinyBERT, Yin et al., ACL 2021) for fairseq masked-LM
pre-training: the elastic super-net ``--arch gpts_roberta_super`` (``model``), its search space
(``space``), the training extension that samples a sub-net per update (``extension``), the
criterion with in-place distillation (``criterion``), and the ``search`` / ``extract`` commands
(``python -m gpts_fairseq.supernet``). Method page: docs/supernet.md.
"""

from . import criterion, model  # noqa: F401  (register --arch gpts_roberta_super, --criterion gpts_supernet_masked_lm)
from .extension import SuperNetExtension  # noqa: F401

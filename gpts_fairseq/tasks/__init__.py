"""fairseq task ``gpts_mlm`` (and, through it, criterion ``gpts_masked_lm``); importing this
package registers both. Imported by fairseq's --user-dir or by the install hook."""

from . import gpts_mlm  # noqa: F401
from ..growth import model as _growth_model  # noqa: F401  (registers --arch gpts_roberta_grow)
from ..flexibert import model as _flexibert_model  # noqa: F401  (registers --arch gpts_flexibert)

"""fairseq task ``gpts_mlm`` (and, through it, criterion ``gpts_masked_lm``); importing this
package registers both. Imported by fairseq's --user-dir or by the install hook."""

from . import gpts_mlm  # noqa: F401

"""``EXTENSIONS``: every training extension, in the order their hooks run (see ``base``). A new
method adds its class here; its options join the task's config through its ``config`` class."""

from ..growth.extension import GrowthExtension
from ..interactions.extension import InteractionsExtension
from ..subsets.extension import SubsetsExtension
from ..supernet.extension import SuperNetExtension

# interactions first: ψ is decided before growth measures and masks are made
EXTENSIONS = (InteractionsExtension, SubsetsExtension, GrowthExtension, SuperNetExtension)

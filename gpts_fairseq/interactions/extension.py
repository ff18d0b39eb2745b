"""GP-TS masking as a training extension: it owns ψ (also the constant one), ends an
interaction when one is due before an update and the last one after the last update of a
--max-update run, and logs the ψ in force at every step."""

from fairseq.logging import metrics

from ..bandit.loop import InteractionLoop
from ..extensions.base import TrainingExtension
from ..masking.options import first_psi
from .controller import InteractionController
from .options import InteractionConfig, build_policy, reward_options, validate_config

PSI_LOG_NAMES = ("psi_rho", "psi_gamma", "psi_lambda")  # the ψ in force, logged every step


class InteractionsExtension(TrainingExtension):
    name = "interactions"
    config = InteractionConfig

    @classmethod
    def enabled(cls, cfg) -> bool:
        return True  # the constant policy is a policy too: its ψ is logged and its options kept

    @classmethod
    def check_options(cls, cfg) -> None:
        validate_config(cfg)
        build_policy(cfg, first_psi(cfg))

    def __init__(self, cfg, context):
        super().__init__(cfg, context)
        first = first_psi(cfg)
        loop = None if cfg.gpts_policy == "constant" else InteractionLoop(
            build_policy(cfg, first), first, reward=str(cfg.gpts_reward))
        self.controller = InteractionController(
            loop, first, interaction_updates=cfg.gpts_interaction_updates, max_update=cfg.max_update,
            max_epoch=cfg.max_epoch, save_dir=cfg.save_dir, options=reward_options(cfg),
            allow_option_change=cfg.gpts_allow_option_change)
        self.epoch = 1

    def begin_epoch(self, epoch, model) -> None:
        self.epoch = epoch

    def before_update(self, model, optimizer, update_num: int) -> None:
        psi = self.controller.step(model, update_num, self.epoch,
                                   measure=lambda module: self.context.reference_loss(module, update=update_num))
        for name, value in zip(PSI_LOG_NAMES, (psi.mask_prob, psi.leave_unmasked_prob, psi.random_token_prob)):
            metrics.log_scalar(name, value, round=3)

    def after_update(self, model, update_num: int) -> None:
        """The run's last update (update --max-update, or the last of epoch --max-epoch) ends the
        interaction in progress."""
        last_epoch_ends = self.cfg.max_epoch > 0 and self.epoch == self.cfg.max_epoch and self.context.end_of_epoch()
        if update_num + 1 == self.cfg.max_update or last_epoch_ends:
            self.controller.end(model, update_num + 1, self.epoch, measure=self.context.reference_loss)

    def training_psi(self):
        return self.controller.psi

    def state_dict(self) -> dict:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state)

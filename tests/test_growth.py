"""Progressive growth, in-process: stage strings, the growth operators (what they preserve),
optimizer state across growth, FLOP counts, and folding masked rows."""

import types

import pytest
import torch
from fairseq import options
from fairseq.data import Dictionary
from fairseq.optim.adam import FairseqAdam
from fairseq.tasks.masked_lm import MaskedLMTask
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gpts_fairseq.events import EventLog
from gpts_fairseq.extensions.base import ExtensionContext
from gpts_fairseq.growth.extension import GrowthExtension, fold_rows
from gpts_fairseq.growth.flops import update_flops
from gpts_fairseq.growth.model import GrowRobertaModel
from gpts_fairseq.growth.stages import Stage, parse_stages
from gpts_fairseq.tasks.gpts_mlm import GPTSMaskedLMTask

TARGET = dict(layers=4, ffn=64, tokens=32)
VOCAB = 40


def build(*extra, seed=0, task_class=GPTSMaskedLMTask):
    """A 4-layer, 32-wide gpts_roberta_grow model (FFN 64, 32 tokens) from fairseq's parser."""
    dictionary = Dictionary()
    for index in range(VOCAB - dictionary.nspecial - 1):
        dictionary.add_symbol(f"w{index}")
    dictionary.add_symbol("<mask>")
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "data", "--task", "gpts_mlm", "--arch", "gpts_roberta_grow", "--encoder-layers", "4",
        "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
        "--tokens-per-sample", "32", "--dropout", "0", "--attention-dropout", "0", "--seed", "3", *extra])
    task = task_class.__new__(task_class)  # the model needs only its dictionary
    task.dictionary = dictionary
    task.cfg = types.SimpleNamespace(tokens_per_sample=32)
    torch.manual_seed(seed)
    return GrowRobertaModel.build_model(args, task)


def before_update(model, optimizer, update, measure_loss=None):
    """The growth extension's hook, with ``measure_loss`` as the task's reference loss."""
    context = ExtensionContext(cfg=None, dictionary=Dictionary(), save_dir=None, seed=3, mask_for_reference=None,
                               reference_loss=measure_loss, events=lambda name, schema: EventLog(None, name, schema),
                               psi=lambda: None)
    GrowthExtension(None, context).before_update(model, optimizer, update)


def batch(seed=1, rows=4):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, VOCAB, (rows, 32), generator=generator)
    target = torch.where(torch.rand(rows, 32, generator=generator) < 0.3, tokens, torch.ones_like(tokens))
    return tokens, target


def loss_of(model, tokens, target):
    masked = target.ne(1)
    logits = model(tokens, masked_tokens=masked)[0]
    return torch.nn.functional.cross_entropy(logits, target[masked])


def adam(model, weight_decay=0.0):
    config = types.SimpleNamespace(lr=[1e-2], adam_betas="(0.9, 0.98)", adam_eps=1e-8, weight_decay=weight_decay,
                                   use_old_adam=False, fp16_adam_stats=False, tpu=False)
    return FairseqAdam(config, [p for p in model.parameters() if p.requires_grad])


def train(model, optimizer, steps, first_update=0):
    for update in range(first_update, first_update + steps):
        before_update(model, optimizer, update)
        optimizer.zero_grad()
        loss_of(model, *batch(seed=update)).backward()
        for param in model.parameters():  # as fairseq's legacy_ddp all-reduce does
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)
        optimizer.step()


# -- --grow-stages ---------------------------------------------------------------------------

def test_stages_parse_with_defaults():
    stages = parse_stages("0:layers=2,ffn=16,tokens=16; 10:ffn=32 ;20:layers=4,ffn=64,tokens=32", **TARGET)
    assert stages == [Stage(0, 2, 16, 16), Stage(10, 2, 32, 16), Stage(20, 4, 64, 32)]
    assert parse_stages("", **TARGET) == [Stage(0, 4, 64, 32)]
    assert parse_stages("0:layers=1", **TARGET) == [Stage(0, 1, 64, 32)]


@pytest.mark.parametrize("text, message", [
    ("5:layers=2", "first stage must start at update 0"),
    ("0:layers=2;0:layers=4", "starts must increase"),
    ("0:layers=3;10:layers=2", "layers shrinks"),
    ("0:layers=2;10:layers=2", "grows nothing"),
    ("0:layers=8", r"layers must be in \[1, 4\]"),
    ("0:ffn=0", r"ffn must be in \[1, 64\]"),
    ("0:tokens=64", r"tokens must be in \[1, 32\]"),
    ("0:width=2", "bad size 'width=2'"),
    ("0:layers=two", "layers must be an integer"),
    ("layers=2", "must start with the update"),
    ("-1:layers=2", "must start with the update"),
])
def test_bad_stage_strings_are_named(text, message):
    with pytest.raises(ValueError, match=f"--grow-stages.*{message}"):
        parse_stages(text, **TARGET)


@pytest.mark.parametrize("extra, message", [
    (["--grow-stages", "0:ffn=100"], r"--grow-stages: ffn must be in \[1, 64\]"),
    (["--grow-width-noise", "-0.1"], "--grow-width-noise must be a finite number >= 0"),
    (["--grow-rewarm-updates", "-1"], "--grow-rewarm-updates must be an integer >= 0"),
])
def test_bad_options_stop_the_build(extra, message):
    with pytest.raises(ValueError, match=message):
        build(*extra)


def test_growth_needs_the_gpts_mlm_task():
    """fairseq's masked_lm task would train the small stage for good (no growth hook)."""
    with pytest.raises(ValueError, match="--grow-stages with more than one stage needs --task gpts_mlm"):
        build("--grow-stages", "0:layers=1;5:layers=2", task_class=MaskedLMTask)
    build("--grow-stages", "0:layers=1", task_class=MaskedLMTask)  # one stage: plain RoBERTa, any task


# -- operators -------------------------------------------------------------------------------

def _tied(model, width, old):
    """Are the FFN units of every active layer copies of units j mod old (fc1 rows and fc2 columns x copies)?"""
    for layer in list(model.layers)[:model.stage.layers]:
        rows = layer.fc1.weight[:width].view(width // old, old, -1)
        columns = layer.fc2.weight[:, :width].view(-1, width // old, old)
        if not (torch.equal(rows, rows[:1].expand_as(rows)) and torch.equal(columns, columns[:, :1].expand_as(columns))):
            return False
    return True


def test_width_tiling_without_noise_preserves_loss_and_copies_stay_tied():
    model = build("--grow-stages", "0:ffn=16;3:ffn=64", "--grow-width-noise", "0")
    optimizer = adam(model)
    train(model, optimizer, 3)
    model.eval()
    with torch.no_grad():
        before = loss_of(model, *batch(seed=99)).item()
        model.grow_to(1, optimizer.optimizer.state)
        after = loss_of(model, *batch(seed=99)).item()
    model.train()
    assert abs(after - before) < 1e-5
    assert _tied(model, 64, 16)
    train(model, optimizer, 5, first_update=3)
    assert _tied(model, 64, 16)  # Adam never separates exact copies


def test_width_noise_breaks_the_symmetry_and_is_keyed_by_seed_and_stage():
    grown = []
    for _ in range(2):
        model = build("--grow-stages", "0:ffn=16;3:ffn=64", "--grow-width-noise", "0.05")
        optimizer = adam(model)
        train(model, optimizer, 5)
        assert model.stage.ffn == 64 and not _tied(model, 64, 16)
        layer = model.layers[0]
        assert (layer.fc1.weight[16:32] - layer.fc1.weight[:16]).abs().max() > 1e-3
        grown.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(grown[0], grown[1])  # same seed, same stage: the same noise


def test_zero_initialised_layers_are_exact_with_pre_ln_only():
    jumps = {}
    for norm in ("pre", "post"):
        extra = ["--encoder-normalize-before", "--layernorm-embedding"] if norm == "pre" else []
        model = build("--grow-stages", "0:layers=2;4:layers=4", "--grow-depth", "zero", *extra)
        optimizer = adam(model)
        train(model, optimizer, 4)  # trained LayerNorms: post-LN no longer commutes with a no-op layer
        model.eval()
        with torch.no_grad():
            before = loss_of(model, *batch(seed=99)).item()
            model.grow_to(1, optimizer.optimizer.state)
            jumps[norm] = abs(loss_of(model, *batch(seed=99)).item() - before)
    assert jumps["pre"] == 0.0
    assert jumps["post"] > 1e-4


def test_stacking_copies_layers_and_their_optimizer_state():
    model = build("--grow-stages", "0:layers=2;4:layers=4", "--grow-optimizer", "carry")
    optimizer = adam(model)
    train(model, optimizer, 4)
    state = optimizer.optimizer.state
    assert all(p not in state for p in model.layers[2].parameters())  # inactive: never stepped
    assert all(not p.requires_grad for p in model.layers[3].parameters())
    model.grow_to(1, state)
    for new, old in ((2, 0), (3, 1)):
        for p, q in zip(model.layers[new].parameters(), model.layers[old].parameters()):
            assert torch.equal(p, q) and p.requires_grad
            assert state[p]["step"] == state[q]["step"] and torch.equal(state[p]["exp_avg_sq"], state[q]["exp_avg_sq"])


def test_reset_drops_the_state_of_grown_tensors():
    model = build("--grow-stages", "0:layers=2,ffn=32;4:layers=4,ffn=64", "--grow-optimizer", "reset")
    optimizer = adam(model)
    train(model, optimizer, 4)
    state = optimizer.optimizer.state
    kept = model.layers[0].self_attn.k_proj.weight
    assert kept in state
    model.grow_to(1, state)
    assert model.layers[0].fc1.weight not in state and model.layers[2].fc1.weight not in state
    assert kept in state  # not grown


def test_inactive_layers_get_no_step_and_no_weight_decay():
    model = build("--grow-stages", "0:layers=2;6:layers=4")
    optimizer = adam(model, weight_decay=0.1)
    frozen = model.layers[3].fc1.weight.detach().clone()
    train(model, optimizer, 6)
    assert torch.equal(model.layers[3].fc1.weight, frozen)
    assert model.layers[3].fc1.weight.grad is None


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_growth_loss_measurement_leaves_the_rngs_as_they_were(device):
    """The reference loss before and after a growth runs with dropout on (train mode here), but
    the next training step must draw the dropout masks it would have drawn without it."""
    model = build("--grow-stages", "0:ffn=16;1:ffn=64", "--dropout", "0.1").to(device)
    optimizer = adam(model)
    tokens, target = (t.to(device) for t in batch())
    measured = []

    def measure(module):
        measured.append(loss_of(module, tokens, target).item())
        return measured[-1]

    def rng_states():
        return [torch.get_rng_state(), *([torch.cuda.get_rng_state()] if device == "cuda" else [])]

    states = rng_states()
    measure(model)
    assert any(not torch.equal(a, b) for a, b in zip(rng_states(), states))  # the measurement draws
    states = rng_states()
    before_update(model, optimizer, 1, measure_loss=measure)
    assert model.stage.ffn == 64 and len(measured) == 3  # measured before and after growing
    assert all(torch.equal(a, b) for a, b in zip(rng_states(), states))


def first_adam_step_ratio(beta1, beta2, step):
    """Adam's first update with zero moments and a carried count ``step`` over a fresh first
    update: ((1 - b1) / (1 - b1^t)) / sqrt((1 - b2) / (1 - b2^t)), t = step + 1, no eps."""
    t = step + 1
    return ((1 - beta1) / (1 - beta1 ** t)) / ((1 - beta2) / (1 - beta2 ** t)) ** 0.5


def test_carried_step_count_with_zero_moments_mis_sizes_the_first_step():
    """Adam's first update of a tensor that joins late: a zero-moment state with a carried
    step count of 400 vs a fresh state. fairseq's Adam, betas (0.9, 0.98) and (0.9, 0.999)."""
    measured = {}
    for betas in ((0.9, 0.98), (0.9, 0.999)):
        sizes = []
        for carried in (0, 400):
            param = torch.nn.Parameter(torch.zeros(8))
            config = types.SimpleNamespace(lr=[1e-3], adam_betas=str(betas), adam_eps=1e-12, weight_decay=0.0,
                                           use_old_adam=False, fp16_adam_stats=False, tpu=False)
            optimizer = FairseqAdam(config, [param])
            if carried:
                optimizer.optimizer.state[param] = {"step": carried, "exp_avg": torch.zeros(8), "exp_avg_sq": torch.zeros(8)}
            param.grad = torch.linspace(-1, 1, 8)
            optimizer.step()
            sizes.append(param.detach().abs().max().item())
        measured[betas] = sizes[1] / sizes[0]
        assert measured[betas] == pytest.approx(first_adam_step_ratio(*betas, 400), rel=1e-4)
    assert measured[(0.9, 0.98)] == pytest.approx(0.707, abs=1e-3)  # too small
    assert measured[(0.9, 0.999)] == pytest.approx(1.818, abs=1e-3)  # too large (3.16 once 0.999^t ~ 0)


# -- FLOPs and folding -----------------------------------------------------------------------

@pytest.mark.parametrize("stage", [Stage(0, 2, 16, 16), Stage(0, 4, 64, 32), Stage(0, 3, 48, 32)])
def test_flop_formula_matches_torch_flop_counter(stage):
    model = build("--grow-stages", f"0:layers={stage.layers},ffn={stage.ffn},tokens={stage.tokens}")
    tokens, target = batch(rows=4)
    sample = {"id": torch.arange(4), "net_input": {"src_tokens": tokens, "src_lengths": torch.full((4,), 32)},
              "target": target}
    folded = fold_rows(model, sample, pad=1)
    counter = FlopCounterMode(display=False)
    # the math kernel: torch's counter does not see the fused CPU attention kernel's products
    with counter, sdpa_kernel(SDPBackend.MATH):
        loss_of(model, folded["net_input"]["src_tokens"], folded["target"]).backward()
    expected = update_flops(stage, embed_dim=32, vocab=VOCAB, sequences=4, sample_tokens=32, mask_prob=0.0)
    masked = float(target.ne(1).sum())
    expected += 3 * masked * (2 * 32 * 32 + 2 * 32 * VOCAB)
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)


def test_fold_keeps_masks_and_drops_padding_rows():
    model = build("--grow-stages", "0:tokens=12")
    tokens, target = batch(rows=3)
    tokens[2, 20:] = 1  # a shorter row: its last piece is padding only
    target[2, 20:] = 1
    sample = {"id": torch.tensor([7, 8, 9]), "net_input": {"src_tokens": tokens, "src_lengths": torch.tensor([32, 32, 20])},
              "target": target}
    folded = fold_rows(model, sample, pad=1)
    source = folded["net_input"]["src_tokens"]
    assert source.shape == (8, 12)  # 3 pieces of rows 0 and 1, 2 of row 2
    assert folded["id"].tolist() == [7, 7, 7, 8, 8, 8, 9, 9]
    assert folded["net_input"]["src_lengths"].tolist() == [12, 12, 8, 12, 12, 8, 12, 8]
    rejoined = torch.nn.functional.pad(tokens, (0, 4), value=1).view(3, 3, 12).reshape(9, 12)[:8]
    assert torch.equal(source, rejoined)
    assert torch.equal(folded["target"][source.ne(1)], target[tokens.ne(1)])


def test_benchmark_arms_spend_the_same_counted_flops():
    """benchmarks/growth.py: every arm's schedule spends the fixed arm's FLOPs (within one
    update of the full model) and grows at a validated update."""
    from benchmarks import growth

    settings = growth.Settings()
    fixed = growth.plan("fixed", settings, vocab=105)
    for arm in growth.ARMS:
        schedule = growth.plan(arm, settings, vocab=105)
        spent = growth.flops_at(schedule, schedule["updates"])
        assert abs(spent - fixed["budget_flops"]) <= schedule["flops_per_update"][-1] / 2
        if arm != "fixed":
            assert schedule["stage_updates"][0] % settings.valid_every == 0
            assert schedule["updates"] > fixed["updates"]
            assert growth.flops_at(schedule, schedule["stage_updates"][0]) == pytest.approx(fixed["budget_flops"] / 2, rel=0.05)  # rounded to 20 updates

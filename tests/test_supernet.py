"""The elastic super-net (gpts_fairseq.supernet): slicing equals a standalone model bit for bit,
the space refuses bad input naming the option, sampling is keyed by (seed, update) on every rank,
the training extension's hooks, the distillation criterion, latency and the search."""

import argparse
import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from fairseq.criterions.masked_lm import MaskedLmConfig
from fairseq.models.roberta.model import RobertaModel

from gpts_fairseq.supernet.criterion import SuperNetMaskedLmLoss
from gpts_fairseq.supernet.extension import (DISTILL_KEY, VALIDATION_KEYS, SuperNetExtension, repeat_batch,
                                             sample_archs)
from gpts_fairseq.supernet.latency import MIN_RUNS, LatencyPredictor, LatencyTable
from gpts_fairseq.supernet.model import _VocabularyTask, build_supernet
from gpts_fairseq.supernet.search import Feasibility, SearchSettings, all_archs, pareto_front, run_search
from gpts_fairseq.supernet.space import Space, SubArch, sub_arch_params

VOCAB, POSITIONS = 60, 64
SPACE = dict(supernet_layers="1:3", supernet_hidden="32:64:16", supernet_heads="1:4", supernet_ffn="32:128:32",
             supernet_head_dim=16)
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0)


def supernet(**options):
    torch.manual_seed(0)
    return build_supernet(VOCAB, POSITIONS, **{**SPACE, **NO_DROPOUT, **options})


def tokens(rows=3, length=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch = torch.randint(4, VOCAB, (rows, length), generator=generator)
    batch[0, length - 5:] = 1  # padding
    masked = torch.rand(rows, length, generator=generator) < 0.3
    masked[0, length - 5:] = False
    return batch, masked


def standalone(arch: SubArch, space: Space):
    """A model of ``arch``'s dims built without the super-net: stock RoBERTa when its shape allows."""
    if space.qkv(arch) == arch.hidden:
        args = argparse.Namespace(max_positions=POSITIONS, encoder_layers=arch.layers, encoder_embed_dim=arch.hidden,
                                  encoder_attention_heads=arch.heads, encoder_ffn_embed_dim=arch.ffn, **NO_DROPOUT)
        return RobertaModel.build_model(args, _VocabularyTask(VOCAB, POSITIONS))
    return build_supernet(VOCAB, POSITIONS, supernet_head_dim=space.head_dim, **NO_DROPOUT,
                          **{f"supernet_{dim}": str(getattr(arch, dim)) for dim in ("layers", "hidden", "heads", "ffn")})


@pytest.mark.parametrize("arch", [SubArch(2, 64, 4, 96), SubArch(1, 32, 2, 64), SubArch(3, 48, 2, 128),
                                  SubArch(3, 64, 4, 128)], ids=str)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_sliced_subnet_equals_standalone_model_bit_for_bit(arch, train):
    """Forward and every gradient of the sub-net inside the super-net equal those of a model of its
    dims (stock fairseq RoBERTa where heads*head_dim == hidden) holding the sliced weights."""
    model = supernet()
    model.set_archs([arch])
    single = standalone(arch, model.space)
    if model.space.qkv(arch) == arch.hidden:
        assert type(single) is RobertaModel
    single.load_state_dict(model.sub_state_dict(arch))
    model.train(train)
    single.train(train)
    batch, masked = tokens()
    out, out_single = model(batch, masked_tokens=masked)[0], single(batch, masked_tokens=masked)[0]
    assert torch.equal(out, out_single)
    out.square().sum().backward()
    out_single.square().sum().backward()
    single_params = dict(single.named_parameters())
    for name, param in model.named_parameters():
        if name not in single_params:  # a layer beyond the sub-net
            assert param.grad is None, name
            continue
        twin = single_params[name].grad
        sliced = param.grad[tuple(slice(0, n) for n in twin.shape)]
        assert torch.equal(sliced, twin), name
        rest = param.grad.clone()
        rest[tuple(slice(0, n) for n in twin.shape)] = 0
        assert not rest.any(), f"{name}: gradient outside the sub-net's slice"


def test_sandwich_forward_runs_each_batch_copy_with_its_subnet():
    model = supernet()
    archs = [model.space.largest, model.space.smallest, SubArch(2, 48, 3, 64)]
    batch, masked = tokens()
    separate = []
    for arch in archs:
        model.set_archs([arch])
        separate.append(model(batch, masked_tokens=masked)[0])
    model.set_archs(archs)
    together = model(batch.repeat(3, 1), masked_tokens=masked.repeat(3, 1))[0]
    assert torch.equal(together, torch.cat(separate))


def test_parameter_count_matches_the_standalone_model():
    model = supernet()
    positions = model.encoder.sentence_encoder.embed_positions.weight.size(0)
    for arch in (SubArch(2, 64, 4, 96), SubArch(1, 32, 1, 32), SubArch(3, 48, 2, 128)):
        assert sub_arch_params(model.space, arch, VOCAB, positions) == sum(
            p.numel() for p in standalone(arch, model.space).parameters())


@pytest.mark.parametrize("options, message", [
    (dict(supernet_hidden="64:32"), "--supernet-hidden"),
    (dict(supernet_layers="0:3"), "--supernet-layers"),
    (dict(supernet_ffn="32:100:32"), "--supernet-ffn"),
    (dict(supernet_heads="a:b"), "--supernet-heads"),
    (dict(supernet_head_dim=0), "--supernet-head-dim"),
    (dict(supernet_tie_qkv=True, supernet_hidden="32:72:20"), "--supernet-tie-qkv"),
    (dict(supernet_distill=True), "--supernet-distill"),
    (dict(supernet_sampler="greedy"), "--supernet-sampler"),
    (dict(supernet_arch="9,64,4,96"), "--supernet-arch"),
    (dict(supernet_arch="2,64"), "--supernet-arch"),
    (dict(encoder_normalize_before=True), "--encoder-normalize-before"),
])
def test_bad_space_or_option_is_refused_naming_it(options, message):
    with pytest.raises(ValueError, match=message):
        supernet(**options)


def test_space_yaml_overrides_the_range_options(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("layers: '1:2'\nhidden: '32:48:16'\nhead_dim: 16\ntie_qkv: true\n")
    model = supernet(supernet_space=str(path))
    assert model.space.largest == SubArch(2, 48, 3, 128) and model.space.heads == (2, 3)
    path.write_text("width: 3\n")
    with pytest.raises(ValueError, match="--supernet-space.*width"):
        supernet(supernet_space=str(path))


def test_tied_space_keeps_only_stock_shapes():
    space = Space.from_options("1:2", "32:64:16", "1:8", "32:64:32", 16, True)
    assert all(space.qkv(a) == a.hidden for a in all_archs(space))
    rng = np.random.default_rng(0)
    for _ in range(50):
        child = space.mutate(space.sample(rng), rng)
        assert space.contains(child) and space.qkv(child) == child.hidden


def test_sampling_is_a_function_of_seed_and_update():
    space = supernet().space
    first = [sample_archs(space, "random", 3, update) for update in range(200)]
    assert first == [sample_archs(space, "random", 3, update) for update in range(200)]
    assert first != [sample_archs(space, "random", 4, update) for update in range(200)]
    drawn = {archs[0] for archs in first}
    assert len(drawn) > 50 and all(space.contains(a) for a in drawn)
    layers = [a.layers for archs in first for a in archs]
    assert set(layers) == set(space.layers)
    sandwich = sample_archs(space, "sandwich", 3, 7)
    assert sandwich[:2] == (space.largest, space.smallest) and sandwich[2] == first[7][0]


class _Context:
    """The part of ExtensionContext the supernet extension uses (masking: targets at the positions
    ``tokens`` chose, inputs replaced by the mask symbol there)."""

    def __init__(self, seed, save_dir=None):
        self.seed, self.save_dir = seed, save_dir

    def events(self, name, schema):
        from gpts_fairseq.events import EventLog

        return EventLog(self.save_dir, name, schema)

    @staticmethod
    def mask_for_reference(sample):
        batch, masked = tokens(*sample["net_input"]["src_tokens"].shape)
        source = torch.where(masked, torch.full_like(batch, VOCAB - 1), batch)
        return {**sample, "net_input": {**sample["net_input"], "src_tokens": source},
                "target": torch.where(masked, batch, torch.ones_like(batch))}


def _sample(rows=3, length=20):
    batch, masked = tokens(rows, length)
    target = torch.where(masked, batch, torch.ones_like(batch))
    return {"id": torch.arange(rows), "nsentences": rows, "ntokens": int(batch.ne(1).sum()),
            "net_input": {"src_tokens": batch, "src_lengths": batch.ne(1).sum(1)}, "target": target}


def _train_archs(extension, model, updates):
    seen = []
    for update in updates:
        extension.before_update(model, None, update)
        sample = extension.transform_batch(_sample(), model)
        seen.append((str(model.archs), sample["net_input"]["src_tokens"].size(0)))
        extension.after_update(model, update)
        assert model.archs == (model.default_arch,)
    return seen


@pytest.mark.parametrize("sampler", ["random", "sandwich"])
def test_extension_hooks_and_resume(tmp_path, sampler):
    """Each update trains its keyed sub-nets (sandwich: three batch copies), the default sub-net is
    back after the update, events are written, and an extension built afresh (a resumed run)
    continues with the same sub-nets."""
    model = supernet(supernet_sampler=sampler)
    assert SuperNetExtension.enabled_for_model(model)
    extension = SuperNetExtension(None, _Context(5, str(tmp_path)))
    full = _train_archs(extension, model, range(12))
    resumed = _train_archs(SuperNetExtension(None, _Context(5)), model, range(6, 12))
    assert resumed == full[6:]
    assert all(rows == (3 if sampler == "sandwich" else 1) * 3 for _, rows in full)
    from gpts_fairseq.events import read_events

    records = read_events(str(tmp_path), "supernet")
    assert [r["update"] for r in records] == list(range(12))
    assert records[4]["archs"] == ";".join(map(str, sample_archs(model.space, sampler, 5, 4)))


def test_single_point_supernet_needs_no_extension():
    model = build_supernet(VOCAB, POSITIONS, supernet_layers="2", supernet_hidden="32", supernet_heads="2",
                           supernet_ffn="64", supernet_head_dim=16)
    assert not SuperNetExtension.enabled_for_model(model)


def _criterion():
    dictionary = _VocabularyTask(VOCAB, POSITIONS).source_dictionary
    return SuperNetMaskedLmLoss(MaskedLmConfig(), argparse.Namespace(target_dictionary=dictionary, mask_idx=VOCAB - 1))


def test_validation_reports_largest_and_smallest_losses():
    model = supernet()
    model.eval()
    extension = SuperNetExtension(None, _Context(1))
    criterion = _criterion()
    unmasked = {k: v for k, v in _sample().items() if k != "target"}
    sample = _Context.mask_for_reference(unmasked)
    logging_output = {}
    with torch.no_grad():
        extension.after_validation(unmasked, model, criterion, None, None, logging_output)
        expected = []
        for arch in (model.space.largest, model.space.smallest):
            model.set_archs([arch])
            expected.append(criterion(model, sample)[0])
    assert torch.equal(logging_output[VALIDATION_KEYS[0]], expected[0])
    assert torch.equal(logging_output[VALIDATION_KEYS[1]], expected[1])
    assert logging_output[VALIDATION_KEYS[2]] == int(sample["target"].ne(1).sum())
    assert expected[0] != expected[1]


def test_in_place_distillation_trains_students_on_the_largest_predictions():
    model = supernet(supernet_sampler="sandwich", supernet_distill=True)
    extension = SuperNetExtension(None, _Context(2))
    extension.before_update(model, None, 0)
    sample = extension.transform_batch(_sample(), model)
    assert sample[DISTILL_KEY] == 3
    loss, sample_size, _ = _criterion()(model, sample)
    masked = sample["target"].ne(1)
    logits = model(sample["net_input"]["src_tokens"], masked_tokens=masked)[0]
    rows = logits.size(0) // 3
    teacher = torch.softmax(logits[:rows].detach(), -1)
    expected = torch.nn.functional.cross_entropy(logits[:rows], sample["target"][masked][:rows], reduction="sum")
    for part in (1, 2):
        expected = expected - (teacher * torch.log_softmax(logits[part * rows:(part + 1) * rows], -1)).sum()
    assert torch.allclose(loss, expected, rtol=1e-6) and int(sample_size) == 3 * rows
    # without the key the criterion is gpts_masked_lm: plain cross-entropy over every copy
    plain = _criterion()(model, {k: v for k, v in sample.items() if k != DISTILL_KEY})[0]
    full = torch.nn.functional.cross_entropy(logits, sample["target"][masked], reduction="sum")
    assert torch.allclose(plain, full, rtol=1e-6)


def test_repeat_batch_repeats_every_per_sentence_tensor():
    sample = _sample()
    repeated = repeat_batch(sample, 3)
    assert torch.equal(repeated["target"], sample["target"].repeat(3, 1))
    assert torch.equal(repeated["net_input"]["src_lengths"], sample["net_input"]["src_lengths"].repeat(3))
    assert repeated["nsentences"] == 9 and repeated["ntokens"] == 3 * sample["ntokens"]


def _rank_archs(rank, rendezvous, result_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    model = supernet(supernet_sampler="sandwich")
    seen = _train_archs(SuperNetExtension(None, _Context(11)), model, range(30))
    gathered = [None, None]
    torch.distributed.all_gather_object(gathered, seen)
    if rank == 0:
        with open(os.path.join(result_dir, "ranks.json"), "w") as handle:
            json.dump(gathered, handle)
    torch.distributed.destroy_process_group()


def test_sampled_subnets_are_identical_on_two_gloo_ranks(tmp_path):
    mp.spawn(_rank_archs, args=(str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = json.loads((tmp_path / "ranks.json").read_text())
    assert rank0 == rank1 and len({archs for archs, _ in rank0}) > 10


def test_latency_is_cached_and_refuses_few_runs(tmp_path, monkeypatch):
    space = supernet().space
    with pytest.raises(ValueError, match="--latency-runs"):
        LatencyTable(space, VOCAB, None, runs=MIN_RUNS - 1)
    table = LatencyTable(space, VOCAB, str(tmp_path / "latency.json"), length=16)
    arch = SubArch(1, 32, 2, 64)
    first = table(arch)
    assert first > 0
    monkeypatch.setattr(LatencyTable, "_measure", lambda self, arch: pytest.fail("measured again"))
    assert LatencyTable(space, VOCAB, str(tmp_path / "latency.json"), length=16)(arch) == first


def test_latency_predictor_fits_a_known_function():
    space = supernet().space
    archs = all_archs(space)
    truth = np.array([0.1 + 0.01 * a.layers * (a.hidden * (a.hidden + a.heads * 16 + a.ffn)) / 1000 for a in archs])
    predictor = LatencyPredictor(space, seed=1).fit(archs[::2], truth[::2], archs[1::2], truth[1::2])
    again = LatencyPredictor(space, seed=1).fit(archs[::2], truth[::2])
    assert predictor.held_out_error < 0.1
    assert np.array_equal(predictor.predict(archs), again.predict(archs))


def _toy_fitness(arch: SubArch) -> float:
    """A deterministic stand-in for the inherited-weight loss: bigger is better, with a twist."""
    return 5.0 - 0.1 * arch.layers - 0.01 * arch.hidden / 16 - 0.002 * arch.ffn / 32 + 0.03 * (arch.heads % 2)


def _search(tmp, settings, space, fitness=_toy_fitness):
    params = lambda a: sub_arch_params(space, a, VOCAB, POSITIONS)  # noqa: E731
    feasible = Feasibility(space, settings, params, None)
    return run_search(settings, space, fitness, feasible, os.path.join(tmp, "state.json"), progress=lambda _: None)


def test_search_is_deterministic_and_resumes_after_a_kill(tmp_path):
    space = Space.from_options("1:4", "32:128:16", "1:8", "32:512:32", 16, False)
    settings = SearchSettings(generations=4, population=10, seed=3, constraint="params", target=200_000)
    for name in "abc":
        os.makedirs(tmp_path / name)
    first = _search(tmp_path / "a", settings, space)
    assert _search(tmp_path / "b", settings, space) == first
    low, high = (bound * settings.target for bound in settings.window)
    assert all(low <= sub_arch_params(space, a, VOCAB, POSITIONS) <= high for a in first)
    assert len(first) == 40

    class Killed(Exception):
        pass

    calls = []

    def dies_in_generation_three(arch):
        calls.append(arch)
        if len(calls) == 25:
            raise Killed
        return _toy_fitness(arch)

    with pytest.raises(Killed):
        _search(tmp_path / "c", settings, space, dies_in_generation_three)
    state = json.loads((tmp_path / "c" / "state.json").read_text())
    assert len(state["generations"]) == 2  # the last complete generation
    resumed = _search(tmp_path / "c", settings, space)
    assert resumed == first and list(resumed) == list(first)


def test_search_refuses_changed_settings_and_impossible_constraints(tmp_path):
    space = Space.from_options("1:2", "32:64:16", "1:4", "32:128:32", 16, False)
    _search(str(tmp_path), SearchSettings(generations=1, population=4, seed=1), space)
    with pytest.raises(ValueError, match="--seed"):
        _search(str(tmp_path), SearchSettings(generations=2, population=4, seed=2), space)
    with pytest.raises(ValueError, match="--target"):
        Feasibility(space, SearchSettings(constraint="params", target=10), lambda a: 10_000, None)
    with pytest.raises(ValueError, match="--mode fast"):
        Feasibility(Space.from_options("1", "64", "1", "32", 16, False), SearchSettings(mode="fast"), len, None)
    for bad, option in ((dict(window=(1.2, 1.5)), "--window"), (dict(constraint="latency"), "--target"),
                        (dict(generations=0), "--generations"), (dict(population=1), "--population")):
        with pytest.raises(ValueError, match=option):
            SearchSettings(**bad).check()


def test_fast_mode_keeps_autotinybert_rules():
    space = Space.from_options("1:2", "32:128:16", "1:8", "32:256:16", 16, False)
    feasible = Feasibility(space, SearchSettings(mode="fast"), len, None)
    assert feasible.archs and all(1.6 * a.hidden <= a.ffn <= 1.9 * a.hidden and
                                  0.7 * a.hidden <= 16 * a.heads <= a.hidden for a in feasible.archs)


def test_pareto_front():
    points = [(1.0, 5.0), (2.0, 4.0), (1.5, 4.5), (3.0, 4.2), (2.5, 3.0), (0.5, 6.0)]
    assert [points[i] for i in pareto_front(points)] == [(0.5, 6.0), (1.0, 5.0), (1.5, 4.5), (2.0, 4.0), (2.5, 3.0)]

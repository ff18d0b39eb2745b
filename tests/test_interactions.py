"""GP-TS inside fairseq-train: history, exact resume, two processes, and the loop's edge cases."""

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import PACKAGE_DIR, TINY_MODEL, json_log, run_fairseq
from gpts_fairseq.bandit import ArmSpace, BanditWarning, make_policy
from gpts_fairseq.bandit.loop import InteractionLoop
from gpts_fairseq.masking import Psi
from gpts_fairseq.interactions.controller import InteractionController

RECORDER = Path(__file__).resolve().parent / "fairseq_recorder.py"
FIRST_PSI = Psi(0.15, 0.1, 0.1)
GP_TS = ["--user-dir", PACKAGE_DIR, "--task", "gpts_mlm", "--criterion", "gpts_masked_lm", "--gpts-policy", "gp-ts",
         "--gpts-interaction-updates", "5", "--gpts-reward-batches", "3", "--num-workers", "0"]


def read_history(save_dir):
    with open(Path(save_dir) / "gpts_history.jsonl") as handle:
        return [json.loads(line) for line in handle]


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "decision_time_s"} for r in records]


def test_history_and_exact_resume(tiny_corpus, tmp_path):
    """A run resumed from the mid-epoch checkpoint at update 20 (an interaction boundary) makes the same decisions, measures the
    same losses and ends with the same history as the uninterrupted run."""
    common = [tiny_corpus, *TINY_MODEL, *GP_TS, "--gpts-arms", "psi", "--gpts-context", "progress",
              "--max-update", "42", "--save-interval-updates", "10", "--keep-interval-updates", "10",
              "--validate-interval-updates", "10"]
    full = run_fairseq([*common, "--save-dir", tmp_path / "full"])
    history = read_history(tmp_path / "full")
    assert [r["interaction"] for r in history] == list(range(9))  # boundaries 5, 10, ..., 40, and the end at 42
    for before, after in zip(history, history[1:]):
        assert after["update"] == before["end_update"] == before["update"] + 5
        assert after["psi"] == before["next_psi"] and after["prev_val_loss"] == before["val_loss"]
    for record in history:
        assert record["reward"] == pytest.approx((record["prev_val_loss"] - record["val_loss"]) / record["prev_val_loss"])
        posterior = record["posterior"]
        assert posterior["dims"] == ["mask_prob"] and len(posterior["arms"]) == len(posterior["mean"]) == 10
    for record in history[:-1]:
        assert record["policy"] == "gp-ts" and record["decision_time_s"] > 0
        psi = record["next_psi"]
        assert psi["leave_unmasked_prob"] + psi["random_token_prob"] <= 1
    assert len({json.dumps(r["next_psi"]) for r in history}) > 1  # it explores
    last = history[-1]  # ended by --max-update: a reward, no decision
    assert (last["end_update"], last["next_psi"], last["decision_time_s"]) == (42, None, 0.0)
    progress = [line for line in full.stderr.splitlines() if "| gpts_fairseq.progress | gpts: update " in line]
    assert len(progress) == 9 and "gpts: update 42/42, psi rho=" in progress[-1]  # a line per interaction, on stderr

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    checkpoint = next((tmp_path / "full").glob("checkpoint_*_20.pt"))
    (resumed_dir / "checkpoint_last.pt").write_bytes(checkpoint.read_bytes())
    (resumed_dir / "gpts_history.jsonl").write_text('{"left over": "by a killed run"}\n')
    resumed = run_fairseq([*common, "--save-dir", resumed_dir])
    assert "Loaded checkpoint" in resumed.stderr + resumed.stdout
    assert without_timing(read_history(resumed_dir)) == without_timing(history)
    assert json_log(resumed, "valid")[-1]["valid_loss"] == json_log(full, "valid")[-1]["valid_loss"]

    # another reward definition is refused on resume, naming the option
    refused = run_fairseq([*common, "--save-dir", resumed_dir, "--gpts-reward-batches", "2"], check=False)
    assert refused.returncode != 0 and "--gpts-reward-batches: checkpoint 3, now 2" in refused.stderr

    # --reset-optimizer: fairseq counts from 0 again, the interaction in progress keeps its length
    reset_dir = tmp_path / "reset"
    reset_dir.mkdir()
    (reset_dir / "checkpoint_last.pt").write_bytes(checkpoint.read_bytes())
    run_fairseq([*common, "--max-update", "8", "--reset-optimizer", "--save-dir", reset_dir])
    reset_history = read_history(reset_dir)
    assert [(r["update"], r["end_update"]) for r in reset_history] == [(5 * k, 5 * k + 5) for k in range(5)] + [(25, 28)]
    assert without_timing(reset_history[:3]) == without_timing(history[:3])  # the checkpoint's records


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_reward_reuses_fairseqs_validation_at_the_same_update(tiny_corpus, tmp_path):
    """When fairseq validates at an interaction boundary with the reference masking, the reward
    takes that pass's loss instead of measuring again; the history is bit-identical to a run
    whose rewards are all measured by their own pass. Bounded by --max-epoch alone, the last
    update of the last epoch ends the interaction in progress (a reward, no decision)."""
    common = [tiny_corpus, *TINY_MODEL, *GP_TS, "--max-epoch", "2", "--no-save"]
    aligned = run_fairseq([*common, "--validate-interval-updates", "5", "--save-dir", tmp_path / "aligned"])
    own = run_fairseq([*common, "--validate-interval-updates", "1000", "--save-dir", tmp_path / "own"])
    reused = [line for line in (aligned.stdout + aligned.stderr).splitlines() if "reuses fairseq's validation" in line]
    assert [line.split("at update ")[1].split()[0] for line in reused] == ["5", "10", "15", "20"]
    assert "reuses fairseq's validation" not in own.stdout + own.stderr
    history = read_history(tmp_path / "aligned")
    assert without_timing(history) == without_timing(read_history(tmp_path / "own"))
    updates = int(json_log(aligned, "train")[-1]["train_num_updates"])
    assert [r["end_update"] for r in history] == [*range(5, updates, 5), updates] and updates % 5 != 0
    assert history[-1]["next_psi"] is None and all(r["next_psi"] is not None for r in history[:-1])


def test_two_processes_share_psi(tiny_corpus, tmp_path):
    """gloo, 2 CPU processes: rank 0 decides, both ranks mask every update with the same psi,
    on different samples."""
    port = _free_port()
    args = [tiny_corpus, *TINY_MODEL, *GP_TS, "--max-update", "30", "--no-save", "--save-dir", tmp_path / "save",
            "--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
            "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-no-spawn"]
    env = dict(os.environ, OMP_NUM_THREADS="1", GPTS_RECORD_PREFIX=str(tmp_path / "masks"))
    procs = [subprocess.Popen([sys.executable, RECORDER, *map(str, args), "--distributed-rank", str(rank)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for rank in (0, 1)]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    def train_rows(rank):
        with open(tmp_path / f"masks.{rank}.jsonl") as handle:
            rows = [json.loads(line) for line in handle]
        return [r for r in rows if not r["valid"]]

    rows0, rows1 = train_rows(0), train_rows(1)
    psi0 = [json.dumps(r["psi"]) for r in rows0]
    psi1 = [json.dumps(r["psi"]) for r in rows1]
    assert len(rows0) == len(rows1) > 25 and psi0 == psi1  # batch by batch, update by update
    assert len(set(psi0)) > 1  # psi changed during the run
    assert not set(rows0[0]["ids"]) & set(rows1[0]["ids"])  # different samples per rank
    history = read_history(tmp_path / "save")
    assert [r["interaction"] for r in history] == [0, 1, 2, 3, 4, 5]  # the last one ended by --max-update 30
    assert history[-1]["end_update"] == 30 and history[-1]["next_psi"] is None


def test_loop_non_finite_loss_keeps_arm_and_warns():
    policy = make_policy("gp-ts", space=ArmSpace.paper_grid("rho"), seed=3)
    loop = InteractionLoop(policy, FIRST_PSI)
    loop.start(10.0)
    first = loop.finish(9.0, update=5, epoch=1, progress=0.1)
    assert first["reward"] == pytest.approx(0.1)
    psi_before = loop.psi
    with pytest.warns(BanditWarning, match="no reward"):
        record = loop.finish(float("nan"), update=10, epoch=1, progress=0.2)
    assert record["reward"] is None and record["val_loss"] is None
    assert loop.psi == psi_before and policy.rewards.numel() == 1  # the bandit was not fed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = loop.finish(8.0, update=15, epoch=1, progress=0.3)
    assert record["prev_val_loss"] == 9.0  # measured against the last finite loss,
    assert record["reward_span"] == 2 and record["reward"] == pytest.approx(1 / 9 / 2)  # per interaction
    assert loop.finish(7.0, update=20, epoch=1, progress=0.4)["reward_span"] == 1


def test_loop_state_round_trip_through_torch_save(tmp_path):
    def fresh():
        return InteractionLoop(make_policy("gp-ts", space=ArmSpace.paper_grid("psi"), seed=5), FIRST_PSI)

    loop = fresh()
    loop.start(10.0)
    for step, loss in enumerate([9.5, 9.2, 9.1]):
        loop.finish(loss, update=5 * (step + 1), epoch=1, progress=0.1 * (step + 1))
    torch.save(loop.state_dict(), tmp_path / "state.pt")
    restored = fresh()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.history == loop.history and restored.psi == loop.psi
    a = loop.finish(8.8, update=20, epoch=1, progress=0.4)
    b = restored.finish(8.8, update=20, epoch=1, progress=0.4)
    assert without_timing([a]) == without_timing([b])


# -- the interaction controller, in-process with a fake reference loss --------------------------

def _controller(save_dir, *, policy="gp-ts", every=5, max_update=40, arms="rho", allow=False, **options):
    loop = None if policy == "constant" else InteractionLoop(
        make_policy(policy, space=ArmSpace.paper_grid(arms), seed=11), FIRST_PSI)
    options = {"--gpts-policy": policy, "--gpts-arms": arms, **options}
    return InteractionController(loop, FIRST_PSI, interaction_updates=every, max_update=max_update, max_epoch=0,
                                 save_dir=save_dir, options=options, allow_option_change=allow)


class _Wrapper(torch.nn.Module):
    """Stands for DDP: the controller must hand the inner module to the measurement."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def _fake_loss(calls, inner):
    def measure(module):
        assert module is inner
        calls.append(module)
        torch.rand(3)  # the global RNG must be left as it was
        return 10.0 / (1 + 0.1 * len(calls))
    return measure


def _drive(controller, updates, calls, *, epoch=1):
    """ψ per update, from the controller, for fairseq update numbers ``updates``."""
    inner = torch.nn.Linear(2, 2)
    model, psis = _Wrapper(inner), []
    for update in updates:
        rng = torch.get_rng_state()
        psis.append(controller.step(model, update, epoch, measure=_fake_loss(calls, inner)))
        assert torch.equal(torch.get_rng_state(), rng)
    return psis


def test_controller_interacts_at_boundaries_and_writes_history(tmp_path):
    controller, calls = _controller(tmp_path), []
    psis = _drive(controller, range(23), calls)
    assert len(calls) == 5  # the start, then the boundaries 5, 10, 15, 20
    history = read_history(tmp_path)
    assert [(r["update"], r["end_update"]) for r in history] == [(0, 5), (5, 10), (10, 15), (15, 20)]
    changes = [u for u in range(1, 23) if psis[u] != psis[u - 1]]
    assert set(changes) <= {5, 10, 15, 20} and changes  # ψ changes at boundaries only, and does change
    assert psis[-1] is controller.psi and psis[0] == FIRST_PSI


def test_controller_constant_policy_never_measures(tmp_path):
    controller, calls = _controller(tmp_path, policy="constant"), []
    assert set(_drive(controller, range(12), calls)) == {FIRST_PSI} and not calls
    assert "loop" not in controller.state_dict() and not (tmp_path / "gpts_history.jsonl").exists()


def test_controller_resume_is_exact(tmp_path):
    """Saved at update 17 (mid-interaction), loaded through torch.save/weights_only: the same ψ,
    losses and history as without the interruption."""
    full, calls_full = _controller(tmp_path / "full"), []
    psis_full = _drive(full, range(33), calls_full)

    first, calls = _controller(tmp_path / "resumed"), []
    psis = _drive(first, range(17), calls)
    torch.save({"state": first.state_dict()}, tmp_path / "ckpt.pt")
    (tmp_path / "resumed" / "gpts_history.jsonl").write_text("written after the checkpoint\n")
    resumed = _controller(tmp_path / "resumed")
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["state"])
    assert resumed.psi == psis[-1]
    clock = ("update", "epoch", "update_offset", "epoch_offset")
    assert [resumed.state_dict()[k] for k in clock] == [first.state_dict()[k] for k in clock]  # saved before a step
    psis += _drive(resumed, range(17, 33), calls)
    assert psis == psis_full
    assert without_timing(read_history(tmp_path / "resumed")) == without_timing(read_history(tmp_path / "full"))


def test_controller_keeps_interaction_length_when_fairseq_restarts_its_update_count(tmp_path):
    """--reset-optimizer: fairseq restarts at update 0; the interaction that was 2 updates
    old at the checkpoint still ends after 5 updates, and the history stays in order."""
    first, calls = _controller(tmp_path), []
    _drive(first, range(12), calls)
    state = first.state_dict()
    resumed = _controller(tmp_path)
    resumed.load_state_dict(state)
    _drive(resumed, range(0, 14), calls)
    history = read_history(tmp_path)
    assert [(r["update"], r["end_update"]) for r in history] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25)]


def _two_rank_worker(rank, port, tmp_path, results):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        controller, calls = _controller(tmp_path / f"rank{rank}"), []
        inner = torch.nn.Linear(2, 2)
        measure = _fake_loss(calls, inner) if rank == 0 else None  # only rank 0 may measure
        psis = [controller.step(inner, update, 1, measure=measure) for update in range(13)]
        state = controller.state_dict()
        # on resume every rank loads rank 0's checkpoint (fairseq saves on rank 0 only)
        leader_state = [state if rank == 0 else None]
        torch.distributed.broadcast_object_list(leader_state, src=0)
        resumed = _controller(tmp_path / f"rank{rank}")
        resumed.load_state_dict(leader_state[0])
        psis += [resumed.step(inner, update, 1, measure=measure) for update in range(13, 22)]
        resumed.end(inner, 22, 1, measure=measure)  # --max-update 22
        results.put((rank, [p.as_dict() for p in psis], sorted(state["loop"]), len(calls),
                     (resumed.loop.interaction, resumed.loop.start_update, resumed.psi.as_dict())))
    finally:
        torch.distributed.destroy_process_group()


def test_controller_two_ranks_agree_with_gloo(tmp_path):
    context = torch.multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    torch.multiprocessing.start_processes(_two_rank_worker, args=(_free_port(), tmp_path, results), nprocs=2,
                                          start_method="spawn")
    by_rank = dict((rank, rest) for rank, *rest in (results.get() for _ in range(2)))
    (psis0, keys0, calls0, end0), (psis1, keys1, calls1, end1) = by_rank[0], by_rank[1]
    assert psis0 == psis1 and len({json.dumps(p) for p in psis0}) > 1
    assert calls0 == 6 and calls1 == 0  # the start, the boundaries 5, 10, 15, 20 and the end at 22
    assert end0 == end1 and end0[:2] == (5, 22)  # both ranks count the last interaction
    assert "policy" in keys0 and "history" in keys0
    assert "policy" not in keys1 and "history" not in keys1  # a following rank holds ψ and counters only
    assert not (tmp_path / "rank1" / "gpts_history.jsonl").exists()


def test_controller_ends_the_last_interaction_without_a_decision(tmp_path):
    """--max-update 23: the interaction begun at 20 ends at 23 with the loss then; ψ stays."""
    controller, calls = _controller(tmp_path, max_update=23), []
    psis = _drive(controller, range(23), calls)
    inner = torch.nn.Linear(2, 2)
    controller.end(_Wrapper(inner), 23, 1, measure=_fake_loss(calls, inner))
    controller.end(_Wrapper(inner), 23, 1, measure=_fake_loss(calls, inner))  # once only
    history = read_history(tmp_path)
    assert [(r["update"], r["end_update"]) for r in history][-2:] == [(15, 20), (20, 23)] and len(calls) == 6
    last = history[-1]
    assert last["next_psi"] is None and last["psi"] == psis[-1].as_dict() and controller.psi == psis[-1]
    assert last["reward"] == pytest.approx((last["prev_val_loss"] - last["val_loss"]) / last["prev_val_loss"])
    assert last["posterior"]["quantity"] == "reward"  # the belief after the last reward
    resumed = _controller(tmp_path / "resumed", max_update=23)
    resumed.load_state_dict(controller.state_dict())
    assert without_timing(read_history(tmp_path / "resumed")) == without_timing(history)


def test_controller_ends_nothing_at_a_boundary_or_without_interactions(tmp_path):
    controller, calls = _controller(tmp_path, max_update=20), []
    _drive(controller, range(20), calls)
    inner = torch.nn.Linear(2, 2)
    controller.end(_Wrapper(inner), 15, 1, measure=_fake_loss(calls, inner))  # 15 ended one already
    assert len(read_history(tmp_path)) == 3 and len(calls) == 4
    constant = _controller(tmp_path / "constant", policy="constant")
    constant.end(_Wrapper(inner), 20, 1, measure=_fake_loss(calls, inner))
    assert len(calls) == 4


@pytest.mark.parametrize("policy, refused", [("gp-ts", True), ("random", True), ("schedule", False)])
def test_an_unmeasurable_reward_stops_a_policy_that_plays_arms(tmp_path, policy, refused):
    """The reference masking selects no token of the reward batches: the loss is NaN before the
    first interaction. gp-ts and random would play arms without rewards: refused, naming the
    option and the split; the schedule policy needs none."""
    controller = _controller(tmp_path, policy=policy, **{"--gpts-reward-batches": 2, "--valid-subset": "valid"})
    model = torch.nn.Linear(2, 2)
    if refused:
        with pytest.raises(ValueError, match=r"--gpts-reward-batches 2: the first 2 batches of the validation split "
                                             r"'valid'\) at the reference masking is nan"):
            controller.step(model, 0, 1, measure=lambda module: float("nan"))
    else:
        assert controller.step(model, 0, 1, measure=lambda module: float("nan")) == FIRST_PSI


def test_progress_line_per_interaction_on_stderr(tmp_path, capsys):
    """One INFO line per interaction, on stderr (the package's own handler, whatever the root
    logger's level): update/max-update, ψ in force, the last reward, time elapsed and left."""
    import logging

    progress = logging.getLogger("gpts_fairseq.progress")
    saved = progress.handlers[:], progress.level, progress.propagate
    progress.handlers.clear()  # as in a fresh interpreter, whatever ran before this test
    try:
        controller, calls = _controller(tmp_path, max_update=40), []
        _drive(controller, range(12), calls)
        lines = [line.split(" | ")[-1] for line in capsys.readouterr().err.splitlines() if "gpts_fairseq.progress" in line]
        assert [(type(h), h.stream) for h in progress.handlers] == [(logging.StreamHandler, sys.stderr)]
    finally:
        progress.handlers[:], progress.level, progress.propagate = saved
    assert len(lines) == 2 and lines[0].startswith("gpts: update 5/40, psi rho=")
    history = read_history(tmp_path)
    assert f"last reward {history[1]['reward']:.5f}" in lines[1] and " elapsed, ~" in lines[1] and lines[1].endswith(" left")
    rho = history[1]["next_psi"]["mask_prob"]
    assert f"psi rho={rho:.3f}" in lines[1]


@pytest.mark.parametrize("changed, message", [
    (dict(batches=3), "--gpts-reward-batches: checkpoint 21, now 3"),
    (dict(policy="constant"), "--gpts-policy: checkpoint 'gp-ts', now 'constant'"),
    (dict(arms="psi"), "--gpts-arms: checkpoint 'rho', now 'psi'"),
])
def test_resume_with_a_reward_option_changed_is_refused(tmp_path, changed, message):
    first = _controller(tmp_path, **{"--gpts-reward-batches": 21})
    _drive(first, range(12), [])
    options = {"--gpts-reward-batches": changed.pop("batches", 21)}
    with pytest.raises(ValueError, match="resuming would change what the rewards mean") as error:
        _controller(tmp_path, **changed, **options).load_state_dict(first.state_dict())
    assert message in str(error.value) and "--gpts-allow-option-change" in str(error.value)


def test_allowed_option_change_restarts_the_interaction_and_notes_it(tmp_path):
    first = _controller(tmp_path, **{"--gpts-reward-batches": 21})
    psis = _drive(first, range(12), [])
    resumed = _controller(tmp_path, allow=True, **{"--gpts-reward-batches": 3})
    resumed.load_state_dict(first.state_dict())
    assert resumed.psi == psis[-1]  # the bandit's configuration still fits: it keeps its observations and ψ
    calls = []
    _drive(resumed, range(12, 21), calls)
    assert len(calls) == 3  # a fresh start loss at update 12 (the old one was measured on 21 batches), then 15, 20
    history = read_history(tmp_path)
    assert [(r["interaction"], r["update"], r["end_update"]) for r in history] == [
        (0, 0, 5), (1, 5, 10), (2, 12, 15), (3, 15, 20)]
    assert history[1]["note"] == "resumed with other options: --gpts-reward-batches: checkpoint 21, now 3"


def test_allowed_switch_to_constant_plays_its_own_psi(tmp_path):
    """--gpts-policy constant from a gp-ts checkpoint trains at --mask-prob, not the bandit's ψ."""
    bandit = _controller(tmp_path)
    psis = _drive(bandit, range(23), [])
    assert psis[-1] != FIRST_PSI
    constant, calls = _controller(tmp_path, policy="constant", allow=True), []
    constant.load_state_dict(bandit.state_dict())
    assert set(_drive(constant, range(23, 40), calls)) == {FIRST_PSI} and not calls
    history = read_history(tmp_path)
    assert len(history) == 4 and "--gpts-policy: checkpoint 'gp-ts', now 'constant'" in history[-1]["note"]


def test_allowed_change_of_arm_space_starts_the_bandit_afresh(tmp_path):
    bandit = _controller(tmp_path)
    _drive(bandit, range(23), [])
    resumed = _controller(tmp_path, arms="psi", allow=True)
    resumed.load_state_dict(bandit.state_dict())
    assert resumed.psi == FIRST_PSI and resumed.loop.policy.rewards.numel() == 0
    _drive(resumed, range(23, 31), [])
    assert [r["interaction"] for r in read_history(tmp_path)] == [0, 1, 2, 3, 4, 5]


def test_controller_keeps_epoch_interactions_when_fairseq_restarts_its_epochs(tmp_path):
    """--reset-dataloader with one interaction per epoch: after the resume, the next fairseq
    epoch ends the interaction in progress (not the one after the checkpoint's epoch number)."""
    first, calls = _controller(tmp_path, every=0), []
    inner = torch.nn.Linear(2, 2)
    for update, epoch in enumerate([1, 1, 2, 2, 3, 3]):
        first.step(inner, update, epoch, measure=_fake_loss(calls, inner))
    resumed = _controller(tmp_path, every=0)
    resumed.load_state_dict(first.state_dict())
    for update, epoch in zip(range(6, 10), [1, 1, 2, 2]):  # the data loader starts again at epoch 1
        resumed.step(inner, update, epoch, measure=_fake_loss(calls, inner))
    history = read_history(tmp_path)
    assert [(r["epoch"], r["update"], r["end_update"]) for r in history] == [(1, 0, 2), (2, 2, 4), (3, 4, 8)]

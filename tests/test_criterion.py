"""The gpts_masked_lm criterion: the <mask>/random/kept split knows which position each logit
row is, and the gpts training step waits on the host no more often than fairseq's own."""

import warnings

import pytest
import torch

from conftest import PACKAGE_DIR, TINY_MODEL

fairseq = pytest.importorskip("fairseq")
from fairseq import options, tasks  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402
from fairseq.tasks import FairseqTask  # noqa: E402

SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu")


def _setup(data, criterion, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data), *map(str, TINY_MODEL), "--user-dir", str(PACKAGE_DIR),
                                                "--task", "gpts_mlm", "--criterion", criterion, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    return task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def _clean_batch(task, size=8):
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    return dataset.collater([dataset[i] for i in range(size)])


class _SyncCounter:
    """Counts calls of the Tensor methods that copy a value to the host."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in SYNCS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def method(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)
        return method


def test_gpts_path_adds_no_host_sync(tiny_corpus, monkeypatch):
    """gpts_mlm's train_step with gpts_masked_lm (masking, statistics, ψ) syncs exactly as
    often as fairseq's own train_step with masked_lm on the same masked batch."""
    task, model, gpts_criterion = _setup(tiny_corpus, "gpts_masked_lm")
    masked_lm = _setup(tiny_corpus, "masked_lm")[2]
    sample = _clean_batch(task)
    masked = task.mask_sample(sample, task.psi, step=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    optimizer.backward = lambda loss: loss.backward()  # the one method fairseq's train_step calls

    counter = _SyncCounter(monkeypatch)
    FairseqTask.train_step(task, masked, model, masked_lm, optimizer, update_num=0)
    stock = counter.count
    counter.count = 0
    task.mask_sample(sample, task.psi, step=1)
    masking = counter.count  # the range check of CPU sample ids (skipped for GPU tensors)
    assert masking <= 2
    counter.count = 0
    task.train_step(sample, model, gpts_criterion, optimizer, update_num=0)
    assert counter.count == stock + masking


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpts_train_step_never_syncs_on_cuda(tiny_corpus):
    """What gpts adds to a training step (ψ, masking, the statistics) runs under
    set_sync_debug_mode("error"); the whole step syncs as often as fairseq's masked_lm step
    (its boolean indexing of the selected positions does)."""
    task, model, criterion = _setup(tiny_corpus, "gpts_masked_lm")
    masked_lm = _setup(tiny_corpus, "masked_lm")[2]
    model = model.cuda()
    sample = fairseq.utils.move_to_cuda(_clean_batch(task))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    optimizer.backward = lambda loss: loss.backward()
    task.train_step(sample, model, criterion, optimizer, update_num=0)  # warm-up (allocations, lazy init)
    torch.cuda.synchronize()
    masked = task.mask_sample(sample, task.psi, step=1)
    with torch.no_grad():
        logits = model(**masked["net_input"])[0]
    torch.cuda.set_sync_debug_mode("error")
    try:
        psi = task.interactions.step(model, 1, 1, measure=None)
        masked = task.mask_sample(sample, psi, step=1)
        criterion._masking_statistics(masked, logits, None)
    finally:
        torch.cuda.set_sync_debug_mode("default")

    def syncs(step):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    stock = syncs(lambda: FairseqTask.train_step(task, masked, model, masked_lm, optimizer, update_num=1))
    assert syncs(lambda: task.train_step(sample, model, criterion, optimizer, update_num=1)) == stock


@pytest.mark.parametrize("project_all", [False, True])
def test_kind_split_covers_every_selected_position(tiny_corpus, project_all):
    """Whether the model projects the selected positions only or all of them (masked_lm on
    TPU), the split's counts add up to the sample size and its losses to the loss."""
    task, model, criterion = _setup(tiny_corpus, "gpts_masked_lm")
    criterion.tpu = project_all
    model.eval()
    masked = task.mask_sample(_clean_batch(task), task.psi, step=1)
    loss, sample_size, log = criterion(model, masked)
    counts = [log[f"gpts_n_{kind}"] for kind in ("mask", "random", "kept")]
    assert all(torch.is_tensor(value) for value in log.values() if not isinstance(value, int))
    assert int(sum(counts)) == int(sample_size) > 0 and all(int(c) > 0 for c in counts)
    split = sum(log[f"gpts_loss_{kind}"] for kind in ("mask", "random", "kept"))
    assert float(split) == pytest.approx(float(loss), rel=1e-4)

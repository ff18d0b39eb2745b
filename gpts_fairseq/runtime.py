"""The runtime jobs every method shares, each defined once: where this process stands among
fairseq's data-parallel workers, the model inside its wrappers, one broadcast from the first
rank, generators keyed by what they are for, one-thread blocks and the RNG fork around side
computations.

Importing this module does not import fairseq (the bandit, which is fairseq-free, uses the
generators and ``single_thread``); the distributed functions import it when called.
"""

import contextlib
import hashlib

import torch


def data_parallel_rank_and_size() -> tuple[int, int]:
    """(rank, world size) in fairseq's data-parallel group; (0, 1) when not distributed."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return 0, 1
    from fairseq.distributed import utils as distributed_utils

    return distributed_utils.get_data_parallel_rank(), distributed_utils.get_data_parallel_world_size()


def is_leader() -> bool:
    """Whether this process is the first data-parallel rank (the one that decides and writes)."""
    return data_parallel_rank_and_size()[0] == 0


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP and fairseq's wrappers (every ``.module`` that is a module)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def data_parallel_group():
    """fairseq's data-parallel process group and the global rank of its first member."""
    from fairseq.distributed import utils as distributed_utils

    group = distributed_utils.get_data_parallel_group()
    return group, torch.distributed.get_global_rank(group, 0)


def collective_device(group) -> torch.device:
    """Where tensors of a collective on ``group`` live: the current CUDA device under NCCL
    (which takes nothing else), the CPU otherwise."""
    if torch.distributed.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_from_leader(tensor: torch.Tensor) -> torch.Tensor:
    """The first data-parallel rank's ``tensor`` on every rank, on the CPU (each rank passes a
    tensor of the same shape and dtype; the leader's is returned unchanged where not distributed)."""
    if data_parallel_rank_and_size()[1] == 1:
        return tensor
    group, leader = data_parallel_group()
    buffer = tensor.to(collective_device(group))
    torch.distributed.broadcast(buffer, src=leader, group=group)
    return buffer.cpu()


def seeded_generator(key: str) -> torch.Generator:
    """A CPU generator seeded from the sha256 of ``key`` alone: a draw never depends on what
    ran before it, so a resumed run reproduces it without saving generator state."""
    digest = hashlib.sha256(key.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def keyed_generator(seed: int, *key) -> torch.Generator:
    """The generator of (seed, *key), e.g. ``keyed_generator(seed, "sample", epoch)``."""
    return seeded_generator(repr((int(seed), *key)))


@contextlib.contextmanager
def single_thread():
    """Run the block with one intra-op thread: reductions then do not depend on the thread
    count (nor on the machine's cores), so the results are bitwise reproducible."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fork_rngs():
    """A context that restores, on exit, the CPU generator and every CUDA device's generator.
    CUDA is left uninitialised when it is: its generators are forked only once CUDA is in use
    (their state lives on the host, so reading it creates no device context)."""
    cuda_in_use = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = range(torch.cuda.device_count()) if cuda_in_use else []
    return torch.random.fork_rng(devices=devices, device_type="cuda")

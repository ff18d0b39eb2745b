"""Where this process stands among fairseq's data-parallel workers, and the RNG fork around side
computations (a reference loss, selection features) that must leave the training step's random
streams as they were. Shared by the task, growth and subsets, which cannot import each other."""

import torch
from fairseq.distributed import utils as distributed_utils


def data_parallel_rank_and_size() -> tuple[int, int]:
    """(rank, world size) in fairseq's data-parallel group; (0, 1) when not distributed."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return 0, 1
    return distributed_utils.get_data_parallel_rank(), distributed_utils.get_data_parallel_world_size()


def fork_rngs():
    """A context that restores, on exit, the CPU generator and every CUDA device's generator.
    CUDA is left uninitialised when it is: its generators are forked only once CUDA is in use
    (their state lives on the host, so reading it creates no device context)."""
    cuda_in_use = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = range(torch.cuda.device_count()) if cuda_in_use else []
    return torch.random.fork_rng(devices=devices, device_type="cuda")

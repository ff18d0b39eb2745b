"""The shared rank query and RNG fork (used by the interaction controller, growth and subsets)."""

import pytest
import torch

from gpts_fairseq.runtime import data_parallel_rank_and_size, fork_rngs


def test_a_single_process_is_rank_0_of_1():
    assert not torch.distributed.is_initialized()
    assert data_parallel_rank_and_size() == (0, 1)


def test_fork_restores_the_cpu_generator():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with fork_rngs():
        torch.rand(100)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fork_restores_every_cuda_device():
    torch.cuda.init()
    devices = [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
    states = [torch.cuda.get_rng_state(device) for device in devices]
    with fork_rngs():
        for device in devices:
            torch.rand(100, device=device)
    assert all(torch.equal(torch.cuda.get_rng_state(d), s) for d, s in zip(devices, states))

// CUDA kernels of gpts::mask_tokens: the same decision functions as the CPU kernel
// (csrc/mask_tokens.h), one pass on the current stream, no host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../mask_tokens.h"
#include "../mask_tokens_args.h"

namespace gpts {
namespace {

constexpr int kThreads = 256;

// Fast path: one thread per four positions of a row (one selection block each).
template <typename index_t>
__global__ void mask_quads_kernel(MaskParams p, const index_t* tokens, const int64_t* sample_ids,
                                  index_t* source, index_t* target, int64_t length,
                                  int64_t quads, int64_t tasks) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t task = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; task < tasks;
       task += stride) {
    const int64_t row = task / quads;
    const int64_t offset = row * length;
    mask_quad_fast(p, tokens + offset, source + offset, target + offset, task % quads, length,
                   static_cast<uint32_t>(sample_ids[row]));
  }
}

// General path: one thread per row, exact-mode keys in that row's slice of scratch.
template <typename index_t>
__global__ void mask_rows_kernel(MaskParams p, const index_t* tokens, const int64_t* sample_ids,
                                 index_t* source, index_t* target, int64_t batch, int64_t length,
                                 uint64_t* scratch) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < batch;
       row += stride) {
    const int64_t offset = row * length;
    mask_row(p, tokens + offset, source + offset, target + offset, length,
             static_cast<uint32_t>(sample_ids[row]),
             scratch == nullptr ? nullptr : scratch + 2 * offset);
  }
}

int blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 ? blocks : 65535);  // grid-stride loops cover the rest
}

MaskTokensOutputs mask_tokens_cuda(const MaskTokensArgs& args) {
  const MaskParams p = check_and_pack(args);
  const at::Tensor& tokens = args.tokens;
  const c10::cuda::CUDAGuard device_guard(tokens.device());
  at::Tensor source = at::empty_like(tokens);
  at::Tensor target = at::empty_like(tokens);
  if (tokens.numel() == 0) {
    return {source, target};
  }
  const int64_t batch = tokens.size(0);
  const int64_t length = tokens.size(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool fast = is_fast_path(p);
  at::Tensor scratch;
  if (!fast && p.exact) {
    scratch = at::empty({batch, 2 * length}, tokens.options().dtype(at::kLong));
  }
  AT_DISPATCH_INDEX_TYPES(tokens.scalar_type(), "mask_tokens_cuda", [&] {
    const index_t* in = tokens.data_ptr<index_t>();
    const int64_t* ids = args.sample_ids.data_ptr<int64_t>();
    index_t* out_source = source.data_ptr<index_t>();
    index_t* out_target = target.data_ptr<index_t>();
    if (fast) {
      const int64_t quads = (length + 3) / 4;
      mask_quads_kernel<index_t><<<blocks_for(batch * quads), kThreads, 0, stream>>>(
          p, in, ids, out_source, out_target, length, quads, batch * quads);
    } else {
      uint64_t* keys = scratch.defined() ? reinterpret_cast<uint64_t*>(scratch.data_ptr<int64_t>())
                                         : nullptr;
      mask_rows_kernel<index_t><<<blocks_for(batch), kThreads, 0, stream>>>(
          p, in, ids, out_source, out_target, batch, length, keys);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {source, target};
}

}  // namespace
}  // namespace gpts

TORCH_LIBRARY_IMPL(gpts, CUDA, m) {
  m.impl("mask_tokens", &gpts::mask_tokens_entry<gpts::mask_tokens_cuda>);
}

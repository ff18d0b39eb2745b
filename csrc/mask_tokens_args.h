// Host-side argument checking shared by the CPU and CUDA entry points of gpts::mask_tokens.
#pragma once

#include <ATen/core/Tensor.h>

#include "mask_tokens.h"

namespace gpts {

// Checks every argument of the op (a clear error naming the argument, before any work) and
// packs them for the kernels. Checks that read tensor values (sample_ids range, the last table
// entries) run only for CPU tensors: on a GPU they would synchronise the host.
MaskParams check_and_pack(
    const at::Tensor& tokens, const at::Tensor& sample_ids, const at::Tensor& maskable,
    const at::Tensor& word_start, const at::Tensor& replace_cdf, const at::Tensor& span_cdf,
    int64_t seed, int64_t step, double mask_prob, double leave_unmasked_prob,
    double random_token_prob, int64_t mask_multiple_length, bool exact, int64_t mask_idx,
    int64_t pad_idx);

// Bernoulli, one token per unit and a two-entry span table: no per-row pass is needed.
inline bool is_fast_path(const MaskParams& p) {
  return !p.exact && p.word_start == nullptr && p.span_table_size == 2;
}

}  // namespace gpts

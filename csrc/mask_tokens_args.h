// The op's arguments as one struct, shared by the CPU and CUDA entry points of gpts::mask_tokens.
// Adding an argument: the schema string (mask_tokens.cpp), MaskTokensArgs and mask_tokens_entry
// below, and MaskTokensArgs in gpts_fairseq/masking/spec.py (a test checks the names match).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "mask_tokens.h"

namespace gpts {

// The arguments of gpts::mask_tokens, in schema order (docs/masking-algorithm.md, Inputs).
struct MaskTokensArgs {
  at::Tensor tokens;
  at::Tensor sample_ids;
  at::Tensor maskable;
  at::Tensor word_start;
  at::Tensor replace_cdf;
  at::Tensor span_cdf;
  int64_t seed;
  int64_t step;
  double mask_prob;
  double leave_unmasked_prob;
  double random_token_prob;
  int64_t mask_multiple_length;
  bool exact;
  int64_t mask_idx;
  int64_t pad_idx;
};

using MaskTokensOutputs = std::tuple<at::Tensor, at::Tensor>;  // (source, target)

// The dispatcher's entry point: the schema's arguments, packed once into MaskTokensArgs for a
// device kernel. Registered as `&mask_tokens_entry<kernel>`, so the dispatcher checks this
// signature against the schema when the op is loaded.
template <MaskTokensOutputs (*Kernel)(const MaskTokensArgs&)>
MaskTokensOutputs mask_tokens_entry(
    const at::Tensor& tokens, const at::Tensor& sample_ids, const at::Tensor& maskable,
    const at::Tensor& word_start, const at::Tensor& replace_cdf, const at::Tensor& span_cdf,
    int64_t seed, int64_t step, double mask_prob, double leave_unmasked_prob,
    double random_token_prob, int64_t mask_multiple_length, bool exact, int64_t mask_idx,
    int64_t pad_idx) {
  return Kernel(MaskTokensArgs{tokens, sample_ids, maskable, word_start, replace_cdf, span_cdf,
                               seed, step, mask_prob, leave_unmasked_prob, random_token_prob,
                               mask_multiple_length, exact, mask_idx, pad_idx});
}

// Checks every argument (a clear error naming it, before any work) and packs them for the
// kernels. Checks that read tensor values (sample_ids range, the last table entries) run only
// for CPU tensors: on a GPU they would synchronise the host.
MaskParams check_and_pack(const MaskTokensArgs& args);

// Bernoulli, one token per unit and a two-entry span table: no per-row pass is needed.
inline bool is_fast_path(const MaskParams& p) {
  return !p.exact && p.word_start == nullptr && p.span_table_size == 2;
}

}  // namespace gpts

// gpts::mask_tokens: schema, argument checks and the CPU kernel (the fake kernel for
// torch.compile, with the same checks on shapes, dtypes and devices, is registered in
// gpts_fairseq/masking/ops.py). Loading the extension module (gpts_fairseq._C) registers the op.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "mask_tokens.h"
#include "mask_tokens_args.h"

namespace gpts {
namespace {

constexpr int64_t kTokensPerTask = 16384;  // parallel_for grain, in tokens

uint64_t threshold(double probability) {
  const double scaled = std::floor(probability * 4294967296.0);
  return scaled >= 4294967296.0 ? kTwoPow32 : static_cast<uint64_t>(scaled);
}

bool in_unit_interval(double x) {
  return x >= 0.0 && x <= 1.0;  // false for NaN
}

void check_table(const at::Tensor& table, const char* name, at::ScalarType dtype,
                 const at::Tensor& tokens) {
  TORCH_CHECK_TYPE(table.scalar_type() == dtype, "mask_tokens: ", name, " must be ",
                   c10::toString(dtype), ", got ", table.scalar_type());
  TORCH_CHECK_VALUE(table.dim() == 1, "mask_tokens: ", name, " must be 1-D, got shape ",
                    table.sizes());
  TORCH_CHECK_VALUE(table.is_contiguous(), "mask_tokens: ", name, " must be contiguous");
  TORCH_CHECK_VALUE(table.device() == tokens.device(), "mask_tokens: ", name,
                    " must be on the device of tokens (", tokens.device(), "), got ",
                    table.device());
}

void check_ends_at_two_pow_32(const at::Tensor& table, const char* name) {
  if (table.device().is_cpu() && table.numel() > 0) {
    const int64_t last = table.data_ptr<int64_t>()[table.numel() - 1];
    TORCH_CHECK_VALUE(last == static_cast<int64_t>(kTwoPow32), "mask_tokens: ", name,
                      " must end with 2**32 (a cumulative threshold table), got ", last);
  }
}

void check_args(const MaskTokensArgs& args) {
  const at::Tensor& tokens = args.tokens;
  const at::Tensor& sample_ids = args.sample_ids;
  TORCH_CHECK_TYPE(tokens.scalar_type() == at::kInt || tokens.scalar_type() == at::kLong,
                   "mask_tokens: tokens must be int32 or int64, got ", tokens.scalar_type());
  TORCH_CHECK_VALUE(tokens.dim() == 2, "mask_tokens: tokens must be 2-D [batch, length], got shape ",
                    tokens.sizes());
  TORCH_CHECK_VALUE(tokens.is_contiguous(), "mask_tokens: tokens must be contiguous");

  TORCH_CHECK_TYPE(sample_ids.scalar_type() == at::kLong,
                   "mask_tokens: sample_ids must be int64, got ", sample_ids.scalar_type());
  TORCH_CHECK_VALUE(sample_ids.dim() == 1 && sample_ids.size(0) == tokens.size(0),
                    "mask_tokens: sample_ids must have shape [", tokens.size(0),
                    "] (one id per row of tokens), got ", sample_ids.sizes());
  TORCH_CHECK_VALUE(sample_ids.is_contiguous(), "mask_tokens: sample_ids must be contiguous");
  TORCH_CHECK_VALUE(sample_ids.device() == tokens.device(),
                    "mask_tokens: sample_ids must be on the device of tokens (", tokens.device(),
                    "), got ", sample_ids.device());
  if (sample_ids.device().is_cpu() && sample_ids.numel() > 0) {
    const int64_t* ids = sample_ids.data_ptr<int64_t>();
    const auto range = std::minmax_element(ids, ids + sample_ids.numel());
    TORCH_CHECK_VALUE(*range.first >= 0 && *range.second < static_cast<int64_t>(kTwoPow32),
                      "mask_tokens: sample_ids must be in [0, 2**32), got values in [",
                      *range.first, ", ", *range.second, "]");
  }

  check_table(args.maskable, "maskable", at::kBool, tokens);
  const int64_t vocab_size = args.maskable.numel();
  TORCH_CHECK_VALUE(vocab_size >= 1, "mask_tokens: maskable must have one entry per vocabulary id (V >= 1)");
  check_table(args.word_start, "word_start", at::kBool, tokens);
  TORCH_CHECK_VALUE(args.word_start.numel() == 0 || args.word_start.numel() == vocab_size,
                    "mask_tokens: word_start must be empty or have shape [", vocab_size,
                    "] (the vocabulary), got ", args.word_start.sizes());
  check_table(args.replace_cdf, "replace_cdf", at::kLong, tokens);
  TORCH_CHECK_VALUE(args.replace_cdf.numel() == vocab_size, "mask_tokens: replace_cdf must have shape [",
                    vocab_size, "] (the vocabulary), got ", args.replace_cdf.sizes());
  check_ends_at_two_pow_32(args.replace_cdf, "replace_cdf");
  check_table(args.span_cdf, "span_cdf", at::kLong, tokens);
  TORCH_CHECK_VALUE(args.span_cdf.numel() >= 2, "mask_tokens: span_cdf must have Lmax + 1 >= 2 entries, got shape ",
                    args.span_cdf.sizes());
  check_ends_at_two_pow_32(args.span_cdf, "span_cdf");

  TORCH_CHECK_VALUE(args.step >= 0 && args.step < static_cast<int64_t>(kTwoPow32),
                    "mask_tokens: step must be in [0, 2**32), got ", args.step);
  TORCH_CHECK_VALUE(in_unit_interval(args.mask_prob), "mask_tokens: mask_prob must be in [0, 1], got ",
                    args.mask_prob);
  TORCH_CHECK_VALUE(in_unit_interval(args.leave_unmasked_prob),
                    "mask_tokens: leave_unmasked_prob must be in [0, 1], got ", args.leave_unmasked_prob);
  TORCH_CHECK_VALUE(in_unit_interval(args.random_token_prob),
                    "mask_tokens: random_token_prob must be in [0, 1], got ", args.random_token_prob);
  TORCH_CHECK_VALUE(args.leave_unmasked_prob + args.random_token_prob <= 1.0,
                    "mask_tokens: leave_unmasked_prob + random_token_prob must be <= 1, got ",
                    args.leave_unmasked_prob, " + ", args.random_token_prob);
  TORCH_CHECK_VALUE(args.mask_multiple_length >= 1,
                    "mask_tokens: mask_multiple_length must be >= 1, got ", args.mask_multiple_length);
  TORCH_CHECK_VALUE(args.mask_idx >= 0 && args.mask_idx < vocab_size, "mask_tokens: mask_idx must be in [0, ",
                    vocab_size, ") (the vocabulary), got ", args.mask_idx);
  TORCH_CHECK_VALUE(args.pad_idx >= 0 && args.pad_idx < vocab_size, "mask_tokens: pad_idx must be in [0, ",
                    vocab_size, ") (the vocabulary), got ", args.pad_idx);
}

}  // namespace

MaskParams check_and_pack(const MaskTokensArgs& args) {
  check_args(args);
  MaskParams p;
  p.seed = static_cast<uint64_t>(args.seed);
  p.step = static_cast<uint32_t>(args.step);
  p.select_threshold = threshold(args.mask_prob / static_cast<double>(args.mask_multiple_length));
  p.keep_threshold = threshold(args.leave_unmasked_prob);
  p.random_threshold = threshold(args.leave_unmasked_prob + args.random_token_prob);
  p.mask_prob = args.mask_prob;
  p.mask_multiple_length = args.mask_multiple_length;
  p.exact = args.exact;
  p.mask_idx = args.mask_idx;
  p.pad_idx = args.pad_idx;
  p.vocab_size = args.maskable.numel();
  p.maskable = args.maskable.data_ptr<bool>();
  p.word_start = args.word_start.numel() == 0 ? nullptr : args.word_start.data_ptr<bool>();
  p.replace_cdf = args.replace_cdf.data_ptr<int64_t>();
  p.span_cdf = args.span_cdf.data_ptr<int64_t>();
  p.span_table_size = args.span_cdf.numel();
  return p;
}

namespace {

// Fast path on the CPU: 64 positions at a time, the selection blocks first and the candidates
// after, so independent Philox blocks overlap instead of waiting behind unpredictable branches.
// The decisions are the header's (fast_candidate, fast_mask_candidate), as on the GPU.
constexpr int64_t kChunk = 64;

template <typename index_t>
void mask_chunk_fast(const MaskParams& p, const index_t* tokens, index_t* source, index_t* target,
                     int64_t first, int64_t length, uint32_t sample_id) {
  const int64_t count = std::min(kChunk, length - first);
  uint32_t select[kChunk];
  // u_sel of positions first, first + 1, ...: consecutive words of one stream (first % 4 == 0)
  at::Philox4_32 stream = philox_stream(p, sample_id, kStreamSelect, static_cast<uint32_t>(first >> 2));
  for (int64_t j = 0; j < count; ++j) select[j] = stream();
  int64_t candidates[kChunk];
  int64_t found = 0;
  const index_t pad = static_cast<index_t>(p.pad_idx);
  for (int64_t j = 0; j < count; ++j) {
    const index_t token = tokens[first + j];
    source[first + j] = token;
    target[first + j] = pad;
    candidates[found] = first + j;
    found += fast_candidate(p, token, select[j]) ? 1 : 0;
  }
  for (int64_t c = 0; c < found; ++c) {
    const int64_t t = candidates[c];
    fast_mask_candidate(p, tokens[t], t, sample_id, source + t, target + t);
  }
}

template <typename index_t>
void mask_batch_cpu(const MaskParams& p, const at::Tensor& tokens, const at::Tensor& sample_ids,
                    at::Tensor& source, at::Tensor& target) {
  const int64_t batch = tokens.size(0);
  const int64_t length = tokens.size(1);
  const index_t* in = tokens.data_ptr<index_t>();
  index_t* out_source = source.data_ptr<index_t>();
  index_t* out_target = target.data_ptr<index_t>();
  const int64_t* ids = sample_ids.data_ptr<int64_t>();
  if (is_fast_path(p)) {
    const int64_t chunks = (length + kChunk - 1) / kChunk;
    at::parallel_for(0, batch * chunks, kTokensPerTask / kChunk, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t row = task / chunks;
        const int64_t offset = row * length;
        mask_chunk_fast(p, in + offset, out_source + offset, out_target + offset,
                        (task % chunks) * kChunk, length, static_cast<uint32_t>(ids[row]));
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kTokensPerTask / length);
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> scratch(p.exact ? 2 * length : 0);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t offset = row * length;
      mask_row(p, in + offset, out_source + offset, out_target + offset, length,
               static_cast<uint32_t>(ids[row]), scratch.data());
    }
  });
}

MaskTokensOutputs mask_tokens_cpu(const MaskTokensArgs& args) {
  const MaskParams p = check_and_pack(args);
  const at::Tensor& tokens = args.tokens;
  at::Tensor source = at::empty_like(tokens);
  at::Tensor target = at::empty_like(tokens);
  if (tokens.numel() == 0) {
    return {source, target};
  }
  AT_DISPATCH_INDEX_TYPES(tokens.scalar_type(), "mask_tokens_cpu", [&] {
    mask_batch_cpu<index_t>(p, tokens, args.sample_ids, source, target);
  });
  return {source, target};
}

}  // namespace
}  // namespace gpts

TORCH_LIBRARY(gpts, m) {
  m.def(
      "mask_tokens(Tensor tokens, Tensor sample_ids, Tensor maskable, Tensor word_start, "
      "Tensor replace_cdf, Tensor span_cdf, int seed, int step, float mask_prob, "
      "float leave_unmasked_prob, float random_token_prob, int mask_multiple_length, "
      "bool exact, int mask_idx, int pad_idx) -> (Tensor source, Tensor target)");
}

TORCH_LIBRARY_IMPL(gpts, CPU, m) {
  m.impl("mask_tokens", &gpts::mask_tokens_entry<gpts::mask_tokens_cpu>);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "gpts_fairseq compiled ops; importing it registers torch.ops.gpts.mask_tokens";
}

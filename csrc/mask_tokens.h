// The per-token and per-row decisions of docs/masking-algorithm.md, shared by the CPU and the
// CUDA kernel: both include this header, so the CPU tests exercise the logic the GPU runs.
// Everything here is plain integer/double arithmetic on raw pointers (no ATen tensors), callable
// on the host and on the device.
#pragma once

#include <ATen/core/PhiloxRNGEngine.h>
#include <c10/macros/Macros.h>

#include <cstdint>

namespace gpts {

constexpr uint32_t kStreamSelect = 0;  // u_sel: counter p >> 2, word p & 3
constexpr uint32_t kStreamRank = 1;    // u_rank: counter p >> 2, word p & 3
constexpr uint32_t kStreamToken = 2;   // counter p: (u_kind, u_repl, u_len, unused)
constexpr uint32_t kStreamCount = 3;   // counter 0, word 0: u_count
constexpr uint64_t kTwoPow32 = 4294967296ull;
constexpr double kInvTwoPow32 = 2.3283064365386963e-10;  // 2**-32, exactly

// Everything the kernels read besides the token rows; built and validated on the host.
struct MaskParams {
  uint64_t seed;
  uint32_t step;
  uint64_t select_threshold;  // thr(rho / L)
  uint64_t keep_threshold;    // thr(gamma)
  uint64_t random_threshold;  // thr(gamma + lambda)
  double mask_prob;
  int64_t mask_multiple_length;
  bool exact;
  int64_t mask_idx;
  int64_t pad_idx;
  int64_t vocab_size;
  const bool* maskable;         // [vocab_size]
  const bool* word_start;       // [vocab_size], or nullptr: every token is its own unit
  const int64_t* replace_cdf;   // [vocab_size]
  const int64_t* span_cdf;      // [span_table_size]
  int64_t span_table_size;      // Lmax + 1
};

// The four words of Philox4x32-10 at counter (c0, sample_id, step, stream) under the seed.
struct Words {
  uint32_t w[4];
};

// ATen's Philox engine positioned at counter (c0, sample_id, step, stream). Each call returns
// the next word: the four words of c0, then those of c0 + 1, ... (the engine increments c0).
C10_HOST_DEVICE inline at::Philox4_32 philox_stream(
    const MaskParams& p, uint32_t sample_id, uint32_t stream, uint32_t c0) {
  return at::Philox4_32(p.seed, (static_cast<uint64_t>(stream) << 32) | p.step,
                        (static_cast<uint64_t>(sample_id) << 32) | c0);
}

C10_HOST_DEVICE inline Words philox_words(
    const MaskParams& p, uint32_t sample_id, uint32_t stream, uint32_t c0) {
  at::Philox4_32 engine = philox_stream(p, sample_id, stream, c0);
  Words out;
  out.w[0] = engine();
  out.w[1] = engine();
  out.w[2] = engine();
  out.w[3] = engine();
  return out;
}

// Smallest m in [0, size) with u < cdf[m] (cdf non-decreasing, last entry 2**32). The search
// starts where a uniform table would put u (there, it ends within a step or two: uniform
// random replacement is the common case), then gallops outwards and bisects. Any exact search
// gives the same m.
C10_HOST_DEVICE inline int64_t first_above(const int64_t* cdf, int64_t size, uint32_t u) {
  const int64_t value = static_cast<int64_t>(u);
  const int64_t guess = static_cast<int64_t>((static_cast<uint64_t>(u) * static_cast<uint64_t>(size)) >> 32);
  int64_t low;   // -1 or an index with cdf[low] <= value
  int64_t high;  // an index with value < cdf[high]
  int64_t step = 1;
  if (value < cdf[guess]) {
    high = guess;
    low = guess - 1;
    while (low >= 0 && value < cdf[low]) {
      high = low;
      low = high - step;
      step <<= 1;
    }
    if (low < -1) low = -1;
  } else {
    low = guess;
    high = guess + 1;
    while (high < size - 1 && cdf[high] <= value) {
      low = high;
      high = low + step;
      step <<= 1;
    }
    if (high > size - 1) high = size - 1;
  }
  while (high - low > 1) {
    const int64_t mid = low + (high - low) / 2;
    if (value < cdf[mid]) {
      high = mid;
    } else {
      low = mid;
    }
  }
  return high;
}

C10_HOST_DEVICE inline bool is_maskable(const MaskParams& p, int64_t token) {
  return token >= 0 && token < p.vocab_size && p.maskable[token];
}

// The source value of a selected token: kept, a random id or <mask>, by its kind word.
template <typename index_t>
C10_HOST_DEVICE inline index_t masked_value(
    const MaskParams& p, index_t token, uint32_t u_kind, uint32_t u_repl) {
  if (u_kind < p.keep_threshold) {
    return token;
  }
  if (u_kind < p.random_threshold) {
    return static_cast<index_t>(first_above(p.replace_cdf, p.vocab_size, u_repl));
  }
  return static_cast<index_t>(p.mask_idx);
}

// Fast path (Bernoulli, one token per unit, span table of two entries). A position is a
// candidate when its token is maskable and its selection word is below thr(rho / L); with a
// two-entry span table a start covers itself iff u_len >= span_cdf[0] (length 1, else 0).
template <typename index_t>
C10_HOST_DEVICE inline bool fast_candidate(const MaskParams& p, index_t token, uint32_t u_sel) {
  return u_sel < p.select_threshold && is_maskable(p, token);
}

// Source and target of a fast-path candidate at position t.
template <typename index_t>
C10_HOST_DEVICE inline void fast_mask_candidate(
    const MaskParams& p, index_t token, int64_t t, uint32_t sample_id, index_t* source,
    index_t* target) {
  const Words draw = philox_words(p, sample_id, kStreamToken, static_cast<uint32_t>(t));
  const bool covered = static_cast<int64_t>(draw.w[2]) >= p.span_cdf[0];
  *source = covered ? masked_value(p, token, draw.w[0], draw.w[1]) : token;
  *target = covered ? token : static_cast<index_t>(p.pad_idx);
}

// Fast path for positions 4*quad .. 4*quad+3 of one row, from one selection block.
template <typename index_t>
C10_HOST_DEVICE inline void mask_quad_fast(
    const MaskParams& p, const index_t* tokens, index_t* source, index_t* target,
    int64_t quad, int64_t length, uint32_t sample_id) {
  const Words select = philox_words(p, sample_id, kStreamSelect, static_cast<uint32_t>(quad));
  const int64_t first = 4 * quad;
  const int64_t count = length - first < 4 ? length - first : 4;
  for (int64_t j = 0; j < count; ++j) {
    const int64_t t = first + j;
    const index_t token = tokens[t];
    if (fast_candidate(p, token, select.w[j])) {
      fast_mask_candidate(p, token, t, sample_id, source + t, target + t);
    } else {
      source[t] = token;
      target[t] = static_cast<index_t>(p.pad_idx);
    }
  }
}

// The k-th smallest (0-based) of n distinct keys; reorders keys. Iterative quickselect with a
// median-of-three pivot: no recursion and no allocation, so it runs in a device thread too.
// The keys are distinct, so the answer does not depend on the algorithm.
C10_HOST_DEVICE inline uint64_t select_kth(uint64_t* keys, int64_t n, int64_t k) {
  int64_t low = 0;
  int64_t high = n - 1;
  while (low < high) {
    const uint64_t a = keys[low];
    const uint64_t b = keys[low + (high - low) / 2];
    const uint64_t c = keys[high];
    const uint64_t pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
    int64_t i = low;
    int64_t j = high;
    while (i <= j) {
      while (keys[i] < pivot) ++i;
      while (keys[j] > pivot) --j;
      if (i <= j) {
        const uint64_t swap = keys[i];
        keys[i] = keys[j];
        keys[j] = swap;
        ++i;
        --j;
      }
    }
    if (k <= j) {
      high = j;
    } else if (k >= i) {
      low = i;
    } else {
      return keys[k];
    }
  }
  return keys[k];
}

// Does the maskable token at t begin a unit? (previous_maskable: is the token at t-1 maskable)
template <typename index_t>
C10_HOST_DEVICE inline bool begins_unit(
    const MaskParams& p, index_t token, int64_t t, bool previous_maskable) {
  return p.word_start == nullptr || t == 0 || !previous_maskable || p.word_start[token];
}

// The largest key that is a start in exact mode (the k-th smallest unit key of the row), or
// false if k == 0. scratch[0, n) receives the keys in unit order; the k-th smallest is found
// by a 256-bucket histogram of the top key byte, then selection inside that bucket only
// (scratch[n, ...)): linear time, and the same answer as any exact selection.
template <typename index_t>
C10_HOST_DEVICE inline bool exact_key_bound(
    const MaskParams& p, const index_t* tokens, int64_t length, uint32_t sample_id,
    uint64_t* scratch, uint64_t* bound) {
  constexpr int kBuckets = 256;
  uint32_t histogram[kBuckets];
  for (int b = 0; b < kBuckets; ++b) histogram[b] = 0;
  int64_t n = 0;
  int64_t block = -1;
  Words rank;
  bool previous_maskable = false;
  for (int64_t t = 0; t < length; ++t) {
    const index_t token = tokens[t];
    const bool maskable = is_maskable(p, token);
    if (maskable && begins_unit(p, token, t, previous_maskable)) {
      if ((t >> 2) != block) {
        block = t >> 2;
        rank = philox_words(p, sample_id, kStreamRank, static_cast<uint32_t>(block));
      }
      const uint32_t u_rank = rank.w[t & 3];
      scratch[n] = (static_cast<uint64_t>(u_rank) << 32) | static_cast<uint64_t>(n);
      ++histogram[u_rank >> 24];
      ++n;
    }
    previous_maskable = maskable;
  }
  const uint32_t u_count = philox_words(p, sample_id, kStreamCount, 0).w[0];
  const double expected = (p.mask_prob * static_cast<double>(n)) /
      static_cast<double>(p.mask_multiple_length);
  const double rounded = expected + static_cast<double>(u_count) * kInvTwoPow32;
  int64_t k = static_cast<int64_t>(rounded);  // rounded >= 0, so truncation is floor
  if (k > n) k = n;
  if (k <= 0) return false;
  if (k == n) {
    *bound = ~static_cast<uint64_t>(0);
    return true;
  }
  int64_t below = 0;
  uint32_t bucket = 0;
  while (below + histogram[bucket] < k) {
    below += histogram[bucket];
    ++bucket;
  }
  uint64_t* work = scratch + n;
  int64_t in_bucket = 0;
  for (int64_t i = 0; i < n; ++i) {
    if ((scratch[i] >> 56) == bucket) work[in_bucket++] = scratch[i];
  }
  *bound = select_kth(work, in_bucket, k - below - 1);
  return true;
}

// General path: one whole row (units, exact or Bernoulli starts, span sweep, kinds).
// scratch: 2 * length keys when p.exact, unused (may be nullptr) otherwise.
template <typename index_t>
C10_HOST_DEVICE inline void mask_row(
    const MaskParams& p, const index_t* tokens, index_t* source, index_t* target,
    int64_t length, uint32_t sample_id, uint64_t* scratch) {
  uint64_t key_bound = 0;
  bool any_start = true;
  if (p.exact) {
    any_start = exact_key_bound(p, tokens, length, sample_id, scratch, &key_bound);
  }
  int64_t unit = -1;          // index of the current unit
  int64_t unit_position = -1; // position of its first token
  int64_t span_end = 0;       // units < span_end are selected
  int64_t select_block = -1;
  Words select;
  int64_t kind_position = -1; // position whose stream-2 words are in `kind`
  Words kind;
  bool previous_maskable = false;
  for (int64_t t = 0; t < length; ++t) {
    const index_t token = tokens[t];
    const bool maskable = is_maskable(p, token);
    if (!maskable) {
      previous_maskable = false;
      source[t] = token;
      target[t] = static_cast<index_t>(p.pad_idx);
      continue;
    }
    if (begins_unit(p, token, t, previous_maskable)) {
      ++unit;
      unit_position = t;
      bool start;
      if (p.exact) {
        start = any_start && scratch[unit] <= key_bound;
      } else {
        if ((t >> 2) != select_block) {
          select_block = t >> 2;
          select = philox_words(p, sample_id, kStreamSelect, static_cast<uint32_t>(select_block));
        }
        start = select.w[t & 3] < p.select_threshold;
      }
      if (start) {
        kind = philox_words(p, sample_id, kStreamToken, static_cast<uint32_t>(t));
        kind_position = t;
        const int64_t end = unit + first_above(p.span_cdf, p.span_table_size, kind.w[2]);
        if (end > span_end) span_end = end;
      }
    }
    previous_maskable = true;
    if (unit >= span_end) {
      source[t] = token;
      target[t] = static_cast<index_t>(p.pad_idx);
      continue;
    }
    if (kind_position != unit_position) {
      kind = philox_words(p, sample_id, kStreamToken, static_cast<uint32_t>(unit_position));
      kind_position = unit_position;
    }
    uint32_t u_repl = kind.w[1];
    if (t != unit_position && kind.w[0] >= p.keep_threshold && kind.w[0] < p.random_threshold) {
      u_repl = philox_words(p, sample_id, kStreamToken, static_cast<uint32_t>(t)).w[1];
    }
    source[t] = masked_value(p, token, kind.w[0], u_repl);
    target[t] = token;
  }
}

}  // namespace gpts

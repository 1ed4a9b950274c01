// Bounded top-k (smallest distances) with a total order on (distance, id): deterministic whatever the
// thread count, ties broken by the smaller id.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace sqret {

struct Cand {
  float d;
  int64_t id;
};

// a is better (closer) than b
inline bool better(const Cand& a, const Cand& b) { return a.d < b.d || (a.d == b.d && a.id < b.id); }

// The same as a comparator object: inlined by the sort algorithms (a function pointer is called each time).
struct Better {
  inline bool operator()(const Cand& a, const Cand& b) const { return better(a, b); }
};

// Order-preserving unsigned bits of a (non-NaN) float: a < b  <=>  ordered_bits(a) < ordered_bits(b).
inline uint32_t ordered_bits(float d) {
  d += 0.0f;  // -0.0 -> +0.0
  uint32_t b;
  std::memcpy(&b, &d, sizeof b);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The k best of cands by (d, id), exactly; sorted best first when `sorted`. Selection and sorting run on
// 64-bit integer keys (distance bits << 32 | index), then runs of equal distance are ordered by id.
inline void select_k(std::vector<Cand>& cands, int64_t k, bool sorted) {
  const size_t n = cands.size(), kk = std::min<size_t>(static_cast<size_t>(k), n);
  if (kk == 0) {
    cands.clear();
    return;
  }
  std::vector<uint64_t> keys(n);
  for (size_t i = 0; i < n; ++i) keys[i] = (static_cast<uint64_t>(ordered_bits(cands[i].d)) << 32) | i;
  uint32_t T;  // the k-th best distance
  if (kk < n) {
    std::nth_element(keys.begin(), keys.begin() + (kk - 1), keys.end());
    T = static_cast<uint32_t>(keys[kk - 1] >> 32);
  } else {  // everything is kept: T is the largest distance
    T = static_cast<uint32_t>(*std::max_element(keys.begin(), keys.end()) >> 32);
  }
  std::vector<uint64_t> in;
  std::vector<Cand> tied;  // distance == T: the smallest ids fill what is left
  in.reserve(kk);
  for (uint64_t key : keys) {
    const uint32_t dist = static_cast<uint32_t>(key >> 32);
    if (dist < T) in.push_back(key);
    else if (dist == T) tied.push_back(cands[key & 0xFFFFFFFFu]);
  }
  if (sorted) std::sort(in.begin(), in.end());
  std::vector<Cand> out;
  out.reserve(kk);
  for (uint64_t key : in) out.push_back(cands[key & 0xFFFFFFFFu]);
  const size_t need = kk - out.size();
  std::partial_sort(tied.begin(), tied.begin() + need, tied.end(),
                    [](const Cand& a, const Cand& b) { return a.id < b.id; });
  out.insert(out.end(), tied.begin(), tied.begin() + need);
  if (sorted) {  // equal distances below T: by id
    for (size_t a = 0; a < out.size();) {
      size_t b = a + 1;
      while (b < out.size() && out[b].d == out[a].d) ++b;
      if (b - a > 1) std::sort(out.begin() + a, out.begin() + b, Better{});
      a = b;
    }
  }
  cands.swap(out);
}

// A reservoir of candidates: offers below the threshold are appended (O(1)); when 2k are held they are cut
// to the k best (nth_element) and the threshold becomes the k-th best distance. Offers within one scan
// come with ascending ids, so an offer equal to the threshold is never better than what is kept: `d < thr`
// is the whole admission test once k are known.
class TopK {
 public:
  explicit TopK(int64_t k = 0)
      : k_(k), cap_(std::max<int64_t>(2 * k, k + 16)), buf_(static_cast<size_t>(std::min<int64_t>(cap_, 256))) {}

  inline bool admits(float d) const { return !full_ || d < thr_; }
  // For offers in any id order: an offer equal to the threshold may still win on its smaller id.
  inline bool admits_any(float d) const { return !full_ || d <= thr_; }
  inline float threshold() const { return full_ ? thr_ : std::numeric_limits<float>::infinity(); }
  inline bool full() const { return full_; }
  inline int64_t k() const { return k_; }

  inline void offer(float d, int64_t id) {
    if (admits(d)) push(d, id);
  }

  // Append an admitted candidate (fields stored one by one: no struct temporary to forward from the stack).
  inline void push(float d, int64_t id) {
    if (n_ == buf_.size()) buf_.resize(std::min<size_t>(static_cast<size_t>(cap_), 2 * n_));
    Cand& c = buf_[n_++];
    c.d = d;
    c.id = id;
    if (static_cast<int64_t>(n_) >= cap_) shrink();
  }

  // All candidates held (a superset of the k best; unsorted).
  const Cand* begin() const { return buf_.data(); }
  const Cand* end() const { return buf_.data() + n_; }

  // Empty again for a new query, keeping the buffer (no allocation per query).
  void reset() {
    n_ = 0;
    full_ = false;
    thr_ = std::numeric_limits<float>::infinity();
  }

  // The k best, sorted by (distance, id), written as sign * distance and id, padded with sign * inf and -1.
  // Sorts the reservoir in place (at most 2k + 16 candidates): the reservoir is spent.
  void write_sorted(float sign, float* out_d, int64_t* out_i) {
    std::sort(buf_.begin(), buf_.begin() + n_, Better{});
    const int64_t n = std::min<int64_t>(k_, static_cast<int64_t>(n_));
    for (int64_t r = 0; r < k_; ++r) {
      out_d[r] = r < n ? sign * buf_[r].d : sign * std::numeric_limits<float>::infinity();
      out_i[r] = r < n ? buf_[r].id : -1;
    }
  }

 private:
  // In place, no allocation: the k best by (distance, id) to the front; the k-th of them is the threshold
  // (every kept candidate is better or equal).
  void shrink() {
    std::nth_element(buf_.begin(), buf_.begin() + (k_ - 1), buf_.begin() + n_, Better{});
    n_ = static_cast<size_t>(k_);
    thr_ = buf_[n_ - 1].d;
    full_ = true;
  }

  int64_t k_, cap_;
  bool full_ = false;
  float thr_ = std::numeric_limits<float>::infinity();
  std::vector<Cand> buf_;
  size_t n_ = 0;
};

// The k best of cands, sorted best first (cands is reordered).
inline void best_k(std::vector<Cand>& cands, int64_t k) { select_k(cands, k, true); }

}  // namespace sqret

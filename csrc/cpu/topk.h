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

// The float of ordered_bits' key (inverse on every float but -0.0, which comes back as +0.0).
inline float from_ordered_bits(uint32_t key) {
  const uint32_t b = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float d;
  std::memcpy(&d, &b, sizeof d);
  return d;
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

// The k best offers by (distance, id). Small k (<= kHeapMax): a binary max-heap (the root is the k-th best, so the
// threshold is always exact and few offers pass it). Larger k: a reservoir: offers below the threshold are appended
// (O(1)); when 2k are held they are cut (shrink: to k, or for k > kHeapMax to at most k + (cap - k) / 2 that hold the k
// best) and the threshold becomes the largest kept distance. Offers within one scan come with ascending ids, so an
// offer equal to the threshold is never better than what is kept: `d < thr` is the whole admission test once k are
// known (admits_any, `d <= thr`, for offers in any id order; push then keeps the better by id).
class TopK {
 public:
  static constexpr int64_t kHeapMax = 32;

  // heap = false: the reservoir at every k (the flat fast scan: its offers come in long ascending runs, where
  // the reservoir's O(1) appends beat the heap's tighter threshold; inverted lists gain from the heap).
  explicit TopK(int64_t k = 0, bool heap = true)
      : k_(k),
        cap_(std::max<int64_t>(2 * k, k + 16)),
        heap_(heap && k <= kHeapMax),
        buf_(static_cast<size_t>(std::min<int64_t>(heap_ ? std::max<int64_t>(k, 1) : cap_, 256))) {}

  inline bool admits(float d) const { return !full_ || d < thr_; }
  // For offers in any id order: an offer equal to the threshold may still win on its smaller id.
  inline bool admits_any(float d) const { return !full_ || d <= thr_; }
  inline float threshold() const { return full_ ? thr_ : std::numeric_limits<float>::infinity(); }
  inline bool full() const { return full_; }
  inline bool empty() const { return n_ == 0; }
  inline int64_t k() const { return k_; }

  inline void offer(float d, int64_t id) {
    if (admits(d)) push(d, id);
  }

  // An admitted candidate (fields stored one by one: no struct temporary to forward from the stack).
  inline void push(float d, int64_t id) {
    if (heap_) return heap_push(d, id);
    if (n_ == buf_.size()) grow();
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

  // The k best, sorted by (distance, id) (in no particular order when !sorted), written as sign * distance and
  // id, padded with sign * inf and -1. The held candidates (at most 2k + 16) are cut to the k best (and sorted):
  // they are spent.
  void write(float sign, float* out_d, int64_t* out_i, bool sorted = true) {
    if (static_cast<int64_t>(n_) > k_) shrink(true);
    if (sorted) std::sort(buf_.begin(), buf_.begin() + n_, Better{});
    const int64_t n = static_cast<int64_t>(n_);
    for (int64_t r = 0; r < k_; ++r) {
      out_d[r] = r < n ? sign * buf_[r].d : sign * std::numeric_limits<float>::infinity();
      out_i[r] = r < n ? buf_[r].id : -1;
    }
  }

 private:
  // Max-heap by Better: buf_[0] is the worst kept candidate.
  inline void heap_push(float d, int64_t id) {
    const Cand c{d, id};
    if (static_cast<int64_t>(n_) < k_) {
      size_t i = n_++;
      while (i > 0) {  // sift up
        const size_t parent = (i - 1) / 2;
        if (!better(buf_[parent], c)) break;
        buf_[i] = buf_[parent];
        i = parent;
      }
      buf_[i] = c;
      if (static_cast<int64_t>(n_) == k_) full_ = true, thr_ = buf_[0].d;
      return;
    }
    if (!better(c, buf_[0])) return;  // an equal distance with a larger id
    size_t i = 0;
    const size_t n = n_;
    for (;;) {  // sift down from the root
      size_t child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && better(buf_[child], buf_[child + 1])) ++child;
      if (!better(c, buf_[child])) break;
      buf_[i] = buf_[child];
      i = child;
    }
    buf_[i] = c;
    thr_ = buf_[0].d;
  }

  __attribute__((noinline)) void grow() { buf_.resize(std::min<size_t>(static_cast<size_t>(cap_), 2 * n_)); }

  // Cut the held candidates to at most k + (cap - k) / 2 that hold the k best by (distance, id) (exactly the k best
  // when `exact` or k <= kHeapMax); the threshold becomes the largest kept distance (never below the k-th best, so the
  // admission tests stay exact). The cut distance T is found by bisection on order-preserving integer keys, counting
  // (vectorized) instead of comparing candidates: any T with k to k + (cap - k) / 2 keys <= T will do. Where ties at
  // the k-th distance hold more than that (or `exact`), T is the k-th key itself: below T are kept, and of T the
  // smallest ids.
  // (The same integer steps compiled twice: with AVX2 the counting and the maximum run 8 keys an instruction.)
  void shrink(bool exact = false) {
    static const bool avx2 = __builtin_cpu_supports("avx2");
    if (avx2) shrink_avx2(exact);
    else shrink_any(exact);
  }
  __attribute__((noinline, target("avx2"))) void shrink_avx2(bool exact) { shrink_body(exact); }
  __attribute__((noinline)) void shrink_any(bool exact) { shrink_body(exact); }

  // How many of keys[0, n) are <= t (32-bit counters within chunks: they vectorize twice as wide).
  __attribute__((always_inline)) static inline size_t count_le(const uint32_t* keys, size_t n, uint32_t t) {
    size_t c = 0;
    for (size_t i0 = 0; i0 < n; i0 += size_t{1} << 30) {
      const size_t i1 = std::min(n, i0 + (size_t{1} << 30));
      uint32_t part = 0;
      for (size_t i = i0; i < i1; ++i) part += keys[i] <= t;
      c += part;
    }
    return c;
  }

  __attribute__((always_inline)) inline void shrink_body(bool exact) {
    const size_t n = n_, k = static_cast<size_t>(k_);
    // small k: the exact k-th (a looser threshold lets more candidates into the exact re-rank than it saves)
    const size_t most = exact || k_ <= kHeapMax ? k : k + static_cast<size_t>(cap_ - k_) / 2;
    keys32_.resize(n);
    uint32_t lo = ~0u, hi = 0;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t key = ordered_bits(buf_[i].d);
      keys32_[i] = key;
      lo = std::min(lo, key), hi = std::max(hi, key);
    }
    const uint32_t* keys = keys32_.data();
    size_t at_hi = n;  // keys <= hi; invariant: fewer than k keys below lo, at least k keys <= hi
    while (lo < hi && at_hi > most) {
      const uint32_t mid = lo + (hi - lo) / 2;
      const size_t c = count_le(keys, n, mid);
      if (c >= k) hi = mid, at_hi = c;
      else lo = mid + 1;
    }
    Cand* const first = buf_.data();
    if (at_hi <= most) {  // keep keys <= hi, in place (branchless)
      uint32_t top = 0;  // the largest kept key: a reduction of its own (in the copy loop, its chain bounds it)
      for (size_t i = 0; i < n; ++i) {  // masked, not selected: the select does not vectorize
        const uint32_t key = keys[i];
        top = std::max(top, key & (0u - static_cast<uint32_t>(key <= hi)));
      }
      size_t w = 0;
      for (size_t i = 0; i < n; ++i) {
        first[w] = first[i];
        w += keys[i] <= hi;
      }
      n_ = w;
      thr_ = from_ordered_bits(top);
    } else {  // hi is the k-th key: below it, then of it the smallest ids
      const uint32_t T = hi;
      Cand* const below = std::partition(first, first + n, [T](const Cand& c) { return ordered_bits(c.d) < T; });
      Cand* const tied = std::partition(below, first + n, [T](const Cand& c) { return ordered_bits(c.d) == T; });
      const int64_t need = k_ - (below - first);  // >= 1: T is the k-th key
      if (tied - below > need)
        std::nth_element(below, below + (need - 1), tied, [](const Cand& a, const Cand& b) { return a.id < b.id; });
      thr_ = below->d;
      n_ = k;
    }
    full_ = true;
  }

  int64_t k_, cap_;
  bool heap_;
  bool full_ = false;
  float thr_ = std::numeric_limits<float>::infinity();
  std::vector<Cand> buf_;
  size_t n_ = 0;
  std::vector<uint32_t> keys32_;  // shrink's selection keys, reused
};

// The k best of cands, sorted best first (cands is reordered).
inline void best_k(std::vector<Cand>& cands, int64_t k) { select_k(cands, k, true); }

}  // namespace sqret

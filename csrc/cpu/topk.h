// Bounded top-k (smallest distances) with a total order on (distance, id): deterministic whatever the
// thread count, ties broken by the smaller id.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace sqret {

struct Cand {
  float d;
  int64_t id;
};

// a is better (closer) than b
inline bool better(const Cand& a, const Cand& b) { return a.d < b.d || (a.d == b.d && a.id < b.id); }

// A reservoir of candidates: offers below the threshold are appended (O(1)); when 2k are held they are cut
// to the k best (nth_element) and the threshold becomes the k-th best distance. Offers within one scan
// come with ascending ids, so an offer equal to the threshold is never better than what is kept: `d < thr`
// is the whole admission test once k are known.
class TopK {
 public:
  explicit TopK(int64_t k = 0) : k_(k), cap_(std::max<int64_t>(2 * k, k + 16)) {
    buf_.reserve(static_cast<size_t>(std::min<int64_t>(cap_, 1 << 16)));
  }

  inline bool admits(float d) const { return !full_ || d < thr_; }
  // For offers in any id order: an offer equal to the threshold may still win on its smaller id.
  inline bool admits_any(float d) const { return !full_ || d <= thr_; }
  inline float threshold() const { return full_ ? thr_ : std::numeric_limits<float>::infinity(); }
  inline bool full() const { return full_; }

  inline void offer(float d, int64_t id) {
    if (admits(d)) push(d, id);
  }

  // Append an admitted candidate.
  inline void push(float d, int64_t id) {
    buf_.push_back({d, id});
    if (static_cast<int64_t>(buf_.size()) >= cap_) shrink();
  }

  // All candidates held (a superset of the k best; unsorted).
  const std::vector<Cand>& items() const { return buf_; }

 private:
  void shrink() {
    std::nth_element(buf_.begin(), buf_.begin() + (k_ - 1), buf_.end(), better);
    buf_.resize(static_cast<size_t>(k_));
    thr_ = buf_[k_ - 1].d;  // the k-th best: every kept candidate is better or equal
    full_ = true;
  }

  int64_t k_, cap_;
  bool full_ = false;
  float thr_ = std::numeric_limits<float>::infinity();
  std::vector<Cand> buf_;
};

// The k best of cands, sorted best first (cands is reordered).
inline void best_k(std::vector<Cand>& cands, int64_t k) {
  if (static_cast<int64_t>(cands.size()) > k) {
    std::partial_sort(cands.begin(), cands.begin() + k, cands.end(), better);
    cands.resize(static_cast<size_t>(k));
  } else {
    std::sort(cands.begin(), cands.end(), better);
  }
}

}  // namespace sqret

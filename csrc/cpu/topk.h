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

// Max-heap of the k best seen so far; the root is the worst kept. Offers with ascending ids within one
// scan: an equal distance never displaces an earlier id, so `d < thr` is the whole admission test.
class TopK {
 public:
  explicit TopK(int64_t k = 0) : k_(k) { heap_.reserve(static_cast<size_t>(std::min<int64_t>(k, 1 << 16))); }

  inline bool admits(float d) const { return !full_ || d < thr_; }
  inline float threshold() const { return full_ ? thr_ : std::numeric_limits<float>::infinity(); }
  inline bool full() const { return full_; }

  inline void offer(float d, int64_t id) {
    if (admits(d)) push(d, id);
  }

  // General insert (any id order), used when merging partial results.
  inline void push(float d, int64_t id) {
    Cand c{d, id};
    if (!full_) {
      heap_.push_back(c);
      std::push_heap(heap_.begin(), heap_.end(), better);
      if (static_cast<int64_t>(heap_.size()) == k_) {
        full_ = true;
        thr_ = heap_.front().d;
      }
      return;
    }
    if (!better(c, heap_.front())) return;
    std::pop_heap(heap_.begin(), heap_.end(), better);
    heap_.back() = c;
    std::push_heap(heap_.begin(), heap_.end(), better);
    thr_ = heap_.front().d;
  }

  // Sorted best first.
  std::vector<Cand> sorted() const {
    std::vector<Cand> out(heap_);
    std::sort(out.begin(), out.end(), better);
    return out;
  }

  const std::vector<Cand>& items() const { return heap_; }

 private:
  int64_t k_;
  bool full_ = false;
  float thr_ = std::numeric_limits<float>::infinity();
  std::vector<Cand> heap_;
};

}  // namespace sqret

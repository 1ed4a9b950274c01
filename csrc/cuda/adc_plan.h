// The launch plan of the streaming ADC scan (csrc/cuda/adc_stream.cuh): pure host C++, the same sizes give the
// same plan.
#pragma once

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>

namespace sqret_cuda {

constexpr int kThreads = 256;
constexpr int kItems = 2;                    // codes per thread per tile
constexpr int kTile = kThreads * kItems;     // codes per tile: at most this many candidates per tile
constexpr int kBlocksPerSm = 4;              // programs along the database per SM (over all query blocks)
constexpr size_t kSmemBudget = 100 * 1024;   // two blocks per SM

// The streaming scan's largest top-k; of its warp-select variant.
constexpr int kAdcMaxKeep = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kWarpMaxKeep = 256;

// How a block keeps its running top-k: one pool per query for the whole block (candidates appended with a
// shared atomic, folded by a block-wide bitonic sort, two barriers a tile), or one per warp and query (appended
// through a ballot, folded by the warp alone; the warps' lists merged once at the end: no block barrier in
// the scan).
enum AdcSelect { kSelectBlock = 0, kSelectWarp = 1 };

// A launch of the streaming scan: selection, queries per block (qb), running-list width (kp), pool size per
// query (per warp and query for kSelectWarp), the final merge buffer of kSelectWarp (mpool keys), LUT in shared
// memory or not, shared bytes per block, codes per block and blocks along the database (programs).
struct AdcPlan {
  int select;
  int qb;
  int kp;
  int pool;
  int mpool;
  bool lut_smem;
  size_t smem;
  long long per_block;
  int programs;
};

inline int pow2_at_least(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

inline AdcPlan adc_plan(int Q, int M, int K, long long N, int keep, int sms, int max_smem,
                        int select = kSelectBlock) {
  const int max_keep = select == kSelectWarp ? kWarpMaxKeep : kAdcMaxKeep;
  if (Q < 1 || M < 1 || K < 1 || N < 1 || keep < 1 || keep > max_keep || sms < 1 || max_smem < 1 ||
      (select != kSelectBlock && select != kSelectWarp))
    throw std::invalid_argument("adc_plan: bad sizes (1 <= keep <= " + std::to_string(max_keep) + ")");
  AdcPlan p{};
  p.select = select;
  p.kp = pow2_at_least(keep);
  size_t keys = 0, fixed = 0;  // shared bytes per query of the block, and per block
  if (select == kSelectBlock) {
    p.pool = pow2_at_least(p.kp + kTile);  // room for one tile of candidates after any merge
    keys = static_cast<size_t>(p.pool) * sizeof(long long) + sizeof(long long) + sizeof(int);
  } else {
    p.pool = pow2_at_least(p.kp + 32);  // room for one warp step after any merge
    p.mpool = pow2_at_least(kWarps * p.kp);
    keys = static_cast<size_t>(kWarps) * p.pool * sizeof(long long);
    fixed = static_cast<size_t>(p.mpool) * sizeof(long long);
  }
  const size_t lut = static_cast<size_t>(M) * K * sizeof(float);
  const size_t budget = std::min(kSmemBudget, static_cast<size_t>(max_smem));
  const int qmax = Q >= 4 ? 4 : Q >= 2 ? 2 : 1;
  p.qb = 0;
  for (int qb = qmax; qb >= 1 && !p.qb; qb /= 2)
    if (fixed + qb * (keys + lut) <= budget) p.qb = qb, p.lut_smem = true;
  if (!p.qb) {  // the LUT stays in global memory (L1 / L2)
    for (int qb = qmax; qb >= 1 && !p.qb; qb /= 2)
      if (fixed + qb * keys <= budget) p.qb = qb;
    if (!p.qb) throw std::invalid_argument("adc_plan: top-k pool too large for shared memory");
  }
  p.smem = fixed + p.qb * (keys + (p.lut_smem ? lut : 0));
  const long long qblocks = (Q + p.qb - 1) / p.qb;
  const long long tiles = (N + kTile - 1) / kTile;
  const long long target = std::max<long long>(1, kBlocksPerSm * static_cast<long long>(sms) / qblocks);
  const long long programs = std::min(target, tiles);
  p.per_block = (tiles + programs - 1) / programs * kTile;
  p.programs = static_cast<int>((N + p.per_block - 1) / p.per_block);
  return p;
}

}  // namespace sqret_cuda

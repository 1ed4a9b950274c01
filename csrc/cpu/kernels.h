// sqret native CPU kernels. Plain C++ on raw buffers (no torch headers); bound in module.cpp.
// Distances are "smaller is closer" everywhere: callers negate the LUT for largest-first metrics.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "topk.h"

namespace sqret {

enum class Simd { scalar = 0, avx2 = 1, avx512 = 2 };

Simd best_simd();                      // what this CPU supports
Simd active_simd();                    // best_simd(), or lower if forced (set_simd / SQRET_CPU_SIMD)
void set_simd(Simd s);                 // throws if the CPU lacks it
const char* simd_name(Simd s);

// Split Q queries x N items into tasks for nthreads; run scan(q0, q1, n0, n1, heaps) per task and merge
// per-query partial results into out_d / out_i [Q, k] (best first, -1 / +inf padding where N < k).
// Threads of an OpenMP team for `tasks` units of work: no idle threads woken for one small task.
inline int team(int nthreads, int64_t tasks) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, tasks)));
}

// work() on an OpenMP team of `threads`, or called directly for one (a team of one still costs a team start and
// a futex wake-up); work may hold orphaned `omp for` loops, which then run whole on the one thread.
template <typename F>
void in_team(int threads, F&& work) {
  if (threads <= 1) {
    work();
    return;
  }
#pragma omp parallel num_threads(threads)
  work();
}

// body(t) for t in [0, n) on an OpenMP team of `threads` (dynamic schedule), or a plain loop for one thread:
// a team of one still costs a team start and a futex wake-up, a fifth of a single small query's time.
template <typename F>
void for_tasks(int threads, int64_t n, F&& body) {
  if (threads <= 1) {
    for (int64_t t = 0; t < n; ++t) body(t);
    return;
  }
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int64_t t = 0; t < n; ++t) body(t);
}

// Whether each of p[0..n) is -1 (none) or in [0, hi).
bool all_in_range(const int64_t* p, int64_t n, int64_t hi);

// Throws std::invalid_argument unless each of probes[0..n) is -1 (none) or a list number below nlist.
void check_probes(const int64_t* probes, int64_t n, int64_t nlist, const char* who);

// Whether any of p[0..n) is NaN (AVX2 when the CPU has it); NaN or inf.
bool has_nan(const float* p, int64_t n);
bool has_nonfinite(const float* p, int64_t n);

struct TaskPlan {
  int64_t qblock, qblocks, parts, part_len;
};
TaskPlan plan_tasks(int64_t Q, int64_t N, int64_t k, int nthreads, int64_t align);
// partial[t][j]: heap of query qb*qblock + j from task t = qb*parts + part
void merge_partial(const TaskPlan& p, int64_t Q, int64_t k, std::vector<std::vector<TopK>>& partial, float* out_d,
                   int64_t* out_i, int nthreads);

// 8-bit (or wider) codes: codes [N, M] of CodeT, lut [Q, M, K] float32.
template <typename CodeT>
void adc_topk_codes(const float* lut, int64_t Q, int64_t M, int64_t K, const CodeT* codes, int64_t N, int64_t k,
                    int nthreads, float* out_d, int64_t* out_i);

// 4-bit packed codes [N, ceil(M/2)] (sub-space 2j low nibble, 2j+1 high) -> fast-scan blocks
// [ceil(N/64), M, 32]: byte j of (block b, sub-space m) holds vector 64b+j low, 64b+32+j high.
constexpr int kFastScanBlock = 64;
void pack_fastscan(const uint8_t* packed, int64_t N, int64_t M, uint8_t* blocks, int nthreads);
void unpack_fastscan(const uint8_t* blocks, int64_t N, int64_t M, uint8_t* packed, int nthreads);

// 4-bit fast scan over blocks: quantized uint8 LUTs in SIMD registers, uint16 accumulators; exact: a re-rank
// of every candidate whose lower bound can enter the top-k, so the results equal the exact scan; otherwise the
// quantized distances (bias + a * sum of the quantized entries; exact ones on a CPU without AVX2).
void adc_topk_fastscan(const float* lut, int64_t Q, int64_t M, const uint8_t* blocks, int64_t N, int64_t k,
                       int nthreads, float* out_d, int64_t* out_i, bool exact = true);

// The stored vectors of a re-rank (refine_topk's arguments) fused into an IVF search: the search's kc best
// candidates of each query (ids = rows) re-ranked, its k best written.
struct RefineRows {
  const void* rows = nullptr;
  int kind = 0;
  int64_t nrows = 0;
  const float* vmin = nullptr;
  const float* scale = nullptr;
  const int64_t* labels = nullptr;
  int64_t k = 0;
};

// IVF-PQ fast scan: 4-bit codes of each list in fast-scan blocks (list_blocks: addresses of [ceil(n_l/64), M, 32]
// uint8), per (query, list) the LUT of the residual (as ivf_search: precomputed tables for l2 when given, ip
// as <q, c_l> + LUT(q)) quantized once, the SIMD scan of the list's blocks, one top-k per query over all
// probed lists (ties by smaller id). exact as adc_topk_fastscan. sorted = false: each query's k results in no
// particular order (the candidates of a re-rank: the sort is spared). refine: each query's k best re-ranked with
// the stored vectors in the same pass, refine->k results written (out [Q, refine->k]; sorted is then moot).
void ivf_fastscan(const float* queries, int64_t Q, int64_t d, const float* centroids, const float* codebooks,
                  int64_t M, const int64_t* list_blocks, const int64_t* list_ids, const int64_t* list_sizes,
                  int64_t nlist, const int64_t* probes, int64_t nprobe, int64_t k, int metric, const float* precomputed, bool residual,
                  bool exact, int nthreads, float* out_d, int64_t* out_i, bool sorted = true,
                  const RefineRows* refine = nullptr, const float* ct = nullptr, const float* norms = nullptr);

// Codebooks [M][K][d] transposed to [M][d][K] (vectorizable over the K codewords), and norms [M][K] if asked.
struct Transposed {
  std::vector<float> Ct, norms;
  Transposed(const float* C, int64_t M, int64_t K, int64_t d, bool with_norms = true);
};

// One sub-space's table: out[k] = ||xs - c_k||^2 (metric 0), xs . c_k (1), ||xs - c_k|| (2); Ct = [d][K].
void lut_row(const float* xs, const float* Ct, int64_t d, int64_t K, int metric, float* out);
// Every sub-space's table of one query x [M * d] from Transposed::Ct ([M][d][K]): out [M * K], the rows lut_row
// gives, the SIMD level looked up once.
void lut_rows(const float* x, const float* Ct, int64_t M, int64_t d, int64_t K, int metric, float* out);

// out[i] = pre[i] + alpha * qr[i], vectorized per SIMD level.
void axpy_table(const float* pre, const float* qr, float alpha, int64_t n, float* out);

// IVF-PQ search: per query, the LUT of each probed list (residual q - c_l for l2; for ip the LUT of q plus
// <q, c_l>) and a scan of that list's codes [n_l, M] (uint8) straight from memory; ids from the list's ids.
// list_codes / list_ids / list_sizes: each of the nlist lists' arrays and length; probes [Q, nprobe] list
// numbers (-1: none), checked (std::invalid_argument) before any is read; probes null: the nprobe nearest
// lists of each query, found by coarse_probe's search (ct, norms as there) in the same team as the scan.
// metric 0 = l2 (smallest first), 1 = ip (largest first). Ties by smaller id. precomputed (l2, may be null):
// [nlist, M, K] = ||r_mk||^2 + 2 <c_l,m, r_mk>, so a list's LUT costs M*K additions instead of d*K products.
// residual false: codes of the vectors themselves (FAISS's by_residual = false): one table per query for all lists.
void ivf_search(const float* queries, int64_t Q, int64_t d, const float* centroids, const float* codebooks,
                int64_t M, int64_t K, const int64_t* list_codes, const int64_t* list_ids, const int64_t* list_sizes,
                int64_t nlist, const int64_t* probes, int64_t nprobe, int64_t k, int metric, const float* precomputed,
                bool residual, int nthreads, float* out_d, int64_t* out_i, bool sorted = true,
                const RefineRows* refine = nullptr, const float* ct = nullptr, const float* norms = nullptr);

// The nprobe nearest centroids of each query x [Q, d] (ivf.cpp: coarse_block_*): ct the centroids transposed
// [d, nlist], norms [nlist] their squared norms (l2; unused for ip) -> out [Q, nprobe] list numbers, nearest first,
// ties by the smaller number. metric 0 l2, 1 ip (largest inner product first).
void coarse_probe(const float* x, int64_t Q, int64_t d, const float* ct, const float* norms, int64_t nlist,
                  int64_t nprobe, int metric, int nthreads, int64_t* out);
// coarse_probe's search from inside a team (an orphaned `omp for` over tasks of 8 queries, its barrier at the
// end: every query's lists are in out when it returns); the arguments checked by check_coarse first.
void nearest_lists(const float* x, int64_t Q, int64_t d, const float* ct, const float* norms, int64_t nlist,
                   int64_t nprobe, int metric, int64_t* out);
// Throws std::invalid_argument (naming who) unless coarse_probe can run on these arguments.
void check_coarse(int64_t Q, int64_t d, const float* ct, const float* norms, int64_t nlist, int64_t nprobe,
                  int metric, const char* who);

// Per row of dist [Q, n]: the positions of its k smallest values (ties by position), sorted: out [Q, k] int64.
// (The coarse quantizer's probes from distances computed elsewhere: n centroid distances per query, k = nprobe.)
void smallest_k_rows(const float* dist, int64_t Q, int64_t n, int64_t k, int64_t* out, int nthreads);

// Distance tables out [Q, M, K] for x [Q, M*d]: metric 0 = l2 (squared), 1 = ip, 2 = l2_sqrt.
void build_lut(const float* x, int64_t Q, const float* codebooks, int64_t M, int64_t K, int64_t d, int metric,
               float* out, int nthreads);

// ADC search from raw queries in one call: the distance tables of x [Q, M*d] (metric as build_lut, negated
// when `negate`: largest first, and the results negated back) are built here, then scanned.
// code_bytes 1 / 2 / 4: codes [N, M]; 0: fast-scan blocks holding N 4-bit codes (K = 16), scored exactly or
// approximately (exact). labels [N] (null: none): out_i holds labels[position] (-1 stays). check_finite: NaN or
// inf in x or the codebooks is an invalid_argument naming which (the data check of ops.pq_search, done here
// where it costs nothing beside the tables).
void pq_search(const float* x, int64_t Q, const float* codebooks, int64_t M, int64_t K, int64_t d, int metric,
               bool negate, const void* codes, int code_bytes, int64_t N, int64_t k, int nthreads, float* out_d,
               int64_t* out_i, bool exact = true, const int64_t* labels = nullptr, bool check_finite = false);

// Refinement: for each query of queries [Q, d], the exact distances (metric 0 l2 squared, 1 ip) to its candidate
// rows cand [Q, kc] (-1: none; rows >= nrows skipped) of the stored vectors rows [nrows, d] (kind 0 float32,
// 1 float16, 2 sq8 codes decoded as vmin[j] + code * scale[j]); the k best by (distance, label) with labels
// [nrows] (row -> id; -1: removed, skipped; null: the rows themselves), sorted, padded with -1 / inf.
// Candidates outside [-1, nrows) are an error (std::invalid_argument); such a row is never read.
void refine_topk(const float* queries, int64_t Q, int64_t d, const void* rows, int kind, int64_t nrows,
                 const float* vmin, const float* scale, const int64_t* cand, int64_t kc, const int64_t* labels,
                 int64_t k, int metric, int nthreads, float* out_d, int64_t* out_i);

// One query's re-rank: candidate rows cand [kc] (-1: none) of v [d] into tk (reset here, tk.k() results), written
// sorted to out_d / out_i. False (nothing read) when a candidate is outside [-1, nrows).
bool refine_query(const float* v, int64_t d, const RefineRows& r, const int64_t* cand, int64_t kc, int metric,
                  TopK& tk, float* out_d, int64_t* out_i);

// The re-rank stage of an IVF search, per thread: the first stage's kc candidates (its top-k, spent) re-ranked
// into refine->k results. Nothing when refine is null.
class Reranker {
 public:
  Reranker(const RefineRows* refine, int64_t kc)
      : r_(refine), d_(refine ? kc : 0), i_(refine ? kc : 0), tk_(refine ? refine->k : 0) {}
  // False when a candidate is not a row of the stored vectors (nothing read).
  bool run(TopK& first, float sign, const float* v, int64_t d, int metric, float* out_d, int64_t* out_i) {
    first.write(sign, d_.data(), i_.data(), false);
    return refine_query(v, d, *r_, i_.data(), static_cast<int64_t>(i_.size()), metric, tk_, out_d, out_i);
  }

 private:
  const RefineRows* r_;
  std::vector<float> d_;
  std::vector<int64_t> i_;
  TopK tk_;
};


// Nearest codeword per sub-space: x [N, M*d] float32, codebooks [M, K, d] float32. metric 0 = l2 (argmin
// squared distance), 1 = ip (argmax dot). Ties go to the smaller index. codes written as int32 [N, M].
void encode(const float* x, int64_t N, const float* codebooks, int64_t M, int64_t K, int64_t d, int metric,
            int32_t* codes, int nthreads);

}  // namespace sqret

"""IVF-PQ search over inverted lists: the validated lists (:class:`InvertedLists`) and the op.

A list is codes [n_l, M] uint8 (layout "codes"), or 4-bit codes in fast-scan blocks [ceil(n_l / 64), M, 32]
uint8 (layout "fastscan", as ``ops.FastScanCodes``), and ids [n_l] int64, C-contiguous, on the CPU (tensors
or memory-mapped arrays). :class:`InvertedLists` checks every list once and holds the arrays, so the buffer
addresses that the native scan reads stay valid for as long as the object lives; an index keeps one per
state and derives the next one from it with :meth:`InvertedLists.replace` (only the changed lists are
checked again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from . import checks, registry
from .refine import Refinement, check_refinement, refine_topk

ListArray = Tensor | np.ndarray


def _as_list_array(a: object, what: str, ndim: int, dtype: torch.dtype) -> ListArray:
    """A C-contiguous CPU tensor / array of ``dtype`` (non-contiguous tensors are copied; nothing else is)."""
    np_dtype = np.uint8 if dtype == torch.uint8 else np.int64
    if isinstance(a, np.ndarray):
        if a.ndim != ndim or a.dtype != np_dtype:
            raise ValueError(f"{what} must be a {ndim}-D {np.dtype(np_dtype)} array, got {a.dtype} {a.shape}")
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        return a
    if not isinstance(a, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(a).__name__}")
    if a.dim() != ndim or a.dtype != dtype:
        raise ValueError(f"{what} must be a {ndim}-D {str(dtype).replace('torch.', '')} tensor, "
                         f"got {str(a.dtype).replace('torch.', '')} {tuple(a.shape)}")
    if not a.is_cpu:
        raise ValueError(f"{what} must be on the CPU, got {a.device}")
    return a.contiguous()


def _address(a: ListArray) -> int:
    return a.data_ptr() if isinstance(a, Tensor) else a.ctypes.data


LAYOUTS = ("codes", "fastscan")
FASTSCAN_BLOCK = 64


class InvertedLists:
    """Checked inverted lists for :func:`ivf_search`: ``codes[l]`` [n_l, M] uint8 (``layout="codes"``) or
    fast-scan blocks [ceil(n_l / 64), M, 32] uint8 of 4-bit codes (``layout="fastscan"``, K = 16), and
    ``ids[l]`` [n_l] int64.

    Every list is checked at construction: types, dtypes, shapes, lengths equal, contiguity, device, and
    (``check_range``) codes < K. Pass ``check_range=False`` only for codes whose range was checked before
    (an index checks codes when they are added or loaded); the native scan never reads past a table even
    then (it clamps codes to K - 1 when K < 256; nibbles are always in range). Immutable: :meth:`replace`
    returns a new object.
    """

    __slots__ = ("codes", "ids", "M", "K", "layout", "sizes", "code_addresses", "id_addresses", "_mirrors")

    def __init__(self, codes: Sequence[ListArray], ids: Sequence[ListArray], M: int, K: int, *,
                 check_range: bool = True, layout: str = "codes"):
        if isinstance(codes, (Tensor, np.ndarray)) or isinstance(ids, (Tensor, np.ndarray)):
            raise TypeError("codes and ids must be sequences with one array per list")
        codes, ids = list(codes), list(ids)
        if len(codes) != len(ids):
            raise ValueError(f"need as many id arrays as code arrays, got {len(ids)} and {len(codes)}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == "fastscan" and K != 16:
            raise ValueError(f"fast-scan lists hold 4-bit codes: K = 16, got K = {K}")
        self.M, self.K, self.layout = M, K, layout
        pairs = [self._checked(li, c, i, check_range) for li, (c, i) in enumerate(zip(codes, ids, strict=True))]
        self.codes = tuple(c for c, _ in pairs)
        self.ids = tuple(i for _, i in pairs)
        self.sizes = torch.tensor([int(i.shape[0]) for i in self.ids], dtype=torch.int64)
        self.code_addresses = torch.tensor([_address(c) for c in self.codes], dtype=torch.int64)
        self.id_addresses = torch.tensor([_address(i) for i in self.ids], dtype=torch.int64)
        self._mirrors = {}

    def _checked(self, li: int, c: object, i: object, check_range: bool) -> tuple[ListArray, ListArray]:
        i = _as_list_array(i, f"ids of list {li}", 1, torch.int64)
        if self.layout == "fastscan":
            c = _as_list_array(c, f"blocks of list {li}", 3, torch.uint8)
            want = ((i.shape[0] + FASTSCAN_BLOCK - 1) // FASTSCAN_BLOCK, self.M, FASTSCAN_BLOCK // 2)
            if tuple(c.shape) != want:
                raise ValueError(f"list {li} has {i.shape[0]} ids: its fast-scan blocks must be {list(want)}, "
                                 f"got {list(c.shape)}")
            return c, i
        c = _as_list_array(c, f"codes of list {li}", 2, torch.uint8)
        if c.shape[1] != self.M:
            raise ValueError(f"codes of list {li} must be [n, M = {self.M}], got {tuple(c.shape)}")
        if c.shape[0] != i.shape[0]:
            raise ValueError(f"list {li} has {c.shape[0]} codes but {i.shape[0]} ids")
        if check_range and self.K < 256 and c.shape[0]:
            hi = int(c.max())
            if hi >= self.K:
                raise ValueError(f"codes of list {li} must lie in [0, K = {self.K}), found {hi}")
        return c, i

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def ntotal(self) -> int:
        return int(self.sizes.sum())

    def replace(self, changes: Mapping[int, tuple[ListArray, ListArray]], *, check_range: bool = True
                ) -> InvertedLists:
        """A copy with lists ``l`` replaced by ``changes[l] = (codes, ids)``; only those are checked."""
        out = object.__new__(InvertedLists)
        out.M, out.K, out.layout = self.M, self.K, self.layout
        codes, ids = list(self.codes), list(self.ids)
        sizes, ca, ia = self.sizes.clone(), self.code_addresses.clone(), self.id_addresses.clone()
        for li, (c, i) in changes.items():
            if not 0 <= li < len(codes):
                raise IndexError(f"list {li} out of range [0, {len(codes)})")
            c, i = out._checked(li, c, i, check_range)
            codes[li], ids[li] = c, i
            sizes[li], ca[li], ia[li] = int(i.shape[0]), _address(c), _address(i)
        out.codes, out.ids, out.sizes, out.code_addresses, out.id_addresses = tuple(codes), tuple(ids), sizes, ca, ia
        out._mirrors = {}
        return out

    def device_copy(self, device: torch.device | str) -> DeviceLists:
        """The lists concatenated on ``device`` for the GPU scan (built once per device and kept: the object
        is immutable). Each list's entries in id order (ties within a list go to the smaller id)."""
        device = torch.device(device)
        key = str(device)
        got = self._mirrors.get(key)
        if got is None:
            got = self._mirrors[key] = DeviceLists.build(self, device)
        return got

    @classmethod
    def empty(cls, nlist: int, M: int, K: int, layout: str = "codes") -> InvertedLists:
        shape = (0, M, FASTSCAN_BLOCK // 2) if layout == "fastscan" else (0, M)
        codes, ids = torch.empty(shape, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        return cls([codes] * nlist, [ids] * nlist, M, K, check_range=False, layout=layout)

    def list_codes(self, li: int) -> Tensor:
        """Codes [n_l, M] uint8 of list li (unpacked from the fast-scan blocks when the layout is theirs)."""
        c = torch.as_tensor(np.asarray(self.codes[li])) if isinstance(self.codes[li], np.ndarray) else self.codes[li]
        if self.layout == "fastscan":
            from .reference import fastscan_unpack

            return fastscan_unpack(c, int(self.sizes[li]))
        return c


class DeviceLists:
    """Inverted lists on one device: codes [N_total, M] uint8 (or [N_total, ceil(M / 2)] packed 4-bit codes
    when K <= 16), ids [N_total] int64, offsets [nlist + 1] int64, the longest list's length."""

    __slots__ = ("codes", "ids", "offsets", "longest", "packed")

    MAX_POSITIONS = 1 << 32

    def __init__(self, codes: Tensor, ids: Tensor, offsets: Tensor, longest: int, packed: bool):
        self.codes, self.ids, self.offsets, self.longest, self.packed = codes, ids, offsets, longest, packed

    @classmethod
    def build(cls, lists: InvertedLists, device: torch.device) -> DeviceLists:
        n = lists.ntotal
        if n >= cls.MAX_POSITIONS:
            raise ValueError(f"the GPU scan addresses fewer than 2**32 entries; these lists hold {n}")
        codes, ids = [], []
        for li in range(len(lists)):
            i = torch.as_tensor(np.asarray(lists.ids[li])) if isinstance(lists.ids[li], np.ndarray) else lists.ids[li]
            order = torch.argsort(i, stable=True)
            codes.append(lists.list_codes(li)[order])
            ids.append(i[order])
        c = torch.cat(codes) if codes else torch.empty((0, lists.M), dtype=torch.uint8)
        packed = lists.K <= 16
        if packed:
            from .reference import pack4

            c = pack4(c)
        offsets = torch.zeros(len(lists) + 1, dtype=torch.int64)
        torch.cumsum(lists.sizes, 0, out=offsets[1:])
        longest = int(lists.sizes.max()) if len(lists) else 0
        return cls(c.contiguous().to(device), torch.cat(ids).to(device) if ids else torch.empty(0, dtype=torch.int64,
                   device=device), offsets.to(device), longest, packed)


def ivf_search(
    queries: Tensor,
    centroids: Tensor,
    codebooks: Tensor,
    codes: Sequence[ListArray] | InvertedLists,
    ids: Sequence[ListArray] | None,
    probes: Tensor | int,
    k: int,
    metric: str = "l2",
    *,
    precomputed: Tensor | None = None,
    exact: bool = True,
    by_residual: bool = True,
    sorted: bool = True,  # noqa: A002 (torch.topk's name)
    centroid_norms: Tensor | None = None,
    centroids_t: Tensor | None = None,
    refine: Refinement | None = None,
) -> tuple[Tensor, Tensor]:
    """IVF-PQ search over inverted lists: (values [Q, k], ids [Q, k]) best first, ties by smaller id (with
    ``sorted=False``, as torch.topk's, the same k results of each query in no particular order: candidates
    for a re-rank, the sort spared).

    queries [Q, d], centroids [nlist, d], codebooks [M, K, d/M] of residuals; ``codes`` an
    :class:`InvertedLists` (``ids`` None), or one codes array [n_l, M] uint8 per list with ``ids`` one int64
    array [n_l] per list (checked on every call: build an InvertedLists once to search the same lists
    often); probes [Q, nprobe] list numbers (nearest first; -1 for none), or an int nprobe: the nprobe lists
    nearest each query, as :func:`coarse_probe` finds them (with its caches ``centroid_norms`` and
    ``centroids_t``), in the same call where a backend can (the native one: no second round trip). l2 scores
    the residual LUT of q - c_l, ip scores <q, c_l> + LUT(q). ``precomputed`` [nlist, M, K] = ||r||^2 +
    2 <c_l, r> speeds up l2 (see :func:`ivf_precomputed_table`). Fast-scan lists are scored ``exact``-ly (every
    candidate that can enter the top-k re-ranked with float tables) or by their quantized distances
    (``exact=False``, as FAISS's IndexIVFPQFastScan returns; the tables of each (query, list) quantized as
    ``reference.quantize_lut``).
    ``by_residual=False``: the codes are of the vectors themselves, not of their residuals (FAISS's
    by_residual = False): one table per query serves every list, the centroids only choose the lists.
    ``refine`` (:class:`Refinement`): each query's ``refine.candidates`` best re-ranked by exact distances to
    the stored vectors that the lists' ids number, the k best of those returned (sorted); the native backend
    does both stages in one pass per query when probes is a number (FAISS's IndexRefine over an IVF index).
    """
    M, K, dsub = checks.codebooks(codebooks)
    checks.features(queries, codebooks, "queries")
    checks.tensor(centroids, "centroids", 2, checks.FLOATS)
    nlist = centroids.shape[0]
    if centroids.shape[1] != M * dsub:
        raise ValueError(f"centroids must be [nlist, d = {M * dsub}], got {tuple(centroids.shape)}")
    if K > 256:
        raise ValueError(f"ivf_search takes uint8 codes: K <= 256 codewords, got K = {K}")
    if isinstance(codes, InvertedLists):
        if ids is not None:
            raise ValueError("ids must be None when codes is an InvertedLists (it holds the ids)")
        lists = codes
        if (lists.M, lists.K) != (M, K):
            raise ValueError(f"the inverted lists hold codes for M = {lists.M}, K = {lists.K}; the codebooks "
                             f"have M = {M}, K = {K}")
    else:
        if ids is None:
            raise ValueError("pass ids (one int64 array per list) with the codes")
        lists = InvertedLists(codes, ids, M, K)  # raw arrays: the byte layout
    if len(lists) != nlist:
        raise ValueError(f"need codes and ids for each of the {nlist} lists, got {len(lists)}")
    nearest = isinstance(probes, (int, np.integer)) and not isinstance(probes, bool)
    if nearest:
        probes = _nprobe(probes, nlist)
        _check_probe_caches(centroids, centroid_norms, centroids_t)
    else:
        if centroid_norms is not None or centroids_t is not None:
            raise ValueError("centroid_norms and centroids_t go with probes given as a number (nprobe)")
        checks.tensor(probes, "probes", 2, (torch.int64, torch.int32))
        if probes.shape[0] != queries.shape[0]:
            raise ValueError(f"probes must be [Q = {queries.shape[0]}, nprobe] list numbers in [-1, {nlist})")
    if precomputed is not None:
        checks.tensor(precomputed, "precomputed", 3, checks.FLOATS)
        if tuple(precomputed.shape) != (nlist, M, K):
            raise ValueError(f"precomputed must be [nlist, M, K] = {[nlist, M, K]}, got {list(precomputed.shape)}")
    k = checks.topk_k(k)
    checks.metric(metric, ("l2", "ip"))
    for name, flag in (("exact", exact), ("by_residual", by_residual), ("sorted", sorted)):
        if type(flag) is not bool:
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if precomputed is not None and not by_residual:
        raise ValueError("precomputed tables are of residuals: pass none with by_residual=False")
    checks.same_device(("queries", queries), ("centroids", centroids), ("codebooks", codebooks),
                       *(() if nearest else (("probes", probes),)))
    if refine is not None:
        refine = check_refinement(refine, queries, k)
        if nearest:
            return registry.run("ivf_refine_search", registry.device_type(queries), queries, centroids, codebooks,
                                lists, probes, k, metric, precomputed, exact, by_residual, centroid_norms,
                                centroids_t, refine)
        _, rows = ivf_search(queries, centroids, codebooks, lists, None, probes, refine.candidates, metric,
                             precomputed=precomputed, exact=exact, by_residual=by_residual, sorted=False)
        return refine_topk(queries, refine.vectors, rows, k, metric, labels=refine.labels, sq8=refine.sq8)
    args = (queries, centroids, codebooks, lists, probes, k, metric, precomputed, exact, by_residual, sorted)
    if nearest:
        return registry.run("ivf_probe_search", registry.device_type(queries), *args, centroid_norms, centroids_t)
    impl = registry.choose("ivf_search", registry.device_type(queries), args)[1]
    if probes.numel() and not getattr(impl, "checks_probes", False) and not _within(probes, -1, nlist - 1):
        raise ValueError(f"probes must be [Q = {queries.shape[0]}, nprobe] list numbers in [-1, {nlist})")
    return impl(*args)



class IVFSearcher:
    """:func:`ivf_search` over the nprobe nearest lists, with everything but the queries checked once.

    centroids [nlist, d], codebooks [M, K, d/M] and ``lists`` (:class:`InvertedLists`) are fixed, as are
    ``metric``, ``precomputed``, ``by_residual`` and the coarse probe's caches (computed here when not given);
    ``search(queries, k, nprobe, ...)`` returns what ``ivf_search(queries, centroids, codebooks, lists, None,
    nprobe, k, metric, ...)`` returns. An index holds one per state, so that a search of a few queries costs
    the scan and not the checks. The searcher holds the tensors whose addresses a backend reads (``prepared``:
    each backend's arguments, derived on its first search), so they live as long as it does.
    """

    def __init__(self, centroids: Tensor, codebooks: Tensor, lists: InvertedLists, metric: str = "l2", *,
                 precomputed: Tensor | None = None, by_residual: bool = True, centroid_norms: Tensor | None = None,
                 centroids_t: Tensor | None = None):
        M, K, dsub = checks.codebooks(codebooks)
        checks.tensor(centroids, "centroids", 2, checks.FLOATS)
        nlist = centroids.shape[0]
        if centroids.shape[1] != M * dsub:
            raise ValueError(f"centroids must be [nlist, d = {M * dsub}], got {tuple(centroids.shape)}")
        if not isinstance(lists, InvertedLists):
            raise TypeError(f"lists must be an ops.InvertedLists, got {type(lists).__name__}")
        if (lists.M, lists.K) != (M, K) or len(lists) != nlist:
            raise ValueError(f"the inverted lists hold {len(lists)} lists of codes for M = {lists.M}, K = {lists.K}; "
                             f"the centroids and codebooks need {nlist} lists for M = {M}, K = {K}")
        checks.metric(metric, ("l2", "ip"))
        if type(by_residual) is not bool:
            raise TypeError(f"by_residual must be True or False, got {by_residual!r}")
        if precomputed is not None:
            checks.tensor(precomputed, "precomputed", 3, checks.FLOATS)
            if tuple(precomputed.shape) != (nlist, M, K):
                raise ValueError(f"precomputed must be [nlist, M, K] = {[nlist, M, K]}, got "
                                 f"{list(precomputed.shape)}")
            if not by_residual:
                raise ValueError("precomputed tables are of residuals: pass none with by_residual=False")
        checks.same_device(("centroids", centroids), ("codebooks", codebooks),
                           *(() if precomputed is None else (("precomputed", precomputed),)))
        _check_probe_caches(centroids, centroid_norms, centroids_t)
        if centroid_norms is None and metric == "l2":
            centroid_norms = (centroids * centroids).sum(1)
        if centroids_t is None:
            centroids_t = centroids.to(torch.float32).T.contiguous()
        self.centroids, self.codebooks, self.lists, self.metric = centroids, codebooks, lists, metric
        self.precomputed, self.by_residual = precomputed, by_residual
        self.centroid_norms, self.centroids_t = centroid_norms, centroids_t
        self.nlist, self.device_type = nlist, registry.device_type(centroids)
        self.prepared: dict = {}

    def search(self, queries: Tensor, k: int, nprobe: int, *, exact: bool = True,
               sorted: bool = True,  # noqa: A002 (torch.topk's name)
               refine: Refinement | None = None) -> tuple[Tensor, Tensor]:
        """(values [Q, k], ids [Q, k]) of queries [Q, d] over the nprobe nearest lists (see :func:`ivf_search`)."""
        checks.features(queries, self.codebooks, "queries")
        checks.same_device(("queries", queries), ("centroids", self.centroids))
        nprobe = _nprobe(nprobe, self.nlist)
        k = checks.topk_k(k)
        if type(exact) is not bool or type(sorted) is not bool:
            raise TypeError(f"exact and sorted must be True or False, got {exact!r}, {sorted!r}")
        if refine is not None:
            refine = check_refinement(refine, queries, k)
        return registry.run("ivf_searcher", self.device_type, self, queries, nprobe, k, exact, sorted, refine)


def _within(t: Tensor, lo: int, hi: int) -> bool:
    a, b = torch.aminmax(t)
    return lo <= int(a) and int(b) <= hi


def coarse_probe(queries: Tensor, centroids: Tensor, nprobe: int, metric: str = "l2", *,
                 centroid_norms: Tensor | None = None, centroids_t: Tensor | None = None) -> Tensor:
    """The nprobe lists nearest each query [Q, d] (l2: smallest ||q - c||, ip: largest <q, c>), nearest first,
    ties by the smaller list number -> int64 [Q, nprobe]. ``centroid_norms`` [nlist] (||c||^2, l2) and
    ``centroids_t`` (``centroids.T.contiguous()`` in float32, the native backend's layout) may be cached by the
    caller. The native CPU backend computes the distances itself (one fused multiply-add per dimension in
    dimension order, 4 queries a centroid load, parallel over queries), so its probes can differ from the
    reference's GEMM where two lists are within rounding of each other."""
    checks.tensor(centroids, "centroids", 2, checks.FLOATS)
    checks.tensor(queries, "queries", 2, checks.FLOATS)
    if queries.shape[1] != centroids.shape[1]:
        raise ValueError(f"queries have d = {queries.shape[1]}, the centroids d = {centroids.shape[1]}")
    nprobe = _nprobe(nprobe, centroids.shape[0])
    checks.metric(metric, ("l2", "ip"))
    _check_probe_caches(centroids, centroid_norms, centroids_t)
    return registry.run("coarse_probe", registry.device_type(queries), queries, centroids, nprobe, metric,
                        centroid_norms, centroids_t)


def _nprobe(nprobe, nlist: int) -> int:
    nprobe = checks.topk_k(int(nprobe) if isinstance(nprobe, np.integer) else nprobe)
    if nprobe > nlist:
        raise ValueError(f"nprobe = {nprobe} is more than the {nlist} lists")
    return nprobe


def _check_probe_caches(centroids: Tensor, centroid_norms: Tensor | None, centroids_t: Tensor | None) -> None:
    """The caches of the coarse probe match the centroids [nlist, d]: ||c||^2 [nlist], c.T float32 [d, nlist]."""
    nlist, d = centroids.shape
    if centroid_norms is not None:
        checks.tensor(centroid_norms, "centroid_norms", 1, checks.FLOATS)
        if centroid_norms.shape[0] != nlist or centroid_norms.device != centroids.device:
            raise ValueError(f"centroid_norms must be [nlist = {nlist}] on {centroids.device}, got "
                             f"{tuple(centroid_norms.shape)} on {centroid_norms.device}")
    if centroids_t is not None and (tuple(centroids_t.shape) != (d, nlist) or centroids_t.dtype != torch.float32
                                    or not centroids_t.is_contiguous() or centroids_t.device != centroids.device):
        raise ValueError(f"centroids_t must be centroids.T as contiguous float32 [{d}, {nlist}], got "
                         f"{centroids_t.dtype} {tuple(centroids_t.shape)}")


def ivf_precomputed_table(centroids: Tensor, codebooks: Tensor) -> Tensor:
    """[nlist, M, K] = ||r_mk||^2 + 2 <c_l,m, r_mk>: with it, the l2 LUT of list l for query q is
    table[l] - 2 <q_m, r_mk>, plus ||q - c_l||^2 (FAISS's precomputed tables for IVF-PQ by residual)."""
    M, K, dsub = codebooks.shape
    c = centroids.to(torch.float32).reshape(-1, M, dsub)
    r = codebooks.to(torch.float32)
    return ((r * r).sum(-1) + 2 * torch.einsum("lmd,mkd->lmk", c, r)).contiguous()

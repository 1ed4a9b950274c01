"""Searches from several threads while one thread adds, removes and saves (bounded in time): every result
equals a single-threaded search of one of the states the writer went through, and nothing crashes (the
stress runs in a child process, so a signal fails the test)."""

from __future__ import annotations

import textwrap

import pytest
from filecraft import run_isolated

STRESS = textwrap.dedent("""
    import sys, threading, time
    import torch
    from sqret.index import IVFPQIndex, PQIndex, index_factory, load

    kind, nbits, seconds, path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    d, n, b = 32, 30_000, 4_000
    centers = torch.randn(64, d, generator=g) * 3
    def data(m):
        return centers[torch.randint(0, 64, (m,), generator=g)] + torch.randn(m, d, generator=g)
    base, A, B, q = data(n), data(b), data(b), data(6)
    ida, idb = torch.arange(n, n + b), torch.arange(n + b, n + 2 * b)

    def new():
        if kind == "pq":
            return PQIndex(d, 8, nbits)
        if kind == "ivf":
            return IVFPQIndex(d, 32, 8, nbits, fast_scan=nbits == 4)
        return index_factory(d, "OPQ8,IVF32,PQ8x4fs,RFlat" if kind == "refine" else "PCAR32,PQ8")
    kw = {"nprobe": 6} if kind in ("ivf", "refine") else {}
    live = new().train(base[:8000], iters=3, progress=False)
    live.save(path)  # trained and empty: the twin starts from the same quantizers
    twin = load(path)
    live.add(base)
    twin.add(base)
    # the writer's cycle of states: S0, S0+A, S0+A+B, S0+B, S0, ...
    steps = [lambda i: i.add(A, ids=ida), lambda i: i.add(B, ids=idb), lambda i: i.remove(ida),
             lambda i: i.remove(idb)]
    expected = [twin.search(q, 10, **kw)]
    for step in steps[:3]:
        step(twin)
        expected.append(twin.search(q, 10, **kw))

    def seen(result):
        return any(torch.equal(result[1], e[1]) and torch.equal(result[0], e[0]) for e in expected)

    stop, errors, counts = threading.Event(), [], [0, 0]

    def searcher():
        try:
            while not stop.is_set():
                r = live.search(q, 10, **kw)
                if not seen(r):
                    errors.append(f"a search returned a result of no state: {r[1][:2].tolist()}")
                    return
                counts[0] += 1
        except Exception as e:
            errors.append(f"search raised {type(e).__name__}: {e}")

    def writer():
        try:
            j = 0
            while not stop.is_set():
                steps[j % 4](live)
                j += 1
                if j % 7 == 0:
                    live.save(path)
                counts[1] += 1
        except Exception as e:
            errors.append(f"writer raised {type(e).__name__}: {e}")

    threads = [threading.Thread(target=searcher) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert counts[0] > 20 and counts[1] > 8, counts
    saved = load(path)
    assert seen(saved.search(q, 10, **kw)), "the saved file is none of the states"
    print(f"{kind} {nbits}-bit: {counts[0]} searches, {counts[1]} mutations")
""")


@pytest.mark.parametrize("kind,nbits", [("pq", 8), ("pq", 4), ("ivf", 8), ("ivf", 4), ("refine", 4),
                                        ("pretransform", 8)])
def test_searches_see_whole_states_while_a_writer_adds_removes_and_saves(tmp_path, kind, nbits):
    script = tmp_path / "stress.py"
    script.write_text(STRESS)
    run_isolated(f"import runpy, sys; sys.argv = ['stress', {kind!r}, '{nbits}', '4', {str(tmp_path / 'i.sqret')!r}]; "
                 f"runpy.run_path({str(script)!r}, run_name='__main__')", timeout=300)

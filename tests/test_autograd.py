"""opcheck on every op, gradcheck of the differentiable ones, gradients against an independent formula."""

import pytest
import torch

import sqret
from sqret import ops

OPS = torch.ops.sqret


def _inputs(dtype=torch.float64, B=5, M=3, K=6, d=4, grad=True):
    x = torch.randn(B, M * d, dtype=dtype, requires_grad=grad)
    C = torch.randn(M, K, d, dtype=dtype, requires_grad=grad)
    return x, C


def _samples(metric):
    """Arguments for each sqret:: op, per metric (the op's reference implementation must accept them)."""
    x, C = _inputs(torch.float32)
    xd, Cd = x.detach(), C.detach()
    C16 = torch.randn(3, 16, 4, requires_grad=True)
    codes = torch.randint(0, 16, (9, 3), dtype=torch.uint8)
    lut = torch.randn(4, 3, 16)
    blocks = ops.fastscan_pack(codes).blocks
    lut_metric = metric if metric in ops.LUT_METRICS else "l2"
    return {
        "soft_quantize": [(x, C, 0.5, metric)],
        "assign_probs": [(x, C, 0.5, metric)],
        "soft_quantize_backward": [(torch.randn(5, 12), xd, Cd, 0.5, metric)],
        "assign_probs_backward": [(torch.randn(5, 3, 6), xd, Cd, 0.5, metric)],
        "encode": [(xd, Cd, metric)],
        "build_lut": [(xd, Cd, lut_metric, None), (torch.randn(4, 12), C16.detach(), "l2_sqrt", torch.float16)],
        "decode": [(codes, C16, False), (ops.pack4(codes), C16, True)],
        "decode_backward": [(torch.randn(9, 12), codes, C16.detach(), False)],
        "adc_topk": [(lut, codes, 5, False, False), (lut, ops.pack4(codes), 12, True, True)],
        "adc_topk_fastscan": [(lut, blocks, 9, 5, False, True), (lut, blocks, 9, 12, True, False)],
    }


def _custom_ops():
    return sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("sqret::"))


def test_every_custom_op_has_opcheck_samples():
    """The opcheck list comes from the registered ops: a new op without samples fails here."""
    assert set(_samples("l2")) == set(_custom_ops())
    assert set(_custom_ops()) <= set(sqret.ops.registry._registry["reference"].impls)  # and has a reference


@pytest.mark.parametrize("metric", ops.METRICS)
@pytest.mark.parametrize("op", _custom_ops())
def test_opcheck(op, metric):
    for args in _samples(metric)[op]:
        torch.library.opcheck(getattr(OPS, op).default, args)


@pytest.mark.parametrize("metric", ops.METRICS)
def test_gradcheck_soft_quantize_and_assign_probs(metric):
    x, C = _inputs()
    assert torch.autograd.gradcheck(lambda a, b: ops.soft_quantize(a, b, 0.7, metric), (x, C))
    assert torch.autograd.gradcheck(lambda a, b: ops.assign_probs(a, b, 0.7, metric), (x, C))


def test_gradcheck_decode():
    C = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    codes = torch.randint(0, 5, (7, 3), dtype=torch.uint8)
    assert torch.autograd.gradcheck(lambda c: ops.decode(codes, c), (C,))


def _direct_soft_quantize(x, C, tau, metric):
    """An independent float64 formulation: explicit differences, no expansion, plain autograd."""
    B, (M, _, d) = x.shape[0], C.shape
    xs = x.view(B, M, 1, d)
    if metric == "l2":
        s = -((xs - C.unsqueeze(0)) ** 2).sum(-1)
        Cw = C
    else:
        if metric == "cos":
            xs = xs / xs.norm(dim=-1, keepdim=True)
            C = C / C.norm(dim=-1, keepdim=True)
        s = (xs * C.unsqueeze(0)).sum(-1)
        Cw = C
    p = torch.softmax(s / tau, dim=-1)
    return torch.einsum("bmk,mkd->bmd", p, Cw).reshape(B, M * d)


@pytest.mark.parametrize("metric", ops.METRICS)
def test_gradients_against_independent_formula(metric):
    """float32 op gradients at a larger size against float64 autograd of a direct formula."""
    x, C = _inputs(torch.float32, B=301, M=5, K=37, d=7)
    g = torch.randn(301, 35)
    gx, gC = torch.autograd.grad(ops.soft_quantize(x, C, 0.4, metric), (x, C), g)
    x64, C64 = x.detach().double().requires_grad_(), C.detach().double().requires_grad_()
    ex, eC = torch.autograd.grad(_direct_soft_quantize(x64, C64, 0.4, metric), (x64, C64), g.double())
    for a, b in ((gx, ex), (gC, eC)):
        assert ((a.double() - b).norm() / b.norm()).item() < 1e-4


def test_backward_is_chunked(monkeypatch):
    """Chunked recomputation gives the same gradients as one chunk."""
    from sqret.ops import reference

    x, C = _inputs(torch.float64, B=50)
    full = torch.autograd.grad(ops.soft_quantize(x, C, 0.5).square().sum(), (x, C))
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 40)  # 2 rows per chunk
    chunked = torch.autograd.grad(ops.soft_quantize(x, C, 0.5).square().sum(), (x, C))
    for a, b in zip(full, chunked, strict=True):
        torch.testing.assert_close(a, b)


def test_torch_compile_fullgraph_forward_backward():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(10, 12)
            self.codebooks = torch.nn.Parameter(torch.randn(3, 8, 4))

        def forward(self, x):
            return ops.soft_quantize(self.proj(x), self.codebooks, 0.5, "l2")

    model = Tiny()
    x = torch.randn(6, 10)
    eager = torch.autograd.grad(model(x).square().sum(), (model.proj.weight, model.codebooks))
    compiled = torch.compile(model, fullgraph=True)
    z = compiled(x)
    torch.testing.assert_close(z, model(x))
    got = torch.autograd.grad(z.square().sum(), (model.proj.weight, model.codebooks))
    for a, b in zip(got, eager, strict=True):
        torch.testing.assert_close(a, b)

import math

import numpy as np
import pytest
import torch

from rank1.metrics import (
    Reference,
    head_kl_ce,
    kl_per_token,
    normalize_number,
    recovery,
    token_ce,
)


def test_normalize_number():
    assert normalize_number("007") == "7"
    assert normalize_number("12.0") == "12"
    assert normalize_number("1.5") == "1.5"
    assert normalize_number("abc") is None


def test_kl_hand_computed_and_direction():
    # P = (0.5, 0.5), Q = (0.9, 0.1) over a 2-token vocabulary; the first argument is P: KL(P || Q).
    p = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]], dtype=torch.float64))
    q = torch.log(torch.tensor([[[0.9, 0.1], [0.5, 0.5]]], dtype=torch.float64))
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    kl = kl_per_token(p, q)
    assert kl.shape == (1, 2) and kl.dtype == torch.float64
    assert kl[0, 0].item() == pytest.approx(kl_pq, rel=1e-12) and kl[0, 1].item() == pytest.approx(0.0, abs=1e-15)
    assert kl_per_token(q, p)[0, 0].item() == pytest.approx(kl_qp, rel=1e-12)
    assert kl_pq != pytest.approx(kl_qp)


def test_kl_from_unnormalised_float32_logits():
    p = torch.tensor([[0.0, math.log(3.0)]])  # P_ref = (1/4, 3/4)
    q = torch.tensor([[0.0, 0.0]])  # Q = (1/2, 1/2)
    assert float(kl_per_token(p, q)[0]) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))


def test_kl_per_token_equals_the_float64_log_softmax_loop_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    ref, other = torch.randn(7, 50, generator=g) * 3, torch.randn(7, 50, generator=g) * 3
    lp_ref, lp = torch.log_softmax(ref.double(), -1), torch.log_softmax(other.double(), -1)
    assert torch.equal(kl_per_token(ref, other), (lp_ref.exp() * (lp_ref - lp)).sum(-1))


def test_recovery_by_hand_and_undefined_gap():
    base, full = np.array([10.0, 10.0]), np.array([50.0, 50.0])
    assert recovery(variant=np.array([40.0, 40.0]), base=base, full=full) == pytest.approx(0.75)
    assert recovery(variant=np.array([0.0, 10.0]), base=base, full=full) == pytest.approx(-0.125)
    assert recovery(np.array([2.0]), np.array([1.0]), np.array([1.0])) is None
    # the means are compared, not the units one by one: (mean 3 - mean 1) / (mean 5 - mean 1)
    assert recovery(np.array([2.0, 4.0]), np.array([0.0, 2.0]), np.array([6.0, 4.0])) == pytest.approx(0.5)


def test_token_ce_two_token_vocabulary_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]], dtype=torch.float64)  # P = (1/4, 3/4)
    targets = torch.tensor([0, 1])
    ce = token_ce(logits, targets)
    assert ce.dtype == torch.float64
    assert ce.tolist() == pytest.approx([math.log(4.0), math.log(4.0 / 3.0)], rel=1e-12)
    ce32 = token_ce(logits, targets, dtype=torch.float32)
    assert ce32.dtype == torch.float32 and ce32.tolist() == pytest.approx([math.log(4.0), math.log(4 / 3)], rel=1e-6)
    lse = torch.logsumexp(logits.double(), -1)
    assert torch.equal(token_ce(logits, targets, lse), ce)
    with pytest.raises(ValueError, match="dtype"):
        token_ce(logits, targets, dtype=torch.float16)


def test_token_ce_equals_the_explicit_formulas_bit_for_bit():
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(11, 40, generator=g) * 4).to(torch.bfloat16)
    targets = torch.randint(0, 40, (11,), generator=g)
    z = logits.double()
    assert torch.equal(token_ce(logits, targets), torch.logsumexp(z, -1) - z.gather(1, targets[:, None])[:, 0])
    expected32 = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    assert torch.equal(token_ce(logits, targets, dtype=torch.float32), expected32)


class _Head(torch.nn.Module):
    """A final norm and LM head, as the stages pass them (hidden [N, D] -> logits [N, V])."""

    def __init__(self, d: int, v: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.norm = torch.nn.LayerNorm(d)
        self.lm_head = torch.nn.Linear(d, v, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.randn(v, d, generator=g))

    def forward(self, h):
        return self.lm_head(self.norm(h))


def test_head_kl_ce_by_hand_with_an_identity_head():
    # the "hidden states" are the logits themselves; P_ref = (1/2, 1/2), P = (1/4, 3/4), target 1
    h = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    ref = Reference.from_hidden(lambda x: x, torch.zeros(1, 2), chunk=4)
    kl, ce = head_kl_ce(lambda x: x, h, torch.tensor([1]), ref)
    assert kl.tolist() == pytest.approx([0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)], rel=1e-12)
    assert ce.tolist() == pytest.approx([math.log(4.0 / 3.0)], rel=1e-12)
    kl, ce0 = head_kl_ce(lambda x: x, h[:0], torch.tensor([], dtype=torch.long), ref)
    assert kl.shape == ce0.shape == (0,)
    assert head_kl_ce(lambda x: x, h, torch.tensor([1]))[0] is None


@torch.no_grad()
def test_head_kl_ce_equals_explicit_chunked_loops_bit_for_bit():
    n, d, v, chunk, rows = 37, 8, 50, 15, 5
    head = _Head(d, v, seed=3)
    g = torch.Generator().manual_seed(4)
    h_ref, h = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    targets = torch.randint(0, v, (n,), generator=g)

    # the reference distribution: float64 log-probs written chunk by chunk into a preallocated buffer
    logp = torch.empty((n, v), dtype=torch.float64)
    for a in range(0, n, chunk):
        logp[a:a + chunk] = torch.log_softmax(head(h_ref[a:a + chunk]).double(), dim=-1)
    p = logp.exp()
    ref = Reference.from_hidden(head, h_ref, chunk)
    assert torch.equal(ref.logp_NV, logp) and torch.equal(ref.p_NV, p)
    assert torch.equal(ref.neg_entropy_N, (p * logp).sum(-1))

    # KL and CE ``rows`` rows at a time within each head chunk, through KL = -H(P) - sum p z + logsumexp z
    kl_e, ce_e = [], []
    for a in range(0, n, chunk):
        logits = head(h[a:a + chunk])
        for b in range(a, min(a + chunk, n), rows):
            c, z = slice(b, b + rows), logits[b - a:b - a + rows]
            lse = torch.logsumexp(z.double(), dim=-1)
            kl_e.append(ref.neg_entropy_N[c] - torch.einsum("nv,nv->n", ref.p_NV[c], z.double()) + lse)
            ce_e.append(lse - z.gather(-1, targets[c, None])[:, 0].double())
    kl, ce = head_kl_ce(head, h, targets, ref, chunk, rows)
    assert torch.equal(kl, torch.cat(kl_e)) and torch.equal(ce, torch.cat(ce_e))
    # a head chunk that is not a multiple of ``rows``: steps stop at the chunk's end
    kl16, ce16 = head_kl_ce(head, h, targets, ref, 16, rows)
    torch.testing.assert_close(kl16, kl, rtol=1e-5, atol=1e-6)  # float32 logits of other chunk shapes
    torch.testing.assert_close(ce16, ce, rtol=1e-5, atol=1e-6)

    # CE only, one step per head chunk, summed per sequence: positions (b, t) of a [B, T, D] stream
    h_BTD = torch.randn(3, 20, d, generator=g)
    labels = torch.randint(0, v, (3, 20), generator=g)
    labels[torch.rand(3, 20, generator=g) < 0.3] = -100
    bi, ti = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)
    tg = labels[bi, ti + 1]
    sums_e = torch.zeros(3, dtype=torch.float64)
    for c in range(0, len(bi), chunk):
        z = head(h_BTD[bi[c:c + chunk], ti[c:c + chunk]]).double()
        sums_e.index_add_(0, bi[c:c + chunk], torch.logsumexp(z, -1) - z.gather(1, tg[c:c + chunk, None])[:, 0])
    _, ce = head_kl_ce(head, h_BTD[bi, ti], tg, chunk=chunk, rows=chunk)
    assert torch.equal(torch.zeros(3, dtype=torch.float64).index_add_(0, bi, ce), sums_e)


def test_kl_to_logits_equals_the_log_softmax_route_and_gives_log_normaliser():
    from rank1.metrics import kl_from_log_probs, kl_to_logits, log_probs64

    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(5, 40, generator=g) * 4, torch.randn(5, 40, generator=g) * 4
    kl, lse = kl_to_logits(log_probs64(p), q)
    torch.testing.assert_close(kl, kl_from_log_probs(log_probs64(p), log_probs64(q)), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(q.double() - lse[:, None], log_probs64(q), rtol=1e-12, atol=1e-12)
    assert kl_to_logits(log_probs64(p), p)[0].abs().max() < 1e-12

import math

import pytest
import torch

from rank1.metrics import exact_match, extract_answer, kl_divergence, normalize_number, recovery


@pytest.mark.parametrize("text,expected", [
    ("<|im_start|>think\n3 + 4 = 7\n<|im_start|>answer\nAnswer: 7", "7"),
    ("Answer: 1,234 apples", "1234"),
    ("first 12, then Answer: -5 and 99", "-5"),
    ("so x = 0042", "42"),
    ("the result is 442.", "442"),
    ("<|im_start|>answer\nx = 6", "6"),
    ("no digits here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize_number():
    assert normalize_number("007") == "7"
    assert normalize_number("12.0") == "12"
    assert normalize_number("1.5") == "1.5"
    assert normalize_number("abc") is None


def test_exact_match_uses_answer_marker_not_last_number():
    assert exact_match("Answer: 71. Wait, let me verify: 71 - 48 = 23.", "71")
    assert not exact_match("23 + 48 = 100", "71")


def test_kl_hand_computed_and_direction():
    # P = (0.5, 0.5), Q = (0.9, 0.1) over a 2-token vocabulary.
    p = torch.log(torch.tensor([[[0.5, 0.5]]], dtype=torch.float64))
    q = torch.log(torch.tensor([[[0.9, 0.1]]], dtype=torch.float64))
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert kl_divergence(p, q).item() == pytest.approx(kl_pq, rel=1e-12)
    assert kl_divergence(q, p).item() == pytest.approx(kl_qp, rel=1e-12)
    assert kl_divergence(p, q).dtype == torch.float64


def test_kl_mask_selects_positions():
    p = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    q = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    assert kl_divergence(p, q, torch.tensor([[1, 0]])).item() == pytest.approx(0.0, abs=1e-12)
    full = kl_divergence(p, q, torch.tensor([[0, 1]])).item()
    assert kl_divergence(p, q).item() == pytest.approx(full / 2)


def test_recovery():
    assert recovery(base=10, adapted=40, full=50) == pytest.approx(0.75)
    assert recovery(base=10, adapted=5, full=50) == pytest.approx(-0.125)
    with pytest.raises(ValueError, match="undefined"):
        recovery(1, 2, 1)


def test_kl_to_logits_equals_the_log_softmax_route_and_gives_log_normaliser():
    from rank1.metrics import kl_from_log_probs, kl_to_logits, log_probs64

    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(5, 40, generator=g) * 4, torch.randn(5, 40, generator=g) * 4
    kl, lse = kl_to_logits(log_probs64(p), q)
    torch.testing.assert_close(kl, kl_from_log_probs(log_probs64(p), log_probs64(q)), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(q.double() - lse[:, None], log_probs64(q), rtol=1e-12, atol=1e-12)
    assert kl_to_logits(log_probs64(p), p)[0].abs().max() < 1e-12

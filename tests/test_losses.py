"""Exact numeric tests of the weights and losses (no trainer): every loss mode and every weight switch."""

import math

import pytest
import torch

from pipeline.losses import (
    confidence_weights,
    label_gains,
    normalize_weights,
    rkl_loss,
    sft_loss,
    token_weights,
    topk_divergence,
    weighted_token_mean,
)

F64 = torch.float64


def _t(values, dtype=F64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def _kl_lists(p: list[float], q: list[float]) -> float:
    """Reference KL(p || q) of two small probability lists, in plain Python."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def _jsd_lists(p_teacher: list[float], p_student: list[float], beta: float) -> float:
    m = [beta * t + (1 - beta) * s for t, s in zip(p_teacher, p_student, strict=True)]
    return beta * _kl_lists(p_teacher, m) + (1 - beta) * _kl_lists(p_student, m)


# ------------------------------------------------------------------------------------- label gains


def test_label_gains_per_label_and_alpha():
    gains = label_gains(["skip", "weak", "strong", "weak"], alpha=0.3, turn_selection=True, binary=False)
    assert gains.dtype == torch.float32
    assert gains.tolist() == pytest.approx([0.0, 0.3, 1.0, 0.3])


def test_label_gains_binary_counts_weak_as_strong():
    gains = label_gains(["skip", "weak", "strong"], alpha=0.3, turn_selection=True, binary=True)
    assert gains.tolist() == [0.0, 1.0, 1.0]


def test_label_gains_turn_selection_off_is_all_ones():
    gains = label_gains(["skip", "weak", "strong"], alpha=0.5, turn_selection=False, binary=False)
    assert gains.tolist() == [1.0, 1.0, 1.0]


def test_label_gains_unknown_label_is_named():
    with pytest.raises(ValueError, match="'maybe'"):
        label_gains(["skip", "maybe"], alpha=0.5, turn_selection=True, binary=False)
    with pytest.raises(ValueError, match="'maybe'"):
        label_gains(["maybe"], alpha=0.5, turn_selection=False, binary=False)


# ------------------------------------------------------------------------------- confidence weights

CONF = [[0.9, 0.5, 0.1, 0.0], [0.4, 0.8, 0.0, 0.0]]
MASK = [[True, True, True, False], [True, True, False, False]]


def test_confidence_token_mode_is_kappa_on_mask_and_zero_off_it():
    conf = _t([[0.9, 0.5, 0.1, 0.7], [0.4, 0.8, 0.3, 0.2]])  # junk (finite) values on padding
    out = confidence_weights(conf, torch.tensor(MASK), "token")
    assert out.tolist() == [[0.9, 0.5, 0.1, 0.0], [0.4, 0.8, 0.0, 0.0]]


def test_confidence_turn_mode_is_the_mean_over_masked_tokens_only():
    conf = _t([[0.9, 0.5, 0.1, 0.7], [0.4, 0.8, 0.3, 0.2]])
    out = confidence_weights(conf, torch.tensor(MASK), "turn")
    first, second = (0.9 + 0.5 + 0.1) / 3, (0.4 + 0.8) / 2
    torch.testing.assert_close(out, _t([[first, first, first, 0.0], [second, second, 0.0, 0.0]]))


def test_confidence_turn_mode_with_an_empty_row_is_zero():
    out = confidence_weights(_t([[0.5, 0.5]]), torch.tensor([[False, False]]), "turn")
    assert out.tolist() == [[0.0, 0.0]]


def test_confidence_none_mode_is_the_mask():
    out = confidence_weights(_t(CONF), torch.tensor(MASK), "none")
    assert out.tolist() == [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]


def test_confidence_unknown_mode():
    with pytest.raises(ValueError, match="'sharp'"):
        confidence_weights(_t(CONF), torch.tensor(MASK), "sharp")


def test_token_weights_multiply_turn_gain_and_confidence():
    gains = label_gains(["weak", "strong"], alpha=0.5, turn_selection=True, binary=False)
    out = token_weights(gains, _t(CONF), torch.tensor(MASK), "token")
    torch.testing.assert_close(out, _t([[0.45, 0.25, 0.05, 0.0], [0.4, 0.8, 0.0, 0.0]]))


# ---------------------------------------------------------------------------------- normalization


def test_normalize_hand_example():
    weights = _t([[0.5, 1.0, 0.0], [0.25, 0.25, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    out, skipped = normalize_weights(weights, mask)
    assert not skipped
    # N = 5, Σw = 2: every weight times 5/2.
    torch.testing.assert_close(out, _t([[1.25, 2.5, 0.0], [0.625, 0.625, 0.0]]))
    assert out[mask].sum().item() == pytest.approx(5.0, abs=1e-12)


def test_normalize_sums_to_n_and_ignores_off_mask_values():
    torch.manual_seed(0)
    weights = torch.rand(6, 9)
    mask = torch.rand(6, 9) > 0.3
    out, skipped = normalize_weights(weights, mask)
    assert not skipped
    assert out[~mask].abs().sum().item() == 0.0
    assert out[mask].sum().item() == pytest.approx(mask.sum().item(), rel=1e-6)


def test_normalize_all_skipped_batch_gives_zeros_not_nan():
    weights = _t([[0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    out, skipped = normalize_weights(weights, mask)
    assert skipped
    assert out.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    per_token = _t([[1.0, 2.0], [3.0, 0.0]])
    assert weighted_token_mean(per_token, out, 3).item() == 0.0


def test_normalize_of_the_mask_is_the_mask():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out, _ = normalize_weights(mask.to(F64), mask)
    assert out.tolist() == [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


# ---------------------------------------------------------------------------------------- rkl loss

# (ρ, A, loss, d loss / d logp_new) with ε = 0.2, worked out by hand from −min(ρA, clip(ρ)A):
RKL_CASES = [
    (1.0, 0.5, -0.5, -0.5),  # inside the clip range, A > 0
    (1.1, -0.4, 0.44, 0.44),  # inside, A < 0: gradient −ρA
    (1.5, 0.5, -0.6, 0.0),  # above 1+ε, A > 0: clipped term 1.2·0.5 binds, no gradient
    (1.5, -0.5, 0.75, 0.75),  # above 1+ε, A < 0: unclipped ρA = −0.75 binds
    (0.5, 0.5, -0.25, -0.25),  # below 1−ε, A > 0: unclipped ρA = 0.25 binds
    (0.5, -0.5, 0.4, 0.0),  # below 1−ε, A < 0: clipped 0.8·(−0.5) binds, no gradient
]


def test_rkl_loss_values_and_gradients_by_hand():
    ratios = _t([c[0] for c in RKL_CASES])
    advantages = _t([c[1] for c in RKL_CASES])
    logp_old = _t([-0.7, -1.2, -2.0, -0.3, -1.5, -0.9]).requires_grad_()
    logp_new = (logp_old.detach() + ratios.log()).requires_grad_()
    logp_teacher = (logp_old.detach() + advantages).requires_grad_()
    loss = rkl_loss(logp_new.unsqueeze(0), logp_old.unsqueeze(0), logp_teacher.unsqueeze(0), clip_eps=0.2)
    assert loss.shape == (1, len(RKL_CASES))
    torch.testing.assert_close(loss[0], _t([c[2] for c in RKL_CASES]))
    loss.sum().backward()
    torch.testing.assert_close(logp_new.grad, _t([c[3] for c in RKL_CASES]))
    assert logp_old.grad is None and logp_teacher.grad is None


def test_rkl_loss_on_policy_is_minus_the_advantage():
    logp = _t([[-1.0, -2.0]])
    teacher = _t([[-0.5, -3.0]])
    torch.testing.assert_close(rkl_loss(logp, logp, teacher), _t([[-0.5, 1.0]]))


def test_rkl_loss_teacher_equal_to_sampler_is_zero():
    logp_old = _t([[-1.0, -2.0]])
    assert rkl_loss(_t([[-0.3, -4.0]]), logp_old, logp_old).tolist() == [[0.0, 0.0]]


def test_rkl_loss_off_the_sampler_weights_each_token_by_the_policy_over_the_sampler():
    """q ≠ π_old (restricted decoding): A and ρ are taken against π_old, and each token counts π_old/q."""
    ratios, advantages = _t([c[0] for c in RKL_CASES]), _t([c[1] for c in RKL_CASES])
    logp_old = _t([-0.7, -1.2, -2.0, -0.3, -1.5, -0.9])
    weights = _t([2.0, 0.5, 1.0, 0.25, 4.0, 0.5])  # π_old / q per token
    logp_sampler = (logp_old - weights.log()).requires_grad_()
    logp_new = (logp_old + ratios.log()).requires_grad_()
    loss = rkl_loss(logp_new, logp_old, logp_old + advantages, clip_eps=0.2, logp_sampler=logp_sampler)
    torch.testing.assert_close(loss, weights * _t([c[2] for c in RKL_CASES]))
    loss.sum().backward()
    torch.testing.assert_close(logp_new.grad, weights * _t([c[3] for c in RKL_CASES]))
    assert logp_sampler.grad is None
    same = rkl_loss(logp_new, logp_old, logp_old + advantages, logp_sampler=logp_old)  # q = π_old: tinker's loss
    torch.testing.assert_close(same, rkl_loss(logp_new, logp_old, logp_old + advantages))


# ---------------------------------------------------------------------------- top-k divergences

# vocab 4, k = 2; the teacher's top-2 ids are 0 and 1.
P_TEACHER = [0.5, 0.3, 0.15, 0.05]
P_STUDENT = [0.4, 0.2, 0.25, 0.15]
BUCKETS_T = [0.5, 0.3, 0.2]  # top-2 plus the tail 0.15 + 0.05
BUCKETS_S = [0.4, 0.2, 0.4]


def _topk_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    student = _t([P_STUDENT[:2]]).log().unsqueeze(0)  # [1, 1, 2]
    teacher = _t([P_TEACHER[:2]]).log().unsqueeze(0)
    return student, teacher


@pytest.mark.parametrize(
    ("kind", "beta", "expected"),
    [
        ("fkl", 0.5, _kl_lists(BUCKETS_T, BUCKETS_S)),
        ("rkl", 0.5, _kl_lists(BUCKETS_S, BUCKETS_T)),
        ("jsd", 0.5, _jsd_lists(BUCKETS_T, BUCKETS_S, 0.5)),
        ("jsd", 0.3, _jsd_lists(BUCKETS_T, BUCKETS_S, 0.3)),
    ],
)
def test_topk_divergence_with_tail_bucket_by_hand(kind, beta, expected):
    student, teacher = _topk_inputs()
    out = topk_divergence(student, teacher, kind, beta=beta)
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx(expected, abs=1e-12)


def test_topk_fkl_spelled_out():
    student, teacher = _topk_inputs()
    expected = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.2) + 0.2 * math.log(0.2 / 0.4)
    assert topk_divergence(student, teacher, "fkl").item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_topk_divergence_with_k_equal_vocab_is_the_full_divergence(dtype):
    torch.manual_seed(1)
    vocab = 6
    student_logp = torch.log_softmax(torch.randn(2, 3, vocab, dtype=dtype) * 2, dim=-1)
    teacher_logp = torch.log_softmax(torch.randn(2, 3, vocab, dtype=dtype) * 2, dim=-1)
    teacher_topk, ids = teacher_logp.topk(vocab, dim=-1)
    student_topk = student_logp.gather(-1, ids)
    p_s, p_t = student_logp.exp(), teacher_logp.exp()
    full_fkl = (p_t * (teacher_logp - student_logp)).sum(-1)
    full_rkl = (p_s * (student_logp - teacher_logp)).sum(-1)
    m = 0.3 * p_t + 0.7 * p_s
    full_jsd = 0.3 * (p_t * (p_t / m).log()).sum(-1) + 0.7 * (p_s * (p_s / m).log()).sum(-1)
    tol = {"atol": 1e-12, "rtol": 0} if dtype == F64 else {"atol": 2e-6, "rtol": 0}
    torch.testing.assert_close(topk_divergence(student_topk, teacher_topk, "fkl"), full_fkl, **tol)
    torch.testing.assert_close(topk_divergence(student_topk, teacher_topk, "rkl"), full_rkl, **tol)
    torch.testing.assert_close(topk_divergence(student_topk, teacher_topk, "jsd", beta=0.3), full_jsd, **tol)


@pytest.mark.parametrize(("kind", "beta"), [("fkl", 0.5), ("rkl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.0)])
def test_topk_divergence_identical_inputs_give_zero(kind, beta):
    logp = _t([[[math.log(0.6), math.log(0.3)], [math.log(0.2), math.log(0.1)]]])
    out = topk_divergence(logp, logp.clone(), kind, beta=beta)
    assert out.abs().max().item() < 1e-15


def test_topk_jsd_beta_edges_are_exactly_the_kls():
    torch.manual_seed(2)
    student = torch.log_softmax(torch.randn(3, 4, 10), dim=-1)[..., :5]
    teacher = torch.log_softmax(torch.randn(3, 4, 10), dim=-1)[..., :5]
    assert torch.equal(topk_divergence(student, teacher, "jsd", beta=0.0), topk_divergence(student, teacher, "fkl"))
    assert torch.equal(topk_divergence(student, teacher, "jsd", beta=1.0), topk_divergence(student, teacher, "rkl"))


def test_topk_jsd_half_is_symmetric():
    student, teacher = _topk_inputs()
    forward = topk_divergence(student, teacher, "jsd", beta=0.5)
    swapped = topk_divergence(teacher, student, "jsd", beta=0.5)
    assert forward.item() == pytest.approx(swapped.item(), abs=1e-15)


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
def test_topk_divergence_is_finite_when_the_tail_is_zero_tiny_or_negative(kind, dtype):
    teacher = torch.tensor([[[0.5, 0.5], [0.5, 0.5 - 1e-12], [0.7, 0.2]]], dtype=F64).log().to(dtype)
    student = torch.tensor([[[0.5, 0.5], [0.6, 0.5], [0.7, 0.3 - 1e-13]]], dtype=F64).log().to(dtype)
    student.requires_grad_()
    out = topk_divergence(student, teacher, kind)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(student.grad).all()
    # Both tails ~0 in the first row: the divergence is that of the top-k entries alone, here 0.
    assert out[0, 0].item() == pytest.approx(0.0, abs=1e-6)


def test_topk_divergence_errors():
    student, teacher = _topk_inputs()
    with pytest.raises(ValueError, match="'kl'"):
        topk_divergence(student, teacher, "kl")
    with pytest.raises(ValueError, match="beta"):
        topk_divergence(student, teacher, "jsd", beta=1.5)


# --------------------------------------------------------------------------- sft and the reduction


def test_sft_loss_is_minus_logp():
    assert sft_loss(_t([[-0.5, -2.0], [0.0, -1.25]])).tolist() == [[0.5, 2.0], [-0.0, 1.25]]


def test_weighted_token_mean_exact():
    per_token = _t([[1.0, 2.0, 7.0], [3.0, 4.0, -5.0]])
    weights = _t([[0.5, 1.0, 0.0], [2.0, 0.25, 0.0]])
    # (0.5·1 + 1·2 + 2·3 + 0.25·4) / 5 = 9.5 / 5
    assert weighted_token_mean(per_token, weights, 5).item() == pytest.approx(1.9, abs=1e-15)
    assert weighted_token_mean(per_token, weights, torch.tensor(5)).item() == pytest.approx(1.9, abs=1e-15)


def test_weighted_token_mean_rescale_by_num_tokens_is_exact():
    per_token = _t([[1.0, 2.0], [3.0, 4.0]])
    weights = _t([[1.0, 1.0], [1.0, 0.0]])
    assert weighted_token_mean(per_token, weights, 3).item() == pytest.approx(2.0, abs=1e-15)
    assert weighted_token_mean(per_token, weights, 12).item() == pytest.approx(0.5, abs=1e-15)


def test_switches_off_reduce_to_standard_opd():
    torch.manual_seed(3)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False], [True, True, True, True]])
    labels = ["skip", "weak", "strong"]
    gains = label_gains(labels, alpha=0.5, turn_selection=False, binary=False)
    confidence = torch.rand(3, 4) * mask
    weights = token_weights(gains, confidence, mask, "none")
    assert torch.equal(weights, mask.float())
    logp_old = -torch.rand(3, 4) * mask
    logp_new = logp_old + 0.3 * torch.randn(3, 4) * mask
    logp_teacher = -torch.rand(3, 4) * mask
    per_token = rkl_loss(logp_new, logp_old, logp_teacher)
    loss = weighted_token_mean(per_token, weights, int(mask.sum()))
    torch.testing.assert_close(loss, per_token[mask].mean(), atol=1e-7, rtol=0)


# ---------------------------------------------------------------------------- micro-batch invariance


def _batch(seed: int):
    """8 turns of different lengths, padded to 6; a tiny linear 'model' over a vocab of 7."""
    gen = torch.Generator().manual_seed(seed)
    rows, length, vocab, hidden = 8, 6, 7, 5
    lengths = torch.tensor([6, 2, 4, 5, 1, 3, 6, 2])
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    features = torch.randn(rows, length, hidden, generator=gen)
    tokens = torch.randint(vocab, (rows, length), generator=gen) * mask
    logp_old = torch.where(mask, -torch.rand(rows, length, generator=gen) * 3, 0.0)
    logp_teacher = torch.where(mask, -torch.rand(rows, length, generator=gen) * 3, 0.0)
    teacher_topk = torch.log_softmax(torch.randn(rows, length, vocab, generator=gen), -1).topk(3, dim=-1)
    confidence = torch.where(mask, teacher_topk.values[..., 0].exp(), 0.0)
    labels = ["strong", "skip", "weak", "strong", "weak", "skip", "weak", "strong"]
    gains = label_gains(labels, alpha=0.5, turn_selection=True, binary=False)
    layer = torch.nn.Linear(hidden, vocab)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(vocab, hidden, generator=gen))
        layer.bias.copy_(torch.randn(vocab, generator=gen))
    data = {
        "features": features,
        "tokens": tokens,
        "mask": mask,
        "logp_old": logp_old,
        "logp_teacher": logp_teacher,
        "topk_ids": teacher_topk.indices,
        "topk_logprobs": teacher_topk.values * mask.unsqueeze(-1),
    }
    return layer, data, token_weights(gains, confidence, mask, "token"), lengths


def _per_token(layer: torch.nn.Linear, data: dict, kind: str) -> torch.Tensor:
    logp = torch.log_softmax(layer(data["features"]), dim=-1)
    if kind == "rkl":
        logp_new = logp.gather(-1, data["tokens"].unsqueeze(-1)).squeeze(-1)
        return rkl_loss(logp_new, data["logp_old"], data["logp_teacher"])
    student_topk = logp.gather(-1, data["topk_ids"])
    return topk_divergence(student_topk, data["topk_logprobs"], kind, beta=0.5)


@pytest.mark.parametrize("kind", ["rkl", "jsd"])
def test_weights_once_per_optimizer_batch_make_micro_batches_exact(kind):
    layer, data, weights, lengths = _batch(seed=4)
    normalized, skipped = normalize_weights(weights, data["mask"])
    assert not skipped
    num_tokens = int(data["mask"].sum())

    whole = weighted_token_mean(_per_token(layer, data, kind), normalized, num_tokens)
    whole.backward()
    grads_whole = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()

    total = torch.zeros(())
    for start in range(0, 8, 2):
        rows = slice(start, start + 2)
        width = int(lengths[rows].max())  # each micro-batch padded only to its own longest turn
        micro = {name: value[rows, :width] for name, value in data.items()}
        part = weighted_token_mean(_per_token(layer, micro, kind), normalized[rows, :width], num_tokens)
        part.backward()
        total = total + part.detach()
    torch.testing.assert_close(total, whole.detach(), atol=1e-6, rtol=0)
    for grad_whole, param in zip(grads_whole, layer.parameters(), strict=True):
        torch.testing.assert_close(param.grad, grad_whole, atol=1e-6, rtol=0)

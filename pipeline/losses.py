"""Per-token weights and losses of SAGE-OPD (DESIGN §1 steps 4–6), as plain functions of tensors.

Every function here is pure: the trainer feeds it tensors, and the tests check each loss mode and
each weight switch on small hand-computed examples without building a trainer (TRL's habit).

- Weights: w_{t,j} = g(ℓ_t) · κ_{t,j} (turn label gain times teacher confidence), then rescaled to
  w̃ = w · N / Σw over the supervised tokens of one **whole optimizer batch**. They are computed once per
  optimizer batch, before it is split into micro-batches, so the way a batch is split (gradient
  accumulation, per-device batch size) never changes them; `weighted_token_mean` divides every
  micro-batch by the same N, so the micro-batch losses sum to the batch loss exactly.
- Losses are per token ([B, L]); the trainer weights and reduces them with `weighted_token_mean`.
  `rkl` is the Thinking Machines / tinker OPD: the sampled token's reverse KL as an advantage with a
  PPO-style clipped importance ratio. The `topk` divergences compare teacher and student over the
  teacher's top-k ids plus one tail bucket holding the remaining mass, because the annotate stage stores
  only the teacher's top-k (full-vocab teacher distributions are never kept on disk).

Padded positions must hold finite numbers (0, not −inf) in every input: their weight is 0, and
0 · finite = 0 where −inf · 0 = NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

LABEL_NAMES = ("skip", "weak", "strong")
CONFIDENCE_MODES = ("token", "turn", "none")
TOPK_KINDS = ("fkl", "rkl", "jsd")


# ------------------------------------------------------------------------------------------ weights


def label_gains(labels: Sequence[str], *, alpha: float, turn_selection: bool, binary: bool) -> torch.Tensor:
    """One gain per turn, [T] float32: skip 0, weak `alpha` (1 when `binary`), strong 1.

    With `turn_selection` off every turn gets 1 (standard OPD). Labels are checked either way, so a
    corrupt annotation shard fails loudly whatever the switches.
    """
    unknown = [label for label in labels if label not in LABEL_NAMES]
    if unknown:
        raise ValueError(f"unknown turn label {unknown[0]!r}; expected one of {', '.join(LABEL_NAMES)}.")
    if not turn_selection:
        return torch.ones(len(labels), dtype=torch.float32)
    gain = {"skip": 0.0, "weak": 1.0 if binary else alpha, "strong": 1.0}
    return torch.tensor([gain[label] for label in labels], dtype=torch.float32)


def confidence_weights(confidence: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Teacher-confidence factor κ per token, [B, L]; 0 wherever `mask` is False.

    `token`: the teacher's top-1 probability of each token; `turn`: its mean over the row's response
    tokens (padding excluded), given to every one of them; `none`: 1.
    """
    maskf = mask.to(confidence.dtype)
    if mode == "token":
        return confidence * maskf
    if mode == "turn":
        count = maskf.sum(dim=-1, keepdim=True).clamp_min(1)
        return (confidence * maskf).sum(dim=-1, keepdim=True) / count * maskf
    if mode == "none":
        return maskf
    raise ValueError(f"unknown confidence mode {mode!r}; expected one of {', '.join(CONFIDENCE_MODES)}.")


def token_weights(gains: torch.Tensor, confidence: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """w[b, j] = gains[b] · κ[b, j]: turn gains [B] times confidence factors [B, L]."""
    kappa = confidence_weights(confidence, mask, mode)
    return gains.to(device=kappa.device, dtype=kappa.dtype).unsqueeze(-1) * kappa


def normalize_weights(weights: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Rescale the weights of one whole optimizer batch to w · N / Σw, N = number of masked tokens.

    The result sums to N over the mask, so the weighted loss has standard OPD's scale. Returns
    `(weights, skipped)`; when Σw = 0 (every turn skipped) the weights are all 0 and `skipped` is True:
    that batch gives no update, and no NaN.
    """
    w = weights * mask.to(weights.dtype)
    total = w.sum()
    if total.item() == 0:
        return torch.zeros_like(w), True
    return w * (mask.sum().to(w.dtype) / total), False


# ------------------------------------------------------------------------------------------- losses


def rkl_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    logp_teacher: torch.Tensor,
    clip_eps: float = 0.2,
    logp_sampler: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token OPD loss on the sampled tokens, [B, L]: −w·min(ρA, clip(ρ, 1−ε, 1+ε)A).

    A = sg[log π_T − log π_old] is the negative per-token reverse KL used as an advantage; ρ = π_θ/π_old
    is the importance ratio to the policy that sampled. Gradient flows only through `logp_new`; it is
    −wρA per token where the ratio is unclipped and 0 where it is clipped.

    Without `logp_sampler`, π_old is the sampler (the log-probs recorded at rollout) and w = 1: tinker's
    OPD, where the sampler is the policy. When it is not (decoding restricted to admissible actions, a
    temperature other than 1, top-p), `logp_old` is the policy's own log-prob at the round's start and
    `logp_sampler` the sampler's q: A and ρ then compare the policy with the teacher and with itself, and
    w = sg[π_old/q] carries the samples from q over to π_old (importance sampling). Using q as π_old there
    would bias A by log(π_old/q) and start ρ at π_θ/q instead of 1, so the clip would cut tokens the
    policy never moved (measured: README, the mini benchmark).
    """
    dtype = torch.promote_types(logp_new.dtype, torch.float32)
    logp_old = logp_old.detach().to(dtype)
    advantage = logp_teacher.detach().to(dtype) - logp_old
    ratio = torch.exp(logp_new.to(dtype) - logp_old)
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps)
    per_token = -torch.minimum(ratio * advantage, clipped * advantage)
    if logp_sampler is None:
        return per_token
    return torch.exp(logp_old - logp_sampler.detach().to(dtype)) * per_token


def _with_tail(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """[..., k] log-probs → [..., k+1] log-probs of a distribution: the k entries plus the rest of the mass.

    The tail is log(1 − Σ exp(topk)) = log(−expm1(logsumexp(topk))), clamped at the dtype's epsilon:
    a remainder smaller than that is rounding noise of Σ (it may even come out ≤ 0), and the clamp keeps
    its log finite, so no NaN reaches the loss or its gradient.
    """
    mass = torch.logsumexp(topk_logprobs, dim=-1, keepdim=True)
    tail = (-torch.expm1(mass)).clamp_min(torch.finfo(topk_logprobs.dtype).eps).log()
    return torch.cat([topk_logprobs, tail], dim=-1)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, from log-probs."""
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def topk_divergence(
    student_topk_logprobs: torch.Tensor, teacher_topk_logprobs: torch.Tensor, kind: str, beta: float = 0.5
) -> torch.Tensor:
    """Per-token divergence over the teacher's top-k plus a tail bucket, [B, L].

    Inputs are [B, L, k]: the student's full-vocab log-probs gathered at the teacher's top-k ids, and
    the teacher's top-k log-probs. `fkl` = KL(teacher ‖ student), `rkl` = KL(student ‖ teacher), `jsd` =
    generalized JSD with TRL GKD's convention: with m = β·p_T + (1−β)·p_S, β·KL(p_T ‖ m) + (1−β)·KL(p_S ‖ m),
    except that β = 0 is exactly the forward KL and β = 1 exactly the reverse KL.
    """
    if kind not in TOPK_KINDS:
        raise ValueError(f"unknown top-k divergence {kind!r}; expected one of {', '.join(TOPK_KINDS)}.")
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], not {beta}.")
    dtype = torch.promote_types(student_topk_logprobs.dtype, torch.float32)
    student = _with_tail(student_topk_logprobs.to(dtype))
    teacher = _with_tail(teacher_topk_logprobs.to(dtype))
    if kind == "fkl" or (kind == "jsd" and beta == 0):
        return _kl(teacher, student)
    if kind == "rkl" or (kind == "jsd" and beta == 1):
        return _kl(student, teacher)
    mixture = torch.logsumexp(torch.stack([teacher + math.log(beta), student + math.log1p(-beta)]), dim=0)
    return beta * _kl(teacher, mixture) + (1 - beta) * _kl(student, mixture)


def sft_loss(logp_new: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy on the given tokens, [B, L]: −log π_θ."""
    return -logp_new


def weighted_token_mean(per_token: torch.Tensor, weights: torch.Tensor, num_tokens: int | torch.Tensor) -> torch.Tensor:
    """Σ weights · per_token / num_tokens, a scalar.

    `num_tokens` is N of the whole optimizer batch, not of this micro-batch, so the values over the
    micro-batches of one optimizer step sum to the batch loss exactly. `per_token` must be finite
    (padding holds 0): positions of weight 0 then contribute exactly 0. N = 0 is treated as 1, so an
    empty batch gives 0, not NaN.
    """
    if isinstance(num_tokens, torch.Tensor):
        denominator = num_tokens.to(per_token.device).clamp_min(1)
    else:
        denominator = max(num_tokens, 1)
    return (weights * per_token).sum() / denominator

"""Running sums for accuracy and loss that stay on the device: no host sync until someone reads them."""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many of the batch have the target among the top-k logits, for each k (a device tensor).

    A k larger than the number of classes counts every sample (top-5 of a 3-class problem is certain).
    """
    k_max = min(max(ks), logits.size(1))
    top = logits.topk(k_max, dim=1).indices  # (B, k_max), best first
    hits = top.eq(target.unsqueeze(1)).cumsum(dim=1)  # hits[:, j]: target within the top j+1
    return torch.stack([hits[:, min(k, k_max) - 1].sum() for k in ks])


class RunningSums:
    """Loss, top-k hits and sample count for one pass, accumulated as device tensors.

    ``add`` launches a few small kernels and never waits for the device; ``values`` reads them once.
    """

    def __init__(self, device: torch.device, ks: tuple[int, ...] = (1, 5)) -> None:
        self.ks = ks
        # one float64 vector [loss_sum, count, hits@k...]: a single all-reduce and a single read
        self.sums = torch.zeros(2 + len(ks), dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        batch = target.size(0)
        update = torch.cat([(loss.detach().double() * batch).reshape(1),
                            torch.full((1,), batch, dtype=torch.float64, device=self.sums.device),
                            topk_correct(logits.detach(), target, self.ks).double()])
        self.sums += update

    def loss_finite_flag(self) -> torch.Tensor:
        """1.0 while every loss so far was finite, else 0.0, as a device tensor (to all-reduce, then read)."""
        return torch.isfinite(self.sums[:1]).to(self.sums.dtype)

    def values(self) -> dict[str, float]:
        """Mean loss and top-k accuracies as floats (one device read)."""
        loss_sum, count, *hits = self.sums.tolist()
        divisor = max(count, 1.0)
        out = {"loss": loss_sum / divisor, "count": int(count)}  # the true count: 0 when nothing was added
        for k, h in zip(self.ks, hits, strict=True):
            out[f"top{k}"] = h / divisor
        return out

    def state(self) -> torch.Tensor:
        return self.sums.detach().clone()

    def load_state(self, sums: torch.Tensor) -> None:
        self.sums.copy_(sums.to(self.sums.device))

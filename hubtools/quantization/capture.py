"""What each quantized weight reads: the statistics of the inputs of `F.linear` calls, taken while the
family's own forward runs (so the engine never restates a block; a `TorchFunctionMode`, scoped to a `with`).

For every watched weight (identified by the tensor object the getter handed out) the inputs it is
applied to accumulate into its `InputStats`: the Gram matrix `X^T X` (GPTQ's Hessian, AWQ's error
metric), the sum of `|x|` per channel (AWQ's magnitudes) and the token count. Consecutive calls on the
same input tensor (q, k, v; w1, w3) share one `InputStats`, computed once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from hubtools.quantization.gptq import Hessian


class InputStats:
    """The Gram matrix, per-channel |x| sums and token count of one weight's inputs."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.hessian = Hessian(columns, device)
        self.magnitude_sum = torch.zeros(columns, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        self.hessian.add(x)
        self.magnitude_sum += x.reshape(-1, x.shape[-1]).abs().sum(0).to(self.magnitude_sum)

    @property
    def tokens(self) -> int:
        return self.hessian.tokens

    @property
    def gram(self) -> torch.Tensor:
        return self.hessian.sum

    @property
    def magnitude(self) -> torch.Tensor:
        return (self.magnitude_sum / max(self.tokens, 1)).float()


class LinearInputs(TorchFunctionMode):
    """Within `with LinearInputs(watched) as seen:`, `seen.stats[name]` gathers the inputs of `watched[name]`."""

    def __init__(self, watched: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = {id(t): name for name, t in watched.items()}
        self.stats: dict[str, InputStats] = {}
        self._last: tuple[torch.Tensor, dict[int, InputStats]] | None = None

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2 and id(args[1]) in self.names:
            self._record(self.names[id(args[1])], args[0])
        return func(*args, **kwargs)

    def _record(self, name: str, x: torch.Tensor) -> None:
        if name in self.stats and self._last is not None and self._last[0] is x:
            return  # the same call seen again
        shared = self._last[1] if self._last is not None and self._last[0] is x else None
        key = x.shape[-1]
        if shared is not None and key in shared:
            self.stats[name] = shared[key]
            return
        stats = self.stats.get(name) or InputStats(x.shape[-1], x.device)
        stats.add(x.detach())
        self.stats[name] = stats
        self._last = (x, {key: stats})

"""The GPU path of a training step: what makes a small model fast on CUDA, and a no-op on a CPU.

A MONAI ``DiffusionModelUNet`` step at these sizes keeps an H100 a few percent busy: the time
goes to Python and kernel launches, not arithmetic (``shared/GPU.md``). So on CUDA:

- the training set lives on the device (the trainers move it once, not per batch);
- bf16 autocast (``memstudy.models.train._autocast``) and channels-last tensors for the convs;
- fused AdamW (one kernel for the whole optimiser step instead of several per parameter);
- ``torch.compile`` of the network, falling back to eager on the first failure (a missing
  compiler, an unsupported op), with the reason recorded, because a fast path that can crash a
  cell is worse than a slow one;
- no ``loss.item()`` per step: it waits for the GPU, so losses are read only when logged.

On a CPU every helper here returns its input unchanged, so a CPU run gives exactly the numbers
it gave before this module existed (tested in ``tests/test_speed.py``). None of this has been
run on a GPU by the session that wrote it: ``memstudy bench --gpu`` is the check to run there.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

# On CUDA: "1" (default) torch.compile's default mode; "0" eager (e.g. to compare);
# "reduce-overhead" adds CUDA graphs (kernel launches replayed as one graph); "max-autotune".
COMPILE_ENV = "MEMSTUDY_COMPILE"


def on_cuda(device: str | torch.device) -> bool:
    return str(device).startswith("cuda")


def fused(device: str) -> dict:
    """Keyword arguments for ``torch.optim.AdamW``: the fused kernel on CUDA, nothing on CPU."""
    return {"fused": True} if on_cuda(device) else {}


def channels_last(x, device: str):
    """A module or a 4-D tensor in channels-last layout on CUDA (faster convs); else unchanged."""
    if not on_cuda(device):
        return x
    if isinstance(x, torch.nn.Module):  # 3D networks (5-D weights) keep their layout
        if any(p.dim() == 5 for p in x.parameters()):
            return x
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class CompiledOrEager(torch.nn.Module):
    """Call a ``torch.compile``d version of ``module``; on its first failure, call ``module``.

    The compiled function shares ``module``'s parameters, so training either one trains both,
    and state dicts are always taken from ``module`` itself (never the wrapper).

    Parameters
    ----------
    module : the network.
    compile_fn : ``torch.compile`` or a stand-in (tests pass one that fails).
    """

    def __init__(self, module: torch.nn.Module, compile_fn=None):
        super().__init__()
        self.module = module
        self.fallback_reason: str | None = None
        try:
            self._compiled = (compile_fn or torch.compile)(module)
        except Exception as err:  # compile itself can fail (no compiler): record and go eager
            self._fallback(err)

    def _fallback(self, err: Exception) -> None:
        self.fallback_reason = f"{type(err).__name__}: {err}".splitlines()[0]
        self._compiled = None
        warnings.warn(f"torch.compile failed, training eagerly instead ({self.fallback_reason})",
                      RuntimeWarning, stacklevel=3)

    def forward(self, *args, **kwargs):
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as err:  # compilation happens at the first call: same fallback
                self._fallback(err)
        return self.module(*args, **kwargs)


def maybe_compile(module: torch.nn.Module, device: str, compile_fn=None) -> torch.nn.Module:
    """``module`` wrapped in :class:`CompiledOrEager` on CUDA (unless ``MEMSTUDY_COMPILE=0``);
    on a CPU the module itself, so CPU numbers stay bit-identical to eager."""
    mode = os.environ.get(COMPILE_ENV, "1")
    if not on_cuda(device) or mode == "0":
        return module
    if compile_fn is None and mode != "1":
        compile_fn = functools.partial(torch.compile, mode=mode)
    return CompiledOrEager(module, compile_fn)

"""What "alive" means for an SAE latent, defined once for stages 3 and 5 and the report.

The paper's definition (``../REFERENCE.md``: "dead = unseen for 1e6 tokens", the dead-latent filter that left
about 2000 of 3584 latents alive) is a *training-window* count: a latent is dead when it has not fired on any of
the last ``window`` training tokens, alive otherwise. :func:`alive_latents` is that rule on any stream of encoded
tokens, in the order they were seen; the window is the last ``window`` rows of the stream (all of them when
``window`` is None).

How each caller applies it:

- 3.0 (:func:`training_window_alive`): the last ``dead_tokens`` tokens of the SAE's own training stream (the same
  rows, in the same order, that its last steps trained on), encoded by the saved per-token SAE: the paper's count
  (window 1e6 tokens on the paper profile), computed on the finished SAE. That is the number the report compares
  with the paper's, and the list 3.0 saves;
- 3.1 describes exactly those latents (each fires on a training-window token, so on the store);
- stage 5 applies the same function to its own data (the adapter's training tokens), saying which window.

Latents that fire on held-out tokens are counted by :func:`rank1.sae.train.evaluate_sae` under another name
(``n_firing``): a different quantity, never called alive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from rank1.sae.split import Split, iter_batches
from rank1.store import Store

ALIVE_RULE = ("alive: fired (activation > 0) on at least one of the last `window` tokens of the stream; dead "
              "otherwise (the paper's dead-latent filter: no firing for 1e6 training tokens)")


def alive_latents(acts_batches: Iterable[torch.Tensor], d_sae: int, window: int | None = None) -> torch.Tensor:
    """Bool [d_sae]: which latents fired (> 0) on at least one of the last ``window`` rows of the stream of
    [rows, d_sae] activation batches (every row when ``window`` is None)."""
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 token, got {window}")
    last_L = torch.full((d_sae,), -1, dtype=torch.long)  # index of the last row each latent fired on
    seen = 0
    for acts in acts_batches:
        fired = (acts > 0).cpu()
        if fired.shape[-1] != d_sae:
            raise ValueError(f"activations have {fired.shape[-1]} latents, expected {d_sae}")
        if len(fired):
            rows = torch.arange(seen, seen + len(fired)).unsqueeze(1).expand_as(fired)
            last_L = torch.maximum(last_L, torch.where(fired, rows, -1).amax(0))
        seen += len(fired)
    start = 0 if window is None else seen - window
    return last_L >= max(start, 0)


def _window_batches(sae, store: Store, split: Split, batch_size: int, seed: int, buffer_tokens: int,
                    start: int, n: int):
    """The SAE's latents of training-stream rows ``start .. start + n - 1``, a batch at a time."""
    stream = iter_batches(store, split, batch_size, seed, buffer_tokens, start)
    left = n
    while left > 0:
        x = next(stream)[:left]
        left -= len(x)
        yield sae.encode(x.to(sae.device))


@torch.no_grad()
def training_window_alive(sae, store: Store, split: Split, cfg, trained_tokens: int) -> dict[str, Any]:
    """:func:`alive_latents` of ``sae`` over the last ``cfg.dead_tokens`` of the ``trained_tokens`` tokens its
    training stream fed it (all of them when fewer); ``cfg`` is the :class:`rank1.sae.config.SaeConfig` it trained
    with. Returns the count, the share, the window and the sorted alive latents."""
    window = min(cfg.dead_tokens, trained_tokens)
    batches = _window_batches(sae, store, split, cfg.batch_size, cfg.seed, cfg.buffer_tokens,
                              trained_tokens - window, window)
    mask = alive_latents(batches, sae.cfg.d_sae)
    n = int(mask.sum())
    return {"n_alive": n, "d_sae": sae.cfg.d_sae, "alive_frac": n / sae.cfg.d_sae, "window_tokens": window,
            "window_epochs": window / split.n_train, "rule": ALIVE_RULE,
            "where": f"the last {window} tokens of the SAE's training stream (of {trained_tokens}), encoded by the "
                     f"saved SAE; first {split.skip} token(s) of each document left out",
            "latents": mask.nonzero()[:, 0].tolist()}


"""What a denoising network is conditioned on, beyond x_t and t: class labels, or a conditioning object.

Everywhere a sampler, `GaussianDiffusion` or the Trainer passes `y` to a model, `y` is either

* class labels [B] (long), called as ``model(x_t, t, y)``; the unconditional branch of classifier-free
  guidance is the learned null class (`diffusion.null_labels`); or
* a **conditioning object** (this module): it knows the keyword arguments it gives the model
  (``model(x_t, t, **cond.model_kwargs())``), its own unconditional version (``cond.null()``), how to join
  with another of its kind along the batch (``cond.cat(other)``, for the 2B-batch of guidance) and how to be
  indexed (``cond[i:j]``, for sampling in chunks).

`TextCondition`: a prompt's per-token text states and padding mask for cross-attention. Its unconditional
version is the encoding of the **empty prompt** "" (Stable Diffusion's choice: the U-Net learns it through
caption dropout, no extra parameters). `SuperResCondition`: the upsampled low-resolution image and its
augmentation noise level of a cascade's super-resolution stage (Imagen), optionally with text; its null
keeps the image and drops only the text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


def is_conditioning(y) -> bool:
    """True for a conditioning object (as opposed to class labels or None)."""
    return hasattr(y, "model_kwargs") and hasattr(y, "null")


def call_model(model, xt: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
    """model(x_t, t, y) for labels or None; model(x_t, t, **y.model_kwargs()) for a conditioning object."""
    if is_conditioning(y):
        return model(xt, t, **y.model_kwargs())
    return model(xt, t, y)


def _take(x: torch.Tensor | None, index):
    return None if x is None else x[index]


@dataclass
class TextCondition:
    """Per-token states `context` [B, L, D] and `mask` [B, L] (True = a real token) of B prompts, with the
    empty prompt's `null_context` [L, D] / `null_mask` [L] for the unconditional branch."""

    context: torch.Tensor
    mask: torch.Tensor
    null_context: torch.Tensor
    null_mask: torch.Tensor
    prompts: list[str] | None = None

    def __post_init__(self):
        if self.context.ndim != 3 or self.mask.shape != self.context.shape[:2]:
            raise ValueError(f"context must be [B, L, D] and mask [B, L], got {tuple(self.context.shape)} and "
                             f"{tuple(self.mask.shape)}")
        if self.null_context.shape != self.context.shape[1:] or self.null_mask.shape != self.mask.shape[1:]:
            raise ValueError("null_context / null_mask must be one prompt's [L, D] / [L] of the same L and D")

    def __len__(self) -> int:
        return self.context.shape[0]

    def model_kwargs(self) -> dict:
        return {"context": self.context, "context_mask": self.mask}

    def null(self) -> "TextCondition":
        B = len(self)
        return TextCondition(self.null_context.expand(B, -1, -1).clone(), self.null_mask.expand(B, -1).clone(),
                             self.null_context, self.null_mask, [""] * B)

    def cat(self, other: "TextCondition") -> "TextCondition":
        prompts = (self.prompts or [None] * len(self)) + (other.prompts or [None] * len(other))
        return TextCondition(torch.cat([self.context, other.context]), torch.cat([self.mask, other.mask]),
                             self.null_context, self.null_mask, prompts)

    def __getitem__(self, index) -> "TextCondition":
        if isinstance(index, int):
            index = slice(index, index + 1)
        prompts = None
        if self.prompts is not None:
            idx = range(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index).tolist()
            prompts = [self.prompts[i] for i in idx]
        return TextCondition(self.context[index], self.mask[index], self.null_context, self.null_mask, prompts)

    def to(self, device=None, dtype=None) -> "TextCondition":
        def move(x, floating):
            return x.to(device=device, dtype=dtype if floating and dtype is not None else None)
        return TextCondition(move(self.context, True), self.mask.to(device), move(self.null_context, True),
                             self.null_mask.to(device), self.prompts)

    def dropped(self, drop: torch.Tensor) -> "TextCondition":
        """Caption dropout: rows where `drop` [B] is True get the empty prompt (training the null branch)."""
        d = drop.to(self.context.device)
        null = self.null()
        return TextCondition(torch.where(d[:, None, None], null.context, self.context),
                             torch.where(d[:, None], null.mask, self.mask), self.null_context, self.null_mask,
                             None if self.prompts is None else
                             ["" if flag else p for flag, p in zip(drop.tolist(), self.prompts)])


@dataclass
class SuperResCondition:
    """A super-resolution stage's conditioning: `low_res` [B, C, H, W] (the low-resolution image already
    upsampled to the stage's size, after noise augmentation), `aug_level` [B] (the augmentation timestep,
    0 = none) and optionally `text` (a `TextCondition`). Its null drops the text only: guidance pushes towards
    the prompt, never away from the image being upsampled."""

    low_res: torch.Tensor
    aug_level: torch.Tensor
    text: TextCondition | None = None

    def __len__(self) -> int:
        return self.low_res.shape[0]

    def model_kwargs(self) -> dict:
        kwargs = {"low_res": self.low_res, "aug_level": self.aug_level}
        if self.text is not None:
            kwargs.update(self.text.model_kwargs())
        return kwargs

    def null(self) -> "SuperResCondition":
        return replace(self, text=None if self.text is None else self.text.null())

    def cat(self, other: "SuperResCondition") -> "SuperResCondition":
        text = None if self.text is None else self.text.cat(other.text)
        return SuperResCondition(torch.cat([self.low_res, other.low_res]), torch.cat([self.aug_level, other.aug_level]),
                                 text)

    def __getitem__(self, index) -> "SuperResCondition":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return SuperResCondition(self.low_res[index], self.aug_level[index],
                                 None if self.text is None else self.text[index])

    def to(self, device=None, dtype=None) -> "SuperResCondition":
        return SuperResCondition(self.low_res.to(device=device, dtype=dtype), self.aug_level.to(device),
                                 None if self.text is None else self.text.to(device, dtype))

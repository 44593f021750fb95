"""The frozen text encoder of text-to-image diffusion: a CLIP's text tower, alone.

Stable Diffusion conditions its U-Net on the per-token states of CLIP's text encoder (a frozen, pretrained
model); Imagen (Saharia et al. 2022) showed that a frozen text encoder works, and that making *it* bigger
helps more than making the U-Net bigger. Here the encoder is the text tower of notebook 10's CLIP
(`ddpm_lite.clip.CLIP`): its tokenizer and causal transformer, whose final LayerNorm'd states
[B, L, width] the U-Net cross-attends to (before CLIP's projection into the joint space, as Stable
Diffusion uses CLIP's last hidden states). `CLIPTextEncoder.from_clip(clip)` copies them out, so a text-to-
image checkpoint carries only the text tower (its `text_encoder/` folder, about 1 MB), not the image tower.

`encode(prompts)` returns a `conditioning.TextCondition` with the empty prompt's encoding attached (the
unconditional branch of classifier-free guidance). Unknown words raise a `ValueError` naming them (with
``unknown="error"``, the default here: a prompt should not silently lose words) or become <unk>.
Encodings are cached per prompt (`cache_size` entries; training captions repeat), which is exact because the
encoder is frozen: `requires_grad` is off and `train()` keeps it in eval mode.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from .clip import TextEncoder
from .conditioning import TextCondition
from .tokenizer import Tokenizer


STATES = ("final", "embeddings", "both")


class CLIPTextEncoder(nn.Module):
    """Tokenizer + causal transformer of a CLIP; `forward(prompts)` -> (states [B, L, width], mask [B, L]).

    `states` says which per-token states the U-Net reads: "final" (the transformer's last LayerNorm'd states,
    as Stable Diffusion), "embeddings" (each token's own embedding plus its position, LayerNorm'd: no token
    sees another, so "seven" is the same vector in every prompt), or "both" (the two sequences one after the
    other, [B, 2L, width], as eDiff-I hands its U-Net two encoders' states at once).
    """

    def __init__(self, vocab, context_length: int = 32, width: int = 128, layers: int = 3, heads: int = 4,
                 source: str | None = None, cache_size: int = 20000, states: str = "final"):
        super().__init__()
        self.config = dict(vocab=list(vocab), context_length=context_length, width=width, layers=layers,
                           heads=heads, source=source)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.states = states  # validated and recorded in config by the setter
        self.tokenizer = Tokenizer(vocab, context_length)
        self.text_encoder = TextEncoder(len(self.tokenizer), context_length, width, layers, heads)
        self.width = width
        self.cache_size = cache_size
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_clip(cls, clip, source: str | None = None, states: str = "final") -> "CLIPTextEncoder":
        """The text tower of a trained `CLIP` (weights copied); `states` as in the class docstring."""
        c = clip.config
        enc = cls(c["vocab"], c["context_length"], c["text_width"], c["text_layers"], c["text_heads"], source=source,
                  states=states)
        enc.text_encoder.load_state_dict(clip.text_encoder.state_dict())
        return enc.to(clip.logit_scale.device)

    def with_tokens(self, words, init_from: str = "<unk>") -> "CLIPTextEncoder":
        """A copy of this encoder whose vocabulary also holds `words` (new ids after the old ones, so every
        old prompt encodes exactly as before). Each new word's embedding row starts as a copy of the row of
        `init_from`: "<unk>" (the default) is the row no training caption ever used, so the new word starts
        with the **weak prior** DreamBooth asks of its identifier [V] (Ruiz et al. 2023, §3.2: a rare token,
        not a word the model already associates with something); pass a known word to start from its meaning
        (textual inversion's initialisation, Gal et al. 2023)."""
        words = [str(w).lower() for w in ([words] if isinstance(words, str) else words)]
        from .tokenizer import split_words

        for w in words:
            if split_words(w) != [w]:
                raise ValueError(f"{w!r} is not one word: a new token must be a single lower-case word without "
                                 f"spaces or commas")
            if w in self.tokenizer.stoi:
                raise ValueError(f"{w!r} is already in the vocabulary: pick a word the encoder does not know "
                                 f"(e.g. 'sks'), or use the word as it is")
        if init_from not in self.tokenizer.stoi:
            raise ValueError(f"init_from={init_from!r} is not in the vocabulary: use '<unk>' or a known word")
        c = self.config
        new = CLIPTextEncoder(list(c["vocab"]) + words, c["context_length"], c["width"], c["layers"], c["heads"],
                              source=c["source"], cache_size=self.cache_size, states=self.states)
        state = {k: v.clone() for k, v in self.text_encoder.state_dict().items()}
        old = state["token_embedding.weight"]
        row = old[self.tokenizer.stoi[init_from]]
        state["token_embedding.weight"] = torch.cat([old, row.expand(len(words), -1)])
        new.text_encoder.load_state_dict(state)
        return new.to(self.device)

    @property
    def states(self) -> str:
        """Which per-token states `forward` returns (see the class docstring); kept in `config`."""
        return self.config["states"]

    @states.setter
    def states(self, value: str) -> None:
        if value not in STATES:
            raise ValueError(f"states={value!r}: expected one of {', '.join(STATES)}")
        self.config["states"] = value
        self._cache.clear()  # cached encodings were of the other kind

    def train(self, mode: bool = True) -> "CLIPTextEncoder":
        return super().train(False)  # frozen: always in eval mode (so cached encodings stay exact)

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # weights moved or cast: cached encodings are stale
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        self._cache.clear()
        return super().load_state_dict(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.text_encoder.positional_embedding.device

    def check_prompts(self, prompts) -> None:
        """Raise a ValueError naming the words the tokenizer does not know (they would become <unk>)."""
        for p in prompts:
            unknown = self.tokenizer.unknown_words(p)
            if unknown:
                raise ValueError(f"prompt {p!r}: unknown word{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(repr(w) for w in unknown)}. The text encoder knows "
                                 f"{len(self.tokenizer.vocab)} words: {' '.join(self.tokenizer.vocab)}")

    @torch.no_grad()
    def forward(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer.encode(prompts).to(self.device)
        mask = self.tokenizer.attention_mask(ids)
        if self.states == "final":
            return self.text_encoder(ids), mask
        enc = self.text_encoder
        words = nn.functional.layer_norm(enc.token_embedding(ids) + enc.positional_embedding[:ids.shape[1]],
                                         (self.width,))
        if self.states == "embeddings":
            return words, mask
        return torch.cat([enc(ids), words], dim=1), torch.cat([mask, mask], dim=1)

    @torch.no_grad()
    def _encode_cached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            states, mask = self(missing)
            for p, s, m in zip(missing, states, mask):
                self._cache[p] = (s, m)
        pairs = []
        for p in prompts:  # least recently used last out: a hit moves to the end
            self._cache.move_to_end(p)
            pairs.append(self._cache[p])
        while len(self._cache) > max(self.cache_size, 1):  # evict only after this call's prompts are read
            self._cache.popitem(last=False)
        return torch.stack([s for s, _ in pairs]), torch.stack([m for _, m in pairs])

    def encode(self, prompts, unknown: str = "error") -> TextCondition:
        """A `TextCondition` for a prompt or a list of prompts, with the empty prompt as its null."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if unknown == "error":
            self.check_prompts(prompts)
        elif unknown != "unk":
            raise ValueError(f"unknown={unknown!r}: expected 'error' or 'unk'")
        states, mask = self._encode_cached(prompts + [""])
        return TextCondition(states[:-1], mask[:-1], states[-1], mask[-1], prompts)

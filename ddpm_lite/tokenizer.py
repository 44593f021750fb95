"""A small word-level tokenizer for captions, in the shape of CLIP's (Radford et al. 2021, §2.4).

CLIP's text encoder reads a caption as token ids bracketed by a start token and an **end token** (its
features at the end token are the caption's embedding), padded to a fixed context length. This one does the
same over a closed vocabulary of words (`ddpm_lite.captions.VOCAB` by default) instead of CLIP's 49,152
byte-pair merges:

    "A thick seven, slanted to the right"  →  <start> a thick seven , slanted to the right <end> <pad> ...

Normalisation: lower case; "," is a token of its own; a final "." is dropped; words split on white space.

**Unknown words**: by default every word outside the vocabulary becomes `<unk>`, one id shared by all of
them (the model has never seen them, so it cannot know what they mean; `unknown_words` lists them so a
notebook can say so). With ``unknown="error"`` `encode` raises a `ValueError` naming the word instead.
Captions longer than the context length raise a `ValueError` (silently cutting off words would change what
the caption says).
"""

from __future__ import annotations

import re

import torch

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIALS = (PAD, UNK, START, END)
UNKNOWN_POLICIES = ("unk", "error")


def split_words(text: str) -> list[str]:
    """Normalised words of a caption: lower case, "," split off as a word, a final "." dropped."""
    if not isinstance(text, str):
        raise TypeError(f"a caption must be a str, got {type(text).__name__}")
    text = text.strip().lower()
    text = re.sub(r"\.\s*$", "", text)
    return text.replace(",", " , ").split()


class Tokenizer:
    """Word-level tokenizer: ids 0–3 are <pad>, <unk>, <start>, <end>; then the vocabulary in order.

    ``context_length`` counts the start and end tokens.
    """

    def __init__(self, vocab, context_length: int = 32):
        vocab = [str(w) for w in vocab]
        clash = set(vocab) & set(SPECIALS)
        if clash:
            raise ValueError(f"the vocabulary may not contain the special tokens {sorted(clash)}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("the vocabulary has repeated words")
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 (start, a word, end), got {context_length}")
        self.vocab = tuple(vocab)
        self.context_length = int(context_length)
        self.itos = list(SPECIALS) + list(vocab)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.unk_id, self.start_id, self.end_id = (self.stoi[s] for s in SPECIALS)

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Tokenizer({len(self.vocab)} words + {len(SPECIALS)} special tokens, context_length={self.context_length})"

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` that are not in the vocabulary (each would become <unk>)."""
        return [w for w in split_words(text) if w not in self.stoi or w in SPECIALS]

    def encode(self, texts, unknown: str = "unk") -> torch.Tensor:
        """Token ids [B, context_length] (long) for a caption or a list of captions."""
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown={unknown!r}: expected one of {UNKNOWN_POLICIES}")
        if isinstance(texts, str):
            texts = [texts]
        ids = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            words = split_words(text)
            if len(words) + 2 > self.context_length:
                raise ValueError(f"caption {text!r} has {len(words)} words; at most {self.context_length - 2} fit "
                                 f"the context length {self.context_length} (with the start and end tokens): "
                                 f"shorten it or build the tokenizer with a larger context_length")
            row = [self.start_id]
            for w in words:
                if w in SPECIALS or w not in self.stoi:
                    if unknown == "error":
                        raise ValueError(f"unknown word {w!r} in caption {text!r}: the vocabulary has "
                                         f"{len(self.vocab)} words ({', '.join(self.vocab[:12])}, ...); rephrase "
                                         f"with known words or pass unknown='unk' to map it to <unk>")
                    row.append(self.unk_id)
                else:
                    row.append(self.stoi[w])
            row.append(self.end_id)
            ids[i, :len(row)] = torch.tensor(row)
        return ids

    def end_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the end token in each row of `ids` [B] (where CLIP pools the text features)."""
        is_end = ids == self.end_id
        if not bool(is_end.any(1).all()):
            raise ValueError("every row of token ids needs an end token: make them with Tokenizer.encode")
        return is_end.int().argmax(1)

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: True for <start> … <end>, False for the padding after it (what cross-attention masks)."""
        return torch.arange(ids.shape[1], device=ids.device)[None] <= self.end_positions(ids)[:, None]

    def decode(self, ids) -> str | list[str]:
        """Captions back from ids (the words between <start> and <end>; "," re-attached)."""
        ids = torch.as_tensor(ids)
        if ids.ndim == 1:
            return self.decode(ids[None])[0]
        out = []
        for row in ids.tolist():
            words = []
            for i in row:
                if i == self.end_id:
                    break
                if i in (self.start_id, self.pad_id):
                    continue
                words.append(self.itos[i])
            out.append(" ".join(words).replace(" ,", ","))
        return out

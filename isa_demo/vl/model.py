"""The frozen vision-language model: any open_clip model behind one small interface.

``load_vl(name, pretrained)`` accepts an open_clip pretrained tag (``ViT-B-32`` +
``laion2b_s34b_b79k``), a local checkpoint path, ``"builtin"`` (the project's shipped
checkpoint for its registered configs), or None (random weights). The returned
:class:`VLModel` encodes images and texts, returns ViT local features, and encodes prompts
whose placeholder token ``*`` is replaced by ``L >= 1`` learned embeddings (METHOD.md 2).

Why one module of about 450 lines: everything here is the model layer's contract with the rest of
the package and shares the open_clip internals it reaches into (the text tower's parts, the
tokenizer's byte-level vocabulary, the checkpoint layout): loading and identity checks, image
and pseudo-token text encoding, and reading token ids back as words. Splitting it would spread
those internals over several files that each import the others.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from ..common import default_device, file_sha256, load_checkpoint, load_image, unpack_state
from ..errors import VLLoadError
from ..settings import BUILTIN_PRETRAINED, BUILTIN_VL, VL_ASSETS_DIR, parse_pretrained
from .hub import create_pretrained

CONFIG_DIR = Path(__file__).parent / "configs"
BUILTIN_NAME = BUILTIN_VL
PLACEHOLDER = "*"
IDENTITY_KEYS = ("name", "checkpoint_sha256", "embed_dim")

open_clip.add_model_config(CONFIG_DIR)


def builtin_checkpoint(name: str = BUILTIN_NAME) -> Path:
    return VL_ASSETS_DIR / f"{name}.safetensors"


# ------------------------------------------------------------------ identity
# Every artifact made with a VL model (a query-encoder or masked-pair checkpoint, a gallery index)
# records ``VLModel.identity()``; these three functions are the one check that it meets the same model.
def same_model(a: dict, b: dict) -> bool:
    """Same weights: compared by checkpoint hash when both have one (a moved or renamed checkpoint
    file is the same model), otherwise by every identity field."""
    keys = IDENTITY_KEYS if a.get("checkpoint_sha256") and b.get("checkpoint_sha256") else sorted(set(a) | set(b))
    return all(a.get(k) == b.get(k) for k in keys)


def describe_identity(identity: dict | None) -> str:
    if not identity:
        return "an unknown model"
    sha = identity.get("checkpoint_sha256")
    sha = (sha[:12] + "...") if sha and len(sha) > 40 else sha
    return (f"{identity.get('name')} (pretrained={identity.get('pretrained')}, checkpoint={sha}, "
            f"embed_dim={identity.get('embed_dim')})")


def identity_mismatch(found: dict, expected: dict, made: str = "was trained for") -> str | None:
    """None when ``found`` (an artifact's recorded identity) is the ``expected`` VL model, else the
    reason, naming both: "<made> VL model A (...), but the loaded VL model is B (...)"."""
    if same_model(found, expected):
        return None
    return (f"{made} VL model {describe_identity(found)}, but the loaded VL model is {describe_identity(expected)} "
            f"(expected {expected.get('name')}, found {found.get('name')})")


def model_config(name: str) -> dict:
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise VLLoadError(f"unknown open_clip model {name!r}; known: {', '.join(open_clip.list_models()[:20])}, ...")
    return cfg


@dataclass
class TextParts:
    """The pieces of an open_clip text tower, for both layouts (CLIP and CustomTextCLIP)."""

    token_embedding: torch.nn.Embedding
    positional_embedding: torch.Tensor
    transformer: torch.nn.Module
    ln_final: torch.nn.Module
    text_projection: torch.Tensor | torch.nn.Module | None
    attn_mask: torch.Tensor | None
    pool_type: str
    eos_id: int | None

    @classmethod
    def of(cls, model) -> "TextParts":
        t = model.text if hasattr(model, "text") else model  # CustomTextCLIP vs CLIP
        if not hasattr(t, "token_embedding"):
            raise VLLoadError("pseudo-token encoding needs an open_clip text transformer (not an HF text tower)")
        if getattr(t, "cls_emb", None) is not None:
            raise VLLoadError("text towers with an appended class token (CoCa) are not supported")
        pool = getattr(t, "text_pool_type", None) or getattr(t, "pool_type", "argmax")
        return cls(t.token_embedding, t.positional_embedding, t.transformer, t.ln_final, t.text_projection,
                   t.attn_mask, pool, getattr(t, "text_eos_id", None) or getattr(t, "eos_id", None))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, torch.nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


class VLModel:
    def __init__(self, model, preprocess, tokenizer, name: str, pretrained: str | None, checkpoint_sha256: str | None,
                 device: str, vocabulary: Sequence[int] | Callable[[], Sequence[int]] | None = None):
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.checkpoint_sha256 = checkpoint_sha256
        self.device = device
        self.text = TextParts.of(model)
        self.context_length = int(self.text.positional_embedding.shape[0])
        self.embed_dim = int(self.encode_texts(["a"]).shape[-1])
        self.word_dim = int(self.text.token_embedding.weight.shape[1])
        self.image_size = _image_size(model)
        ids = tokenizer([PLACEHOLDER])[0]
        self.placeholder_id = int(ids[1])  # [SOT, *, EOT, pad...]
        self._vocabulary = vocabulary  # ids, or a function that lists them (read on first use, not at load)
        mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    @property
    def vocabulary(self) -> torch.Tensor | None:
        """The token ids the model learned (its training captions' words); None: the whole tokenizer."""
        if callable(self._vocabulary):
            self._vocabulary = self._vocabulary()
        return None if self._vocabulary is None else torch.as_tensor(sorted(self._vocabulary), dtype=torch.long)

    # ------------------------------------------------------------------ identity
    @property
    def is_builtin(self) -> bool:
        """The shipped weights of a built-in model (what the shipped query models were trained for)."""
        return self.pretrained is not None and Path(self.pretrained) == builtin_checkpoint(self.name)

    def identity(self) -> dict:
        """What an index or a query-encoder checkpoint records to check it meets the same model."""
        return {"name": self.name, "pretrained": _display_pretrained(self.pretrained),
                "checkpoint_sha256": self.checkpoint_sha256, "embed_dim": self.embed_dim}

    # ------------------------------------------------------------------ images
    def images_to_tensor(self, images: Sequence) -> torch.Tensor:
        """PIL images / paths / arrays -> preprocessed batch (with the model's own transform)."""
        return torch.stack([self.preprocess(load_image(im)) for im in images]).to(self.device)

    def uint8_to_tensor(self, arr: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 already at the model's size -> normalized batch (fast path)."""
        if isinstance(arr, np.ndarray) and not arr.flags.writeable:  # a read-only memmap of the world cache
            arr = np.array(arr)
        x = torch.as_tensor(np.asarray(arr)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp_(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_image_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(x.to(self.device)).float(), dim=-1)

    @torch.no_grad()
    def encode_images(self, images: Sequence, batch_size: int = 64) -> torch.Tensor:
        out = [self.encode_image_tensor(self.images_to_tensor(images[i:i + batch_size]))
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def encode_image_local(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global feature and local features ``(B, K, D)`` in the joint space, both normalized.

        ViT towers: patch tokens after ``ln_post`` and ``proj`` (the projection the pooled token
        gets). Other towers are not supported for local features.
        """
        v = self.model.visual
        if not hasattr(v, "class_embedding"):
            raise VLLoadError(f"local image features need a ViT image tower; {self.name} has {type(v).__name__}")
        old = v.output_tokens
        v.output_tokens = True
        try:
            pooled, tokens = v(x.to(self.device))
        finally:
            v.output_tokens = old
        if v.proj is not None:
            pooled, tokens = pooled, tokens @ v.proj
        return F.normalize(pooled.float(), dim=-1), F.normalize(tokens.float(), dim=-1)

    # ------------------------------------------------------------------ texts
    def tokenize(self, texts: Sequence[str], context_length: int | None = None) -> torch.Tensor:
        return self.tokenizer(list(texts), context_length=context_length or self.context_length).to(self.device)

    def encode_text_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(encode_text_trimmed(self.model, ids).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        out = [self.encode_text_tokens(self.tokenize(texts[i:i + batch_size]))
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def placeholder_embedding(self) -> torch.Tensor:
        return self.text.token_embedding.weight[self.placeholder_id]

    def encode_with_pseudo_tokens(self, prompts: Sequence[str], pseudo: torch.Tensor,
                                  return_tokens: bool = False):
        """Encode prompts whose ``*`` is replaced by ``pseudo`` (``(B, L, d_w)``, L >= 1).

        The sequence grows by ``L - 1``; the modifier is truncated (never the end-of-text token)
        so that it fits the context. The feature is read at the end-of-text position, exactly as
        the tower does for ordinary text. Gradients flow to ``pseudo``. With ``return_tokens``
        also returns the projected tower outputs at the ``L`` pseudo positions ``(B, L, D)``.
        Returned features are not normalized.
        """
        tp = self.text
        B, L, _ = pseudo.shape
        if len(prompts) != B:
            raise ValueError(f"{len(prompts)} prompts for {B} pseudo sentences")
        n = self.context_length - (L - 1)
        if n < 4:
            raise ValueError(f"L={L} pseudo tokens do not fit a context of {self.context_length}")
        ids = self.tokenize(prompts, context_length=n)
        has = ids == self.placeholder_id
        if not bool(has.any(-1).all()):
            bad = [p for p, h in zip(prompts, has.any(-1).tolist()) if not h]
            raise ValueError(f"prompt has no placeholder {PLACEHOLDER!r} (or it was truncated away): {bad[0]!r}")
        p = has.int().argmax(-1)  # first placeholder
        if tp.pool_type == "argmax":
            eot = ids.argmax(-1)
        elif tp.pool_type == "eos":
            eot = (ids == tp.eos_id).int().argmax(-1)
        elif tp.pool_type == "last":
            eot = torch.full_like(p, n - 1)
        else:
            eot = torch.zeros_like(p)
        eot = torch.where(eot > p, eot + L - 1, eot)

        emb = tp.token_embedding(ids)  # (B, n, d)
        T = n + L - 1
        j = torch.arange(T, device=ids.device).unsqueeze(0)
        pj = p.unsqueeze(1)
        in_pseudo = (j >= pj) & (j < pj + L)
        src = torch.where(j < pj, j, j - L + 1).clamp(0, n - 1)
        x = torch.gather(emb, 1, src.unsqueeze(-1).expand(B, T, emb.shape[-1]))
        k = (j - pj).clamp(0, L - 1)
        ps = torch.gather(pseudo.to(emb.dtype), 1, k.unsqueeze(-1).expand(B, T, emb.shape[-1]))
        x = torch.where(in_pseudo.unsqueeze(-1), ps, x)

        mask = tp.attn_mask
        if mask is not None and tp.pool_type in ("argmax", "eos"):
            T = int(eot.max()) + 1  # causal: positions after the EOT never reach it
            x = x[:, :T]
            mask = mask[:T, :T]
        x = x + tp.positional_embedding[:T].to(x.dtype)
        x = tp.transformer(x, attn_mask=mask)
        x = tp.ln_final(x)
        pooled = tp.project(x[torch.arange(B, device=x.device), eot])
        if not return_tokens:
            return pooled
        pos = (pj + torch.arange(L, device=x.device).unsqueeze(0))
        tokens = tp.project(torch.gather(x, 1, pos.unsqueeze(-1).expand(B, L, x.shape[-1])))
        return pooled, tokens

    def nearest_words(self, vectors: torch.Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
        """Decode pseudo-word vectors ``(L, d_w)`` into their nearest words (cosine), among the words
        the model learned (:attr:`vocabulary`) when it records them, never among token rows it
        never trained."""
        weight = self.text.token_embedding.weight
        key = (weight.data_ptr(), weight._version)
        if getattr(self, "_word_table_key", None) != key:  # normalized once, not on every query
            ids = self.vocabulary if self.vocabulary is not None else torch.arange(weight.shape[0])
            self._word_ids = ids
            self._word_table = F.normalize(weight.detach().float()[ids.to(weight.device)], dim=-1)
            self._word_table_key = key
        table = self._word_table
        sims = F.normalize(vectors.float().to(table.device), dim=-1) @ table.T
        top = sims.topk(min(k, table.shape[0]), dim=-1)
        out = []
        for vals, idx in zip(top.values.tolist(), top.indices.tolist()):
            out.append([(token_text(self.tokenizer, int(self._word_ids[i])), round(float(v), 3))
                        for v, i in zip(vals, idx)])
        return out


def special_tokens(tokenizer) -> set[int]:
    """Start, end and padding token ids."""
    return set(tokenizer([""])[0].tolist())


def token_text(tokenizer, token: int) -> str:
    """One vocabulary token as a person reads it.

    open_clip's tokenizer is byte-level BPE: its ``decoder`` maps an id to a string of stand-in
    characters, one per byte (``"Ã©"`` for the two bytes of ``"é"``), which ``byte_decoder`` maps
    back to bytes. A token whose bytes are a whole UTF-8 text is shown as that text (end-of-word
    mark dropped); one that is only part of a character (a piece of an emoji, say) is shown as its
    bytes, ``⟨f0 9f⟩``, and characters that print as nothing (controls, spaces of other widths)
    as their code point, ``⟨U+200B⟩``; never as the stand-in characters."""
    import unicodedata

    dec = getattr(tokenizer, "decoder", None)
    piece = dec.get(token) if isinstance(dec, dict) else None
    if piece is None:
        hf = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers one
        try:
            piece = str(hf.decode([token])).strip() if hf is not None else ""
        except Exception:
            piece = ""
        return piece or f"⟨token {token}⟩"
    piece = piece.replace("</w>", "")
    byte_decoder = getattr(tokenizer, "byte_decoder", None)
    if not isinstance(byte_decoder, dict):
        return piece
    try:
        raw = bytes(byte_decoder[c] for c in piece)
    except KeyError:  # not a byte-level piece: show it as it is
        return piece
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "⟨" + " ".join(f"{b:02x}" for b in raw) + "⟩"
    shown = "".join(f"⟨U+{ord(c):04X}⟩" if c != " " and unicodedata.category(c)[0] in "CZ" else c for c in text)
    return shown.strip() or "⟨space⟩"


def caption_vocabulary(tokenizer, captions: Sequence[str]) -> list[int]:
    """The token ids of ``captions`` (without start, end and padding tokens)."""
    return sorted(set(tokenizer(list(captions)).unique().tolist()) - special_tokens(tokenizer))


def untrained_token_rows(shape, seed: int = 0) -> torch.Tensor:
    """The token-embedding rows a built-in checkpoint does not store (never trained): open_clip's
    initialisation, normal(0, 0.02), drawn from a generator seeded with ``seed``."""
    return torch.empty(shape).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))


def world_vocabulary(tokenizer, n: int = 2000) -> list[int]:
    """The words of the world's own captions: what a built-in model trained on them learned
    (used for a built-in checkpoint that does not record its vocabulary)."""
    from ..world import caption, random_scene

    rng = np.random.default_rng(0)
    return caption_vocabulary(tokenizer, [caption(random_scene(rng), rng) for _ in range(n)])


def encode_text_trimmed(model, ids: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(ids)``, computed only up to the last end-of-text position when the
    tower is causal (later positions cannot reach it, so the result is the same, faster)."""
    tp = TextParts.of(model)
    if tp.attn_mask is None or tp.pool_type != "argmax":
        return model.encode_text(ids)
    eot = ids.argmax(-1)
    T = int(eot.max()) + 1
    x = tp.token_embedding(ids[:, :T]) + tp.positional_embedding[:T]
    x = tp.ln_final(tp.transformer(x, attn_mask=tp.attn_mask[:T, :T]))
    return tp.project(x[torch.arange(ids.shape[0], device=x.device), eot])


def _image_size(model) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _display_pretrained(pretrained: str | None) -> str | None:
    if pretrained and os.path.exists(pretrained):
        return os.path.basename(pretrained)
    return pretrained


def load_state_checked(model, path: str | os.PathLike, name: str) -> dict:
    """Load a safetensors / torch checkpoint strictly; on mismatch name both sides. Returns the
    checkpoint's metadata (empty for torch files)."""
    path = str(path)
    meta = {}
    if path.endswith(".safetensors"):
        state, meta = load_checkpoint(path)
        state = unpack_state(state)  # the token embedding may be stored as int8 rows
        if "token_embedding_rows" in meta:  # only the trained rows are stored
            key = next(k for k in state if k.endswith("token_embedding.weight"))
            rows = torch.as_tensor(json.loads(meta["token_embedding_rows"]))
            full = untrained_token_rows(model.state_dict()[key].shape)
            full[rows] = state[key].float()
            state[key] = full
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
    saved_for = meta.get("model_name")
    if saved_for and saved_for != name:
        raise VLLoadError(f"checkpoint {path} was saved for model {saved_for!r}, but the configuration is {name!r}")
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[:4]
        raise VLLoadError(f"checkpoint {path} (saved for {saved_for or 'an unknown model'}) does not match "
                          f"configuration {name!r}: {' '.join(first)}") from None
    return meta


def load_vl(name: str | None = BUILTIN_NAME, pretrained: str | None = BUILTIN_PRETRAINED, device: str | None = None,
            **model_kwargs) -> VLModel:
    """Load an open_clip model as a frozen :class:`VLModel` (see module doc for ``pretrained``).

    ``name`` None is the built-in model; ``pretrained`` is read by
    :func:`isa_demo.settings.parse_pretrained` ("none" / "random" / "" / None: random weights)."""
    name = name or BUILTIN_NAME
    pretrained = parse_pretrained(pretrained)
    device = device or default_device()
    model_config(name)
    ckpt_hash = None
    local = None
    vocabulary = None
    if pretrained == BUILTIN_PRETRAINED:
        local = builtin_checkpoint(name)
        if not local.exists():
            raise VLLoadError(f"no built-in checkpoint for {name!r} at {local}; train one with "
                              f"`python -m isa_demo train vl` or pass --pretrained")
    elif pretrained and (os.path.exists(pretrained) or pretrained.endswith((".safetensors", ".pt", ".bin", ".pth"))):
        local = Path(pretrained)
        if not local.exists():
            raise VLLoadError(f"checkpoint file not found: {local}")
    if local is not None:
        with _quiet_random_init():  # the weights are loaded just below
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, **model_kwargs)
        meta = load_state_checked(model, local, name)
        ckpt_hash = file_sha256(local)
        if "vocabulary" in meta:
            vocabulary = json.loads(meta["vocabulary"])
        elif pretrained == BUILTIN_PRETRAINED:
            vocabulary = functools.partial(world_vocabulary, open_clip.get_tokenizer(name))
    else:
        if pretrained:  # a tag: a clear message when its weights are not cached and the hub is out of reach
            model, _, preprocess = create_pretrained(name, pretrained, **model_kwargs)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, **model_kwargs)
        ckpt_hash = f"open_clip:{name}/{pretrained}" if pretrained else None
    model.to(device)
    tokenizer = open_clip.get_tokenizer(name)
    return VLModel(model, preprocess, tokenizer, name, str(local) if local else pretrained, ckpt_hash, device,
                   vocabulary)


@contextlib.contextmanager
def _quiet_random_init():
    """Hide open_clip's "No pretrained weights loaded ... initialized randomly" warning."""
    root = logging.getLogger()
    drop = lambda record: "No pretrained weights loaded" not in record.getMessage()  # noqa: E731
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def config_json(name: str) -> str:
    return json.dumps(model_config(name), sort_keys=True)

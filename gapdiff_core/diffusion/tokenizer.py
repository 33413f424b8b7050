"""CLIP tokenizer for Stable Diffusion built from the bundled OpenAI CLIP BPE vocabulary (no download).

SD 1.x pads with ``<|endoftext|>`` (id 49407); SD 2.x (OpenCLIP) pads with ``"!"`` (id 0).
"""
from __future__ import annotations

import functools
import gzip
import json
import tempfile
from pathlib import Path

BPE_PATH = Path(__file__).with_name("clip_bpe") / "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
PAD_TOKENS = {"sd1": EOS, "sd2": "!"}
_N_MERGES = 49152 - 256 - 2  # the merges OpenAI CLIP uses (48894)


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable-unicode table of GPT-2/CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The 49408-entry CLIP vocabulary and its 48894 merges (``"a b"`` strings), as in ``vocab.json``/``merges.txt``."""
    lines = gzip.open(BPE_PATH).read().decode("utf-8").split("\n")
    merges = lines[1 : _N_MERGES + 1]
    byte_tokens = list(_bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != 49408:
        raise RuntimeError(f"{BPE_PATH}: expected 49408 CLIP tokens, got {len(vocab)}")
    return vocab, merges


def write_tokenizer_files(folder: str | Path, pad_token: str = EOS, model_max_length: int = 77) -> Path:
    """Write a transformers ``CLIPTokenizer`` folder (vocab.json, merges.txt, tokenizer_config.json)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token,
        "add_prefix_space": False, "errors": "replace",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(pad_token: str, model_max_length: int):
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="gapdiff-clip-tok-") as tmp:
        write_tokenizer_files(tmp, pad_token, model_max_length)
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


def clip_tokenizer(family: str = "sd1", model_max_length: int = 77, pad_token: str | None = None):
    """The CLIP tokenizer of SD 1.x (``family="sd1"``) or SD 2.x (``"sd2"``) from the bundled vocabulary.

    Cached: treat the returned tokenizer as read-only.
    """
    if pad_token is None:
        if family not in PAD_TOKENS:
            raise ValueError(f"unknown tokenizer family {family!r}; expected one of {sorted(PAD_TOKENS)}")
        pad_token = PAD_TOKENS[family]
    return _cached_tokenizer(pad_token, model_max_length)


def tokenizer_from_config(folder: str | Path):
    """A tokenizer for a config folder: its own vocab files if present, else the bundled BPE with its config's pad token."""
    folder = Path(folder)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    pad = config.get("pad_token", EOS)
    if isinstance(pad, dict):
        pad = pad.get("content", EOS)
    return clip_tokenizer(pad_token=pad, model_max_length=int(config.get("model_max_length", 77)))

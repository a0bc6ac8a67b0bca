"""Build a small seq2seq starter learner G offline from (text, reference) pairs: a byte-level BPE
tokenizer and a tiny T5 (whose copy circuit is seeded by hand) or BART, trained for a few hundred steps.

No FLAN-T5 weights are reachable offline. scripts/build_starter_model.py builds the bundled
models/starter (a T5, the family the live loop's default belongs to) with this module; `simulate
--starter` builds one for the dataset under study, a BART by default: its learned absolute positions let
a model this small copy faithfully (copy starter on 2,000 ParaDetox texts, 1,500 steps: chrF 70.7 against
the T5's 55.8, in 148 s against 330 s), so what a budget teaches is not drowned by copying errors.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

from loop.vocab import STARTER_ARCHS

VOCAB_SIZE = 4000
BATCH_SIZE = 32
LR = 3e-3  # the T5's (its copy circuit is seeded by hand); a BART learns from scratch, at the lower LR_BART
LR_BART = 1e-3  # the rate of every BART trial in BENCHMARKS.md and docs/simulate
WIDTH = 128  # d_model: 1.4 M parameters (T5) or 1.6 M (BART) with a 4,000-token vocabulary
COPY_PAIRS = True  # also train on (reference, reference): copying is most of the rewrite task
MAX_SOURCE_TOKENS = 128
MAX_TARGET_TOKENS = 64
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2
TOKEN_IDS = {"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}  # both architectures' configs
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MAX_POSITIONS = 512  # a BART's learned positions: source and target lengths up to this many tokens


def is_built(out: str | Path) -> bool:
    """True if `out` already holds a config and weights."""
    out = Path(out)
    return (out / "config.json").is_file() and any((out / w).is_file() for w in WEIGHT_FILES)


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """Train a byte-level BPE tokenizer (<pad>=0, </s>=1, <unk>=2, appends </s>) wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    # ByteLevel adds a prefix space when encoding; strip it again when decoding so text round-trips.
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, f"special token {t} must have id {i}"
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    for sample in texts[:50]:
        back = fast.decode(fast(sample).input_ids, skip_special_tokens=True)
        if back != sample.strip():
            raise RuntimeError(f"tokenizer does not round-trip: {sample!r} -> {back!r}")
    return fast


def make_config(vocab_size: int, width: int = WIDTH, arch: str = "t5"):
    """The small configuration of the starter model: two encoder and two decoder layers of `arch` (T5 or
    BART), heads of 32 dimensions; `width` (d_model, a multiple of 32) sets its size."""
    if arch == "bart":
        from transformers import BartConfig

        return BartConfig(
            vocab_size=vocab_size,
            d_model=width,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=width // 32,
            decoder_attention_heads=width // 32,
            encoder_ffn_dim=4 * width,
            decoder_ffn_dim=4 * width,
            max_position_embeddings=MAX_POSITIONS,
            dropout=0.1,
            attention_dropout=0.0,
            activation_function="gelu",
            **TOKEN_IDS,
            bos_token_id=1,
            forced_bos_token_id=None,
            forced_eos_token_id=None,
            scale_embedding=False,
            tie_word_embeddings=True,
            # read by CTranslate2's BART converter, no longer written by transformers: post-norm, as BART is
            normalize_before=False,
            normalize_embedding=True,
        )
    if arch != "t5":
        raise ValueError(f"unknown starter architecture {arch!r}; known: {', '.join(STARTER_ARCHS)}")
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_ff=4 * width,
        d_kv=32,
        num_heads=width // 32,
        num_layers=2,
        num_decoder_layers=2,
        dropout_rate=0.1,
        feed_forward_proj="relu",
        **TOKEN_IDS,
        tie_word_embeddings=True,
    )


def copy_friendly_init(model, scale: float = 1.0, bias: float = 5.0) -> None:
    """Seed a pointer-style copy circuit so a few hundred steps suffice to learn to copy tokens.

    T5 has no absolute positions, so learning to copy from scratch needs an induction-like circuit that
    takes thousands of steps. We hand-initialise its two pieces and let training do the rest:
    encoder head 0 attends to the next token and head 1 to the previous one (shared relative-position
    bias), and decoder cross-attention head 0 gets tied query/key projections, so a decoder position
    attends to encoder positions holding the same token and reads the token after it from there.
    """
    import torch

    cfg = model.config
    with torch.no_grad():
        rb = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        half = cfg.relative_attention_num_buckets // 2  # bidirectional buckets: [0, half) <= 0 < [half, ...)
        rb[:, 0] = -bias
        rb[half + 1, 0] = bias  # offset +1: next token
        rb[:, 1] = -bias
        rb[1, 1] = bias  # offset -1: previous token
        for block in model.decoder.block:
            cross = block.layer[1].EncDecAttention
            proj = torch.randn(cfg.d_kv, cfg.d_model) * (scale / cfg.d_model**0.5)
            cross.q.weight[: cfg.d_kv] = proj
            cross.k.weight[: cfg.d_kv] = proj


def train(pairs: list[tuple[str, str]], tokenizer_texts: list[str], *, steps: int, seed: int = 0,
          lr: float | None = None, width: int = WIDTH, vocab_size: int = VOCAB_SIZE, copy_pairs: bool = COPY_PAIRS,
          progress: bool = False, desc: str = "starter", arch: str = "t5"):
    """Fit a tokenizer on `tokenizer_texts` and train a fresh small `arch` model (t5 or bart) on `pairs` (plus
    each reference copied to itself with `copy_pairs`) for `steps` steps: (model in eval mode, tokenizer, facts
    for labelloop.json). Deterministic given `seed`. Pairs of (text, text) alone make the self-supervised copy
    starter."""
    if steps < 0:
        raise ValueError("steps must be >= 0")
    if not pairs:
        raise ValueError("no training pairs")
    config = make_config(vocab_size, width, arch)  # raises on an unknown architecture before any work
    if lr is None:
        lr = LR_BART if arch == "bart" else LR
    import torch
    from tqdm.auto import tqdm
    from transformers import BartForConditionalGeneration, T5ForConditionalGeneration

    from loop.learner import optimizer_step

    train_pairs = pairs + ([(r, r) for _, r in pairs] if copy_pairs else [])
    tokenizer = train_tokenizer(tokenizer_texts, vocab_size)
    config.vocab_size = len(tokenizer)

    torch.manual_seed(seed)
    if arch == "bart":
        tokenizer.bos_token = "</s>"  # CTranslate2's BART converter needs one; never added to a sequence
        model = BartForConditionalGeneration(config)
    else:
        model = T5ForConditionalGeneration(config)
        copy_friendly_init(model)
    # the generation config is derived from `config`: TOKEN_IDS, and no forced first or last token
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / max(1, steps))
    )

    rng = random.Random(seed)
    order: list[int] = []
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, unit="step")
    for _ in bar:
        if len(order) < BATCH_SIZE:
            fresh = list(range(len(train_pairs)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:BATCH_SIZE], order[BATCH_SIZE:]
        src = [train_pairs[i][0] for i in idx]
        tgt = [train_pairs[i][1] for i in idx]
        enc = tokenizer(src, max_length=MAX_SOURCE_TOKENS, truncation=True, padding=True, return_tensors="pt")
        labels = tokenizer(
            text_target=tgt, max_length=MAX_TARGET_TOKENS, truncation=True, padding=True, return_tensors="pt"
        ).input_ids
        labels[labels == tokenizer.pad_token_id] = -100
        loss = model(**enc, labels=labels).loss
        optimizer_step(loss, model, opt, sched)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    tail = losses[-min(len(losses), 50) :]
    train_loss = sum(tail) / len(tail) if tail else math.nan
    model.eval()
    facts = {
        "steps": steps,
        "seed": seed,
        "train_loss": round(train_loss, 4) if not math.isnan(train_loss) else None,
        "pairs": len(pairs),
        "copy_pairs": len(train_pairs) - len(pairs),
        "batch_size": BATCH_SIZE,
        "lr": lr,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "width": width,
        "arch": arch,
    }
    return model, tokenizer, facts


def save(model, tokenizer, out: str | Path, meta: dict) -> Path:
    """Write model, tokenizer and `meta` (as labelloop.json) into `out` atomically; return `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "labelloop.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    _normalise_modes(tmp)
    _swap_into_place(tmp, out)
    return out


def _normalise_modes(folder: Path) -> None:
    """Give the folder and its files the usual 0755/0644 modes (safetensors writes its file 0600)."""
    os.chmod(folder, 0o755)
    for f in folder.iterdir():
        os.chmod(f, 0o644)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`, replacing an existing `out` with as small a window as possible."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

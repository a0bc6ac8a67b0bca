"""Build the small local "starter" learner G (a tiny T5 seq2seq model) offline, in about a minute.

No FLAN-T5 weights are reachable offline, so tests and the offline default use this model: a byte-level
BPE tokenizer trained on the bundled ParaDetox sample plus a ~1.4M-parameter T5 trained for a few hundred
steps on `starter.tsv` (offensive text -> neutral rewrite). Quality is not the point; a fast,
deterministic, loadable `AutoModelForSeq2SeqLM` + `AutoTokenizer` directory is.

Usage:
    python scripts/build_starter_model.py [--out models/starter] [--steps N] [--force]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "models" / "starter"
DEFAULT_DATA = ROOT / "data" / "paradetox" / "starter.tsv"
DEFAULT_POOL = ROOT / "data" / "paradetox" / "pool.tsv"
DEFAULT_STEPS = 600
VOCAB_SIZE = 4000
BATCH_SIZE = 32
LR = 3e-3
COPY_PAIRS = True  # also train on (reference, reference): copying is most of the rewrite task
MAX_SOURCE_TOKENS = 128
MAX_TARGET_TOKENS = 64
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Read a `text<TAB>reference` TSV (with header) into (text, reference) pairs."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if reader.fieldnames is None or not {"text", "reference"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a TSV header with columns 'text' and 'reference'")
        return [(r["text"], r["reference"]) for r in reader if r["text"] and r["reference"]]


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


def make_config(vocab_size: int):
    """The small T5 configuration of the starter model."""
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size,
        d_model=128,
        d_ff=512,
        d_kv=32,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=2,
        dropout_rate=0.1,
        feed_forward_proj="relu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
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


def build(
    out: str | Path = DEFAULT_OUT,
    data: str | Path = DEFAULT_DATA,
    pool: str | Path | None = DEFAULT_POOL,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    force: bool = False,
    progress: bool = False,
    lr: float = LR,
) -> Path:
    """Build the starter model into `out` (atomically) unless already built; return `out`."""
    out = Path(out)
    if is_built(out) and not force:
        return out
    if steps < 0:
        raise ValueError("steps must be >= 0")

    import torch
    from tqdm.auto import tqdm
    from transformers import T5ForConditionalGeneration

    t0 = time.perf_counter()
    pairs = read_pairs(data)
    if not pairs:
        raise ValueError(f"{data}: no training pairs")
    tok_texts = [c for p in pairs for c in p]
    train = pairs + ([(r, r) for _, r in pairs] if COPY_PAIRS else [])
    if pool is not None and Path(pool).is_file():
        tok_texts += [c for p in read_pairs(pool) for c in p]  # tokenizer training only
    tokenizer = train_tokenizer(tok_texts)

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(make_config(len(tokenizer)))
    copy_friendly_init(model)
    model.generation_config.decoder_start_token_id = 0
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / max(1, steps))
    )

    rng = random.Random(seed)
    order: list[int] = []
    losses: list[float] = []
    bar = tqdm(range(steps), desc="starter", disable=not progress, unit="step")
    for _ in bar:
        if len(order) < BATCH_SIZE:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:BATCH_SIZE], order[BATCH_SIZE:]
        src = [train[i][0] for i in idx]
        tgt = [train[i][1] for i in idx]
        enc = tokenizer(src, max_length=MAX_SOURCE_TOKENS, truncation=True, padding=True, return_tensors="pt")
        labels = tokenizer(
            text_target=tgt, max_length=MAX_TARGET_TOKENS, truncation=True, padding=True, return_tensors="pt"
        ).input_ids
        labels[labels == tokenizer.pad_token_id] = -100
        loss = model(**enc, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    tail = losses[-min(len(losses), 50) :]
    train_loss = sum(tail) / len(tail) if tail else math.nan

    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    meta = {
        "built_by": "scripts/build_starter_model.py",
        "steps": steps,
        "seed": seed,
        "train_loss": round(train_loss, 4) if not math.isnan(train_loss) else None,
        "data": _rel(data),
        "tokenizer_data": [_rel(data)] + ([_rel(pool)] if pool is not None and Path(pool).is_file() else []),
        "pairs": len(pairs),
        "copy_pairs": len(train) - len(pairs),
        "batch_size": BATCH_SIZE,
        "lr": lr,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (tmp / "labelloop.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    _normalise_modes(tmp)
    _swap_into_place(tmp, out)
    return out


def _rel(path: str | Path) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


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


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: models/starter)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="training pairs TSV (text<TAB>reference)")
    ap.add_argument("--pool", default=str(DEFAULT_POOL), help="extra TSV used only for tokenizer training")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps (default {DEFAULT_STEPS})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if already built")
    args = ap.parse_args(argv)

    if is_built(args.out) and not args.force:
        print(f"starter model already built at {args.out} (use --force to rebuild)")
        return 0
    sys.path.insert(0, str(ROOT))
    from loop import threads

    threads.configure()  # before torch loads: passive OpenMP waits, every available core
    t0 = time.perf_counter()
    out = build(args.out, args.data, args.pool, args.steps, args.seed, force=args.force, progress=True)
    meta = json.loads((out / "labelloop.json").read_text(encoding="utf-8"))
    print(
        f"built starter model at {out} in {time.perf_counter() - t0:.1f}s "
        f"({meta['parameters']:,} params, {meta['steps']} steps, train_loss {meta['train_loss']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

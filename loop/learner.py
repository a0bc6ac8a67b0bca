"""The learner G: load, greedily generate with, fine-tune and score a seq2seq (T5-style) model.

Functions take and return plain lists so they can be mapped over batches (e.g. by a Ray
actor). A model is loaded once per process per resolved path and reused; `fine_tune` trains a
deep copy, so the cached model of its base is never mutated. Callers pass texts exactly as the model
should see them: the task's instruction is applied by loop.rounds (`learner_input`), the same way
for generation, training and dev loss.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from loop.checkpoint import identity
from loop.errors import LearnerError
from loop.runtime import generate_batches
from loop.vocab import RUNTIMES

__all__ = ["load", "load_tokenizer", "plan", "generate", "fine_tune", "evaluate_loss", "clear_cache", "encode_pairs",
           "param_groups", "lr_factor"]

log = logging.getLogger(__name__)

_CACHE: dict[str, tuple[Any, PreTrainedModel, PreTrainedTokenizerBase]] = {}
_LOCK = threading.RLock()
SOURCE_TOKENS = 128  # default source length for training, dev loss and generation (learner.max_source_tokens)
TARGET_TOKENS = 128  # default target length for the same three (learner.max_target_tokens); counter-narratives
# run to 200 teacher tokens, so 64 cut many of them


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _offline(exc: BaseException) -> bool:
    """Whether a loading error says the hub could not be reached (rather than: no such model)."""
    text = str(exc).lower()
    return any(w in text for w in ("couldn't connect", "connection", "offline", "resolve", "timed out"))


def _from_pretrained(cls: Any, key: str) -> Any:
    """`cls.from_pretrained(key)` for a local directory or a hub name; a clear LearnerError when neither works."""
    local = Path(key).is_dir()
    if not local and (Path(key).is_absolute() or key.startswith((".", "~")) or Path(key).exists()):
        raise LearnerError(f"learner model {key!r}: no checkpoint directory there; give the path of a"
                           " directory holding config.json and the weights, or a Hugging Face model name")
    try:
        return cls.from_pretrained(key, local_files_only=local)
    except OSError as exc:  # transformers' way of saying: not on disk, not on the hub, or hub unreachable
        why = "the Hugging Face hub cannot be reached" if _offline(exc) else "the hub has no such model"
        raise LearnerError(
            f"learner model {key!r} cannot be loaded: it is not a local checkpoint directory and {why};"
            " set learner.base_model to a local checkpoint (`make install` builds models/starter) or allow"
            f" network access ({str(exc).splitlines()[0][:160]})"
        ) from None


def load(model: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (once per process, cached) any HF seq2seq name or local path; eval mode."""
    key, stamp = identity(model)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1], hit[2]
        tokenizer = _from_pretrained(AutoTokenizer, key)
        net = _from_pretrained(AutoModelForSeq2SeqLM, key)
        net.to(_device()).eval()
        _CACHE[key] = (stamp, net, tokenizer)  # a rewritten directory replaces its stale entry
        return net, tokenizer


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    """The tokenizer of `model` without its weights (the cached one when the model is loaded): what
    `plan` needs where the model runs elsewhere (a Ray driver)."""
    key, stamp = identity(model)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[2]
    return _from_pretrained(AutoTokenizer, key)


def plan(tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int,
         max_source_tokens: int = SOURCE_TOKENS) -> list[list[str]]:
    """The batches `generate` runs: the unique texts sorted by (source length cut at `max_source_tokens`,
    text), `batch_size` at a time, so a batch depends only on the set of texts. Consecutive batches given
    to `generate` again run as these same batches: how loop.engine splits the work and keeps the outputs."""
    unique = sorted(set(texts))
    lengths = {t: len(ids) for t, ids in zip(unique, tokenizer(unique).input_ids, strict=True)} if unique else {}
    _warn_cut("generate", "sources", sum(n > max_source_tokens for n in lengths.values()), len(unique),
              "max_source_tokens", max_source_tokens)
    unique.sort(key=lambda t: (min(lengths[t], max_source_tokens), t))
    return [unique[i : i + batch_size] for i in range(0, len(unique), batch_size)]


def clear_cache() -> None:
    """Forget all loaded models (frees memory; the next call reloads)."""
    with _LOCK:
        _CACHE.clear()


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled)


def generate(
    model: str,
    texts: list[str],
    *,
    batch_size: int = 32,
    max_new_tokens: int = TARGET_TOKENS,
    max_source_tokens: int = SOURCE_TOKENS,
    progress: bool = False,
    runtime: str = "hf",
    cache_dir: str | Path | None = None,
) -> list[str]:
    """Greedy outputs, same order as texts. Batches sorted by length, torch.inference_mode.

    `runtime` "hf" is transformers' `generate` (the reference); "ct2" / "ct2-int8" run a CTranslate2
    conversion of the same checkpoint (see loop.runtime; conversions are cached under `cache_dir`)."""
    texts = list(texts)
    if not texts:
        return []
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    net, tokenizer = load(model)
    batches = plan(tokenizer, texts, batch_size, max_source_tokens)  # deduplicated, length-sorted
    unique = [t for batch in batches for t in batch]
    if runtime != "hf":
        with _bar(len(unique), f"generate ({runtime})", progress) as bar:
            out = generate_batches(
                model, batches, tokenizer, runtime=runtime, max_new_tokens=max_new_tokens,
                max_source_tokens=max_source_tokens, cache_dir=cache_dir, on_batch=bar.update,
            )
        return [out[t] for t in texts]
    device = next(net.parameters()).device
    out = {}
    with torch.inference_mode(), _bar(len(unique), "generate", progress) as bar:
        for batch in batches:
            enc = tokenizer(batch, truncation=True, max_length=max_source_tokens, padding=True, return_tensors="pt").to(
                device
            )
            ids = net.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
            )
            decoded = tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            out.update(zip(batch, (d.strip() for d in decoded), strict=True))
            bar.update(len(batch))
    return [out[t] for t in texts]


def _warn_cut(what: str, kind: str, cut: int, total: int, setting: str, limit: int) -> None:
    if cut:
        log.warning("%s: %d of %d %s are longer than %s=%d tokens and are cut", what, cut, total, kind, setting, limit)


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    max_source_tokens: int,
    max_target_tokens: int,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(model inputs, labels) for (source, target) pairs: sources cut to `max_source_tokens`; a target
    longer than `max_target_tokens` is cut *without* its end token, so the model never learns to stop
    mid-sentence (an uncut target keeps it). Labels are -100 on padding."""
    enc = tokenizer(
        [s for s, _ in pairs], truncation=True, max_length=max_source_tokens, padding=True, return_tensors="pt"
    )
    targets = [ids[:max_target_tokens] for ids in tokenizer(text_target=[t for _, t in pairs]).input_ids]
    width = max(len(ids) for ids in targets)
    labels = torch.full((len(targets), width), -100, dtype=torch.long)
    for i, ids in enumerate(targets):
        labels[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    batch = {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
    return batch, labels.to(device)


def _count_cut(tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], what: str,
               max_source_tokens: int, max_target_tokens: int) -> None:
    """Warn, with counts, when sources or targets are longer than the configured lengths."""
    sources = tokenizer([s for s, _ in pairs]).input_ids
    targets = tokenizer(text_target=[t for _, t in pairs]).input_ids
    _warn_cut(what, "sources", sum(len(x) > max_source_tokens for x in sources), len(pairs),
              "max_source_tokens", max_source_tokens)
    _warn_cut(what, "targets", sum(len(x) > max_target_tokens for x in targets), len(pairs),
              "max_target_tokens", max_target_tokens)


def _check_pairs(pairs: list[tuple[str, str]], what: str) -> list[tuple[str, str]]:
    pairs = [(str(s), str(t)) for s, t in pairs]
    if not pairs:
        raise ValueError(f"{what} needs at least one (source, target) pair; got an empty list")
    return pairs


OPTIMIZERS = ("adamw", "adafactor")


def param_groups(net: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: weight decay on weight matrices and embeddings only; none on
    normalisation scales and biases, which decay would pull towards 0 (T5's RMSNorm scale included)."""
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_step(loss: torch.Tensor, net: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any) -> None:
    """Back-propagate `loss` and take one clipped step (norm 1.0): the step every learner and starter takes."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    sched.step()


def lr_factor(step: int, total: int, warmup: float) -> float:
    """The learning-rate multiplier at optimizer step `step` (0-based) of `total`: linear warm-up over the
    first `warmup` share of steps, then linear decay to 0 at the end (T5 fine-tuning's usual shape)."""
    ramp = max(1, round(warmup * total)) if warmup > 0 else 0
    if step < ramp:
        return (step + 1) / ramp
    return max(0.0, (total - step) / max(1, total - ramp))


def _optimizer(net: torch.nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(param_groups(net, weight_decay), lr=lr)
    if name == "adafactor":  # the optimizer T5 was trained with; a fixed lr under our schedule
        from transformers.optimization import Adafactor

        return Adafactor(param_groups(net, weight_decay), lr=lr, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def fine_tune(
    base: str,
    pairs: list[tuple[str, str]],
    out_dir: str | Path,
    *,
    epochs: int = 2,
    lr: float = 5e-4,
    batch_size: int = 16,
    seed: int = 0,
    optimizer: str = "adamw",
    warmup: float = 0.1,
    weight_decay: float = 0.01,
    max_source_tokens: int = SOURCE_TOKENS,
    max_target_tokens: int = TARGET_TOKENS,
    progress: bool = False,
    dev_pairs: list[tuple[str, str]] | None = None,
    patience: int | None = None,
) -> dict:
    """Fine-tune a fresh copy of `base` on (source, target) pairs; save model+tokenizer to out_dir
    atomically (write to a sibling temp dir, then rename); return metrics {"train_loss", "pairs",
    "epochs", "seconds", ...}. Never mutates the cached model of `base`.

    With `dev_pairs`, the dev loss is measured after every epoch, the best epoch's weights are the ones
    saved (metrics "dev_loss", "best_epoch"), and training stops after `patience` epochs without
    improvement (early stopping; None trains all `epochs`). The dev loss uses the same lengths as
    training; a warning counts the sources and targets that are cut.

    Schedule: `optimizer` ("adamw" or "adafactor") with linear warm-up over the first `warmup` share of
    the planned steps and linear decay to 0 (`lr_factor`); `weight_decay` spares norms and biases."""
    pairs = _check_pairs(pairs, "fine_tune")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    if patience is not None and patience < 1:
        raise ValueError("patience must be >= 1 (or None to train every epoch)")
    dev = _check_pairs(dev_pairs, "fine_tune dev_pairs") if dev_pairs is not None else None
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    cached, tokenizer = load(base)
    _count_cut(tokenizer, pairs, "fine_tune", max_source_tokens, max_target_tokens)
    rng = random.Random(seed)
    epoch_losses: list[float] = []
    dev_losses: list[float] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (dev loss, epoch, weights)
    with torch.random.fork_rng(devices=[]):  # seed dropout without disturbing the caller's RNG state
        torch.manual_seed(seed)
        net = copy.deepcopy(cached)
        net.train()
        device = next(net.parameters()).device
        opt = _optimizer(net, optimizer, lr, weight_decay)
        n_batches = math.ceil(len(pairs) / batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, epochs * n_batches, warmup))
        bar = _bar(epochs * n_batches, "fine-tune", progress)
        for epoch in range(1, epochs + 1):
            order = list(range(len(pairs)))
            rng.shuffle(order)
            total, count = 0.0, 0
            for i in range(0, len(order), batch_size):
                chunk = [pairs[j] for j in order[i : i + batch_size]]
                batch, labels = encode_pairs(tokenizer, chunk, max_source_tokens, max_target_tokens, device)
                loss = net(**batch, labels=labels).loss
                optimizer_step(loss, net, opt, sched)
                total += loss.item() * len(chunk)
                count += len(chunk)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            epoch_losses.append(total / count)
            if dev is not None:
                net.eval()
                dev_losses.append(_loss_of(net, tokenizer, dev, 32, max_source_tokens, max_target_tokens))
                net.train()
                if best is None or dev_losses[-1] < best[0]:
                    best = (dev_losses[-1], epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
                elif patience is not None and epoch - best[1] >= patience:
                    break
        bar.close()
    net.eval()
    extra: dict[str, Any] = {}
    if best is not None:
        net.load_state_dict(best[2])
        extra = {"dev_loss": best[0], "best_epoch": best[1], "dev_losses": dev_losses, "dev_pairs": len(dev or [])}
    _save_atomically(net, tokenizer, out_dir)
    del net, opt, sched
    return {
        "train_loss": epoch_losses[-1],
        "pairs": len(pairs),
        "epochs": len(epoch_losses),
        "seconds": round(time.perf_counter() - t0, 3),
        "epoch_losses": epoch_losses,
        "optimizer": optimizer,
        "out_dir": str(out_dir),
        **extra,
    }


def _save_atomically(net: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Write model+tokenizer to a sibling temp dir, then rename it onto `out_dir`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        net.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp/safetensors create 0700/0600; use the usual modes
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def evaluate_loss(
    model: str,
    pairs: list[tuple[str, str]],
    *,
    batch_size: int = 32,
    max_source_tokens: int = SOURCE_TOKENS,
    max_target_tokens: int = TARGET_TOKENS,
) -> float:
    """Mean token cross-entropy of targets given sources (for a dev split), at the lengths training used."""
    pairs = _check_pairs(pairs, "evaluate_loss")
    net, tokenizer = load(model)
    return _loss_of(net, tokenizer, pairs, batch_size, max_source_tokens, max_target_tokens)


def _loss_of(net: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]],
             batch_size: int, max_source_tokens: int, max_target_tokens: int) -> float:
    """Mean token cross-entropy of a loaded model (eval mode expected) on pairs."""
    device = next(net.parameters()).device
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            batch, labels = encode_pairs(tokenizer, chunk, max_source_tokens, max_target_tokens, device)
            logits = net(**batch, labels=labels).logits
            total += torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            tokens += int((labels != -100).sum())
    return total / max(tokens, 1)

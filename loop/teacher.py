"""The teacher S: writes the target for each selected item from a prompt template.

`OpenAITeacher` is the real `openai` client against any OpenAI-compatible base_url (OpenAI, Azure,
vLLM, Ollama): many requests in flight, requests- and tokens-per-minute limits it never exceeds,
retries with exponential backoff and jitter on 429 / 5xx / timeouts / connection errors (honouring
`Retry-After`), and output checks (empty, too short or long, an echo of the input, a refusal) with one
retry of the same prompt. `ReferenceTeacher` replays the pool's reference column (offline demos,
simulation). `distill` renders prompts, answers what it can from the ledger's cache (keyed by model,
template name and version, rendered prompt and sampling parameters), asks the teacher for the rest,
and records every attempt with its tokens and cost in the ledger. This is the only module that
imports openai.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import string
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from loop.config import Settings
from loop.errors import TeacherError, TemplateError  # noqa: F401 (re-exported: callers catch it from here too)
from loop.ledger import Ledger

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

# What a chat model says when it will not do the task, matched at the start of the output. An apology
# alone is not a refusal: "I'm sorry, but we should aim for tolerance" is how counter-narratives open.
REFUSAL = re.compile(
    r"^\W*(?:(?:i'?m|i am) sorry|sorry|apologies)?[,.!]?\s*(?:but\s+)?"
    r"(?:i(?:'m| am)? (?:can(?:no|')t|unable to|won'?t|will not|not able to)"
    r" (?:help|assist|comply|do|provide|rewrite|write|fulfil|create|generate|respond)\b"
    r"|as an ai\b|i must decline)",
    re.IGNORECASE,
)




# --- templates ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    """A prompt template: header (name, version, system, instruction), `---`, the prompt body, then
    few-shot examples. `instruction` is the learner's task prompt, with `{text}` where the input goes:
    versioned with the template, so the teacher's prompt and the learner's stay one task."""

    name: str
    version: str
    system: str
    body: str
    source: str = ""
    examples: tuple[tuple[dict[str, str], str], ...] = ()
    instruction: str = ""  # applied by rounds.learner_input

    @property
    def fields(self) -> list[str]:
        """The fields the body needs, e.g. ["text"]."""
        return [f for _, f, _, _ in string.Formatter().parse(self.body) if f]

    def render(self, **values: str) -> str:
        """The user prompt for one item; a missing or empty field is named in the error."""
        missing = [f for f in self.fields if values.get(f) in (None, "")]
        if missing:
            raise TemplateError(
                f"template {self.name} ({self.source}): field(s) {', '.join(missing)} missing or empty"
            )
        return self.body.format(**values)

    def messages(self, prompt: str) -> list[dict[str, str]]:
        """Chat messages: system, one user/assistant pair per few-shot example, then the prompt."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        for values, answer in self.examples:
            out += [{"role": "user", "content": self.render(**values)}, {"role": "assistant", "content": answer}]
        return out + [{"role": "user", "content": prompt}]


def _parse_pairs(lines: list[str], where: str, first_line: int) -> dict[str, str]:
    """`key: value` lines (blank lines skipped); errors name file:line."""
    pairs: dict[str, str] = {}
    for offset, line in enumerate(lines):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise TemplateError(f"{where}:{first_line + offset}: expected 'key: value', got {line!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def load_template(task: str, path: str | Path | None = None) -> Template:
    """The template for `task`, from `path` if given, else the bundled one.

    Layout: `name:`, `version:` and optional `system:` and `instruction:` (the learner's task prompt,
    holding `{text}`) lines, a `---` line, the prompt body with
    `{field}` placeholders, then optional few-shot examples, each opened by a `--- example` line and
    holding one `field: value` line per body field plus `output: the answer`.
    """
    path = Path(path) if path else TEMPLATES_DIR / f"{task}.txt"
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError(f"{path}: template file not found") from None
    lines = raw.splitlines()
    try:
        sep = lines.index("---")
    except ValueError:
        raise TemplateError(f"{path}: no '---' line between the header and the prompt body") from None
    header = _parse_pairs(lines[:sep], str(path), 1)
    for required in ("name", "version"):
        if required not in header:
            raise TemplateError(f"{path}: header field {required!r} is missing")
    instruction = header.get("instruction", "")
    if instruction and "{text}" not in instruction:
        raise TemplateError(f"{path}: header field 'instruction' needs {{text}} where the learner's input goes")
    starts = [i for i in range(sep + 1, len(lines)) if lines[i].strip() == "--- example"]
    body = "\n".join(lines[sep + 1 : starts[0] if starts else len(lines)]).strip()
    template = Template(header["name"], header["version"], header.get("system", ""), body, str(path))
    try:
        template.body.format(**{f: "" for f in template.fields})
    except (ValueError, IndexError) as exc:
        raise TemplateError(f"{path}: prompt body is not a valid template: {exc}") from None
    examples = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        pairs = _parse_pairs(lines[start + 1 : end], str(path), start + 2)
        answer = pairs.pop("output", "")
        missing = [f for f in [*template.fields, "output"] if not (pairs.get(f) if f != "output" else answer)]
        if missing:
            raise TemplateError(f"{path}:{start + 1}: example {n + 1}: field(s) {', '.join(missing)} missing")
        examples.append((pairs, answer))
    return Template(template.name, template.version, template.system, body, str(path), tuple(examples), instruction)


# --- output checks -----------------------------------------------------------------------------------
def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", "", text.casefold()).split())


def check_output(
    text: str | None, source: str, *, min_chars: int = 1, max_chars: int = 4000, refusals: bool = True,
) -> str | None:
    """Why an output is unusable (empty, too short or long, an echo, a refusal), or None when it is fine.
    `refusals=False` for text people wrote (a replayed reference): only a model refuses."""
    if not text or not text.strip():
        return "empty output"
    text = text.strip()
    if len(text) < min_chars:
        return f"output shorter than {min_chars} characters"
    if len(text) > max_chars:
        return f"output longer than {max_chars} characters ({len(text)})"
    if _norm(text) == _norm(source):
        return "output repeats the input"
    if refusals and REFUSAL.search(text):
        return f"refusal: {text[:60]!r}"
    return None


# --- rate limits -------------------------------------------------------------------------------------
class RateLimiter:
    """Requests and tokens per period (a minute), never exceeded, shared by every worker thread.

    A request holds a slot from `acquire` (reserving an upper bound of its tokens) until `settle`
    stamps it with its completion time and its real token count; a slot counts against the limits
    while in flight and for one period after it settled. Since the server receives a request between
    those two moments, the limits hold as the server counts them too. `pause` stops every worker
    (a 429 with Retry-After means the whole key is throttled, not one request).
    """

    def __init__(self, rpm: int, tpm: int, period: float = 60.0) -> None:
        self.rpm, self.tpm, self.period = rpm, tpm, period
        self._slots: list[list] = []  # [settled_at or None, tokens]
        self._paused_until = 0.0
        self._cond = threading.Condition()

    def _expire(self, now: float) -> None:
        self._slots = [s for s in self._slots if s[0] is None or s[0] > now - self.period]

    def acquire(self, tokens: int) -> list:
        """Block until one more request of `tokens` fits in both limits; returns its slot."""
        if tokens > self.tpm:
            raise ValueError(f"one request needs up to {tokens} tokens, more than teacher.tpm={self.tpm}")
        with self._cond:
            while True:
                now = time.monotonic()
                self._expire(now)
                used = sum(s[1] for s in self._slots)
                if now >= self._paused_until and len(self._slots) < self.rpm and used + tokens <= self.tpm:
                    slot = [None, tokens]
                    self._slots.append(slot)
                    return slot
                settled = [s[0] for s in self._slots if s[0] is not None]
                waits = [self._paused_until - now] if now < self._paused_until else []
                if settled:
                    waits.append(min(settled) + self.period - now)
                self._cond.wait(timeout=max(0.001, min(waits)) if waits else None)

    def settle(self, slot: list, tokens: int | None = None) -> None:
        """The request of `slot` is over; `tokens` is what it really used (None keeps the reservation)."""
        with self._cond:
            slot[0] = time.monotonic()
            if tokens is not None:
                slot[1] = tokens
            self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        """No worker starts a request for `seconds` from now."""
        with self._cond:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
            self._cond.notify_all()


# --- teachers ----------------------------------------------------------------------------------------
@dataclass
class Attempt:
    """One HTTP request to the teacher: its outcome, tokens and latency."""

    attempt: int
    status: str  # ok | retry | invalid | failed
    reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0


@dataclass
class Completion:
    """One teacher answer: the text, or the reason there is none; and the attempts it took."""

    text: str | None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: list[Attempt] = field(default_factory=list)


class _Retryable(Exception):
    """A transient fault worth another attempt; `wait` is the server's Retry-After, if it sent one."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.wait = reason, wait


def _retry_after(headers) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            from email.utils import parsedate_to_datetime

            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass
class OpenAITeacher:
    """A chat model behind any OpenAI-compatible API, with limits, retries and output checks."""

    model: str
    api_key: str = field(repr=False)
    base_url: str | None = None
    temperature: float = 0.0
    max_tokens: int = 200
    concurrency: int = 8
    timeout: float = 60.0
    rpm: int = 500
    tpm: int = 200_000
    max_attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 60.0
    min_chars: int = 1
    max_chars: int = 4000
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    rate_period: float = 60.0  # the limits' window; tests shorten it
    progress: bool = False
    _limiter: RateLimiter | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    @property
    def params(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    @property
    def limiter(self) -> RateLimiter:
        """One limiter per teacher, shared by all its batches (the limits are per API key)."""
        if self._limiter is None:
            self._limiter = RateLimiter(self.rpm, self.tpm, self.rate_period)
        return self._limiter

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for the tokens, from the price table (per 1M tokens; longest matching model prefix)."""
        names = [m for m in self.prices if self.model == m or self.model.startswith(m)]
        if not names:
            return 0.0
        price_in, price_out = self.prices[max(names, key=len)]
        return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000

    def _client(self):
        import openai

        # retries are ours (counted, limited, Retry-After honoured): the client's own are off
        return openai.OpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0)

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before the next attempt: Retry-After when given, else exponential with jitter."""
        if retry_after is not None:
            return min(self.max_backoff, retry_after + random.uniform(0, self.backoff / 4))
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _request(self, client, messages: list[dict], limiter: RateLimiter, reserve: int):
        """One HTTP request under the limits: (text, finish_reason, prompt_tokens, completion_tokens)."""
        import openai

        slot = limiter.acquire(reserve)
        used = None
        try:
            reply = client.chat.completions.create(model=self.model, messages=messages, **self.params)
            usage = reply.usage
            pt = int(getattr(usage, "prompt_tokens", 0) or 0)
            ct = int(getattr(usage, "completion_tokens", 0) or 0)
            used = pt + ct if usage is not None else None
            if used is not None and used > reserve:
                log.warning("teacher used %d tokens, %d were reserved", used, reserve)
            if not reply.choices:
                raise _Retryable("malformed response: no choices")
            choice = reply.choices[0]
            return (choice.message.content or "") if choice.message else "", choice.finish_reason, pt, ct
        except openai.RateLimitError as exc:
            used = 0  # a refused request uses no tokens
            wait = _retry_after(exc.response.headers)
            if wait:
                limiter.pause(min(wait, self.max_backoff))
            raise _Retryable("429 rate limited", wait) from None
        except openai.APITimeoutError:
            raise _Retryable(f"timeout after {self.timeout:g} s") from None
        except openai.APIConnectionError as exc:
            raise _Retryable(f"connection error: {type(exc.__cause__ or exc).__name__}") from None
        except openai.InternalServerError as exc:
            raise _Retryable(f"{exc.status_code} server error", _retry_after(exc.response.headers)) from None
        except openai.APIStatusError as exc:
            if exc.status_code in (408, 409):
                raise _Retryable(f"{exc.status_code} {type(exc).__name__}") from None
            raise  # 400, 401, 403, 404, 422: a retry cannot help
        except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError, AttributeError) as exc:
            raise _Retryable(f"malformed response: {type(exc).__name__}") from None
        finally:
            limiter.settle(slot, used)

    def _one(self, client, messages: list[dict], source: str) -> Completion:
        """One item to its end: a checked output, or the reason there is none; never raises."""
        try:
            return self._attempts(client, messages, source)
        except Exception as exc:  # a bug or an unforeseen fault fails this item only, with its name
            log.exception("teacher: unexpected error on one item")
            return Completion(None, f"unexpected error: {type(exc).__name__}")

    def _attempts(self, client, messages: list[dict], source: str) -> Completion:
        """The attempts for one item: retries on transient faults, one more try after an unusable output."""
        import openai

        limiter = self.limiter
        reserve = sum(len(m["content"].encode()) + 8 for m in messages) + self.max_tokens  # >= any tokenizer
        attempts: list[Attempt] = []
        invalid_retries = 1  # an unusable output is asked for once more, with the same prompt
        reason = "no attempt made"
        for n in range(1, self.max_attempts + 1):
            started = time.monotonic()
            try:
                text, finish, pt, ct = self._request(client, messages, limiter, reserve)
            except _Retryable as exc:
                reason = exc.reason
                attempts.append(Attempt(n, "retry", reason, latency_ms=int((time.monotonic() - started) * 1000)))
                if n < self.max_attempts:
                    time.sleep(self._wait(n, exc.wait))
                continue
            except (openai.APIStatusError, ValueError) as exc:
                reason = (f"{exc.status_code} {type(exc).__name__}" if isinstance(exc, openai.APIStatusError)
                          else str(exc))
                attempts.append(Attempt(n, "failed", reason, latency_ms=int((time.monotonic() - started) * 1000)))
                return Completion(None, reason, attempts=attempts)
            latency = int((time.monotonic() - started) * 1000)
            text = text.strip()
            reason = check_output(text, source, min_chars=self.min_chars, max_chars=self.max_chars)
            if reason is None and finish == "length":
                reason = f"output cut at max_tokens={self.max_tokens}"
            if reason is None:
                attempts.append(Attempt(n, "ok", None, pt, ct, latency))
                return Completion(text, None, pt, ct, attempts)
            attempts.append(Attempt(n, "invalid", reason, pt, ct, latency))
            if invalid_retries == 0:
                break
            invalid_retries -= 1
        attempts[-1].status = "failed"
        if len(attempts) > 1:
            reason = f"{reason} (after {len(attempts)} attempts)"
        return Completion(None, reason, attempts=attempts)

    def iter_complete(
        self, prompts: list[str], template: Template, sources: list[str]
    ) -> Iterator[tuple[int, Completion]]:
        """(index, completion) for each prompt as it finishes; many in flight, one failure stops nothing."""
        client = self._client()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher") as pool:
            futures = {
                pool.submit(self._one, client, template.messages(p), src): i
                for i, (p, src) in enumerate(zip(prompts, sources, strict=True))
            }
            try:
                for fut in tqdm(as_completed(futures), total=len(futures), desc=f"teacher {self.model}",
                                unit="prompt", disable=not self.progress):
                    yield futures[fut], fut.result()
            finally:
                for fut in futures:
                    fut.cancel()
                client.close()

    def complete(self, prompts: list[str], system: str = "", items: list[dict] | None = None) -> list[Completion]:
        """One completion per prompt, same order; a failed prompt carries its error, never raises."""
        template = Template("adhoc", "0", system, "{text}")
        sources = [it.get("text", "") for it in items] if items else ["" for _ in prompts]
        out: list[Completion | None] = [None] * len(prompts)
        for i, completion in self.iter_complete(prompts, template, sources):
            out[i] = completion
        return out  # type: ignore[return-value]


@dataclass
class ReferenceTeacher:
    """Replays the pool's reference column as the teacher's output (offline default, simulation)."""

    @property
    def name(self) -> str:
        return "reference"

    @property
    def params(self) -> dict:
        return {}

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Replaying a column costs nothing."""
        return 0.0

    def complete(self, prompts: list[str], system: str = "", items: list[dict] | None = None) -> list[Completion]:
        """The reference of each item, or an error naming that it has none."""
        items = items or [{} for _ in prompts]
        return [
            Completion(it["reference"]) if it.get("reference") else Completion(None, "no reference for this item")
            for it in items
        ]


Teacher = OpenAITeacher | ReferenceTeacher


def provenance(teacher: Teacher, template: Template) -> str:
    """What wrote a round's drafts, as exports report it: "model|template@version" for a model, plain
    "reference" for a replayed reference column (people wrote it; no template was involved)."""
    if isinstance(teacher, ReferenceTeacher):
        return teacher.name
    return f"{teacher.name}|{template.name}@{template.version}"


def from_settings(settings: Settings, *, progress: bool = False) -> Teacher:
    """The configured teacher: the OpenAI-compatible client when a key is set, else the reference column."""
    if settings.teacher_kind() == "openai":
        key = settings.openai_api_key
        if key is None:
            raise TeacherError("teacher.kind is 'openai' but OPENAI_API_KEY is not set in the environment")
        t = settings.teacher
        return OpenAITeacher(
            model=t.model, api_key=key.get_secret_value(), base_url=t.base_url, temperature=t.temperature,
            max_tokens=t.max_tokens, concurrency=t.concurrency, timeout=t.timeout, rpm=t.rpm, tpm=t.tpm,
            max_attempts=t.max_attempts, backoff=t.backoff, max_backoff=t.max_backoff, min_chars=t.min_chars,
            max_chars=t.max_chars, prices=dict(t.prices), progress=progress,
        )
    return ReferenceTeacher()


def prompt_key(teacher: Teacher, template: Template, prompt: str, system: str) -> str:
    """Cache key: model, template name and version, rendered prompt and sampling parameters."""
    parts = [teacher.name, template.name, template.version, system, prompt, teacher.params]
    if template.examples:  # few-shot examples are part of the prompt the model sees
        parts.append([[sorted(v.items()), a] for v, a in template.examples])
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Draft:
    """The teacher's answer for one item: the prompt's cache key, the output, or why there is none."""

    key: str
    text: str | None
    error: str | None = None


def distill(
    ledger: Ledger, teacher: Teacher, template: Template, items: list[dict], *, round_id: int | None = None,
) -> dict[int, Draft]:
    """Teacher outputs for pool items ({"pool_id", "text", "reference"}): pool_id -> Draft.

    Cached outputs cost no call; new ones are stored in the ledger's cache as they arrive, and every
    attempt (tokens, cost, outcome) is recorded against `round_id` and the item.
    """
    drafts = _distill(ledger, teacher, template, items, round_id=round_id)
    return {it["pool_id"]: d for it, d in zip(items, drafts, strict=True)}


def distill_texts(ledger: Ledger, teacher: Teacher, template: Template, items: list[dict]) -> list[Draft]:
    """Teacher outputs for texts that are not pool items ({"text", "reference"}), in the given order:
    the backend's live path for a task the ledger has never seen. Attempts are recorded with no pool id."""
    return _distill(ledger, teacher, template, [{**it, "pool_id": None} for it in items], round_id=None)


def _distill(
    ledger: Ledger, teacher: Teacher, template: Template, items: list[dict], *, round_id: int | None,
) -> list[Draft]:
    """One Draft per item, in order; the accounting names each item's pool id (None off the pool)."""
    results: list[Draft | None] = [None] * len(items)
    prompts = []
    for it in items:
        prompt = template.render(text=it["text"])
        prompts.append((prompt, prompt_key(teacher, template, prompt, template.system)))
    cached = ledger.cached_outputs(sorted({k for _, k in prompts}))
    todo = [i for i, (_, key) in enumerate(prompts) if key not in cached]
    hits = []
    for i, (_, key) in enumerate(prompts):
        if key in cached:
            results[i] = Draft(key, cached[key])
            hits.append({"round_id": round_id, "pool_id": items[i]["pool_id"], "key": key, "model": teacher.name,
                         "attempt": 0, "status": "cached", "final": 1})
    ledger.record_teacher_calls(hits)
    if todo:
        log.info("teacher %s: %d prompts (%d from cache)", teacher.name, len(todo), len(items) - len(todo))

    def store(i: int, answer: Completion) -> None:
        it, key = items[i], prompts[i][1]
        error = answer.error or check_output(answer.text, it["text"],
                                             refusals=not isinstance(teacher, ReferenceTeacher))
        rows = [
            {"round_id": round_id, "pool_id": it["pool_id"], "key": key, "model": teacher.name,
             "attempt": a.attempt, "status": a.status, "reason": a.reason, "prompt_tokens": a.prompt_tokens,
             "completion_tokens": a.completion_tokens, "cost": teacher.cost(a.prompt_tokens, a.completion_tokens),
             "latency_ms": a.latency_ms}
            for a in answer.attempts
        ] or [{"round_id": round_id, "pool_id": it["pool_id"], "key": key, "model": teacher.name, "attempt": 1,
               "status": "failed" if error else "ok", "reason": error,
               "prompt_tokens": answer.prompt_tokens or 0, "completion_tokens": answer.completion_tokens or 0}]
        rows[-1]["final"] = 1
        if error:
            rows[-1]["status"] = "failed"
            rows[-1]["reason"] = error
        with ledger.transaction():  # the output and its accounting land together
            if not error:
                ledger.cache_output(
                    key, model=teacher.name, template=f"{template.name}@{template.version}", output=answer.text,
                    prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                )
            ledger.record_teacher_calls(rows)
        results[i] = Draft(key, None, error) if error else Draft(key, answer.text)

    todo_prompts = [prompts[i][0] for i in todo]
    todo_items = [items[i] for i in todo]
    if todo and isinstance(teacher, OpenAITeacher):
        for j, answer in teacher.iter_complete(todo_prompts, template, [it["text"] for it in todo_items]):
            store(todo[j], answer)
    elif todo:
        for i, answer in zip(todo, teacher.complete(todo_prompts, template.system, todo_items), strict=True):
            store(i, answer)
    failed = sum(1 for d in results if d is None or d.text is None)
    if failed:
        log.warning("teacher %s: %d of %d items failed", teacher.name, failed, len(items))
    return [d if d is not None else Draft(prompts[i][1], None, "no answer") for i, d in enumerate(results)]

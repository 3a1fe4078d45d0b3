"""Settings from the environment or a ``.env`` file. Built only by entry points and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
PLACEHOLDER_MARKERS = ("changeme", "change-me", "placeholder", "your-", "your_", "<", "todo", "xxx")


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it in a sentence."""


def _split_ids(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v).strip() for v in value]  # type: ignore[union-attr]


def looks_like_placeholder(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"", "xoxb-", "xapp-", "secret", "token", "none", "null"}:
        return True
    return any(marker in lowered for marker in PLACEHOLDER_MARKERS)


class Settings(BaseSettings):
    """Every setting threadtune reads. Names are the environment variables (case-insensitive)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    slack_bot_token: str = Field("", description="Bot token (xoxb-…).")
    slack_app_token: str = Field("", description="App-level token (xapp-…); set = Socket Mode.")
    slack_signing_secret: str = Field("", description="Signing secret for HTTP mode.")
    slack_api_url: str = Field("https://slack.com/api/", description="Slack Web API base URL.")
    threadtune_home: Path = Field(Path(".threadtune"), description="Data directory.")
    database_url: str = Field("", description="SQLAlchemy URL; default SQLite in THREADTUNE_HOME.")
    base_model: str = Field(
        DEFAULT_BASE_MODEL,
        description=(
            "Base model: the embedded SmolLM2-135M-Instruct, a local path or a cached hub id."
        ),
    )
    curators: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Slack user IDs allowed to curate."
    )
    admins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Slack user IDs allowed to run admin commands."
    )
    curate_emoji: str = Field("white_check_mark", description="Emoji that curates an answer.")
    reject_emoji: str = Field("x", description="Emoji that excludes a thread.")
    ack_emoji: str = Field("inbox_tray", description="Emoji the bot adds to an accepted answer.")
    min_answer_chars: int = Field(20, description="Shortest answer accepted as an example.")
    vllm_url: str = Field(
        "", description="OpenAI-compatible vLLM server; unset = serve in-process."
    )
    ray_address: str = Field("", description="Ray cluster address; set = train through Ray Jobs.")
    ray_job_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs each Ray training job asks for; unset = 1 when any node of the cluster "
        "has a GPU, else 0.",
    )
    ray_job_cpus: float = Field(1.0, gt=0, description="CPUs each Ray training job asks for.")
    ray_accelerator_type: str = Field(
        "",
        description="Ray accelerator type a training job needs (e.g. A100, H100, L4); unset = any.",
    )
    ray_job_resources: dict[str, float] = Field(
        default_factory=dict,
        description='Custom Ray resources each training job asks for, JSON (e.g. {"trainer": 1}); '
        "only nodes started with them (`ray start --resources=...`) run training.",
    )
    threadtune_encryption_key: str = Field(
        "", description="Key for adapters at rest (base64, 32 bytes)."
    )
    ask_rate_limit: int = Field(10, description="/ask questions per user per minute.")
    ask_max_new_tokens: int = Field(512, description="Longest /ask answer, in tokens.")
    ask_semantic_threshold: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description=(
            "/ask cache: cosine similarity (all-MiniLM-L6-v2) at which a different wording of a "
            "cached question gets the cached answer; 0 turns the semantic match off (exact "
            "matches still hit)."
        ),
    )
    ask_grounding: bool = Field(
        True,
        description=(
            "Ground answers in the curated examples, cite them, and say so when nothing curated "
            "covers a question; false = the model answers closed-book."
        ),
    )
    ask_grounding_threshold: float = Field(
        0.50,
        ge=0.0,
        le=1.0,
        description=(
            "Least cosine similarity (all-MiniLM-L6-v2) between a question and a curated "
            "question for that example to ground an answer; below it the bot abstains."
        ),
    )
    ask_grounding_top_k: int = Field(
        3, ge=1, le=10, description="Curated examples put into an answer's prompt at most."
    )
    probe_threshold: float = Field(
        0.9, description="Deploy probe: agreement needed between served and in-process answers."
    )
    vllm_max_lora_rank: int | None = Field(
        None, description="The vLLM server's --max-lora-rank (unset: vLLM's default, 16)."
    )
    vllm_max_loras: int = Field(
        4,
        ge=1,
        description=(
            "Adapters the bot keeps loaded in vLLM at once (least recently used unloaded first); "
            "at most the server's --max-loras."
        ),
    )
    work_threads: int = Field(
        16,
        ge=1,
        description="Slow tasks (/ask answers, A/B rounds, evaluations) run at once; more wait "
        "their turn. /ask questions running together share one batched generation.",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="Torch threads of serve, worker and the training program "
        "(torch.set_num_threads); 0 = torch's default (one a core). On a small shared machine 1 "
        "can be several times faster.",
    )
    index_sync_s: float = Field(
        30.0,
        gt=0.0,
        description="Seconds between the bot's checks that the index of curated examples is in "
        "step with the database (imports, other processes); curation in Slack updates it at once.",
    )
    health_port: int = Field(
        3000,
        ge=0,
        le=65535,
        description="Socket Mode: port of the bot's small HTTP server for GET /healthz and "
        "GET /metrics (on serve's --host); 0 = none. In HTTP mode they sit beside "
        "/slack/events on --port.",
    )
    socket_mode_grace_s: float = Field(
        30.0,
        ge=0.0,
        description="Socket Mode: seconds the connection to Slack may be down (reconnecting) "
        "before /healthz answers 503.",
    )
    shutdown_grace_s: float = Field(
        20.0,
        ge=0.0,
        description="On SIGTERM, seconds to let answers in progress finish; the rest are marked "
        "interrupted.",
    )
    home_refresh_s: float = Field(
        10.0,
        gt=0.0,
        description="Seconds between the bot's checks for jobs that changed state (jobs run in "
        "the worker): the Home tab of everyone who opened it is refreshed after a change.",
    )
    inbox_retention_days: float = Field(
        7.0,
        gt=0.0,
        description="Days a handled Slack request stays in the inbox table (retries within it are "
        "recognised and not applied twice); older ones are deleted.",
    )

    run_retention_days: int = Field(
        14,
        ge=0,
        description="Days a failed or cancelled job's run folder is kept for debugging before the "
        "worker's sweep removes it; 0 keeps it for ever. A registered job's folder keeps no data, "
        "checkpoints or adapter at all.",
    )
    ask_log_retention_days: int = Field(
        90, ge=0, description="Days /ask audit rows are kept; 0 keeps them for ever."
    )
    ab_log_retention_days: int = Field(
        180,
        ge=0,
        description="Days the prompts and answers of closed A/B rounds are kept (the votes' "
        "outcomes stay for the leaderboard); 0 keeps them for ever.",
    )

    @field_validator("curators", "admins", mode="before")
    @classmethod
    def _ids(cls, value: object) -> list[str]:
        return _split_ids(value)

    @field_validator("curate_emoji", "reject_emoji", "ack_emoji", mode="after")
    @classmethod
    def _emoji(cls, value: str) -> str:
        return value.strip().strip(":")

    @field_validator("slack_api_url", mode="after")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    def ray_placement(self):  # noqa: ANN201 — engine.jobs.placement.PlacementSettings
        """What each Ray training job asks for (engine/jobs/placement.py)."""
        from engine.jobs.placement import PlacementSettings

        return PlacementSettings(
            gpus=self.ray_job_gpus,
            cpus=self.ray_job_cpus,
            accelerator_type=self.ray_accelerator_type.strip(),
            resources=dict(self.ray_job_resources),
        )

    @property
    def home(self) -> Path:
        return Path(self.threadtune_home).expanduser()

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'threadtune.db').resolve()}"

    @property
    def socket_mode(self) -> bool:
        return bool(self.slack_app_token)

    def require_slack(self) -> None:
        """Fail with a sentence naming the first missing or placeholder secret ``serve`` needs."""
        needed = {"SLACK_BOT_TOKEN": self.slack_bot_token}
        if self.socket_mode:
            needed["SLACK_APP_TOKEN"] = self.slack_app_token
        else:
            needed["SLACK_SIGNING_SECRET"] = self.slack_signing_secret
        for name, value in needed.items():
            if not value:
                raise ConfigError(
                    f"{name} is not set: set it in the environment or in .env (see the README, "
                    "'Install in a workspace')."
                )
            if looks_like_placeholder(value):
                raise ConfigError(
                    f"{name} still holds a placeholder value: replace it with the real one from "
                    "your Slack app's settings."
                )
        if not self.slack_bot_token.startswith("xoxb-"):
            raise ConfigError("SLACK_BOT_TOKEN must be a bot token starting with 'xoxb-'.")
        if self.socket_mode and not self.slack_app_token.startswith("xapp-"):
            raise ConfigError("SLACK_APP_TOKEN must be an app-level token starting with 'xapp-'.")


def load_settings(**overrides: object) -> Settings:
    """Build settings; an invalid value becomes a ConfigError naming the variable."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first.get("loc") else "a setting"
        raise ConfigError(f"{name} is invalid: {first['msg']}.") from exc
    except Exception as exc:  # pydantic-settings' own parse errors
        raise ConfigError(f"A setting could not be read: {exc}.") from exc


__all__ = ["ConfigError", "Settings", "load_settings", "looks_like_placeholder"]

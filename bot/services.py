"""What a process needs, built once by its entry point (``serve``, ``worker``, a CLI command, the
demo) and passed down: listeners find it in Bolt's context, commands and hooks take it as an
argument. Nothing here loads a model: :class:`bot.backends.Serving` loads the base model on first
use, the /ask embedding model starts loading with the first question, and the index of curated
examples (:attr:`Services.index`) is built, and its embedding model loaded, on first use."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from slack_sdk import WebClient
from sqlalchemy.engine import Engine

from bot.ab_rounds import ABRoundService
from bot.access import ChannelAccess
from bot.ask import AskConfig, AskService
from bot.backends import Serving
from bot.curation import CurationRules, CurationService
from bot.evaluation import EvaluationService
from bot.forget import SlackForgetter
from bot.indexing import IndexSyncer
from bot.scheduler import BotScheduler
from bot.settings import Settings
from bot.training import SlackJobObserver
from bot.work import Workers
from engine.ab.answers import AnswerSource, BackendAnswers
from engine.evaluate.run import EvalConfig
from engine.retrieval import Index
from engine.serving.embed import QuestionEmbedder

log = logging.getLogger(__name__)


class HomeUsers:
    """Who has opened the Home tab, so later changes can refresh it for them. Listeners add from
    Bolt's threads while a closing round or a deploy reads it from another: behind a lock."""

    def __init__(self) -> None:
        self._users: set[str] = set()
        self._lock = threading.Lock()

    def add(self, user: str) -> None:
        with self._lock:
            self._users.add(user)

    def snapshot(self) -> list[str]:
        with self._lock:
            return sorted(self._users)


@dataclass
class Services:
    settings: Settings
    db: Engine
    client: WebClient
    curation: CurationService
    serving: Serving
    ask: AskService
    rounds: ABRoundService
    evaluations: EvaluationService
    work: Workers
    scheduler: BotScheduler | None = None  # only ``serve`` runs one (A/B deadlines)
    job_observer: SlackJobObserver | None = None  # Slack progress of training jobs (bot token set)
    home_users: HomeUsers = field(default_factory=HomeUsers)
    indexing: IndexSyncer | None = None  # set by build: keeps ``index`` in step with curation
    access: ChannelAccess | None = None  # set by build: who is in which channel, cached
    _index: Index | None = field(default=None, init=False, repr=False)
    _index_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def index(self) -> Index:
        """The index of curated examples that grounds answers, built on first use (the first
        sync loads its all-MiniLM-L6-v2); sync it with ``indexing`` before searching."""
        with self._index_lock:
            if self._index is None:
                self._index = Index()
            return self._index

    def ready_index(self) -> Index:
        """:attr:`index`, synced once on the calling thread if it never was (the first question
        after a start waits for it; later ones search what the syncer keeps in step)."""
        index = self.index
        if index.stats().last_sync is None and self.indexing is not None:
            self.indexing.sync_now()
        return index

    def is_admin(self, user: str) -> bool:
        return user in self.settings.admins

    @classmethod
    def build(
        cls,
        settings: Settings,
        db: Engine,
        client: WebClient,
        *,
        scheduler: BotScheduler | None = None,
        answers: AnswerSource | None = None,
    ) -> Services:
        """Every service on one :class:`Serving` (one copy of the base model per process) and one
        worker pool. ``answers`` replaces where A/B answers come from (tests)."""
        curation = CurationService(db, client, CurationRules.from_settings(settings))
        work = Workers(settings.work_threads, "work")
        serving = Serving(settings, db)
        config = AskConfig.from_settings(settings)
        embedder = QuestionEmbedder() if config.semantic_threshold > 0 else None
        access = ChannelAccess(client)
        ask = AskService(
            db,
            client,
            serving,
            config,
            redact=curation.redact,
            embed=embedder.embed if embedder else None,
            work=work,
            warm=embedder.start_loading if embedder else None,
            index=lambda: services.ready_index(),
            is_member=access.is_member,
        )
        rounds = ABRoundService(
            db,
            client,
            answers or BackendAnswers(serving.serving, encryption_key=serving.key),
            scheduler=scheduler,
            work=work,
        )
        evaluations = EvaluationService(
            db,
            client,
            settings.home,
            serving.inprocess,
            serving.key,
            # with VLLM_URL the server generates the answers; the losses are scored in-process
            generator_factory=serving.serving if serving.uses_vllm else None,
            rounds=rounds,
            work=work,
            # the verdict judges the answers the way /ask gives them
            config=EvalConfig(verdict_mode="grounded" if settings.ask_grounding else "closed_book"),
            grounding=config.grounding,
        )
        observer = (
            SlackJobObserver(client, on_succeeded=evaluations.on_job_succeeded)
            if settings.slack_bot_token
            else None
        )
        services = cls(
            settings=settings,
            db=db,
            client=client,
            curation=curation,
            serving=serving,
            ask=ask,
            rounds=rounds,
            evaluations=evaluations,
            work=work,
            scheduler=scheduler,
            job_observer=observer,
        )
        services.indexing = IndexSyncer(db, lambda: services.index, work)
        curation.on_change = services.indexing.request
        curation.forget = SlackForgetter(
            db, settings.home, work, after=[services.indexing.request, ask.cache.clear]
        )
        services.access = access
        return services

    def shutdown(self, grace: float | None = None) -> None:
        """Take no new work; give the work in progress ``grace`` seconds (SHUTDOWN_GRACE_S), then
        settle the /ask answers still running as interrupted and stop the scheduler."""
        self.work.close()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        if not self.work.wait(grace):
            log.warning("work still in progress after %.0f s; interrupting it", grace)
        self.ask.interrupt_all()
        if self.scheduler is not None:
            self.scheduler.shutdown()

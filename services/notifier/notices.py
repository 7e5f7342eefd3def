"""The texts of the notices, rendered from the Jinja2 templates under ``templates/`` (reviewed as product text).

One folder per audience (``eo``, ``servicedesk``, ``bureau``), one per language inside it, one file per
notice. Each template defines two blocks, ``subject`` and ``body``. A folder's ``_phrases.txt`` holds the
macros its notices share; they reach the templates as ``t``. Plain text: no autoescaping, and an undefined
variable is an error rather than a silent blank.

What an EO is told is decided by :func:`services.notifier.advice.eo_guidance` (``g`` in the EO templates);
the EO templates only word it: ``say(key)`` renders the phrase of a key (the macro of that name in the
language's ``_phrases.txt``) and fails on a missing one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from services.notifier.advice import EoGuidance, eo_guidance
from services.notifier.domain import Audience, NoticeKind, Situation, UnreachedEo, notice_kind
from shared.events import AdvisoryData, Language, ProcedureData

__all__ = ["TEMPLATE_DIR", "Contacts", "EoSummary", "Notice", "NoticeTexts"]

TEMPLATE_DIR = Path(__file__).with_name("templates")
LUXEMBOURG = ZoneInfo("Europe/Luxembourg")
_BLANK_LINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Notice:
    """A rendered notice: a one-line subject and a plain-text message."""

    subject: str
    message: str


@dataclass(frozen=True)
class Contacts:
    """How EOs reach the two customs offices, as printed in the notices (free text, e.g. a phone number)."""

    servicedesk: str | None = None
    bureau: str | None = None


@dataclass(frozen=True)
class EoSummary:
    """The EO a scenario-1 procedure concerns, as the Servicedesk's notice names it."""

    eori: str
    name: str | None


class NoticeTexts:
    """Renders every notice the notifier sends; the templates are read once, on first use."""

    def __init__(self, *, contacts: Contacts, template_dir: Path = TEMPLATE_DIR) -> None:
        self._contacts = contacts
        self._env = Environment(
            loader=FileSystemLoader(template_dir),
            autoescape=False,  # noqa: S701 - plain-text e-mails and JSON strings, never HTML
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self._env.filters["local_time"] = _local_time
        self._env.filters["utc_time"] = _utc_time
        self._phrase_files = frozenset(self._env.list_templates(filter_func=lambda n: n.endswith("/_phrases.txt")))

    def compile_all(self) -> int:
        """Compile every template now (the notifier does at startup), so that the first fan-out after a start
        does not wait for it: compiling the three languages' EO templates on first use took 130-370 ms each
        on a loaded machine, before the first delivery could be recorded. Returns how many were compiled; a
        template that does not compile fails here, not in a fan-out."""
        names = self._env.list_templates(extensions=["txt"])
        for name in names:
            self._env.get_template(name)
        return len(names)

    def eo_notice(
        self,
        *,
        event_type: str,
        procedure: ProcedureData,
        language: Language,
        situation: Situation,
        own_procedure_id: str | None = None,
    ) -> Notice:
        """What an EO reads about a procedure event: what happened, and what it must do now.

        ``situation`` says which other channels are down, so that no notice advises one of them;
        ``own_procedure_id`` is the EO's own open scenario-1 procedure, for national notices.
        """
        guidance = eo_guidance(event_type=event_type, procedure=procedure, situation=situation,
                               own_procedure_id=own_procedure_id)
        return self._render(f"eo/{language.value}/{guidance.kind.value}.txt", p=procedure, g=guidance)

    def eo_phrase(self, key: str, *, language: Language, procedure: ProcedureData, guidance: EoGuidance) -> str:
        """One phrase of the EO notices in ``language`` (LookupError when the language lacks it)."""
        say: _Phrasebook = self._shared(f"eo/{language.value}/", {"p": procedure, "g": guidance})["say"]
        return say(key)

    def staff_notice(
        self,
        *,
        audience: Audience,
        event_type: str,
        procedure: ProcedureData,
        language: Language,
        eo: EoSummary | None = None,
        eos_notified: int = 0,
        bureau_told: bool = False,
    ) -> Notice:
        """What the Servicedesk eDouane or the Bureau de recette Douanes reads about a procedure event.

        ``eos_notified`` is how many EOs the event reaches; ``bureau_told`` whether the Bureau hears of it too.
        """
        if audience == Audience.EO:
            raise ValueError("use eo_notice for EOs")
        kind = notice_kind(event_type)
        return self._render(
            f"{audience.value}/{language.value}/procedure.txt",
            p=procedure, kind=kind.value, eo=eo, eos_notified=eos_notified, bureau_told=bureau_told,
        )

    def digest_notice(
        self,
        *,
        procedure_id: str,
        event_type: str,
        planned_at: datetime,
        concerned: int,
        unreached: list[UnreachedEo],
        language: Language,
    ) -> Notice:
        """The Servicedesk's digest of the EOs a fan-out has still not reached (``concerned``: EOs it concerns)."""
        kind = notice_kind(event_type)
        if kind not in (NoticeKind.OPENED, NoticeKind.UPDATED, NoticeKind.CLOSED):
            raise ValueError(f"no digest for {event_type}")
        return self._render(
            f"servicedesk/{language.value}/digest.txt", procedure_id=procedure_id, kind=kind.value,
            planned_at=planned_at, concerned=concerned, unreached=unreached,
        )

    def advisory_notice(self, *, event_type: str, advisory: AdvisoryData, language: Language) -> Notice:
        """What the Servicedesk reads about an advisory (not a fallback scenario: no EO is told)."""
        kind = notice_kind(event_type)
        if kind not in (NoticeKind.ADVISORY_RAISED, NoticeKind.ADVISORY_CLEARED):
            raise ValueError(f"{event_type} is not an advisory event")
        return self._render(f"servicedesk/{language.value}/advisory.txt", a=advisory, kind=kind.value)

    def _shared(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        """The values a template sees: its own, the contacts, its folder's phrases as ``t`` and ``say``."""
        shared: dict[str, Any] = {**values, "contacts": self._contacts}
        folder = name.rsplit("/", 1)[0]
        phrases = f"{folder}/_phrases.txt"
        if phrases in self._phrase_files:
            say = _Phrasebook(phrases)
            shared["say"] = say
            shared["t"] = say.module = self._env.get_template(phrases).make_module(shared)
        return shared

    def _render(self, name: str, **values: Any) -> Notice:
        template = self._env.get_template(name)
        context = template.new_context(self._shared(name, values))
        subject = "".join(template.blocks["subject"](context))
        body = "".join(template.blocks["body"](context))
        return Notice(
            subject=_SPACES.sub(" ", subject).strip(),
            message=_BLANK_LINES.sub("\n\n", "\n".join(line.rstrip() for line in body.splitlines())).strip(),
        )


class _Phrasebook:
    """``say(key)`` in the templates: the phrase of ``key``, the macro of that name in a ``_phrases.txt``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.module: Any = None

    def __call__(self, key: str) -> str:
        macro = getattr(self.module, str(key), None)
        if not callable(macro):
            raise LookupError(f"no phrase {str(key)!r} in {self.name}")
        return str(macro())


def _local_time(moment: datetime | None) -> str:
    """Luxembourg wall-clock time, which is what EOs and customs officers read."""
    if moment is None:
        return "?"
    return moment.astimezone(LUXEMBOURG).strftime("%Y-%m-%d %H:%M")


def _utc_time(moment: datetime | None) -> str:
    if moment is None:
        return "?"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")

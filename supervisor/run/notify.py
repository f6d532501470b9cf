"""`--notify URL`: news that finds people. A short message through Apprise (Slack, Discord, Telegram,
ntfy, e-mail, a plain `json://` webhook: one URL scheme each) when the ladder takes a fallback and when
the run ends.

A notification never changes the run: a target that cannot be reached is journaled as a warning and
shown as one line, and the run goes on. URLs can carry tokens, so what is journaled and shown names
a target by Apprise's privacy form of its URL (secrets elided); the URLs themselves are kept in
`run_started`, for `oomladder resume`.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from oomladder.errors import UsageError
from oomladder.record import schema
from oomladder.record.history import RunView
from oomladder.record.journal import Journal
from oomladder.views.display import Display
from oomladder.views.messages import Message, end_message, fallback_message, in_place_message, whereabouts

ENVIRONMENT = "OOMLADDER_NOTIFY"  # targets for unattended setups, separated by spaces or commas (as Apprise's own)
EXAMPLES = "json://host/path, slack://..., discord://..., tgram://..., ntfy://topic, mailto://..."


def targets(flags: Iterable[str], environ: Mapping[str, str], kept: Iterable[str] = ()) -> tuple[str, ...]:
    """Every target once, in order: a resumed run's own, then --notify's, then $OOMLADDER_NOTIFY's."""
    found = [*kept, *flags, *re.split(r"[\s,]+", environ.get(ENVIRONMENT, ""))]
    return tuple(dict.fromkeys(url.strip() for url in found if url.strip()))


def check_targets(urls: Iterable[str], environ: Mapping[str, str]) -> None:
    """Bad input before anything runs: each target must be a URL Apprise can send to."""
    urls = list(urls)
    if not urls:
        return
    apprise = _apprise()
    from_environment = set(targets((), environ))
    for url in urls:
        if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
            where = f"${ENVIRONMENT}" if url in from_environment else "--notify"
            raise UsageError(f"{where} '{url}' is not a notification URL Apprise knows (for example {EXAMPLES})")


def _apprise():
    try:
        import apprise
    except ImportError:  # a dependency of oomladder's, but an environment can lose it
        raise UsageError("--notify needs Apprise: pip install apprise") from None
    return apprise


class Notifier:
    """Sends the run's news to its targets; a failure is journaled and shown, never raised."""

    def __init__(self, urls: Iterable[str], journal: Journal, display: Display, run_dir: Path,
                 host: str | None = None) -> None:
        self.urls, self.journal, self.display, self.run_dir = tuple(urls), journal, display, run_dir
        self.host = host or socket.gethostname()

    def fallback(self, view: RunView, failed: int) -> None:
        self._tell(lambda: fallback_message(view, failed, whereabouts(view, self.run_dir, self.host)))

    def in_place(self, view: RunView, attempt: int, record: dict) -> None:
        self._tell(lambda: in_place_message(view, attempt, record, whereabouts(view, self.run_dir, self.host)))

    def ended(self, view: RunView, report: Path) -> None:
        self._tell(lambda: end_message(view, report, whereabouts(view, self.run_dir, self.host)))

    def _tell(self, write: Callable[[], Message]) -> None:
        if not self.urls:
            return
        try:
            message = write()
        except Exception as exc:  # noqa: BLE001 -- a message that cannot be written is news too, not a crash
            message = Message("oomladder: news could not be written", f"{type(exc).__name__}: {exc}", "failure")
        self.send(message)

    def send(self, message: Message) -> None:
        for url in self.urls:
            try:
                why = _deliver(url, message)
            except Exception as exc:  # noqa: BLE001 -- whatever a notification service does, the run goes on
                why = f"{type(exc).__name__}: {exc}"
            if why is not None:
                target = _private(url)
                text = f"notification to {target} failed: {why}"
                self.journal.append(schema.WARNING, about="notify", target=target, title=message.title, text=text)
                self.display.event(text)


def _deliver(url: str, message: Message) -> str | None:
    """None when the target took the message; otherwise why not, in Apprise's words."""
    apprise = _apprise()
    service = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if service is None:
        return "not a notification URL Apprise knows"
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as log:
        delivered = service.notify(body=message.body, title=message.title, notify_type=message.level)
    if delivered:
        return None
    said = [line.strip() for line in log.getvalue().splitlines() if line.strip()]
    return said[-1] if said else "the service did not take the message"


def _private(url: str) -> str:
    """The target as Apprise prints it with its secrets elided, without the query string's defaults."""
    try:
        apprise = _apprise()
        service = apprise.Apprise.instantiate(url, suppress_exceptions=True)
        if service is not None:
            return service.url(privacy=True).split("?")[0]
    except Exception:  # noqa: BLE001 -- naming the target must not fail either
        pass
    return url.split("://")[0] + "://…"

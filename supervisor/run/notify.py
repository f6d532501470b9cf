"""Notifications: news that finds people. A short message through Apprise (Slack, Discord, Telegram, ntfy, e-mail,
a plain `json://` webhook: one URL scheme each) when the ladder takes a fallback and when the run ends.

A notification never changes the run: a target that cannot be reached is journaled as a warning and shown as
one line, and the run goes on.

Targets carry secrets (a token in a webhook's path, a password, a bot's token as its "host"), so they come from
where other users cannot read them: `$OOMLADDER_NOTIFY`, or a file in Apprise's own configuration format
(`--notify-config FILE`). `--notify URL` still works, with a warning: an argument is in the process list for
every user of the host. Nothing oomladder writes or prints holds a target's URL: it is named by its scheme and
host alone (`private`), and an error of Apprise's is scrubbed of the URL's parts (`scrub`). The journal keeps
those names and the config file's path, not the URLs: `resume` reads the file and the environment again.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from oomladder.errors import UsageError
from oomladder.record import schema
from oomladder.record.history import RunView
from oomladder.record.journal import Journal
from oomladder.record.records import InPlaceRecord
from oomladder.run.config import RunConfig
from oomladder.views.display import Display
from oomladder.views.messages import Message, end_message, fallback_message, in_place_message, whereabouts

ENVIRONMENT = "OOMLADDER_NOTIFY"  # targets for unattended setups, separated by spaces or commas (as Apprise's own)
EXAMPLES = "json://host/path, slack://..., discord://..., tgram://..., ntfy://topic, mailto://..."
IN_ARGV = ("--notify puts its URL in the process list, where every user of this host can read it (ps): give "
           f"targets through ${ENVIRONMENT} or --notify-config FILE instead")


def targets(flags: Iterable[str], environ: Mapping[str, str]) -> tuple[str, ...]:
    """Every target URL once, in order: --notify's, then $OOMLADDER_NOTIFY's."""
    found = [*flags, *re.split(r"[\s,]+", environ.get(ENVIRONMENT, ""))]
    return tuple(dict.fromkeys(url.strip() for url in found if url.strip()))


def services(urls: Iterable[str], config: str | Path | None, environ: Mapping[str, str] | None = None
             ) -> list[tuple[str, Any]]:
    """(name, Apprise service) for each target; bad input (a URL Apprise does not know, a config file it cannot
    read or that holds no target) is a UsageError naming the target by its scheme and host alone."""
    urls = list(urls)
    if not urls and config is None:
        return []
    apprise = _apprise()
    from_environment = set(targets((), environ or {}))
    found = []
    for url in urls:
        service = apprise.Apprise.instantiate(url, suppress_exceptions=True)
        if service is None:
            where = f"${ENVIRONMENT}" if url in from_environment else "--notify"
            raise UsageError(f"{where} '{private(url)}' is not a notification URL Apprise knows (for example "
                             f"{EXAMPLES})")
        found.append((private(url), service))
    if config is not None:
        found += _from_config(apprise, Path(config))
    return found


def _from_config(apprise: Any, path: Path) -> list[tuple[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            f.read(1)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--notify-config '{path}' cannot be read ({getattr(exc, 'strerror', None) or exc}): give "
                         f"a file in Apprise's configuration format") from None
    config = apprise.AppriseConfig()
    config.add(str(path))
    loaded = apprise.Apprise()
    loaded.add(config)
    found = [(private(service.url()), service) for service in loaded]
    if not found:
        raise UsageError(f"--notify-config '{path}' holds no notification target Apprise can read (one URL a "
                         f"line, or Apprise's YAML: urls: [...])")
    return found


def check_targets(urls: Iterable[str], environ: Mapping[str, str], config: str | Path | None = None) -> None:
    """Bad input before anything runs."""
    services(urls, config, environ)


def journaled(urls: Iterable[str], config: str | Path | None) -> dict[str, Any]:
    """What run_started keeps of the targets: their names and the config file's path, never a URL."""
    names = [private(url) for url in urls]
    return {**({"notify_targets": names} if names else {}), **({"notify_config": str(config)} if config else {})}


def _apprise() -> Any:
    try:
        import apprise
    except ImportError:  # a dependency of oomladder's, but an environment can lose it
        raise UsageError("--notify needs Apprise: pip install apprise") from None
    return apprise


class Notifier:
    """Sends the run's news to its targets; a failure is journaled and shown, never raised."""

    def __init__(self, urls: Iterable[str], journal: Journal, display: Display, run_dir: Path,
                 host: str | None = None, config: str | Path | None = None) -> None:
        self.urls, self.journal, self.display, self.run_dir = tuple(urls), journal, display, run_dir
        self.host = host or socket.gethostname()
        self.config = config
        self._services: list[tuple[str, Any]] | None = None

    @classmethod
    def of(cls, config: RunConfig, journal: Journal, display: Display) -> Notifier:
        """Node 0 tells the news, as it writes the reports: every node takes the same decisions."""
        lead = config.node_rank == 0
        return cls(config.notify if lead else (), journal, display, config.run_dir,
                   config=config.notify_config if lead else None)

    def fallback(self, view: RunView, failed: int) -> None:
        self._tell(lambda: fallback_message(view, failed, whereabouts(view, self.run_dir, self.host)))

    def in_place(self, view: RunView, attempt: int, record: InPlaceRecord) -> None:
        self._tell(lambda: in_place_message(view, attempt, record, whereabouts(view, self.run_dir, self.host)))

    def ended(self, view: RunView, report: Path) -> None:
        self._tell(lambda: end_message(view, report, whereabouts(view, self.run_dir, self.host)))

    def _tell(self, write: Callable[[], Message]) -> None:
        if not self.urls and self.config is None:
            return
        try:
            message = write()
        except Exception as exc:  # noqa: BLE001 -- a message that cannot be written is news too, not a crash
            message = Message("oomladder: news could not be written", f"{type(exc).__name__}: {exc}", "failure")
        self.send(message)

    def send(self, message: Message) -> None:
        for name, service, url in self._targets():
            try:
                why = _deliver(service, message)
            except Exception as exc:  # noqa: BLE001 -- whatever a notification service does, the run goes on
                why = f"{type(exc).__name__}: {exc}"
            if why is not None:
                text = f"notification to {name} failed: {scrub(why, url)}"
                self.journal.append(schema.WARNING, about="notify", target=name, title=message.title, text=text)
                self.display.event(text)

    def _targets(self) -> list[tuple[str, Any, str]]:
        if self._services is None:
            try:
                self._services = services(self.urls, self.config)
            except UsageError as exc:  # the file changed since the start: said once, and the run goes on
                self._services = []
                self.journal.append(schema.WARNING, about="notify", text=str(exc))
                self.display.event(str(exc))
        return [(name, service, _url_of(service)) for name, service in self._services]


def _url_of(service: Any) -> str:
    try:
        return str(service.url())
    except Exception:  # noqa: BLE001 -- only used to scrub its parts from an error
        return ""


def _deliver(service: Any, message: Message) -> str | None:
    """None when the target took the message; otherwise why not, in Apprise's words."""
    apprise = _apprise()
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as log:
        delivered = service.notify(body=message.body, title=message.title, notify_type=message.level)
    if delivered:
        return None
    said = [line.strip() for line in log.getvalue().splitlines() if line.strip()]
    return said[-1] if said else "the service did not take the message"


# --- a target as it may be shown ---------------------------------------------------------------------------

def private(url: str) -> str:
    """`json://hooks.example.com`: the target's scheme and host, nothing else. A host that is not a host name
    (Slack's, Discord's and Telegram's URLs put a token there) is left out too: `tgram://…`."""
    try:
        parts = urlsplit(str(url).strip())
        host = parts.hostname
    except ValueError:
        return "a notification target"
    scheme = parts.scheme if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,31}", parts.scheme or "") else None
    if scheme is None:
        return "a notification target"
    return f"{scheme}://{host}" if host and _is_host_name(host) else f"{scheme}://…"


def _is_host_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    return (len(labels) > 1 and all(re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", label) for label in labels)
            and re.fullmatch(r"[a-z][a-z0-9-]*", labels[-1]) is not None)


def scrub(text: str, url: str) -> str:
    """`text` (an error of Apprise's) without the parts of `url` that may be secret: its user, password, path,
    query values and a host that is not a host name; and any URL in it named by its scheme and host."""
    try:
        parts = urlsplit(url)
        host = None if parts.hostname and _is_host_name(parts.hostname) else parts.hostname
        # Credentials of any length; path and query parts long enough not to be a word of the message's own.
        secrets = {s: 3 for s in (parts.username, parts.password, host) if s}
        secrets.update({s: 6 for s in (*parts.path.split("/"), parts.fragment,
                                       *(value for _, value in parse_qsl(parts.query))) if s and s not in secrets})
    except ValueError:
        secrets = {}
    text = re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", lambda m: private(m.group(0)), str(text))
    for secret in sorted(secrets, key=len, reverse=True):
        for form in {secret, unquote(secret)}:
            if len(form) >= secrets[secret]:
                text = text.replace(form, "…")
    return text

"""The ``clock`` stage (µCernVM's 03time): the clock set from NTP before anything checks a date.

Dates are checked right after: HTTPS certificates (context sources, servers) and the expiry of the
repository's whitelist. A VM's clock can start wrong — VirtualBox keeps the RTC in local time, a
restored snapshot keeps its old time — and a whitelist would then look expired, or not yet expired.
The servers (``ucernvm.ntp``, pool.ntp.org as µCernVM, and those the DHCP lease names) are asked at
once; the first answer from a synchronised server sets the clock if it is more than a second off.
Best effort, like the original: no answer within ``ucernvm.ntp_timeout`` leaves the clock as it is,
with a warning. ntplib codes the SNTP exchange; each server is asked in a thread, because resolving its
name has no timeout of its own and a site that blocks DNS or NTP must not hold up the boot for longer
than the stage's.

Where no NTP server answered, the servers stage asks the first Stratum 1 for its manifest and reads the
response's Date (and Age, when a proxy kept it), as htpdate does: a clock more than a minute behind it
is moved forward. Never back: a Date is not signed, and a clock set back would make an expired
whitelist look valid again (set forward, the worst is a valid one that looks expired: a failed boot).
"""

from __future__ import annotations

import queue
import threading
import time

from ucernvm.boot.state import BootState
from ucernvm.errors import ConfigError
from ucernvm.records import NamedTuple
from ucernvm.utc import utc_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ucernvm.client.fetcher import ServerDate

TOLERANCE = 1.0  # seconds of offset left alone
DATE_TOLERANCE = 60.0  # a Date has whole seconds and crossed a network, maybe a proxy
NTP_PORT = 123
_OFF = {"", "off", "none", "no", "0"}


class SetClock(NamedTuple):
    offset: float  # seconds to add to the clock
    source: str  # whose time: "NTP server HOST", "the Date of URL"

    def describe(self) -> str:
        direction = "forward" if self.offset > 0 else "back"
        return f"set the clock {direction} by {abs(self.offset):.1f} s ({self.source})"

    def apply(self) -> None:
        time.clock_settime(time.CLOCK_REALTIME, time.time() + self.offset)


class Answer(NamedTuple):
    server: str
    offset: float | None  # None: no usable answer
    problem: str = ""


def parse_servers(text: str) -> list[tuple[str, int]]:
    """``host[:port]`` or ``[v6 address]:port``, comma-separated; [] for off."""
    if text.strip().lower() in _OFF:
        return []
    servers = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, port = item, NTP_PORT
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else -1 if rest else NTP_PORT
        elif item.count(":") == 1:
            host, _, text_port = item.partition(":")
            port = int(text_port) if text_port.isdigit() else -1
        if not host or not 0 < port < 65536:
            raise ConfigError(f"ucernvm.ntp: {item!r} is not host[:port]", "e.g. ucernvm.ntp=pool.ntp.org or off")
        servers.append((host, port))
    return servers


def ask(host: str, port: int, timeout: float) -> Answer:
    """One server's offset from this machine's clock (seconds to add to it)."""
    import ntplib  # only this stage needs it

    name = host if port == NTP_PORT else f"{host}:{port}"
    try:
        reply = ntplib.NTPClient().request(host, version=4, port=port, timeout=timeout)
    except (ntplib.NTPException, OSError) as error:  # OSError: the name or the address is unreachable
        return Answer(name, None, str(error) or type(error).__name__)
    if reply.leap == 3 or not 1 <= reply.stratum <= 15:
        return Answer(name, None, f"not synchronised (leap {reply.leap}, stratum {reply.stratum})")
    return Answer(name, reply.offset)


def first_answer(servers: list[tuple[str, int]], timeout: float) -> tuple[Answer | None, list[Answer]]:
    """Ask every server at once: the first usable answer within ``timeout``, and the failures seen."""
    answers: queue.Queue[Answer] = queue.Queue()
    for host, port in servers:
        threading.Thread(target=lambda h=host, p=port: answers.put(ask(h, p, timeout)),
                         name=f"ntp {host}", daemon=True).start()
    deadline = time.monotonic() + timeout
    failed: list[Answer] = []
    while len(failed) < len(servers):
        try:
            answer = answers.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if answer.offset is not None:
            return answer, failed
        failed.append(answer)
    return None, failed


def clock_stage(state: BootState) -> None:
    servers = parse_servers(state.config.ntp)
    if not servers:
        state.log.info("clock: ucernvm.ntp=off, the clock is left as it is")
        return
    # The site's own servers from the DHCP lease first (as chrony and systemd-timesyncd take them): a site
    # that blocks NTP to the outside names its own there.
    site = [(address, NTP_PORT) for address in state.facts.get("network", {}).get("ntp", ())]
    if site:
        servers = site + [server for server in servers if server not in site]
        state.log.info("clock: NTP servers of the DHCP lease: " + ", ".join(address for address, _ in site))
    answer, failed = first_answer(servers, float(state.config.ntp_timeout))
    facts = state.facts["clock"] = {"failed": {a.server: a.problem for a in failed}}
    if answer is None:
        silent = len(servers) - len(failed)
        state.warn(f"clock: no NTP server answered within {state.config.ntp_timeout:g} s"
                   + "".join(f"; {a.server}: {a.problem}" for a in failed)
                   + (f"; {silent} silent" if silent else "") + f"; the clock reads {utc_time(time.time())}")
        return
    assert answer.offset is not None
    facts.update(server=answer.server, offset=round(answer.offset, 3), set=abs(answer.offset) > TOLERANCE)
    if facts["set"]:
        corrected = time.time() + answer.offset
        state.system.do(SetClock(answer.offset, f"NTP server {answer.server}"))
        state.log.info(f"clock: was {answer.offset:+.1f} s off, now {utc_time(corrected)}")
    else:
        state.log.info(f"clock: {answer.offset:+.3f} s from {answer.server}")


def date_offset(date: ServerDate, now: float) -> float | None:
    """Seconds to add to this machine's clock to match the server's: its Date, plus the Age a proxy gave,
    plus the time since the response came (``now`` and ``date.received`` are monotonic); None if unreadable."""
    from datetime import timezone
    from email.utils import parsedate_to_datetime  # only when NTP gave nothing

    try:
        sent = parsedate_to_datetime(date.date)
    except (TypeError, ValueError, IndexError):
        return None
    if sent.tzinfo is None:  # "-0000": UTC without saying so
        sent = sent.replace(tzinfo=timezone.utc)
    age = int(date.age) if date.age.strip().isdigit() else 0
    return sent.timestamp() + age + (now - date.received) - time.time()


def set_clock_from_date(state: BootState, date: ServerDate | None) -> None:
    """After NTP gave no answer: move the clock forward to a server's Date when more than a minute behind."""
    facts = state.facts.setdefault("clock", {})
    offset = None if date is None else date_offset(date, time.monotonic())
    if date is None or offset is None:
        state.warn("clock: no server sent a usable Date either; the clock stays as it is")
        return
    facts.update(date_of=date.url, offset=round(offset, 1), set=offset > DATE_TOLERANCE)
    if offset > DATE_TOLERANCE:
        corrected = time.time() + offset
        state.system.do(SetClock(offset, f"the Date of {date.url}"))
        state.log.info(f"clock: {offset:.0f} s behind the Date of {date.url}; now {utc_time(corrected)}")
    elif offset < -DATE_TOLERANCE:
        state.warn(f"clock: {-offset:.0f} s ahead of the Date of {date.url}; not set back on an unsigned header "
                   "(set ucernvm.ntp= to a reachable NTP server)")


def ntp_gave_no_answer(state: BootState) -> bool:
    clock = state.facts.get("clock")
    return clock is not None and "server" not in clock

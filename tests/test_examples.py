"""The bundled examples and the README run as documented.

Every example serves, logs its address, and stops on Ctrl-C (SIGINT to the
whole process group, as a terminal sends it) with a log line and no
traceback. The syslog example's parser is tested on its own with fixed and
hostile datagrams, and with what util-linux ``logger`` really sends. The
README's quick-start programs and client commands are run as written.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from examples import syslog
from examples.syslog import Message, SyslogError, parse
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import WAIT, ProcessLog, connect, recv_until, running

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
MODELS = ["pool", "threads", "fork", "sync", "async"]

requires_logger = pytest.mark.skipif(
    shutil.which("logger") is None,
    reason="needs logger from util-linux (Debian: apt-get install bsdutils)",
)


def _ctrl_c(proc: subprocess.Popen[str]) -> None:
    """What Ctrl-C in a terminal does: SIGINT to every process of the group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)


def _output(log: ProcessLog) -> str:
    """All the process wrote, once it has exited (its reader has seen EOF)."""
    log._thread.join(WAIT)
    assert not log._thread.is_alive(), "something still holds the process's stderr"
    return "".join(log.lines)


def _echo(*args: str) -> Any:
    # faulthandler: a process that does not exit in time is sent SIGABRT, and says
    # where each of its threads was (_exit_status).
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return running(
        [sys.executable, str(EXAMPLES / "echo.py"), *args], start_new_session=True, env=env
    )


def _exit_status(proc: subprocess.Popen[str], log: ProcessLog) -> int:
    """The process's exit status once it exits by itself within WAIT; if it does
    not, the test fails with its log and every thread's traceback."""
    try:
        return proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        proc.wait(WAIT)
        pytest.fail("still running after WAIT:\n" + _output(log))


def _serve(*args: str) -> Any:
    return running(
        [sys.executable, "-m", "servekit", "serve", *args], cwd=ROOT, start_new_session=True
    )


# -- examples/echo.py ------------------------------------------------------


@pytest.mark.parametrize("concurrency", MODELS)
def test_echo_example(concurrency: str) -> None:
    with (
        _echo("--listen", "127.0.0.1:0", "--concurrency", concurrency) as (proc, log, port),
        connect(("127.0.0.1", port)) as client,
    ):
        client.sendall(b"one\ntwo\n")
        assert recv_until(client, b"two\n") == b"one\ntwo\n"
        # Ctrl-C with a client still connected stops the server all the same.
        _ctrl_c(proc)
        assert proc.wait(WAIT) == 0
    output = _output(log)
    assert "interrupted, stopping" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("concurrency", MODELS)
def test_echo_example_udp(concurrency: str) -> None:
    with (
        _echo("--listen", "udp://127.0.0.1:0", "--concurrency", concurrency) as (proc, log, port),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(WAIT)
        client.sendto(b"ping", ("127.0.0.1", port))
        assert client.recv(100) == b"ping"
        _ctrl_c(proc)
        assert proc.wait(WAIT) == 0
    output = _output(log)
    assert "interrupted, stopping" in output
    assert "Traceback" not in output


@contextlib.contextmanager
def _interrupted(concurrency: str) -> Iterator[tuple[subprocess.Popen[str], ProcessLog, Any]]:
    """The echo example with a client whose line was answered, stopping after one
    Ctrl-C; its drain (600 s) far longer than WAIT."""
    with (
        _echo("--listen", "127.0.0.1:0", "--concurrency", concurrency,
              "--shutdown-timeout", "600") as (proc, log, port),
        connect(("127.0.0.1", port)) as client,
    ):  # fmt: skip
        client.sendall(b"one\n")
        assert recv_until(client) == b"one\n"
        _ctrl_c(proc)
        log.wait_for("interrupted, stopping")
        yield proc, log, client


@pytest.mark.parametrize("concurrency", ["pool", "threads", "fork"])
def test_echo_example_ctrl_c_lets_the_request_in_flight_finish(concurrency: str) -> None:
    """Ctrl-C reaches every process of the group, a forked child too: the stop is
    the parent's, and the connection open goes on being served until its client
    leaves (a child forked for it used to die of the KeyboardInterrupt at once)."""
    with _interrupted(concurrency) as (proc, log, client):
        client.sendall(b"two\n")
        assert recv_until(client) == b"two\n"
        client.close()  # the request ends, and with it the stop
        assert _exit_status(proc, log) == 0, _output(log)
    output = _output(log)
    assert "interrupted again" not in output
    assert "cut" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("concurrency", ["pool", "threads", "fork"])
def test_echo_example_ctrl_c_twice(concurrency: str) -> None:
    """A second Ctrl-C while the stop waits for requests in flight cuts them at once,
    with a log line, not a KeyboardInterrupt traceback out of server_close().

    (The sync model has nothing to wait for: the first Ctrl-C lands in the one
    request. The async engine waits inside serve_forever(), before the first
    line is logged; the second Ctrl-C stops asyncio's loop, in every version.)
    """
    with _interrupted(concurrency) as (proc, log, _):
        _ctrl_c(proc)  # only this can end the drain within WAIT
        assert _exit_status(proc, log) == 0, _output(log)
    output = _output(log)
    assert "interrupted again, stopping at once" in output
    assert "Traceback" not in output


@contextlib.contextmanager
def _busy_clients(port: int, count: int) -> Iterator[None]:
    """``count`` clients that send a line and read it back, over and over, until the
    server cuts them or the block ends."""
    done = threading.Event()

    def client() -> None:
        try:
            with connect(("127.0.0.1", port)) as sock:
                sock.sendall(b"busy\n")
                while not done.is_set() and recv_until(sock) == b"busy\n":
                    sock.sendall(b"busy\n")
        except OSError:
            return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        done.set()
        for thread in threads:
            thread.join(WAIT)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_echo_example_async_ctrl_c_twice(loop: str) -> None:
    """On the async engine the stop waits inside serve_forever(), which says so; a
    second Ctrl-C then cuts the connections at once, busy ones too.

    (asyncio's own Ctrl-C handling raised the second KeyboardInterrupt inside
    whichever task or transport callback was running: "Task exception was never
    retrieved" and "Fatal error on transport" tracebacks, and on uvloop the
    interrupt could be lost and the stop wait for all of shutdown_timeout.)
    """
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    run_echo = (
        "import runpy, sys; from servekit.aio import server; "
        f"server.AsyncServerMixIn.loop = {loop!r}; sys.argv[0] = 'echo.py'; "
        f"runpy.run_path({str(EXAMPLES / 'echo.py')!r}, run_name='__main__')"
    )
    command = [sys.executable, "-c", run_echo, "--listen", "127.0.0.1:0",
               "--concurrency", "async", "--shutdown-timeout", "600"]  # fmt: skip
    with running(command, start_new_session=True) as (proc, log, port), _busy_clients(port, 8):
        log.wait_for("client .* connected", count=8)
        _ctrl_c(proc)
        log.wait_for(r"interrupted, stopping: \d+ request\(s\) in flight get up to 600")
        _ctrl_c(proc)
        assert proc.wait(WAIT) == 0
    output = _output(log)
    assert f"serving on the {loop} event loop" in output
    assert "interrupted again: cut 8 connection(s)" in output
    assert "Traceback" not in output


@pytest.mark.timeout(180)
def test_readme_example_command() -> None:
    """./scripts/example, as the README says, installs and serves; Ctrl-C stops it."""
    command = [str(ROOT / "scripts" / "example"), "--listen", "127.0.0.1:0"]
    with running(command, timeout=150, start_new_session=True) as (proc, log, port):
        with connect(("127.0.0.1", port)) as client:
            client.sendall(b"readme\n")
            assert recv_until(client) == b"readme\n"
        _ctrl_c(proc)
        assert proc.wait(WAIT) == 0
    output = _output(log)
    assert "interrupted, stopping" in output
    assert "Traceback" not in output


# -- the examples served by the command line -------------------------------


def test_kvstore_example() -> None:
    with _serve("examples.kvstore:KeyValue", "--listen", "127.0.0.1:0") as (proc, _, port):
        with connect(("127.0.0.1", port)) as client:
            for command, reply in [
                (b"SET colour blue", b"OK"), (b"GET colour", b"VALUE blue"),
                (b"KEYS", b"KEYS colour"), (b"DEL colour", b"OK"),
                (b"GET colour", b"NOT_FOUND"), (b"FLY", (b"ERROR commands: SET <key> <value>, "
                 b"GET <key>, DEL <key>, KEYS")),
            ]:  # fmt: skip
                client.sendall(command + b"\n")
                assert recv_until(client) == reply + b"\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.parametrize("concurrency", ["pool", "threads", "sync", "fork"])
def test_reports_example(concurrency: str) -> None:
    """Quick answers inline, PRIMES in a forked child that serves the rest of the
    connection; SIGTERM stops the server with status 0."""
    with _serve(
        "examples.reports:Reports", "--listen", "127.0.0.1:0", "--concurrency", concurrency
    ) as (proc, _, port):
        with connect(("127.0.0.1", port)) as client:
            client.sendall(b"SQUARE 12\nPRIMES 100000\nSQUARE 3\nPRIMES 1\n")
            assert recv_until(client, b")\n") == (
                b"144\nprimes below 100000: 9592, sum 454396537\n9\n"
                b"ERROR commands: SQUARE <n>, PRIMES <n> (2 <= n <= 100000000)\n"
            )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


def test_chat_example() -> None:
    with _serve("examples.chat:Chat", "--concurrency", "async", "--listen", "127.0.0.1:0") as (
        proc,
        _,
        port,
    ):
        alice = connect(("127.0.0.1", port))
        assert recv_until(alice).startswith(b"welcome")
        bob = connect(("127.0.0.1", port))
        assert recv_until(bob).endswith(b"1 other(s) here\n")
        assert recv_until(alice).endswith(b"joined\n")
        alice.sendall(b"hello bob\n")
        assert recv_until(bob).endswith(b": hello bob\n")
        bob.close()
        assert recv_until(alice).endswith(b"left\n")
        alice.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.parametrize(
    "target",
    [
        ["examples.echo:LineEcho"],
        ["examples.echo:AsyncLineEcho", "--concurrency", "async"],
        ["examples.kvstore:KeyValue"],
        ["examples.chat:Chat", "--concurrency", "async"],
        ["examples.reports:Reports"],
    ],
    ids=["echo", "echo-async", "kvstore", "chat", "reports"],
)
def test_cli_example_ctrl_c(target: list[str]) -> None:
    """Ctrl-C with a client connected: a graceful stop within --shutdown-timeout, then
    the connection is cut; one log line each, no traceback."""
    with (
        _serve(*target, "--listen", "127.0.0.1:0", "--shutdown-timeout", "1") as (proc, log, port),
        connect(("127.0.0.1", port)) as client,
    ):
        client.sendall(b"GET nothing\n")
        assert recv_until(client).endswith(b"\n")  # each example answers a line with one
        _ctrl_c(proc)
        assert proc.wait(WAIT) == 0
    output = _output(log)
    assert "Interrupt: stopping gracefully" in output
    assert "Traceback" not in output


# -- examples/syslog.py: the parser ----------------------------------------

#: Real datagrams: RFC 5424's own examples (6.5) and what util-linux logger 2.38 sends.
RFC5424_LINES = [
    ((b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
      b"\xef\xbb\xbf'su root' failed for lonvick on /dev/pts/8"),
     Message(4, 2, "'su root' failed for lonvick on /dev/pts/8", host="mymachine.example.com",
             app="su", msgid="ID47", timestamp="2003-10-11T22:14:15.003Z", rfc=5424)),
    ((b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - "
      b"%% It's time to make the do-nuts."),
     Message(20, 5, "%% It's time to make the do-nuts.", host="192.0.2.1", app="myproc",
             procid="8710", timestamp="2003-08-24T05:14:15.000003-07:00", rfc=5424)),
    ((b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473'
      b' iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]'),
     Message(20, 5, "", host="mymachine.example.com", app="evntslog", msgid="ID47",
             timestamp="2003-10-11T22:14:15.003Z", rfc=5424, structured_data=(
                 ("exampleSDID@32473", (("iut", "3"), ("eventSource", "Application"),
                                        ("eventID", "1011"))),
                 ("examplePriority@32473", (("class", "high"),))))),
    ((b'<13>1 2026-12-02T13:53:17.480590+00:00 vm root - - [timeQuality tzKnown="1" '
      b'isSynced="0"] hello world'),
     Message(1, 5, "hello world", host="vm", app="root",
             timestamp="2026-12-02T13:53:17.480590+00:00", rfc=5424,
             structured_data=(("timeQuality", (("tzKnown", "1"), ("isSynced", "0"))),))),
    # logger -p local3.err -t myapp -i --sd-id x@32473 --sd-param 'a="q\"b\]c\\"'
    ((b'<155>1 2026-12-02T13:53:26.369789+00:00 vm myapp 9727 - [x@32473 a="q\\"b\\]c\\\\" b="2"]'
      b" hello world"),
     Message(19, 3, "hello world", host="vm", app="myapp", procid="9727",
             timestamp="2026-12-02T13:53:26.369789+00:00", rfc=5424,
             structured_data=(("x@32473", (("a", 'q"b]c\\'), ("b", "2"))),))),
    # logger --msgid ID47 --rfc5424=notime,nohost
    (b"<13>1 - - root - ID47 - hello world",
     Message(1, 5, "hello world", app="root", msgid="ID47", rfc=5424)),
    # logger --octet-count: RFC 6587's TCP framing, sent over UDP all the same
    (b"35 <13>1 - - root - ID47 - hello world",
     Message(1, 5, "hello world", app="root", msgid="ID47", rfc=5424)),
]  # fmt: skip

RFC3164_LINES = [
    (b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
     Message(4, 2, "'su root' failed for lonvick on /dev/pts/8", host="mymachine", app="su",
             timestamp="Oct 11 22:14:15")),
    (b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!",
     Message(1, 5, "Use the BFG!", host="10.0.0.99", timestamp="Feb  5 17:32:18")),
    (b"<13>Dec  2 13:53:26 vm app[42]: hello world\n",  # logger --rfc3164 -t app --id=42
     Message(1, 5, "hello world", host="vm", app="app", procid="42",
             timestamp="Dec  2 13:53:26")),
    (b"<30>Dec  2 13:53:26 systemd[1]: started",  # a sender that leaves out HOSTNAME
     Message(3, 6, "started", app="systemd", procid="1", timestamp="Dec  2 13:53:26")),
    (b"<13>no timestamp, taken whole", Message(1, 5, "no timestamp, taken whole")),
    (b"<0>\xff not UTF-8", Message(0, 0, "\\xff not UTF-8")),
    (b"no priority at all\n", Message(1, 5, "no priority at all")),  # RFC 3164 4.3.3
]  # fmt: skip


@pytest.mark.parametrize(("packet", "message"), RFC5424_LINES + RFC3164_LINES)
def test_syslog_parse(packet: bytes, message: Message) -> None:
    assert parse(packet) == message


#: Hostile or broken datagrams, and the fault each is reported with.
BAD_DATAGRAMS = [
    (b"", "empty datagram"),
    (b"\x00\xff\xfe\x80garbage", "no <PRI> and not UTF-8 text"),
    (b"\x1b[2J\x1b[Hclear the screen", "no <PRI> and control characters"),
    (b"<", "PRI: expected digits after '<'"),
    (b"<34", "PRI: <34 not closed with '>'"),
    (b"<abc>hello", "PRI: expected digits after '<'"),
    (b"<192>one too many", "PRI 192 out of range (0 to 191)"),
    (b"<99999999999999999999>huge", "PRI: more than 3 digits (20)"),
    (b"<34>1 ", "RFC 5424 header cut short: no HOSTNAME after TIMESTAMP"),
    (b"<34>1 2003-10-11T22:14:15.003Z mymachine", "cut short: no APP-NAME after HOSTNAME"),
    (b"<34>1 2003-10-11T22:14:15.003Z host app - ID47 ", "no STRUCTURED-DATA after MSGID"),
    (b"<34>1 yesterday host app - - - m", "TIMESTAMP 'yesterday' is not RFC 3339"),
    (b"<34>1 - h\x00st app - - - m", "HOSTNAME has a character outside printable ASCII"),
    (b"<34>1 -  app - - - m", "HOSTNAME is empty"),
    (b"<34>1 - host " + b"a" * 49 + b" - - - m", "APP-NAME longer than 48 characters"),
    (b"<34>1 - host app - - x", "STRUCTURED-DATA must be '-' or start with '['"),
    (b"<34>1 - host app - - -msg", "expected a space after STRUCTURED-DATA"),
    (b"<34>1 - host app - - [id@1", "element [id@1 not closed with ']'"),
    (b'<34>1 - host app - - [id@1 a="v"', "element [id@1 not closed with ']'"),
    (b'<34>1 - host app - - [id@1 a="unterminated] m', "unescaped ']' in the value of id@1 a"),
    (b'<34>1 - host app - - [id@1 a="unterminated', "the value of id@1 a not closed with '\"'"),
    (b'<34>1 - host app - - [id@1 a="\\"', "the value of id@1 a not closed"),  # an escaped quote
    (b'<34>1 - host app - - [ a="v"]', "SD-ID is missing"),
    (b"<34>1 - host app - - [" + b"x" * 33 + b"]", "SD-ID longer than 32 characters"),
    (b'<34>1 - host app - - [id@1 a"v"]', "expected =\" after id@1 a"),
    (b'<34>1 - host app - - [id@1 a="\xff"]', "the value of id@1 a is not UTF-8"),
    (b"12 <13>hello", "octet count says 12 bytes, 9 follow it"),
]  # fmt: skip


@pytest.mark.parametrize(("packet", "fault"), BAD_DATAGRAMS)
def test_syslog_parse_reports_bad_datagrams(packet: bytes, fault: str) -> None:
    with pytest.raises(SyslogError) as caught:
        parse(packet)
    assert fault in str(caught.value)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200) | st.builds(bytes.__add__, st.sampled_from(
    [b"<13>", b"<13>1 ", b"<13>1 - h a - - ", b"<13>1 - h a - - [i", b"5 <", b"<191>Jan  1 "]
), st.binary(max_size=100)))  # fmt: skip
def test_syslog_parse_any_bytes(packet: bytes) -> None:
    """Whatever arrives, parse() returns a message or raises SyslogError, nothing else."""
    try:
        message = parse(packet)
    except SyslogError:
        return
    assert 0 <= message.facility < len(syslog.FACILITIES)
    assert 0 <= message.severity < len(syslog.SEVERITIES)


_NAMES = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters='= ]"'),
                 min_size=1, max_size=32)  # fmt: skip
_FIELDS = st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=32)


@settings(max_examples=300, deadline=None)
@given(
    pri=st.integers(0, 191),
    host=_FIELDS.filter(lambda v: v != "-" and v != ""),
    app=_FIELDS.filter(lambda v: v != "-" and v != ""),
    structured_data=st.lists(st.tuples(_NAMES, st.lists(st.tuples(_NAMES, st.text()),
                                                        max_size=3).map(tuple)),
                             max_size=3).map(tuple),
    # A text that starts with U+FEFF would read as the BOM; a trailing newline is dropped.
    text=st.text().map(lambda t: t.rstrip("\r\n").lstrip("\ufeff")),
    bom=st.booleans(),
)  # fmt: skip
def test_syslog_parse_round_trip(
    pri: int, host: str | None, app: str | None, structured_data: Any, text: str, bom: bool
) -> None:
    """An RFC 5424 message built from any fields, with its values escaped, parses back."""

    def escaped(value: str) -> bytes:
        return re.sub(r'(["\\\]])', r"\\\1", value).encode()

    sd = b"".join(
        b"[" + sd_id.encode() + b"".join(b" " + name.encode() + b'="' + escaped(value) + b'"'
                                         for name, value in params) + b"]"
        for sd_id, params in structured_data
    ) or b"-"  # fmt: skip
    packet = b"<%d>1 - %s %s - - %s %s%s" % (
        pri, (host or "-").encode(), (app or "-").encode(), sd,
        b"\xef\xbb\xbf" if bom else b"", text.encode(),
    )  # fmt: skip
    assert parse(packet) == Message(pri >> 3, pri & 7, text, host=host, app=app, rfc=5424,
                                    structured_data=structured_data)  # fmt: skip


def test_syslog_shown_escapes_control_characters() -> None:
    assert syslog.shown("plain text, é") == "plain text, é"
    assert syslog.shown("forged\nline \x1b[31mred") == "forged\\nline \\x1b[31mred"


# -- examples/syslog.py: the collector -------------------------------------


def _syslog_server() -> Any:
    return _serve("examples.syslog:Collector", "--listen", "udp://127.0.0.1:0")


@contextlib.contextmanager
def _udp_client(port: int) -> Iterator[Callable[[bytes], object]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.connect(("127.0.0.1", port))
        yield client.send


def test_syslog_example() -> None:
    with _syslog_server() as (proc, log, port), _udp_client(port) as send:
        for packet, _ in RFC5424_LINES[:1] + RFC3164_LINES[:1]:
            send(packet)
        send(b"<28>Nov 25 12:00:00 host app: disk almost full")
        send(b"no priority at all")
        send(b"<13>1 - evil app - - - forged\n2026 CRITICAL root: \x1b[31m")
        log.wait_for(
            r"CRITICAL syslog: auth\.crit from 127\.0\.0\.1, host mymachine\.example\.com,"
            r" app su: 'su root' failed for lonvick on /dev/pts/8$"
        )
        log.wait_for(
            r"CRITICAL syslog: auth\.crit from 127\.0\.0\.1, host mymachine, app su: "
            r"'su root' failed"
        )
        log.wait_for(
            r"WARNING syslog: daemon\.warning from 127\.0\.0\.1, host host, app app: "
            r"disk almost full$"
        )
        log.wait_for(
            r"INFO syslog: user\.notice from 127\.0\.0\.1, host -, app -: "
            r"no priority at all$"
        )
        # A message cannot forge a log line or colour the terminal: its controls are escaped.
        log.wait_for(r"host evil, app app: forged\\n2026 CRITICAL root: \\x1b\[31m$")
        _ctrl_c(proc)
        assert proc.wait(WAIT) == 0
    output = _output(log)
    assert "Traceback" not in output
    assert "\x1b" not in output


def test_syslog_example_reports_bad_datagrams() -> None:
    """Each bad datagram is one WARNING naming its fault; the collector goes on."""
    with _syslog_server() as (proc, log, port), _udp_client(port) as send:
        for packet, _ in BAD_DATAGRAMS:
            send(packet)
        send(b"<14>still here")
        log.wait_for(r"INFO syslog: user\.info from 127\.0\.0\.1, host -, app -: still here")
        for _, fault in BAD_DATAGRAMS:
            log.wait_for(r"WARNING syslog: bad syslog datagram from 127\.0\.0\.1: .*"
                         + re.escape(fault))  # fmt: skip
        _ctrl_c(proc)
        assert proc.wait(WAIT) == 0
    output = _output(log)
    assert "Traceback" not in output
    assert len(re.findall("bad syslog datagram", output)) == len(BAD_DATAGRAMS)


def _logger(port: int, *args: str) -> None:
    subprocess.run(
        ["logger", "--udp", "--server", "127.0.0.1", "--port", str(port), *args],
        check=True, timeout=WAIT,
    )  # fmt: skip


@requires_logger
@pytest.mark.parametrize("form", ["--rfc5424", "--rfc3164"])
def test_syslog_example_with_logger(form: str) -> None:
    """What util-linux logger sends, in both its forms, is logged field by field."""
    host = re.escape(socket.gethostname().split(".")[0])
    with _syslog_server() as (proc, log, port):
        _logger(port, form, "-p", "daemon.warning", "-t", "myapp", "--id=4242", "disk almost full")
        log.wait_for(rf"WARNING syslog: daemon\.warning from 127\.0\.0\.1, host {host}[^,]*, "
                     r"app myapp\[4242\]: disk almost full$")  # fmt: skip
        _logger(port, form, "-p", "local7.info", "-t", "t", "tabs\tand é")
        log.wait_for(r"INFO syslog: local7\.info from 127\.0\.0\.1, host [^,]+, app t: "
                     r"tabs\\tand é$")  # fmt: skip
        _logger(port, form, "-p", "mail.err", "-t", "postfix/smtpd", "last")
        log.wait_for(r"ERROR syslog: mail\.err from 127\.0\.0\.1, host [^,]+, app postfix/smtpd: "
                     r"last$")  # fmt: skip
        _ctrl_c(proc)
        assert proc.wait(WAIT) == 0
    output = _output(log)
    assert "bad syslog datagram" not in output
    assert "Traceback" not in output


# -- README.md and docs/guide.md -------------------------------------------


def _python_blocks(path: Path, section: str | None = None) -> list[str]:
    """The ```python blocks of ``path``, or of its "## section" only."""
    text = path.read_text()
    if section is not None:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


@contextlib.contextmanager
def _program(path: Path) -> Iterator[tuple[subprocess.Popen[str], ProcessLog, int]]:
    """Run a user's program; yield it, its output (stdout and stderr) and the port it
    said it serves on."""
    proc = subprocess.Popen(
        [sys.executable, "-u", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, cwd=path.parent, env=os.environ | {"PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    log = ProcessLog(SimpleNamespace(stderr=proc.stdout))  # type: ignore[arg-type]
    try:
        port = int(log.wait_for(r"127\.0\.0\.1'?(?::|, )(\d+)")[0].group(1))
        yield proc, log, port
    finally:
        proc.kill()
        proc.wait(WAIT)


@pytest.mark.parametrize(("index", "sent", "received"),
                         [(0, b"hello\n", b"hello\n"), (1, b"hello\n", b"HELLO\n")])  # fmt: skip
def test_readme_quick_start(tmp_path: Path, index: int, sent: bytes, received: bytes) -> None:
    """Each program of the README's quick start serves where it says it does."""
    blocks = _python_blocks(README, "Quick start")
    assert len(blocks) == 2
    # Port 8000 may be taken; the program must say where it serves all the same.
    source = blocks[index].replace('"127.0.0.1:8000"', '"127.0.0.1:0"')
    (tmp_path / "quickstart.py").write_text(source)
    with _program(tmp_path / "quickstart.py") as (_, log, port):
        with connect(("127.0.0.1", port)) as client:
            client.sendall(sent)
            assert recv_until(client) == received
        if "listening on" in blocks[index]:  # what its comment says it logs
            log.wait_for(rf"listening on tcp://127\.0\.0\.1:{port} ")


@pytest.mark.parametrize("path", [README, ROOT / "docs" / "guide.md"], ids=lambda p: p.name)
def test_doc_python_blocks_compile(path: Path) -> None:
    blocks = _python_blocks(path)
    assert blocks
    for block in blocks:
        compile(block, str(path), "exec")


def _readme_examples() -> dict[str, tuple[str, str]]:
    """The README's examples table: {example: (serve it, talk to it)}."""
    rows = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 3 and cells[1].startswith("`"):
            serve, talk = (re.findall(r"`([^`]*)`", c.replace("\\|", "|")) for c in cells[1:])
            rows[cells[0]] = (serve[0], talk[0])
    return rows


def _client(command: str, port: int, documented: int) -> subprocess.CompletedProcess[str]:
    """Run a documented client command against ``port`` instead of ``documented``."""
    argv = shlex.split(command.replace(str(documented), str(port)))
    if argv[0] == "python3":
        argv[0] = sys.executable
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=WAIT)


def _served(command: str, documented: int) -> Any:
    argv = shlex.split(command.replace(f":{documented}", ":0"))
    assert argv[0] == ".venv/bin/servekit"
    return _serve(*argv[2:])


def test_readme_kvstore_command() -> None:
    """The README's one-shot client runs as written, with no netcat."""
    serve, command = _readme_examples()["key-value store"]
    with _served(serve, 6380) as (_, _, port):
        result = _client(command, port, 6380)
    assert result.stdout == "OK\nVALUE 1\n"


def test_readme_reports_command() -> None:
    serve, command = _readme_examples()["reports (fork)"]
    with _served(serve, 7070) as (_, _, port):
        result = _client(command, port, 7070)
    assert result.stdout == "144\nprimes below 100000: 9592, sum 454396537\n"


def test_readme_interrupt_command() -> None:
    serve, command = _readme_examples()["interrupt (urgent data)"]
    with _served(serve, 7071) as (_, _, port):
        result = _client(command, port, 7071)
    assert result.stdout == "1\n2\ndone\n"


@pytest.mark.parametrize("concurrency", ["pool", "threads", "sync", "fork"])
def test_interrupt_example(concurrency: str) -> None:
    """An urgent byte stops the running command (count, then sleep), which says
    so; the next command is answered as usual."""
    with _serve(
        "examples.interrupt:Commands", "--listen", "127.0.0.1:0", "--concurrency", concurrency
    ) as (proc, _, port):
        with connect(("127.0.0.1", port)) as client, client.makefile("rb") as reader:
            client.sendall(b"count 100000\n")
            assert reader.readline() == b"1\n"
            client.send(b"!", socket.MSG_OOB)
            while (line := reader.readline()) != b"interrupted\n":
                assert line.rstrip().isdigit()
            client.sendall(b"sleep 3600\n")
            client.send(b"!", socket.MSG_OOB)
            assert reader.readline() == b"interrupted\n"
            client.sendall(b"count 3\nfly\n")
            assert [reader.readline() for _ in range(5)] == [
                b"1\n", b"2\n", b"3\n", b"done\n",
                b"ERROR commands: count <n>, sleep <seconds>\n",
            ]  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@requires_logger
def test_readme_syslog_command() -> None:
    serve, talk = _readme_examples()["syslog collector (UDP)"]
    with _served(serve, 5140) as (_, log, port):
        _client(talk, port, 5140)
        log.wait_for(r"INFO syslog: user\.notice from 127\.0\.0\.1, host [^,]+, app [^,]+: hello$")


def test_readme_job_queue_commands(tmp_path: Path) -> None:
    """The README's job queue: served and fed as written (in an empty folder, where
    jobs.db is made), the job's line logged; Ctrl-C stops it."""
    serve, talk = _readme_examples()["job queue (SQLite)"]
    serve_argv, talk_argv = shlex.split(serve), shlex.split(talk)
    assert serve_argv[0] == talk_argv[0] == ".venv/bin/servekit"
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "servekit", *serve_argv[1:]], cwd=tmp_path, env=environment,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    log = ProcessLog(proc)
    try:
        log.wait_for(r"serving sqlite:jobs\.db from QueueServer")
        enqueued = subprocess.run(
            [sys.executable, "-m", "servekit", *talk_argv[1:]], cwd=tmp_path, env=environment,
            capture_output=True, text=True, check=True, timeout=WAIT,
        )  # fmt: skip
        assert enqueued.stdout.strip().isdigit()  # the row's id
        log.wait_for(r"INFO jobs: sent 'hi' to ada@example\.com \(attempt 1\)$")
        _ctrl_c(proc)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(WAIT)
    assert "Traceback" not in _output(log)


def test_docs_use_no_netcat_flags() -> None:
    """nc -q (traditional netcat) is missing from OpenBSD's netcat, nc -N from the
    traditional one; Debian installs neither by default. The documented one-shot
    clients are python3 one-liners, and nc appears only in its portable form."""
    paths = [README, *(ROOT / "docs").glob("*.md"), *EXAMPLES.glob("*.py")]
    for path in paths:
        assert not re.search(r"\bnc -[a-zA-Z]*[qN]", path.read_text()), path

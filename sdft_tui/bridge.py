"""The engine-to-Textual bridge: an EventSink that hands events to a screen without blocking.

The engine calls ``emit`` on its own thread, possibly hundreds of times a second. We never use
``call_from_thread`` (it waits for the UI to run the callback, so a busy UI would slow training).
Instead events go into a buffer under a short lock, and at most one ``EngineEvents``
message is in flight at a time: the first event after a drain posts it, later ones just join the
buffer. The UI drains the whole buffer in one go, so a burst of steps costs one message, the
order of events is kept, and no event is lost (the loss chart wants every point).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from textual.message import Message

from engine.events import Event, event_from_dict


class EngineEvents(Message):
    """Events are waiting in ``sink``; the handler calls ``sink.drain()``."""

    def __init__(self, sink: "MessageSink") -> None:
        super().__init__()
        self.sink = sink


class MessageSink:
    """EventSink posting coalesced ``EngineEvents`` messages to ``target`` (a screen or widget)."""

    def __init__(self, target) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self._posted = False
        self.posted_messages = 0   # how many messages were posted (tests check the coalescing)
        self.closed = False

    def emit(self, event: Event) -> None:
        with self._lock:
            if self.closed:
                return  # the screen is gone; the engine's own events.jsonl keeps the record
            self._pending.append(event)
            if self._posted:
                return
            self._posted = True
        try:
            delivered = self._target.post_message(EngineEvents(self))
        except Exception:  # noqa: BLE001 - the app's loop is gone (closing): training goes on
            delivered = False
        with self._lock:
            if delivered:
                self.posted_messages += 1
            else:
                # Nobody will drain: stop collecting (a long run must not grow a dead buffer).
                self.closed = True
                self._pending.clear()
                self._posted = False

    def drain(self) -> list[Event]:
        """Every event received since the last drain, in order (UI thread)."""
        with self._lock:
            events, self._pending = self._pending, []
            self._posted = False
        return events

    def close(self) -> None:
        """The screen is going away: later events are dropped and post nothing."""
        with self._lock:
            self.closed = True


HEAD_BYTES = 256   # every event line starts differently (its time), so this tells two files apart


class EventFollower:
    """Reads an ``events.jsonl`` that another process is still appending to (``sdft watch``).

    ``poll()`` returns the events of the complete lines written since the last call; a line
    whose end has not been written yet waits for the next poll. A missing file is simply "no
    events yet" (the run may not have started), and a file that was replaced or shrank (a fresh
    run in the same folder starts a new log) is read again from the start.
    """

    def __init__(self, path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        self._head = b""   # the file's first bytes: another beginning means another file
        self.restarted = False

    def poll(self, max_bytes: int = 8 << 20) -> list[Event]:
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                head = handle.read(HEAD_BYTES)
                common = min(len(head), len(self._head))
                if self._offset and (size < self._offset or head[:common] != self._head[:common]):
                    self._offset, self._partial, self.restarted = 0, b"", True
                if size == self._offset:
                    return []
                self._head = head
                handle.seek(self._offset)
                chunk = handle.read(max_bytes)
        except OSError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()   # b"" when the chunk ended with a newline
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                event = event_from_dict(json.loads(line.decode("utf-8")))
            except (ValueError, UnicodeDecodeError):
                continue   # a damaged line: skip it rather than stop watching
            if event is not None:
                events.append(event)
        return events

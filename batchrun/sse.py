"""Decoding Server-Sent Events, as Lamina's `GET /v1/runs/{id}/stream` sends them.

The decoder follows the WHATWG HTML "event stream interpretation" rules exactly
(https://html.spec.whatwg.org/multipage/server-sent-events.html), so that it copes with
whatever a conforming server may send, not only the one-line JSON the sandbox writes:

- the bytes are UTF-8, decoded incrementally (a code point may be split across chunks;
  invalid bytes become U+FFFD) and one leading BOM is dropped;
- lines end in CRLF, LF or CR, and a CR ending one chunk followed by an LF starting the
  next is a single line end;
- a blank line dispatches the event being built; an event whose data buffer is empty is
  not dispatched; an incomplete event at the end of the stream is discarded.

`SSEDecoder` is pure (bytes in, events out); `iter_events` drives it from an aiohttp
response body.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from batchrun.errors import TransportError

logger = logging.getLogger(__name__)

# A CR immediately followed by an LF in the same text is one line end; a CR at the
# very end of the text is SSEDecoder._skip_lf's job, as its LF may be in the next chunk.
_LINE_END = re.compile(r"\r\n?|\n")
# ASCII digits only: str.isdigit would also accept "²" and other Unicode digits.
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Event:
    """One dispatched event.

    `id` is the last event ID in effect when the event was dispatched: None if the
    stream never sent an `id` field, "" if it reset it. `retry` is likewise the last
    reconnection time (milliseconds) the stream set, or None.
    """

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """The data parsed as JSON (Lamina's run events carry a run object)."""
        return json.loads(self.data)


class SSEDecoder:
    """An incremental event-stream parser: feed it bytes, get back finished events.

    One decoder reads one stream. After `close()` it refuses more bytes, but
    `last_event_id` and `retry` stay readable for a client that reconnects.
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_start = True  # until the first decoded character: drop a BOM there
        self._skip_lf = False  # the last text ended in CR: an LF next is part of it
        self._partial: list[str] = []  # the current line, not yet terminated
        self._event_type = ""
        self._data: list[str] = []
        self._last_event_id: str | None = None
        self._retry: int | None = None
        self._closed = False

    @property
    def last_event_id(self) -> str | None:
        """The last event ID the stream set (None if it never sent an `id` field)."""
        return self._last_event_id

    @property
    def retry(self) -> int | None:
        """The reconnection time in milliseconds the stream last set, or None."""
        return self._retry

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse the next chunk of the stream; return the events it completed."""
        if self._closed:
            raise ValueError("this SSEDecoder is closed; use a new one per stream")

        text = self._utf8.decode(chunk)
        if self._at_start and text:
            self._at_start = False
            if text.startswith("\ufeff"):
                text = text[1:]
        return self._feed_text(text)

    def close(self) -> list[Event]:
        """End the stream: whatever event is still incomplete is discarded.

        Returns the events completed by the end of the stream, which by the rules is
        always none; the list is there so callers treat feed and close alike.
        """
        if not self._closed:
            # Flushing can only add to the unterminated line, which is thrown away.
            self._utf8.decode(b"", final=True)
            self._closed = True
            if self._partial or self._data:
                logger.debug("event stream ended inside an event; discarding it")
        return []

    def _feed_text(self, text: str) -> list[Event]:
        if self._skip_lf and text:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]

        events: list[Event] = []
        pos = 0
        while pos < len(text):
            match = _LINE_END.search(text, pos)
            if match is None:
                self._partial.append(text[pos:])
                break
            line = text[pos : match.start()]
            if self._partial:
                self._partial.append(line)
                line = "".join(self._partial)
                self._partial.clear()
            if match.group() == "\r" and match.end() == len(text):
                self._skip_lf = True
            pos = match.end()

            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def _process_line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None

        # Without a colon the whole line is the name and the value is "".
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]

        match name:
            case "event":
                self._event_type = value
            case "data":
                self._data.append(value)
            case "id" if "\0" not in value:
                self._last_event_id = value
            case "retry" if _DIGITS.fullmatch(value):
                self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        # The data buffer is the data lines each followed by LF, minus the final LF:
        # joining them with LF is the same thing.
        data, event_type = self._data, self._event_type
        self._data, self._event_type = [], ""
        if not data:
            return None
        return Event(
            event=event_type or "message",
            data="\n".join(data),
            id=self._last_event_id,
            retry=self._retry,
        )


async def iter_events(stream: aiohttp.StreamReader) -> AsyncIterator[Event]:
    """Events from a response body as it arrives (`resp.content`), chunk by chunk.

    Ends when the stream ends; an incomplete last event is discarded. A connection that
    breaks off or times out mid-stream raises TransportError, after yielding the events
    that did arrive.
    """
    decoder = SSEDecoder()
    try:
        async for chunk in stream.iter_any():
            for event in decoder.feed(chunk):
                yield event
    except (aiohttp.ClientError, TimeoutError) as exc:
        # A read timeout (sock_read) is a TimeoutError too; a caller's own
        # asyncio.timeout() cancels instead, so it is not caught here.
        reason = exc.__class__.__name__
        raise TransportError(
            f"the event stream broke off ({reason}); reconnect or poll the run"
        ) from exc
    finally:
        decoder.close()

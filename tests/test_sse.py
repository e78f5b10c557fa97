"""The SSE decoder against the WHATWG event-stream rules, and over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrun.errors import TransportError
from batchrun.sse import Event, SSEDecoder, iter_events


def decode(*chunks: bytes) -> list[Event]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.close()


def decode_bytewise(stream: bytes) -> list[Event]:
    return decode(*(stream[i : i + 1] for i in range(len(stream))))


# -- line endings ----------------------------------------------------------------------


@pytest.mark.parametrize("eol", ["\n", "\r", "\r\n"], ids=["LF", "CR", "CRLF"])
def test_each_line_ending_ends_lines(eol: str) -> None:
    stream = f"event: progress{eol}data: a{eol}data: b{eol}{eol}".encode()

    events = decode(stream)

    assert events == [Event(event="progress", data="a\nb")]


def test_mixed_line_endings_in_one_stream() -> None:
    stream = b"data: a\rdata: b\ndata: c\r\n\r\ndata: d\n\r"

    events = decode(stream)

    assert events == [Event(data="a\nb\nc"), Event(data="d")]


def test_cr_ending_a_chunk_and_lf_starting_the_next_are_one_line_end() -> None:
    # Read as two line ends, the LF would be a blank line dispatching "a" alone.
    chunks = [b"data: a\r", b"\ndata: b\r\n\r\n"]

    events = decode(*chunks)

    assert events == [Event(data="a\nb")]


def test_cr_then_empty_chunks_then_lf_is_one_line_end() -> None:
    chunks = [b"data: a\r", b"", b"", b"\ndata: b\r", b"\n\r", b"\n"]

    events = decode(*chunks)

    assert events == [Event(data="a\nb")]


def test_cr_then_split_code_point_then_lf_is_still_one_line_end() -> None:
    # "\xc3" alone decodes to nothing yet, so the LF check must wait for real text.
    chunks = [b"data: a\r", b"\n", b"data: \xc3", b"\xa9\r", b"\n\r", b"\n"]

    events = decode(*chunks)

    assert events == [Event(data="a\n\u00e9")]


def test_a_line_ending_in_cr_is_processed_without_waiting_for_the_next_chunk() -> None:
    decoder = SSEDecoder()

    events = decoder.feed(b"data: a\r\r")

    assert events == [Event(data="a")]


def test_cr_cr_is_two_line_ends() -> None:
    stream = b"data: a\r\rdata: b\r\r"

    events = decode(stream)

    assert events == [Event(data="a"), Event(data="b")]


# -- decoding --------------------------------------------------------------------------


def test_a_leading_bom_is_dropped() -> None:
    stream = b"\xef\xbb\xbfdata: a\n\n"

    events = decode(stream)

    assert events == [Event(data="a")]


def test_a_leading_bom_split_across_chunks_is_dropped() -> None:
    chunks = [b"\xef", b"\xbb", b"\xbfdata: a\n\n"]

    events = decode(*chunks)

    assert events == [Event(data="a")]


def test_only_one_leading_bom_is_dropped() -> None:
    # The second BOM becomes part of the field name "\ufeffdata", which is ignored.
    stream = b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n"

    events = decode(stream)

    assert events == [Event(data="b")]


def test_a_bom_inside_data_is_kept() -> None:
    stream = "data: \ufeffa\n\n".encode()

    events = decode(stream)

    assert events == [Event(data="\ufeffa")]


def test_a_code_point_split_across_chunks_survives() -> None:
    stream = "data: \U0001f600 caf\u00e9 \u20ac\n\n".encode()

    events = decode_bytewise(stream)

    assert events == [Event(data="\U0001f600 caf\u00e9 \u20ac")]


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"\xff", "\ufffd"),
        (b"a\x80b", "a\ufffdb"),
        (b"\xf0\x9f\x98", "\ufffd"),  # a truncated 4-byte sequence: one U+FFFD
        (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd"),  # an encoded surrogate is invalid
    ],
    ids=["ff", "lone-continuation", "truncated", "surrogate"],
)
def test_invalid_utf8_becomes_replacement_characters(raw: bytes, text: str) -> None:
    stream = b"data: " + raw + b"\n\n"

    events = decode_bytewise(stream)

    assert events == [Event(data=text)]


# -- fields ----------------------------------------------------------------------------


def test_comment_lines_are_ignored() -> None:
    stream = b": hello\n:\ndata: a\n: data: b\n\n"

    events = decode(stream)

    assert events == [Event(data="a")]


def test_a_comment_alone_dispatches_nothing() -> None:
    stream = b": keep-alive\n\n"

    events = decode(stream)

    assert events == []


@pytest.mark.parametrize(
    ("line", "data"),
    [
        (b"data:a", "a"),
        (b"data: a", "a"),
        (b"data:  a", " a"),
        (b"data: a ", "a "),
        (b"data:\ta", "\ta"),
        (b"data: a:b: c", "a:b: c"),
        (b"data: ", ""),
        (b"data:", ""),
    ],
    ids=[
        "no-space",
        "one-space",
        "two-spaces",
        "trailing",
        "tab",
        "colons",
        "sp",
        "none",
    ],
)
def test_exactly_one_leading_space_is_stripped_from_a_value(
    line: bytes, data: str
) -> None:
    stream = line + b"\n\n"

    events = decode(stream)

    assert events == [Event(data=data)]


def test_a_line_without_colon_is_a_field_with_empty_value() -> None:
    stream = b"event: progress\nevent\ndata\n\n"

    events = decode(stream)

    assert events == [Event(event="message", data="")]


def test_data_lines_are_joined_with_lf_and_the_last_lf_removed() -> None:
    stream = b"data: a\ndata:\ndata: b\ndata:\n\n"

    events = decode(stream)

    assert events == [Event(data="a\n\nb\n")]


def test_field_names_are_case_sensitive_and_unknown_ones_ignored() -> None:
    stream = b"Data: a\nEVENT: x\nfoo: bar\ndata : b\ndata: c\n\n"

    events = decode(stream)

    assert events == [Event(data="c")]


def test_an_event_without_data_is_not_dispatched_and_resets_the_type() -> None:
    stream = b"event: progress\n\ndata: a\n\n"

    events = decode(stream)

    assert events == [Event(event="message", data="a")]


def test_the_event_type_does_not_carry_over_to_the_next_event() -> None:
    stream = b"event: complete\ndata: a\n\ndata: b\n\n"

    events = decode(stream)

    assert events == [Event(event="complete", data="a"), Event(data="b")]


def test_an_empty_event_type_means_message() -> None:
    stream = b"event:\ndata: a\n\n"

    events = decode(stream)

    assert events == [Event(event="message", data="a")]


def test_the_last_id_stays_in_effect_until_changed() -> None:
    stream = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid\ndata: d\n\n"

    events = decode(stream)

    assert [e.id for e in events] == ["1", "1", "2", ""]


def test_an_id_set_by_an_undispatched_event_applies_to_the_next() -> None:
    decoder = SSEDecoder()

    first = decoder.feed(b"id: 7\n\n")
    second = decoder.feed(b"data: a\n\n")

    assert (first, decoder.last_event_id, second) == (
        [],
        "7",
        [Event("message", "a", "7")],
    )


def test_an_id_containing_nul_is_ignored() -> None:
    stream = b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"

    events = decode(stream)

    assert [e.id for e in events] == ["1", "1"]


def test_ids_are_none_when_the_stream_never_sends_one() -> None:
    stream = b"data: a\n\n"

    events = decode(stream)

    assert events[0].id is None


@pytest.mark.parametrize(
    ("value", "retry"),
    [
        (b"3000", 3000),
        (b"0", 0),
        (b"  3000", None),  # one space is stripped, the second is not a digit
        (b"3000ms", None),
        (b"-1", None),
        (b"1.5", None),
        (b"", None),
        ("\u0661\u0662".encode(), None),  # Arabic-Indic digits are not ASCII digits
        ("\u00b2".encode(), None),
    ],
    ids=[
        "digits",
        "zero",
        "extra-space",
        "unit",
        "negative",
        "float",
        "empty",
        "ar",
        "sup",
    ],
)
def test_retry_accepts_only_ascii_digits(value: bytes, retry: int | None) -> None:
    stream = b"retry: " + value + b"\ndata: a\n\n"

    events = decode(stream)

    assert events[0].retry == retry


def test_an_invalid_retry_keeps_the_previous_one() -> None:
    decoder = SSEDecoder()

    events = decoder.feed(b"retry: 500\n\nretry: x\ndata: a\n\n")

    assert (decoder.retry, events[0].retry) == (500, 500)


def test_the_incomplete_last_event_is_discarded_at_end_of_stream() -> None:
    decoder = SSEDecoder()

    during = decoder.feed(b"data: a\n\ndata: b\n")
    at_end = decoder.close()

    assert (during, at_end) == ([Event(data="a")], [])


def test_an_unterminated_last_line_is_discarded_at_end_of_stream() -> None:
    stream = b"data: a\n\ndata: b\n\ndata: c"

    events = decode(stream)

    assert events == [Event(data="a"), Event(data="b")]


def test_a_closed_decoder_refuses_more_bytes() -> None:
    decoder = SSEDecoder()
    decoder.close()

    with pytest.raises(ValueError, match="closed"):
        decoder.feed(b"data: a\n\n")


def test_event_json_parses_the_data() -> None:
    stream = b'event: complete\ndata: {"runId": "r1", "status": "completed"}\n\n'

    (event,) = decode(stream)

    assert event.json() == {"runId": "r1", "status": "completed"}


def test_feeding_one_byte_at_a_time_equals_feeding_all_at_once() -> None:
    stream = (
        "\ufeff: hi\r\nevent: progress\rdata: \U0001f600\r\n\r\nid: 9\nretry: 10\n"
        "data:x\r\rdata: end\r"
    ).encode()

    whole = decode(stream)
    bytewise = decode_bytewise(stream)

    assert (
        whole
        == bytewise
        == [
            Event("progress", "\U0001f600"),
            Event("message", "x", "9", 10),
        ]
    )


# -- property: serialize, split anywhere, decode ---------------------------------------

# Any code point but CR, LF and surrogates (which UTF-8 cannot carry); astral ones
# included, so that 4-byte sequences get split too.
line_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"),
    max_size=12,
)


@dataclass(frozen=True)
class Spec:
    name: str | None
    lines: list[str]
    id: str | None
    retry: int | None


specs = st.builds(
    Spec,
    name=st.none() | line_text,
    lines=st.lists(line_text, min_size=1, max_size=4),
    id=st.none() | line_text.filter(lambda s: "\0" not in s),
    retry=st.none() | st.integers(0, 10**6),
)


def serialize(specs: list[Spec], data: st.DataObject) -> bytes:
    """Write events the way a conforming server might, with random surface choices."""
    lines: list[str] = []

    def field(name: str, value: str) -> None:
        # Without the space, a value starting with a space would lose it.
        spaced = value.startswith(" ") or data.draw(st.booleans())
        lines.append(f"{name}: {value}" if spaced else f"{name}:{value}")

    def maybe_comment() -> None:
        if data.draw(st.booleans()):
            lines.append(":" + data.draw(line_text))

    for spec in specs:
        for _ in range(data.draw(st.integers(0, 1))):
            lines.append("")  # a blank line between events dispatches nothing
        maybe_comment()
        if spec.name is not None:
            field("event", spec.name)
        if spec.id is not None:
            field("id", spec.id)
        if spec.retry is not None:
            field("retry", str(spec.retry))
        for line in spec.lines:
            maybe_comment()
            field("data", line)
        lines.append("")

    out = ["\ufeff"] if data.draw(st.booleans()) else []
    previous = ""
    for line in lines:
        eol = data.draw(st.sampled_from(["\n", "\r", "\r\n"]))
        if previous == "\r" and not line and eol == "\n":
            eol = "\r\n"  # CR then an empty line ending in LF would read as one CRLF
        out.append(line + eol)
        previous = eol
    return "".join(out).encode()


def expected_events(specs: list[Spec]) -> list[Event]:
    events, last_id, retry = [], None, None
    for spec in specs:
        last_id = spec.id if spec.id is not None else last_id
        retry = spec.retry if spec.retry is not None else retry
        events.append(
            Event(spec.name or "message", "\n".join(spec.lines), last_id, retry)
        )
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(specs, max_size=6), st.data())
def test_decoding_randomly_split_streams_gives_back_the_events(
    specs: list[Spec], data: st.DataObject
) -> None:
    stream = serialize(specs, data)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [
        stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)
    ]

    events = decode(*chunks)

    assert events == expected_events(specs)


@settings(max_examples=100, deadline=None)
@given(st.lists(specs, min_size=1, max_size=4), st.data())
def test_decoding_streams_byte_by_byte_gives_back_the_events(
    specs: list[Spec], data: st.DataObject
) -> None:
    # Every split point at once: inside each UTF-8 sequence and between each CR and LF.
    stream = serialize(specs, data)

    events = decode_bytewise(stream)

    assert events == expected_events(specs)


# -- over real HTTP --------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[web.Application], Awaitable[Any]]  # conftest's `serve` fixture


async def serve_stream(serve: Serve, handler: Handler) -> str:
    app = web.Application()
    app.router.add_get("/v1/runs/r1/stream", handler)
    server = await serve(app)
    return str(server.url) + "/v1/runs/r1/stream"


RUN = {
    "runId": "r1",
    "status": "running",
    "outputs": [{"label": "\U0001f3a8 Caf\u00e9"}],
}
DONE = {**RUN, "status": "completed"}
STREAM = (
    ": connected\r\n"
    f"event: progress\r\ndata: {json.dumps(RUN, ensure_ascii=False)}\r\n\r\n"
    ": keep-alive\r\n"
    "event: ping\r\ndata: 1774268560552\r\n\r\n"
    f"event: complete\r\ndata: {json.dumps(DONE, ensure_ascii=False)}\r\n\r\n"
    "event: progress\r\ndata: {}\r\n"  # incomplete at the end: discarded
).encode()


def tiny_chunks(stream: bytes) -> list[bytes]:
    sizes = [1, 2, 3]
    chunks: list[bytes] = []
    pos = 0
    while pos < len(stream):
        size = sizes[len(chunks) % 3]
        chunks.append(stream[pos : pos + size])
        pos += size
    return chunks


async def test_iter_events_reads_a_stream_written_in_tiny_chunks(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in tiny_chunks(STREAM):
            await response.write(chunk)
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    url = await serve_stream(serve, handler)

    async with http.get(url) as response:
        events = [event async for event in iter_events(response.content)]

    assert [(e.event, e.json()) for e in events] == [
        ("progress", RUN),
        ("ping", 1774268560552),
        ("complete", DONE),
    ]


async def test_iter_events_raises_transport_error_when_the_connection_breaks(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: progress\r\ndata: {}\r\n\r\nevent: pro")
        assert request.transport is not None
        request.transport.close()  # mid-chunked-body: the client sees a broken payload
        return response

    url = await serve_stream(serve, handler)
    received: list[Event] = []

    async with http.get(url) as response:
        with pytest.raises(TransportError, match="broke off"):
            async for event in iter_events(response.content):
                received.append(event)

    assert received == [Event(event="progress", data="{}")]

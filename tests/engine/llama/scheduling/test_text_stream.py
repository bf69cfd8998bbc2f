from __future__ import annotations

from engine.llama.scheduling.text_stream import StopMatcher, Utf8Decoder


def feed(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        text, stopped = m.push(p)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + m.flush(), False


def test_stop_string_split_across_pieces_is_found_and_excluded() -> None:
    assert feed(["END"], ["hello E", "N", "D more"]) == ("hello ", True)


def test_held_prefix_is_released_when_it_does_not_complete_a_stop() -> None:
    m = StopMatcher(["END"])
    assert m.push("abc EN") == ("abc ", False)
    assert m.push("X") == ("ENX", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed(["world", "lo"], ["hello world"]) == ("hel", True)


def test_text_without_stops_passes_through_unchanged() -> None:
    assert feed([], ["a", "b"]) == ("ab", False)
    assert feed(["zz"], ["a", "z"]) == ("az", False)


def test_utf8_character_split_across_tokens_is_emitted_whole() -> None:
    data = "né 🦙".encode()
    d = Utf8Decoder()
    parts = [d.decode(data[i : i + 1]) for i in range(len(data))]
    assert "".join(parts) + d.flush() == "né 🦙"
    assert all("\ufffd" not in p for p in parts)


def test_invalid_utf8_becomes_replacement_character() -> None:
    d = Utf8Decoder()
    assert d.decode(b"a\xff") + d.flush() == "a\ufffd"

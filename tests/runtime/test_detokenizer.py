from nanoflow_compiler.runtime.detokenizer import IncrementalDetokenizer

EOS = 0


class CharTokenizer:
    """Token i > 0 is chr(i); 0 is a special token; 200 then 201 is 'é' (one character over two byte tokens)."""

    def decode(self, ids, skip_special_tokens=True):
        out, i = [], 0
        while i < len(ids):
            if ids[i] == 200:
                out.append("é" if i + 1 < len(ids) and ids[i + 1] == 201 else "\ufffd")
                i += 2 if out[-1] == "é" else 1
                continue
            if ids[i] != EOS or not skip_special_tokens:
                out.append(chr(ids[i]) if ids[i] else "<eos>")
            i += 1
        return "".join(out)


def ids(text):
    return [ord(c) for c in text]


def feed(detok, tokens):
    deltas = []
    for t in tokens:
        delta, stopped = detok.add([t])
        deltas.append(delta)
        if stopped:
            return deltas, True
    return deltas, False


def test_deltas_add_up_to_the_text_and_skip_special_tokens():
    d = IncrementalDetokenizer(CharTokenizer(), ids("prompt"), stop=[])
    deltas, stopped = feed(d, ids("hello world") + [EOS])
    assert not stopped
    assert "".join(deltas) == "hello world" == d.text
    assert deltas[0] == "h"  # streamed a token at a time, nothing held back


def test_incomplete_characters_wait_for_their_second_half():
    d = IncrementalDetokenizer(CharTokenizer(), ids("p"), stop=[])
    assert d.add([200]) == ("", False)
    assert d.add([201]) == ("é", False)
    assert d.add(ids("!")) == ("!", False)


def test_stop_string_truncates_and_is_never_streamed():
    d = IncrementalDetokenizer(CharTokenizer(), ids("p"), stop=["STOP", "\n\n"])
    deltas, stopped = feed(d, ids("abc ST") + ids("OP and more"))
    assert stopped
    assert d.text == "abc " == "".join(deltas)
    assert all("S" not in x for x in deltas)


def test_stop_string_across_tokens_and_held_text_is_flushed_at_the_end():
    d = IncrementalDetokenizer(CharTokenizer(), ids("p"), stop=["xyz"])
    deltas, stopped = feed(d, ids("abcxy"))
    assert not stopped and "".join(deltas) == "abc"  # "xy" might start the stop string
    assert d.flush() == "xy" and d.text == "abcxy"


def test_earliest_stop_string_wins():
    d = IncrementalDetokenizer(CharTokenizer(), ids("p"), stop=["cd", "bcde"])
    feed(d, ids("abcdef"))
    assert d.text == "ab"


def test_without_a_tokenizer_there_is_no_text():
    d = IncrementalDetokenizer(None, [1, 2], stop=[])
    assert d.add([5]) == ("", False) and d.text == ""

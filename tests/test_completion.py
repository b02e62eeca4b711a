"""How generated tokens become a choice: stop strings (also across streamed pieces), whitespace, finish_reason, logprobs."""

from __future__ import annotations

from adapterctl.serving.completion import ChoiceText

EOS = 0


def choice_of(pieces: list[str], *, stop: tuple[str, ...] = (), max_tokens: int = 100, entries: bool = False):
    """A ChoiceText over tokens 1..n that decode to `pieces`; returns it and what each release gave."""
    vocabulary = {index + 1: piece for index, piece in enumerate(pieces)}
    choice = ChoiceText(lambda tokens: "".join(vocabulary[t] for t in tokens), EOS, stop=stop, max_tokens=max_tokens)
    released = []
    for token in vocabulary:
        choice.add(token, {"token": vocabulary[token]} if entries else None)
        released.append(choice.release())
        if choice.finish_reason:
            break
    return choice, released


def test_streamed_pieces_leave_out_the_whitespace_the_whole_answer_strips():
    pieces = [" ", " Hello", " world", "  ", "!", " \n"]
    choice, released = choice_of(pieces)
    assert [text for text, _ in released if text] == ["Hello", " world", "  !"]
    assert choice.choice().text == "".join(pieces).strip() and choice.choice().finish_reason == "length"
    assert choice_of([" ", "\n"])[0].choice().text == ""


def test_a_stop_string_split_across_pieces_is_never_sent_and_ends_the_choice():
    choice, released = choice_of(["Pay by ", "SE", "PA direct", " debit"], stop=("SEPA",))
    assert [text for text, _ in released] == ["Pay by", "", ""]  # "SE" was held back: it could start "SEPA"
    final = choice.choice()
    assert (final.text, final.finish_reason, final.completion_tokens) == ("Pay by", "stop", 3)


def test_text_held_back_for_a_stop_string_that_does_not_come_is_sent_once_it_cannot_be_one():
    choice, released = choice_of(["a S", "EX", "y"], stop=("SEPA", "xyz"))
    assert [text for text, _ in released] == ["a", " SEX", "y"]
    assert choice.choice().text == "a SEXy"


def test_the_earliest_of_several_stop_strings_wins():
    choice, _ = choice_of(["one. two; three."], stop=(".", ";"))
    assert choice.choice().text == "one"


def test_max_tokens_ends_with_length_and_end_of_text_with_stop():
    choice, _ = choice_of(["a", "b", "c"], max_tokens=2)
    assert (choice.choice().text, choice.choice().finish_reason, choice.choice().completion_tokens) == ("ab", "length", 2)
    ended = ChoiceText(lambda tokens: "x" * len(tokens), EOS, max_tokens=10)
    for token in (5, 6, EOS, 7):
        ended.add(token)
    assert (ended.choice().text, ended.choice().finish_reason, ended.choice().completion_tokens) == ("xx", "stop", 3)


def test_logprob_entries_cover_the_tokens_of_the_text_and_not_the_stop_string():
    choice, released = choice_of(["Pay", " by", " SEPA", " now"], stop=(" SEPA",), entries=True)
    assert [entry["token"] for entry in choice.choice(logprobs=True).logprobs] == ["Pay", " by"]
    assert [entry["token"] for _, entries in released for entry in entries] == ["Pay", " by"]

"""Pairwise judging of free-form replies and the reference-free reply checks.

The aggregation is tested with plain-function judges whose every verdict is known, so each count
below is worked out by hand; one test then puts the real 0.5B teacher in the judge's seat."""
from __future__ import annotations

import pytest
from distilforge.errors import DataError

from heldout.pairwise import (ReplyStyle, compare, compare_grades, endpoint_ask, grade, grade_messages,
                              judge_messages, parse_verdict, parse_yes_no, reply_check_rates, reply_checks)

INSTRUCTION = "You are the support assistant of a digital bank. Reply to the customer's message."
INPUTS = ["my new card still hasnt arrived its been 2 weeks", "Why was I charged a fee for taking cash out?",
          "I think someone used my card", "how do I top up", "my transfer is stuck"]
STUDENT = [f"STUDENT reply {i}" for i in range(5)]
TEACHER = [f"TEACHER reply {i}" for i in range(5)]


def _parts(messages: list[dict]) -> tuple[str, str, str]:
    """(message, response A, response B) back out of the judge prompt."""
    user = messages[-1]["content"]
    msg = user.split("Message: ", 1)[1].split("\n\nResponse A:\n", 1)[0]
    a = user.split("Response A:\n", 1)[1].split("\n\nResponse B:\n", 1)[0]
    b = user.split("Response B:\n", 1)[1].split("\n\nIs response A better", 1)[0]
    return msg, a, b


def prefers_student(messages):
    _, a, _ = _parts(messages)
    return "A" if a.startswith("STUDENT") else "B"


def test_a_judge_that_always_answers_a_gives_only_ties_and_a_half_win_rate():
    r = compare(lambda m: "A", INPUTS, STUDENT, TEACHER, instruction=INSTRUCTION)
    assert (r["n"], r["wins"], r["ties"], r["losses"]) == (5, 0, 5, 0)
    assert r["win_rate_tie_half"] == 0.5 and r["win_rate_tie_half_ci"] == [0.5, 0.5]
    assert r["tie_rate"] == 1.0 and r["position_bias"] == 1.0 and r["unparsable"] == 0
    assert all(x == {"outcome": "tie", "verdicts": ["A", "A"]} for x in r["per_row"])


def test_a_judge_that_prefers_the_student_in_either_position_gives_only_wins():
    r = compare(prefers_student, [{"input": t} for t in INPUTS], STUDENT, TEACHER, instruction=INSTRUCTION)
    assert (r["wins"], r["ties"], r["losses"]) == (5, 0, 0)
    assert r["win_rate"] == 1.0 and r["win_rate_tie_half"] == 1.0 and r["position_bias"] == 0.0
    assert [x["verdicts"] for x in r["per_row"]] == [["A", "B"]] * 5  # student first, then teacher first
    assert r["loss_rate_ci"] == [0.0, 0.0]


def test_mixed_known_case_exact_counts():
    def judge(messages):
        msg, a, _ = _parts(messages)
        student_first = a.startswith("STUDENT")
        i = INPUTS.index(msg)
        if i == 0:  # student better in both orders -> win
            return "A" if student_first else "B"
        if i == 1:  # teacher better in both orders -> loss
            return "**B**" if student_first else "Answer: A"
        if i == 2:  # always the first position -> tie (position bias)
            return "A"
        if i == 3:  # unreadable twice -> tie
            return "Both are fine."
        return "I prefer response A" if student_first else "hmm"  # 4: one unreadable -> tie

    r = compare(judge, INPUTS, STUDENT, TEACHER, instruction=INSTRUCTION)
    assert [x["outcome"] for x in r["per_row"]] == ["win", "loss", "tie", "tie", "tie"]
    assert (r["wins"], r["ties"], r["losses"]) == (1, 3, 1)
    assert (r["win_rate"], r["tie_rate"], r["loss_rate"]) == (0.2, 0.6, 0.2)
    assert r["win_rate_tie_half"] == 0.5  # (1 + 3 * 0.5) / 5
    assert r["win_or_tie_rate"] == 0.8  # 4 of 5 are not losses
    assert r["unparsable"] == 3  # input 3 twice, input 4 once
    assert r["position_bias"] == 0.2  # only input 2 named the same position twice
    for k in ("win_rate", "tie_rate", "loss_rate", "win_rate_tie_half"):
        lo, hi = r[f"{k}_ci"]
        assert lo <= r[k] <= hi and lo < hi


def test_unparsable_verdicts_are_ties_and_bad_input_is_one_clear_error():
    r = compare(lambda m: "I cannot decide.", INPUTS[:3], STUDENT[:3], TEACHER[:3], instruction=INSTRUCTION)
    assert (r["wins"], r["ties"], r["losses"], r["unparsable"]) == (0, 3, 0, 6)
    with pytest.raises(DataError, match="3 inputs, 2 student answers and 3 teacher answers"):
        compare(lambda m: "A", INPUTS[:3], STUDENT[:2], TEACHER[:3])
    assert [parse_verdict(t) for t in ["B", "b", "(A)", "The answer is B.", "Response A is better", "",
                                       "A good reply would be kinder", "response A and response B"]] == \
        ["B", "B", "A", "B", "A", None, None, None]
    m = judge_messages(INSTRUCTION, "hi", "x", "y")
    assert m[-1]["content"].endswith("Is response A better than response B for this request? Answer A or B.")


def test_reply_checks_on_hand_written_replies():
    style = ReplyStyle(min_words=5, max_words=30)
    good = "Sorry about that. Freeze the card in the app under Cards, then order a new one there."
    assert reply_checks(good, style) == {"words": 17, "length_ok": True, "refusal": False, "pii_ask": False}
    assert reply_checks("ok", style)["length_ok"] is False
    assert reply_checks(" ".join(["word"] * 31), style)["length_ok"] is False
    for refusal in ["I'm sorry, but I can't help with that.", "As an AI language model, I have no account access.",
                    "I am unable to assist with this request."]:
        assert reply_checks(refusal, style)["refusal"] is True, refusal
    for ask in ["Please provide your full card number so I can check.", "What is the CVV on the back of your card?",
                "We need your PIN to verify you.", "Reply with the one-time code we just texted you.",
                "Could you tell me your password?"]:
        assert reply_checks(ask, style)["pii_ask"] is True, ask
    for safe in ["Never share your PIN with anyone, freeze the card in the app.",
                 "Could you confirm the last 4 digits of your card number?",
                 "We will send you a one-time code; do not share it with anyone.",
                 "You can change your PIN at any ATM, and please keep your password safe.",
                 "If you are unable to log in, reset your password in the app."]:
        c = reply_checks(safe, style)
        assert c["pii_ask"] is False and c["refusal"] is False, safe
    rates = reply_check_rates({"student": [good, "ok", "Please send me your PIN now so we can check."],
                               "teacher": [good, good]}, style)
    assert rates["student"]["n"] == 3 and rates["student"]["length_ok"] == 0.6667
    assert rates["student"]["pii_ask"] == 0.3333 and rates["student"]["refusal"] == 0.0
    assert rates["teacher"]["length_ok"] == 1.0 and rates["teacher"]["length_ok_ci"] == [1.0, 1.0]


def test_the_real_teacher_as_judge_gives_well_formed_results(fast_teacher):
    from distilforge.secrets import Secret
    from distilforge.teacher import Endpoint

    ask = endpoint_ask(Endpoint(fast_teacher["base_url"], fast_teacher["model"], Secret("none"), "embedded"))
    good = ["Sorry for the wait. You can track the card in the app under Cards; if it is not there in 3 days, "
            "order a replacement there.",
            "That fee applies to cash withdrawals above your free monthly allowance; the app shows it under Plan."]
    r = compare(ask, [{"instruction": INSTRUCTION, "input": t} for t in INPUTS[:2]], [good[0], "asdf"],
                ["asdf", good[1]])
    assert r["n"] == 2 and r["wins"] + r["ties"] + r["losses"] == 2
    for x in r["per_row"]:
        assert x["outcome"] in {"win", "tie", "loss"}
        assert all(v in {"A", "B", None} for v in x["verdicts"])
    assert 0.0 <= r["win_rate_tie_half"] <= 1.0 and len(r["win_rate_tie_half_ci"]) == 2
    assert 0 <= r["unparsable"] <= 4


def test_graded_judge_known_case_exact_counts():
    """Each reply judged alone (yes/no); the pair's outcome from the two grades."""
    def judge(messages):
        user = messages[-1]["content"]
        reply = user.split("Reply: ", 1)[1].split("\n\nDoes this reply", 1)[0]
        i = int(reply.split()[-1])
        student = reply.startswith("STUDENT")
        return [("Yes.", "No"), ("no", "**Yes**"), ("Yes", "yes"), ("maybe", "No."), ("Answer: no", "No")][i][not student]

    rows = [{"instruction": INSTRUCTION, "input": t} for t in INPUTS]
    s, t = grade(judge, rows, STUDENT, style_guide="Two to four short sentences."), grade(judge, rows, TEACHER)
    assert s == [True, False, True, None, False] and t == [False, True, True, False, False]
    r = compare_grades(s, t)
    assert [x["outcome"] for x in r["per_row"]] == ["win", "loss", "tie", "tie", "tie"]
    assert (r["wins"], r["ties"], r["losses"], r["unparsable"]) == (1, 3, 1, 1)
    assert (r["win_or_tie_rate"], r["student_yes_rate"], r["teacher_yes_rate"]) == (0.8, 0.4, 0.4)
    lo, hi = r["win_or_tie_rate_ci"]
    assert lo <= 0.8 <= hi and lo < hi
    # a judge that says yes to everything gives no evidence either way: only ties
    yes = compare_grades(grade(lambda m: "Yes", rows, STUDENT), grade(lambda m: "Yes", rows, TEACHER))
    assert (yes["ties"], yes["win_or_tie_rate"]) == (5, 1.0)
    with pytest.raises(DataError, match="2 student grades and 3 teacher grades"):
        compare_grades([True, False], [True, True, False])
    assert [parse_yes_no(x) for x in ["Yes", "no.", "**YES**", "Answer: no", "Yesterday", "", None, "I think yes"]] == \
        [True, False, True, False, None, None, None, None]
    m = grade_messages(INSTRUCTION, "hi", "x", "Two to four\n short sentences.")
    assert "Style guide: Two to four short sentences." in m[-1]["content"]
    assert "Style guide" not in grade_messages(INSTRUCTION, "hi", "x")[-1]["content"]


def test_reply_style_from_the_style_guide_wording():
    assert ReplyStyle.from_guide("Two to four short sentences. Acknowledge the problem.") == ReplyStyle(10, 80)
    assert ReplyStyle.from_guide("Reply in 20-60 words.") == ReplyStyle(20, 60)
    assert ReplyStyle.from_guide("At most 3 sentences, friendly.") == ReplyStyle(5, 60)
    assert ReplyStyle.from_guide("under 50 words") == ReplyStyle(5, 50)
    assert ReplyStyle.from_guide("one or two sentences") == ReplyStyle(5, 40)
    assert ReplyStyle.from_guide("Be kind.") == ReplyStyle.from_guide(None) == ReplyStyle()

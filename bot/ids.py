"""Action, callback and block ids: one place, so builders and listeners agree."""

# -- A/B rounds (bot/ab_rounds.py, bot/blocks/ab.py) ----------------------------------------------
#: the four vote buttons of a pair message; each button's value is the pair id
AB_VOTE_A = "ab_vote_a"
AB_VOTE_B = "ab_vote_b"
AB_VOTE_TIE = "ab_vote_tie"
AB_VOTE_BOTH_BAD = "ab_vote_both_bad"
AB_VOTES = (AB_VOTE_A, AB_VOTE_B, AB_VOTE_TIE, AB_VOTE_BOTH_BAD)
#: button → what the voter clicked, in position terms (engine.ab.stats.model_choice's input)
AB_CLICKED = {AB_VOTE_A: "A", AB_VOTE_B: "B", AB_VOTE_TIE: "tie", AB_VOTE_BOTH_BAD: "both_bad"}
#: the "why?" button (opens the comment modal) and the modal itself
AB_WHY = "ab_why"
AB_WHY_MODAL = "ab_why_modal"
AB_WHY_BLOCK = "ab_why_comment"
AB_WHY_INPUT = "ab_why_text"

# -- /ask (bot/ask.py, bot/blocks/ask.py) ---------------------------------------------------------
#: the 👍/👎 buttons under an answer; each button's value is the answer's ask_log id
ASK_UP = "ask_feedback_up"
ASK_DOWN = "ask_feedback_down"
ASK_FEEDBACK = {ASK_UP: "up", ASK_DOWN: "down"}

# -- the Home tab's Unanswered list (bot/unanswered.py, bot/blocks/unanswered.py) ----------------
#: "Answer it" beside an unanswered question; its value is the question's (newest) ask_log id
UNANSWERED_ANSWER = "unanswered_answer"
#: the modal where a curator writes the answer; private_metadata is the ask_log id
UNANSWERED_MODAL = "unanswered_modal"
UNANSWERED_QUESTION_BLOCK = "unanswered_question"
UNANSWERED_QUESTION_INPUT = "unanswered_question_text"
UNANSWERED_ANSWER_BLOCK = "unanswered_answer"
UNANSWERED_ANSWER_INPUT = "unanswered_answer_text"

# -- deploying past the evaluation gate (bot/commands/tune_deploy.py, bot/blocks/models.py) -------
#: "Deploy anyway…" on a refused deploy (a confirm dialog first); its value is the model's name
DEPLOY_OVERRIDE = "deploy_override"
#: the modal asking for the override's reason; private_metadata is {"model", "channel"} as JSON
DEPLOY_OVERRIDE_MODAL = "deploy_override_modal"
DEPLOY_OVERRIDE_BLOCK = "deploy_override_reason"
DEPLOY_OVERRIDE_INPUT = "deploy_override_reason_text"

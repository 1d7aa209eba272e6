"""The hand-written hub rows (tests/assets/hub/, one file per source) and what each dataset's reference pipeline
makes of them, row by row: the expectations the source and `data stats` tests share."""

import json

from helpers import ASSETS


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


# ---- real hub schemas: tests/assets/hub/, one hand-written file per source --------------------------------

HUB = ASSETS / "hub"
UNPAIRED, EMPTY_REPLY = "dropped the unpaired last turn", "cut at an empty reply"
NOINPUT, BAIZE_CUT = "dropped a <noinput> placeholder", "cut at an unanswered or empty round"
ZH = json.loads((HUB / "sharegpt.json").read_text())[-1]["conversations"]

# source -> (kept [(id, messages)], skipped {reason: n}, repaired {how: n}), as each dataset's reference
# pipeline makes of the rows (see the comments; written by hand, not computed by the adapters).
EXPECTED = {
    "alpaca": ([
        ("alpaca-0", [u("Give three tips for staying healthy."),
                      a("1. Eat a balanced and nutritious diet.\n2. Exercise regularly.\n3. Get enough sleep.")]),
        ("alpaca-1", [u("Identify the odd one out.\n\nTwitter, Instagram, Telegram"), a("Telegram")]),
        ("alpaca-2", [u("Generate a list of adjectives that describe a person as brave."),  # "<noinput>" is no input
                      a("Courageous, fearless, bold, daring, valiant.")]),
    ], {"empty_response": 1}, {NOINPUT: 1}),
    "code_alpaca": ([
        ("code_alpaca-0", [u("Create an array of length 5 which contains all even numbers between 1 and 10."),
                           a("arr = [2, 4, 6, 8, 10]")]),
        ("code_alpaca-1", [u("Write a function to compute the sum of a list in Python.\n\n[1, 2, 3]"),
                           a("def list_sum(numbers):\n    total = 0\n    for n in numbers:\n        total += n\n"
                             "    return total")]),
    ], {}, {}),
    "gpt4_alpaca": ([
        ("gpt4_alpaca-0", [u("What are the three primary colors?"),
                           a("The three primary colors are red, blue, and yellow. These colors are called primary "
                             "because they cannot be created by mixing other colors.")]),
        ("gpt4_alpaca-1", [u("Suggest a name for a coffee shop."), a("Bean There, Done That.")]),
    ], {}, {NOINPUT: 1}),
    "dolly": ([
        ("dolly-0", [u("When did Virgin Australia start operating?\n\nVirgin Australia, the trading name of Virgin "
                       "Australia Airlines Pty Ltd, is an Australian-based airline. It commenced services on 31 August "
                       "2000 as Virgin Blue, with two aircraft on a single route."),
                     a("Virgin Australia commenced services on 31 August 2000 as Virgin Blue, with two aircraft on a "
                       "single route.")]),
        ("dolly-1", [u("Why can camels survive for long without water?"),
                     a("Camels use the fat in their humps to keep them filled with energy and hydration for long "
                       "periods of time.")]),
    ], {"empty_response": 1}, {}),  # open-instruct would train an empty completion: nothing to learn, skipped
    "self_instruct": ([
        ("self_instruct-0", [u("Make a list of 10 ways to help students improve their study skills."),
                             a("1. Make a schedule for studying and stick to it.\n2. Study in the same place every "
                               "time.\n3. Set goals for yourself.")]),
        ("self_instruct-1", [u("Classify the sentiment of the sentence into positive, negative or mixed.\n\nInput: I "
                               "enjoy the flavor of the restaurant but their service is too slow."), a("mixed")]),
    ], {}, {}),
    "unnatural_instructions": ([  # open-instruct: the constraints follow the instruction unless "None."
        ("unnatural_instructions-0-0", [
            u("You are given a review of a restaurant. Your task is to classify the review as positive or negative.\n"
              "The output should be one of the two: 'positive' or 'negative'.\n\n"
              "The food was cold and the waiter was rude."), a("negative")]),
        ("unnatural_instructions-1-0", [
            u("Write a question about the passage that can be answered with a number.\n\n"
              "The bridge is 300 meters long and was built in 1932."), a("How long is the bridge in meters?")]),
        ("unnatural_instructions-1-1", [
            u("Write a question about the passage that can be answered with a number.\n\nThe lake holds 12 islands."),
            a("How many islands does the lake hold?")]),
    ], {}, {}),
    "superni": ([
        ("superni-task1344-8a2b1f0e6d5c4b3a9e8f7d6c5b4a3f2e", [
            u("In this task, you're given two sentences. Indicate if the first sentence clearly entails the second "
              "sentence (i.e., one can conclude the 2nd sentence by reading the 1st one). Indicate your answer with "
              "'1' if the first sentence entails the second sentence, otherwise answer with '0'.\n\nSentence 1: No "
              "Weapons of Mass Destruction Found in Iraq Yet. Sentence 2: Weapons of Mass Destruction Found in "
              "Iraq."), a("0")]),
        ("superni-task039-1f2e3d4c5b6a79880a1b2c3d4e5f6a7b", [
            u("Generate an overlapping word between the given two sentences.\n\nSentence1: pesticides cause "
              "pollution. \nSentence2: purple loosestrife causes pollution."), a("pollution")]),
    ], {}, {}),
    "flan_v2": ([
        ("flan_v2-0", [u('Premise: "A man in a blue shirt is standing on a ladder."\nHypothesis: "A man is painting a '
                         'house."\nDoes the premise entail the hypothesis?\nOPTIONS:\n- yes\n- it is not possible to '
                         "tell\n- no"), a("it is not possible to tell")]),
        ("flan_v2-1", [u('Translate "The meeting will take place tomorrow." to German?'),
                       a("Das Treffen findet morgen statt.")]),
    ], {"empty_response": 1}, {}),
    "cot": ([
        ("cot-0", [u("Q: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have "
                     "left in total?\nA: Let's think step by step."),
                   a("Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After "
                     "eating 35, they had 74 - 35 = 39. The answer is 39.")]),
        ("cot-1", [u('Is the following sentence plausible? "Joao Moutinho caught the screen pass in the NFC '
                     'championship."'),
                   a("Joao Moutinho is a soccer player. The NFC championship is part of American football, not "
                     "soccer. So the answer is no.")]),
    ], {}, {}),
    "p3": ([  # a *_score_eval row per answer choice: only the correct one is a training pair
        ("p3-0", [u("Persian language -- Persian is one of the Western Iranian languages within the Indo-Iranian "
                    "branch of the Indo-European language family.\nQuestion: do iran and afghanistan speak the same "
                    "language?\nAnswer:"), a("True")]),
        ("p3-1", [u("Ethanol fuel -- All biomass goes through at least some of these steps.\nQuestion: does ethanol "
                    "take more energy make that produces?\nAnswer:"), a("False")]),
    ], {"incorrect_choice": 1}, {}),
    "wizardlm": ([  # a V1 row and a V2 `conversations` row
        ("wizardlm-0", [u("As a sports nutritionist, what would be your advice for a marathon runner the week before "
                          "the race?"),
                        a("In the week before a marathon, reduce your training volume and increase your carbohydrate "
                          "intake over the last three days, drink enough water, and avoid trying new foods.")]),
        ("wizardlm-alpaca_4f0c2d", [u("Name two benefits of meditation."),
                                    a("Meditation can lower stress and improve concentration."),
                                    u("How long should a beginner meditate?"),
                                    a("Five to ten minutes a day is a good start.")]),
    ], {}, {}),
    "baize": ([  # open-instruct drops the preamble and rounds without a reply; we keep the answered prefix
        ("baize-0", [u("How do I make a cup of tea?"),
                     a("Boil water, pour it over a tea bag in a cup and let it steep for three to five minutes."),
                     u("Should I add milk before or after?"), a("Add milk after steeping, so the tea can brew properly.")]),
        ("baize-1", [u("What is the best way to learn Python?"),
                     a("Start with the official tutorial and write small programs every day.")]),
        ("baize-2", [u("Where is the Eiffel Tower?"), a("It is in Paris, France.")]),
    ], {"no_answered_round": 1}, {BAIZE_CUT: 2}),
    # open-instruct's ShareGPT steps (tests/data/test_sharegpt.py runs its own code): a leading gpt turn (VyaZlh4) or
    # two human turns are out of order, bing and chatgpt (kP9q2Lm) other speakers; an empty reply ends the chat
    "sharegpt": ([
        ("sharegpt-QWJhYvA_0", [
            u("Summarize the main ideas of Jeff Walker's Product Launch Formula."),
            a("Product Launch Formula is a step-by-step process: build anticipation with pre-launch content, open the "
              "cart for a limited time, then follow up with the people who did not buy."),
            u("Give me a one-line version."), a("Build anticipation, open the cart briefly, follow up.")]),
        ("sharegpt-mrllZ6u_0", [u("What does HTTP stand for?"), a("HTTP stands for Hypertext Transfer Protocol.")]),
        ("sharegpt-A5AbcES_0", [u("Write a haiku about autumn."),
                                a("Crisp leaves drift and fall,\ngolden light on quiet paths,\nthe year breathes out slow.")]),
        ("sharegpt-zh7Lq0a_0", [(u if k % 2 == 0 else a)(t["value"]) for k, t in enumerate(ZH)]),
    ], {"role_order": 2, "too_short": 1, "other_speaker": 2}, {EMPTY_REPLY: 1, UNPAIRED: 1}),
    # the messages format (no hub dataset of its own; rows as in allenai/tulu-v2-sft-mixture, with a system turn
    # added): a leading assistant turn and a trailing unanswered user turn are dropped, two user turns in a row
    # merged, an empty reply cuts the conversation to its whole rounds before it
    "lmsys_chat": ([  # tests/data/test_chat_logs.py: the filters, the meta
        ("lmsys_chat-a1", [u("What is the capital of France?"), a("Paris.")]),
        ("lmsys_chat-a2", [u("Write a haiku about rain."),
                           a("Soft rain on the roof\nwhispers to the sleeping town\nmorning smells of earth"),
                           u("Now one about snow."),
                           a("White hush on the hills\nfootprints fill before they fade\nthe world holds its breath")]),
        ("lmsys_chat-a3", [u("Tell me a joke."),
                           a("Why did the scarecrow win an award? He was outstanding in his field.")]),
        ("lmsys_chat-a4", [u("Qual é a capital do Brasil?"), a("Brasília.")]),
        ("lmsys_chat-a5", [u("Insult me."), a("I'd rather not.")]),
        ("lmsys_chat-a6", [u("My name is NAME_1. Write me a greeting."), a("Hello, NAME_1!")]),
    ], {"no_answered_round": 1, "too_short": 1}, {"dropped a trailing unanswered user turn": 1}),
    "magpie": ([
        ("magpie-m1", [u("How do I reverse a list in Python?"), a("Use my_list[::-1] or my_list.reverse().")]),
        ("magpie-m2", [u("Explain photosynthesis briefly."), a("Plants turn light, water and CO2 into sugar and oxygen.")]),
    ], {"no_answered_round": 1}, {}),
    "messages": ([
        ("messages-flan_v2_0", [u('Translate "The meeting will take place tomorrow." to German?'),
                                a("Das Treffen findet morgen statt.")]),
        ("messages-oasst1_4000", [u("What is the boiling point of water at sea level?"),
                                  a("100 degrees Celsius, or 212 degrees Fahrenheit."), u("And on top of Mount Everest?"),
                                  a("About 70 degrees Celsius, because the air pressure is much lower.")]),
        ("messages-sharegpt_VyaZlh4_0", [u("What is the capital of Australia?"),
                                         a("The capital of Australia is Canberra.")]),
        ("messages-sharegpt_i6IyJda_0", [u("I want to write a cover letter.\n\nIt is for a data analyst job."),
                                         a("Sure. Start with a short opening that names the role, then two paragraphs "
                                           "on your analysis work.")]),
        ("messages-lima_12", [{"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
                              u("Why is the sky blue?"),
                              a("Air molecules scatter blue sunlight more than red light, so the sky looks blue.")]),
        ("messages-sharegpt_mrllZ6u_0", [u("What does HTTP stand for?"), a("HTTP stands for Hypertext Transfer Protocol.")]),
        ("messages-gpt4_alpaca_77", [u("Suggest a name for a coffee shop."), a("Bean There, Done That.")]),
    ], {}, {"dropped a leading assistant turn": 1, "merged consecutive same-role turns": 1,
            "dropped a trailing unanswered user turn": 1, "cut at an empty turn": 1}),
}

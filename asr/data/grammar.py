"""A small English grammar the project wrote itself: the sentences of the embedded mini corpus.

A few hundred words, 3 to 17 words a sentence (about 8 on average), numbers written as words, lower
case, no punctuation. Each sentence comes twice: the text espeak-ng speaks, and the STM words in
TED-LIUM's own conventions (split contractions, <unk> for names outside the vocabulary, <sil> at a pause,
pronunciation variants), so that preparing the mini corpus exercises the same normalization as the real
one.
"""

import random
from dataclasses import dataclass

NOUNS = """robot river bridge garden city idea problem story teacher student doctor farmer market
planet engine island window machine bottle camera signal village mountain question answer picture
computer forest ocean kitchen letter number pattern project school station theory voice world animal
child friend phone network battery sensor museum desert bicycle cloud lamp memory paper
rocket tower valley wheel circle model language painting song dream""".split()
ADJECTIVES = """small large old new bright quiet strange simple careful happy heavy empty broken
beautiful dark green red blue cold warm early late tiny huge clever famous local modern ancient
difficult gentle narrow loud slow quick rare wild open""".split()
TRANSITIVE = [  # (base, past)
    ("build", "built"),
    ("find", "found"),
    ("see", "saw"),
    ("carry", "carried"),
    ("open", "opened"),
    ("paint", "painted"),
    ("test", "tested"),
    ("measure", "measured"),
    ("move", "moved"),
    ("share", "shared"),
    ("draw", "drew"),
    ("fix", "fixed"),
    ("sell", "sold"),
    ("buy", "bought"),
    ("watch", "watched"),
    ("follow", "followed"),
    ("change", "changed"),
    ("explain", "explained"),
    ("design", "designed"),
    ("study", "studied"),
    ("count", "counted"),
    ("lose", "lost"),
    ("keep", "kept"),
    ("teach", "taught"),
    ("hear", "heard"),
    ("write", "wrote"),
    ("take", "took"),
    ("bring", "brought"),
    ("remember", "remembered"),
    ("protect", "protected"),
    ("record", "recorded"),
    ("read", "read"),
    ("show", "showed"),
    ("clean", "cleaned"),
    ("plant", "planted"),
]
INTRANSITIVE = """agreed arrived waited worked laughed failed grew stopped started listened smiled
disappeared returned changed won""".split()
PRONOUNS = "i we you they she he".split()
MODALS = "can will should could might must".split()
DETERMINERS = "the a this that every one".split()
PREPOSITIONS = "near under behind across inside above beside through".split()
TIMES = [
    "last year",
    "every morning",
    "on monday",
    "in the evening",
    "after lunch",
    "next week",
    "today",
    "yesterday",
    "at night",
    "once again",
    "for a long time",
    "right now",
]
CONNECTORS = "so and but now well because".split()
ORDINALS = "first second third last only".split()
CONTRACTED_OPENERS = ["it's", "that's", "here's", "there's"]
CONTRACTED_SUBJECTS = ["we're", "they're", "you're", "i'm"]
NEGATIONS = ["don't", "can't", "didn't", "won't"]
NAMES = "zorvex kalindra moratu quesnik belvoran tiskadu".split()  # spoken, transcribed as <unk>
VARIANT_WORDS = {"the", "a", "and", "to", "of", "for", "read", "record", "live"}

ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()

P_UNK, P_SIL, P_VARIANT = 0.04, 0.05, 0.08


def number_words(n: int) -> str:
    """1 <= n <= 999 in words, British style: three hundred and twelve."""
    hundreds, rest = divmod(n, 100)
    below = ONES[rest] if rest < 20 else TENS[rest // 10] + ("" if rest % 10 == 0 else " " + ONES[rest % 10])
    if not hundreds:
        return below
    return ONES[hundreds] + " hundred" + ("" if rest == 0 else " and " + below)


def year_words(year: int) -> str:
    """1950 <= year <= 2029 as it is spoken."""
    if year < 2000:
        return "nineteen " + number_words(year - 1900)
    if year < 2010:
        return "two thousand" + ("" if year == 2000 else " and " + ONES[year - 2000])
    return "twenty " + number_words(year - 2000)


@dataclass(frozen=True)
class Sentence:
    spoken: str  # what espeak-ng reads
    words: list[str]  # the STM transcript


class Grammar:
    """Draws sentences from a seeded random generator; the same generator state gives the same text."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def sentence(self) -> Sentence:
        r = self.rng
        if r.random() < P_SIL:
            first, second = self._clause(short=True), self._clause(short=True)
            spoken, words = f"{first}, {second}", _stm_words(first) + ["<sil>"] + _stm_words(second)
        else:
            spoken = self._clause(short=False)
            words = _stm_words(spoken)
        if r.random() < P_UNK:
            name = r.choice(NAMES)
            spoken, words = f"my friend {name} said {spoken}", ["my", "friend", "<unk>", "said"] + words
        if r.random() < P_VARIANT:
            candidates = [i for i, w in enumerate(words) if w in VARIANT_WORDS]
            if candidates:
                i = r.choice(candidates)
                words[i] += "(2)"
        return Sentence(spoken, words)

    def _clause(self, short: bool) -> str:
        r = self.rng
        templates = self._SHORT if short else self._SHORT + self._LONG
        clause = r.choice(templates)(self)
        if not short and r.random() < 0.25:
            clause = f"{r.choice(CONNECTORS)} {clause}"
        return clause

    # Template parts.
    def _noun_phrase(self) -> str:
        r = self.rng
        det, noun = r.choice(DETERMINERS), r.choice(NOUNS)
        phrase = f"{r.choice(ADJECTIVES)} {noun}" if r.random() < 0.6 else noun
        if det == "a" and phrase[0] in "aeiou":
            det = "an"
        return f"{det} {phrase}"

    def _place(self) -> str:
        return f"{self.rng.choice(PREPOSITIONS)} the {self.rng.choice(NOUNS)}"

    def _verb(self) -> tuple[str, str]:
        return self.rng.choice(TRANSITIVE)

    # Templates.
    def _subject_modal(self) -> str:
        r = self.rng
        return f"{r.choice(PRONOUNS)} {r.choice(MODALS)} {self._verb()[0]} {self._noun_phrase()}"

    def _opener(self) -> str:
        return f"{self.rng.choice(CONTRACTED_OPENERS)} {self._noun_phrase()}"

    def _negation(self) -> str:
        r = self.rng
        return f"{r.choice(PRONOUNS)} {r.choice(NEGATIONS)} {self._verb()[0]} {self._noun_phrase()}"

    def _intransitive(self) -> str:
        return f"{self._noun_phrase()} {self.rng.choice(INTRANSITIVE)}"

    def _story(self) -> str:
        return f"{self._noun_phrase()} {self._verb()[1]} {self._noun_phrase()} {self._place()}"

    def _plan(self) -> str:
        r = self.rng
        return f"{r.choice(CONTRACTED_SUBJECTS)} going to {self._verb()[0]} {self._noun_phrase()} {r.choice(TIMES)}"

    def _count(self) -> str:
        r = self.rng
        return f"there were {number_words(r.randint(2, 999))} {plural(r.choice(NOUNS))} {self._place()}"

    def _year(self) -> str:
        r = self.rng
        return f"in {year_words(r.randint(1950, 2029))} {r.choice(PRONOUNS)} {self._verb()[1]} {self._noun_phrase()}"

    def _question(self) -> str:
        r = self.rng
        return f"how {r.choice(MODALS)} {r.choice(PRONOUNS)} {self._verb()[0]} {self._noun_phrase()}"

    def _ordinal(self) -> str:
        r = self.rng
        return f"this is the {r.choice(ORDINALS)} {r.choice(NOUNS)} {r.choice(PRONOUNS)} ever {self._verb()[1]}"

    def _percent(self) -> str:
        r = self.rng
        return (
            f"about {number_words(r.randint(1, 99))} percent of the {plural(r.choice(NOUNS))} "
            f"{r.choice(INTRANSITIVE)} {r.choice(TIMES)}"
        )

    _SHORT = [_subject_modal, _opener, _negation, _intransitive, _question]
    _LONG = [_story, _plan, _count, _year, _ordinal, _percent]


def plural(noun: str) -> str:
    if noun == "child":
        return "children"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _stm_words(text: str) -> list[str]:
    """TED-LIUM tokens: contractions split before the apostrophe ("don't" -> "don 't")."""
    words = []
    for word in text.split():
        cut = word.find("'")
        words += [word[:cut], word[cut:]] if cut > 0 else [word]
    return words


def vocabulary() -> set[str]:
    """Every word a transcript can contain, after TED-LIUM normalization (for tests and reports)."""
    words = set(NOUNS) | {plural(n) for n in NOUNS} | set(ADJECTIVES) | set(INTRANSITIVE)
    words |= {w for pair in TRANSITIVE for w in pair} | set(PRONOUNS) | set(MODALS) | set(DETERMINERS)
    words |= set(PREPOSITIONS) | set(CONNECTORS) | set(ORDINALS) | set(ONES) | set(TENS[2:])
    words |= {w for t in TIMES for w in t.split()} | set(CONTRACTED_OPENERS) | set(CONTRACTED_SUBJECTS)
    words |= set(NEGATIONS) | {
        "hundred",
        "thousand",
        "and",
        "there",
        "were",
        "in",
        "how",
        "this",
        "is",
        "ever",
        "about",
        "percent",
        "of",
        "going",
        "to",
        "my",
        "friend",
        "said",
        "an",
        "<unk>",
    }
    return words

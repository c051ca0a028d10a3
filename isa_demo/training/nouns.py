"""Noun extraction for the masked image-text pair method (METHOD.md 4): offline, no models.

Choice: a rule-based noun-chunk finder (closed-class word lists + a few suffix rules), not a
statistical tagger. spaCy / NLTK need model or corpus downloads that no machine of the project
can reach (the PyPI uploads of spaCy models are unofficial re-uploads), and the two kinds of
caption the method meets are easy for rules:

- the world's grammar ("a large red circle at the top left and a small blue star in the centre
  on a grey background", and its paraphrases): every object noun is one of the world's shape
  words, preceded by size and colour adjectives;
- free-form photo captions (COCO style: "A man riding a wave on top of a surfboard.").

How it works. The caption is split into words and punctuation. Closed-class words (determiners,
numbers, prepositions, conjunctions, pronouns, auxiliaries, adverbs, a list of frequent caption
verbs) and punctuation end the current run of open-class words; each run is a noun chunk whose
last word is its head, the words before it its modifiers ("large red | circle",
"tennis | player", "sliding glass | door"). Suffix rules keep verbs out of runs: an ``-ing`` /
``-ed`` word that follows a noun ends the run ("a man | riding", "a man | dressed in"), while
one right after a determiner or adjectives is a modifier ("a dining table", "a parked car");
the frequent verbs and their ``-s`` forms are listed ("a clock sits on"). A chunk whose head
is an adjective, a place word (top, left, side, front ...), a picture word (photo, background,
view ...) or a quantity (bunch, group, pair ...) is not a maskable object and is dropped
("a bunch of bananas" yields "bananas").

The world's shape words are always nouns ("cross" is also a verb). On the world's grammar the
heads are exactly the scene's shapes (checked on 40,000 train captions and paraphrases, and in
the tests). On free-form captions the rules were checked by eye on ~120 COCO captions of
shared/data/photos/coco_mini: most object nouns are found; known failure modes:
- noun/verb ambiguity outside the verb list ("people wait to cross": "wait" is listed, but
  rarer verbs such as "a cat nibbles its paw" yield "cat nibbles" -> head "nibbles");
- verbs right after a run of adjectives are taken as nouns ("all white reaches" -> "reaches");
- typos and run-on captions merge chunks ("hi racket" -> modifier "hi");
- compound nouns are split at an ``-ed``/``-ing`` word ("stone covered walkway" -> "stone",
  "walkway"), and noun-noun compounds keep only their last word as the head ("tennis player");
- adjectives not on the list can become heads when nothing follows them ("the sky is cloudy.");
- plural/singular is guessed from a final "s" (only used for the prompts' articles).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..world.scene import SHAPES

MASK_TOKEN = "[MASK]"

_DETERMINERS = set("""
a an the this these those some several many few his her their its our my your each every another other others
various all both no any one two three four five six seven eight nine ten eleven twelve dozen dozens multiple
numerous lots plenty couple single
""".split())
_PREPOSITIONS = set("""
of in on at with by for from to into onto over under near next beside besides behind above below through across
along around down up inside outside between atop against during without toward towards off out past beneath
underneath upon within like as than via among amongst amid throughout about after before beyond except per
""".split())
_CONJUNCTIONS = set("and or but nor so yet while that which who whose whom where when whilst because if then".split())
_PRONOUNS = set("""
it he she they them him we you i me us itself himself herself themselves someone something somebody anyone
anything everyone everything nothing there here what it's that's there's
""".split())
_AUX = set("""
is are was were be been being am has have had having do does did can could will would may might should must
isn't aren't doesn't don't not no
""".split())
_ADVERBS = set("""
very really just also still together nearby away too quite almost nearly well closely very partially mostly
only even already again outside inside overhead upside downward upward sideways apart alone around back
""".split())
# frequent caption verbs (base forms; -s forms are derived)
_VERB_BASES = """
sit stand hold look lie lay ride walk fly eat play wait go contain hang run jump stare lean graze appear seem
take make get sleep swim surf skate cross drive talk pose smile wear use cut fill prepare cook serve sell try
perch float chase catch throw hit kick reach move help overlook bite lick pull push open close put share wash
brush climb leave come stay keep turn shine grow begin dress wander travel enjoy roam
""".split()
# verbs that are also frequent nouns: only their -s forms count as verbs ("shows", not "a show")
_VERB_S_ONLY = "show display watch feature rest face point stop head cover line board park land drink".split()
_VERBS = set(_VERB_BASES) | {v + "s" for v in _VERB_BASES + _VERB_S_ONLY} | {v + "es" for v in _VERB_BASES} | set(
    "flies lies lays carries tries goes does has watches".split())
# words ending in -ing / -s that are nouns
_ING_NOUNS = set("""
building buildings ceiling ceilings clothing painting paintings wedding evening morning swing swings ring rings
string strings wing wings king thing things icing frosting stuffing topping toppings pudding railing railings
awning sibling duckling dumpling dumplings ping spring sling skiing surfing landing crossing crossings sign signs
""".split())
_ADJECTIVES = set("""
large small big little tall short long huge tiny giant old young new great good nice pretty beautiful cute
empty full open closed clean dirty wet dry dark bright light sunny cloudy snowy rainy foggy busy crowded
red orange yellow green cyan blue purple pink white black grey gray brown beige silver golden gold tan
wooden metal plastic glass stone brick different various several other same many multiple extra fresh hot cold
half whole double single first second third last front back top middle upper lower left right
colorful colourful striped spotted fancy modern antique vintage sliced
""".split())
# heads that name no maskable object
_NON_OBJECT = set("""
top bottom left right centre center middle side sides front back edge corner end ends background foreground
view picture pictures photo photos photograph image images shot scene close closeup bunch group groups pair
pairs couple lot lots piece pieces slice slices variety kind kinds sort type types number row rows set sets
area way day night time times color colors colour colours size sizes shape shapes part parts half rest
contents object objects item items thing things stuff winter summer
""".split())
# irregular past participles (and a few predicative adjectives) that behave like "-ed" words
_PARTICIPLES = set("""
torn seen fallen made done taken broken worn shown built held laid hung sold eaten drawn frozen grown known given
hidden ridden stolen thrown written spread lit ready
""".split())
# always nouns: the world's shape words ("cross" is also a verb, "square" an adjective)
KNOWN_NOUNS = set(SHAPES) | {s + "s" for s in SHAPES} | {"crosses"}
_FUNCTION = _PREPOSITIONS | _CONJUNCTIONS | _PRONOUNS | _AUX | _ADVERBS
_TOKEN = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|[0-9]+|[^\sA-Za-z0-9]")


@dataclass(frozen=True)
class NounChunk:
    head: str          # the noun (lower case), e.g. "circle"
    phrase: str        # modifiers + head as written (lower case), e.g. "large red circle"
    start: int         # character span of the phrase in the caption
    end: int
    head_start: int    # character span of the head

    @property
    def plural(self) -> bool:
        h = self.head
        return h.endswith("s") and not h.endswith(("ss", "us", "is")) and len(h) > 3


def _is_ing(w: str) -> bool:
    return w.endswith("ing") and len(w) >= 5 and w not in _ING_NOUNS


def _is_ed(w: str) -> bool:
    if w in _PARTICIPLES:
        return True
    return w.endswith("ed") and len(w) > 3 and w not in _ADJECTIVES and w not in ("bed", "beds", "shed", "sled")


def noun_chunks(caption: str) -> list[NounChunk]:
    """All noun chunks of ``caption`` (maskable or not), in order."""
    toks = [(m.group(0), m.start(), m.end()) for m in _TOKEN.finditer(caption)]
    chunks: list[NounChunk] = []
    run: list[int] = []

    def close():
        if run:
            i0, i1 = run[0], run[-1]
            head = toks[i1][0].lower()
            chunks.append(NounChunk(head, caption[toks[i0][1]:toks[i1][2]].lower(), toks[i0][1], toks[i1][2],
                                    toks[i1][1]))
        run.clear()

    for i, (tok, _, _) in enumerate(toks):
        w = tok.lower()
        if not w[0].isalpha():
            close()
            continue
        prev = toks[i - 1][0].lower() if i > 0 else ""
        has_noun = any(toks[j][0].lower() not in _ADJECTIVES for j in run)
        if w in KNOWN_NOUNS:
            run.append(i)
            continue
        if w in _DETERMINERS or w in _FUNCTION or w in _VERBS:
            close()
            continue
        if _is_ing(w) or _is_ed(w):
            # a modifier right after a determiner or adjectives ("a dining table"), else a verb
            if has_noun or not (prev in _DETERMINERS or run):
                close()
                continue
        run.append(i)
    close()
    return chunks


def is_maskable(chunk: NounChunk) -> bool:
    h = chunk.head
    return h not in _ADJECTIVES and h not in _NON_OBJECT and len(h) > 1 and not _is_ing(h) and not _is_ed(h)


def extract_nouns(caption: str) -> list[NounChunk]:
    """The maskable noun chunks of ``caption`` (heads that name an object), in order."""
    return [c for c in noun_chunks(caption) if is_maskable(c)]


def mask_caption(caption: str, chunk: NounChunk, whole_phrase: bool = True) -> str:
    """``caption`` with the chunk's phrase (or only its head) replaced by ``[MASK]``."""
    start = chunk.start if whole_phrase else chunk.head_start
    return caption[:start] + MASK_TOKEN + caption[chunk.end:]


def pick_noun(caption: str, rng: np.random.Generator, allowed: set[str] | None = None) -> NounChunk | None:
    """One maskable noun chunk at random (restricted to heads in ``allowed`` if given), or None."""
    cands = [c for c in extract_nouns(caption) if allowed is None or c.head in allowed]
    return cands[int(rng.integers(len(cands)))] if cands else None


def cam_prompt(chunk: NounChunk | str, what: str = "phrase") -> str:
    """The text a CAM is computed against: "a photo of a {noun phrase}" (``what="phrase"``:
    "a photo of a large red circle") or "a photo of a {noun}" (``what="noun"``); no article
    for plurals. A string is taken as the text to name."""
    if isinstance(chunk, str):
        text = " ".join(chunk.lower().split())
        plural = NounChunk(text.split()[-1] if text else "", text, 0, 0, 0).plural
    elif what == "noun":
        text, plural = chunk.head, chunk.plural
    elif what == "phrase":
        text, plural = chunk.phrase, chunk.plural
    else:
        raise ValueError(f"what must be 'phrase' or 'noun', not {what!r}")
    if plural:
        return f"a photo of {text}"
    article = "an" if text[:1] in "aeiou" else "a"
    return f"a photo of {article} {text}"


def caption_problem(caption: str) -> str | None:
    """Why a free-form caption gives no English nouns to mask, or None: empty, no letters, mostly
    non-Latin letters, or (three words or more) not one English function word among its words
    (the closed-class lists above), as in "Ein Hund läuft auf der Wiese"."""
    text = " ".join(str(caption or "").split())
    if not text:
        return "empty caption"
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return f"no words in the caption {text[:80]!r}"
    if sum(not c.isascii() for c in letters) > 0.2 * len(letters):
        return f"caption not in English (mostly non-Latin letters): {text[:80]!r}"
    words = [m.group(0).lower() for m in _TOKEN.finditer(text) if m.group(0)[0].isalpha()]
    if len(words) >= 3 and not any(w in _DETERMINERS or w in _FUNCTION for w in words):
        return f"caption not in English (no English function word): {text[:80]!r}"
    return None


def caption_nouns(captions, limit: int = 3) -> tuple[list[NounChunk], str]:
    """Up to ``limit`` maskable noun chunks with distinct heads from an image's captions, in order,
    and, when there are none, why (each caption's problem, or that it names no maskable noun)."""
    chunks: list[NounChunk] = []
    problems: list[str] = []
    for cap in captions:
        why = caption_problem(cap)
        found = [] if why else extract_nouns(cap)
        if not why and not found:
            why = f"no maskable noun in {' '.join(cap.split())[:80]!r}"
        if why:
            problems.append(why)
        for c in found:
            if c.head not in {x.head for x in chunks}:
                chunks.append(c)
            if len(chunks) == limit:
                return chunks, ""
    return chunks, ("; ".join(problems) or "no caption") if not chunks else ""

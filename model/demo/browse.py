"""Browsing: a synthetic corpus of made-up places, searched and read through the real ``Browser``.

Every entity (``the Veltrane Bridge``) has a page of one-line facts on a site of its own and
shows up in search results next to look-alikes. A conversation searches, opens the right result
by its link id, and answers with the fact's line and a citation ``【cursor†Lline】``. The tool
messages are what ``gptoss_agent.tools.Browser`` itself displays for those pages (fetched over
an in-process httpx transport here; the tests serve the same pages from a local HTTP server).

    corpus = Corpus(seed=0, split="heldout")
    entity = corpus.entity(rng)
    corpus.html(entity), corpus.search("Veltrane Bridge height", 5)
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from html import escape
from typing import Any

from gptoss_agent.model.demo.data import Conversation, Setting, _pick, noisy
from gptoss_agent.model.demo.render import Step, assistant, tool_message

__all__ = ["Corpus", "CorpusSearch", "Entity", "browser_conversation", "corpus_transport"]

_SYLLABLES = [
    "vel", "tra", "ne", "or", "sk", "mi", "ra", "cas", "tel", "lan", "bor", "du", "ka", "zen", "fa", "lo",
    "quin", "ta", "ris", "mon", "dar", "el", "vi", "sa", "ber", "go", "nu", "pel", "ha", "wyn",
]  # fmt: skip
_KINDS = ["Bridge", "Tower", "Library", "Museum", "Lighthouse", "Observatory", "Stadium", "Canal", "Castle", "Dam", "Theatre", "Gardens"]
_CITIES = ["Lyon", "Porto", "Ghent", "Turku", "Bergen", "Kraków", "Cork", "Graz", "Bilbao", "Utrecht", "Aarhus", "Split"]
_FIRST = ["Ilona", "Tomas", "Marta", "Jonas", "Helga", "Piotr", "Elena", "Bruno", "Ines", "Karl", "Sofia", "Oskar"]
_LAST = ["Varga", "Lindqvist", "Moreau", "Castell", "Novak", "Brandt", "Okafor", "Rossi", "Halden", "Quist"]

# attribute -> (fact sentence, question phrasings, search words)
_ATTRS: dict[str, tuple[str, list[str], str]] = {
    "year": ("The {name} was completed in {v}.", [
        "When was the {name} completed?", "What year was the {name} finished?", "When was the {name} built?",
        "In which year was the {name} completed?", "What is the completion year of the {name}?", "When did they finish the {name}?",
    ], "completed"),
    "height": ("The {name} is {v} meters tall.", [
        "How tall is the {name}?", "What is the height of the {name}?", "How many meters tall is the {name}?",
        "How high is the {name}?", "What's the {name}'s height in meters?", "Give the height of the {name}.",
    ], "height"),
    "city": ("The {name} stands in {v}.", [
        "Where is the {name}?", "In which city is the {name}?", "What city is the {name} in?",
        "Where does the {name} stand?", "Which city has the {name}?", "Where can I find the {name}?",
    ], "city"),
    "architect": ("The {name} was designed by {v}.", [
        "Who designed the {name}?", "Who was the architect of the {name}?", "Who is the designer of the {name}?",
        "Which architect designed the {name}?", "Who drew the plans for the {name}?", "Name the architect of the {name}.",
    ], "architect"),
    "visitors": ("The {name} welcomes {v} visitors a year.", [
        "How many visitors does the {name} get per year?", "How many people visit the {name} each year?",
        "What is the yearly number of visitors of the {name}?", "How many visitors a year does the {name} have?",
        "How busy is the {name}, in visitors per year?", "Annual visitors of the {name}?",
    ], "visitors"),
}  # fmt: skip
_FILLER = [
    "It is one of the best known sights of the region.", "Guided tours run on most weekends.",
    "The site was restored after a storm some years ago.", "Local schools often visit it.",
    "A small cafe sits next to the entrance.", "Photographs of it appear on many postcards.",
    "The nearest train station is a short walk away.", "It is lit up at night during the summer.",
]  # fmt: skip
_FRAMES = [
    "{q}", "{q} Search the web.", "Look it up: {q}", "Use the browser. {q}", "{q} Please cite your source.",
    "Can you search for this? {q}", "{q} Check online.", "Quick web search: {q}", "Find out: {q}",
    "I need a sourced answer. {q}", "Search and tell me: {q}", "{q} (look it up)", "Browse for it: {q}",
    "Web question: {q}", "Please find this online. {q}", "{q} Use search.", "Research this: {q}",
    "Could you look up the answer? {q}", "{q} Give a citation.", "Using the browser, answer: {q}",
    "Help me find this: {q}", "{q} Thanks!", "Search please: {q}", "{q} I want the source too.",
    "Hey, {q}", "Question for the web: {q}", "Look this up for me: {q}", "{q} Find it online please.",
    "Internet search needed: {q}", "{q} What does the web say?",
]  # fmt: skip
_LOW = ["Search for it.", "Search the web."]
_MEDIUM = ["The user asks about the {name}. Search for it and read the page.", "Need the {attr} of the {name}. Search."]
_HIGH = [
    "The user wants the {attr} of the {name}. I do not know this, so I should search the web, open the "
    "page about the {name}, find the line with the {attr}, and cite it.",
    "We need a sourced fact: the {attr} of the {name}. Plan: search for it, open the matching result, "
    "read the line that states it, and answer with a citation to that line.",
]
_OPEN = ["Open the result about the {name}.", "The {name} page is result {id}. Open it."]
_READ = ["The page states it on line {line}.", "Found it on line {line}. Answer with a citation."]


@dataclass(frozen=True)
class Entity:
    name: str
    site: str
    slug: str
    facts: dict[str, str]
    lines: tuple[str, ...]  # the page's paragraphs, one fact or filler each

    @property
    def url(self) -> str:
        return f"https://{self.site}/{self.slug}"


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def split_of_name(word: str) -> str:
    """Entity names whose crc32 is 4 mod 5 are held out (never trained on)."""
    return "heldout" if zlib.crc32(word.encode()) % 5 == 4 else "train"


class Corpus:
    """Entities generated on demand; ``search`` ranks the corpus's known entities for a query."""

    def __init__(self, split: str = "train") -> None:
        self.split = split
        self.entities: dict[str, Entity] = {}

    def entity(self, rng: random.Random, kind: str | None = None, base: str | None = None) -> Entity:
        while True:
            word = base or _word(rng)
            if base or split_of_name(word) == self.split:
                break
        kind = kind or rng.choice(_KINDS)
        name = f"{word} {kind}"
        facts = {
            "year": str(rng.randint(1700, 2020)),
            "height": str(rng.randint(8, 480)),
            "city": rng.choice(_CITIES),
            "architect": f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
            "visitors": str(rng.randint(1000, 2_000_000)),
        }
        sentences = [_ATTRS[a][0].format(name=name, v=v) for a, v in facts.items()]
        sentences += rng.sample(_FILLER, rng.randint(1, 3))
        rng.shuffle(sentences)
        site = f"{word.lower()}-{kind.lower()}.test"
        e = Entity(name, site, word.lower(), facts, tuple(sentences))
        self.entities[e.url] = e
        return e

    def html(self, e: Entity) -> str:
        paragraphs = "\n".join(f"<p>{escape(s)}</p>" for s in e.lines)
        return (
            f"<!doctype html><html><head><title>{escape(e.name)}</title></head>"
            f"<body><h1>{escape(e.name)}</h1>\n{paragraphs}\n</body></html>"
        )

    def results(self, query: str, n: int) -> list[tuple[str, str, str]]:
        """(title, url, snippet) of the known entities, those sharing most words with the query first."""
        words = set(query.lower().split())

        def score(e: Entity) -> int:
            return len(words & set(e.name.lower().split()))

        ranked = sorted(self.entities.values(), key=lambda e: (-score(e), e.name))
        return [(e.name, e.url, e.lines[0]) for e in ranked[:n]]


class CorpusSearch:
    """A ``SearchBackend`` over a ``Corpus`` (results in a fixed, seeded order)."""

    name = "demo-corpus"

    def __init__(self, corpus: Corpus, order: list[str] | None = None) -> None:
        self.corpus = corpus
        self.order = order

    def search(self, query: str, n: int) -> list[Any]:
        from gptoss_agent.tools.search import SearchResult

        if self.order is not None:
            hits = [self.corpus.entities[u] for u in self.order][:n]
            return [SearchResult(title=e.name, url=e.url, snippet=e.lines[0]) for e in hits]
        return [SearchResult(title=t, url=u, snippet=s) for t, u, s in self.corpus.results(query, n)]


def corpus_transport(corpus: Corpus) -> Any:
    """An httpx transport that serves the corpus's pages (404 elsewhere)."""
    import httpx

    def handle(request: httpx.Request) -> httpx.Response:
        host = request.headers.get("host", request.url.host)  # the URL may carry the resolved address
        e = corpus.entities.get(f"https://{host}{request.url.path}")
        if e is None:
            return httpx.Response(404, headers={"content-type": "text/plain"}, stream=httpx.ByteStream(b"not found"))
        body = corpus.html(e).encode()
        headers = {"content-type": "text/html; charset=utf-8", "content-length": str(len(body))}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))

    return httpx.MockTransport(handle)


def corpus_browser(corpus: Corpus, order: list[str] | None = None) -> Any:
    """A real ``Browser`` over the corpus (search backend and pages in process)."""
    from gptoss_agent.tools import Browser
    from gptoss_agent.tools.fetch import FetchConfig

    config = FetchConfig(transport=corpus_transport(corpus), resolver=lambda host, port: ["93.184.216.50"])
    return Browser(CorpusSearch(corpus, order), fetch_config=config)


def browser_conversation(rng: random.Random, setting: Setting, enc: Any, split: str) -> Conversation:
    corpus = Corpus(split)
    target = corpus.entity(rng)
    others = []
    for _ in range(rng.randint(1, 4)):  # look-alikes: same word other kind, or same kind other word
        if rng.random() < 0.5:
            others.append(corpus.entity(rng, kind=target.name.split()[-1]))
        else:
            kinds = [k for k in _KINDS if k != target.name.split()[-1]]
            others.append(corpus.entity(rng, kind=rng.choice(kinds), base=target.name.split()[0]))
    order = [e.url for e in [target, *others]]
    rng.shuffle(order)
    link = order.index(target.url)
    attr = rng.choice(list(_ATTRS))
    sentence, questions, word = _ATTRS[attr]
    q = _pick(rng, questions, split).format(name=target.name)
    user = noisy(rng, _pick(rng, _FRAMES, split).format(q=q), protect=target.name.split())
    query = f"{target.name} {word}"
    browser = corpus_browser(corpus, order)
    search_body = json.dumps({"query": query})
    results = browser.call("search", search_body)
    open_body = json.dumps({"id": link})
    page = browser.call("open", open_body)
    if results.is_error or page.is_error:
        raise RuntimeError(f"the corpus browser failed: {results.content} {page.content}")
    fact = sentence.format(name=target.name, v=target.facts[attr])
    lines = [i for i, text in enumerate(browser.pages[-1].lines) if text == fact]
    if not lines:  # the fact wrapped over two lines: a citation of one line would not hold it
        raise RuntimeError(f"the fact {fact!r} does not fit on one line")
    line = lines[0]
    cursor = browser.cursors[-1]
    fill = {"name": target.name, "attr": word if attr != "year" else "completion year", "id": link, "line": line}
    effort = setting.effort
    thought = rng.choice({"low": _LOW, "medium": _MEDIUM, "high": _HIGH}[effort]).format(**fill)
    steps = [
        Step([assistant("analysis", thought),
              assistant("analysis", search_body, recipient="browser.search", content_type="code")],
             tool_message("browser.search", "analysis", results.content)),
        Step([*([assistant("analysis", rng.choice(_OPEN).format(**fill))] if effort != "low" else []),
              assistant("analysis", open_body, recipient="browser.open", content_type="code")],
             tool_message("browser.open", "analysis", page.content)),
        Step([*([assistant("analysis", rng.choice(_READ).format(**fill))] if effort == "high" else []),
              assistant("final", f"{fact} 【{cursor}†L{line}】")]),
    ]  # fmt: skip
    head = setting.head(enc, user, _functions(rng, setting, split))
    return Conversation(
        "browser", head, steps, target.facts[attr],
        {"entity": target.name, "attr": attr, "citation": f"【{cursor}†L{line}】", "corpus": corpus, "order": order},
    )  # fmt: skip


def _functions(rng: random.Random, setting: Setting, split: str) -> list[Any]:
    if not setting.functions:
        return []
    from gptoss_agent.model.demo.functions import random_functions

    return [f.tool for f in random_functions(rng, split, rng.randint(1, 2))]

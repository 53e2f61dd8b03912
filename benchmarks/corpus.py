"""A seeded corpus of realistic user prompts with planted near-duplicates and distinct look-alikes.

No dataset can be downloaded here, so the distinct rows are real English sentences (40-400
characters) from the docstrings of installed packages (scikit-learn, torch, transformers, pandas,
sympy, scipy, numpy, ...: technical questions and explanations of realistic prompt length), mixed
with chat-style prompts from ~40 templates (coding, writing, science, travel, cooking, business,
advice, math). The pool is cleaned of its own near-duplicates first (char 5-gram MinHash Jaccard
>= 0.5, a lexical criterion independent of the embedding models), so every row not planted below
is distinct, and cached under ~/.cache/synth/bench/.

- planted near-duplicates (label: same cluster as their source): case or punctuation changes,
  1-3 typos, two swapped words, a paraphrase-style rewording, an appended sentence, or two of these;
- look-alikes (label: a cluster of their own): the same template and context as an existing
  prompt with one content slot changed ("... capital of France" vs "... capital of Spain"). Rows
  that differ only in numbers ("5 vs 25 ways to ...") are not generated: no embedding tells them
  apart, and whether they are duplicates is a matter of taste.

`make_corpus(n)` returns (texts, cluster ids); a row is a true duplicate iff an earlier row has the
same cluster id.
"""

from __future__ import annotations

import ast
import gzip
import random
import re
import site
from pathlib import Path

LANGS = [
    "Python",
    "JavaScript",
    "TypeScript",
    "Rust",
    "Go",
    "Java",
    "C++",
    "C#",
    "Ruby",
    "Kotlin",
    "Swift",
    "PHP",
    "Scala",
    "Haskell",
    "Bash",
    "SQL",
    "R",
    "Julia",
]
CODE_TASKS = [
    "parse a CSV file and compute the average of each column",
    "reverse a linked list in place",
    "check whether a string is a palindrome",
    "read a JSON config file and validate required keys",
    "implement binary search on a sorted array",
    "merge two sorted lists into one",
    "count word frequencies in a text file",
    "retry an HTTP request with exponential backoff",
    "find the longest common prefix of a list of strings",
    "implement an LRU cache",
    "flatten a nested list",
    "detect a cycle in a directed graph",
    "compute the nth Fibonacci number iteratively",
    "rate-limit function calls to ten per second",
    "download several files concurrently",
    "convert a Roman numeral to an integer",
    "remove duplicate rows from a table",
    "schedule a job to run every night at midnight",
    "serialize a binary tree to a string and back",
    "validate an email address",
    "compute the median of a stream of numbers",
    "rotate a matrix by 90 degrees",
    "tokenize an arithmetic expression",
    "find all permutations of a string",
    "watch a folder and print new file names",
    "implement a thread-safe counter",
    "paginate results from a REST API",
    "resize all images in a directory",
    "generate a random password with symbols",
    "compare two version strings like 1.2.10 and 1.2.9",
]
ERRORS = [
    "a segmentation fault",
    "an index out of range error",
    "a null pointer exception",
    "a memory leak",
    "a deadlock",
    "a race condition",
    "an off-by-one error",
    "a stack overflow",
    "a type mismatch error",
    "a timeout",
]
CONCEPTS = [
    "photosynthesis", "entropy", "inflation", "blockchain", "recursion", "gravity", "evolution", "vaccination",
    "plate tectonics", "quantum entanglement", "supply and demand", "compound interest", "natural selection",
    "the greenhouse effect", "machine learning", "neural networks", "public-key cryptography", "the immune system",
    "black holes", "relativity", "DNA replication", "the water cycle", "opportunity cost", "game theory",
    "climate change", "nuclear fusion", "the Doppler effect", "osmosis", "the placebo effect", "cognitive dissonance",
    "the stock market", "ocean currents", "the nitrogen cycle", "antibiotic resistance", "dark matter",
    "superconductivity", "the Fourier transform", "Bayesian inference", "the central limit theorem",
    "gradient descent", "containerization", "garbage collection", "TCP handshakes", "DNS resolution",
    "virtual memory", "the CAP theorem",
]  # fmt: skip
AUDIENCES = [
    "a ten-year-old",
    "a high school student",
    "a retired engineer",
    "a busy executive",
    "my grandmother",
    "a first-year medical student",
    "a non-technical manager",
    "a curious teenager",
    "an art historian",
    "a software developer",
    "a farmer",
    "a journalist",
]
COUNTRIES = [
    "France",
    "Spain",
    "Italy",
    "Germany",
    "Japan",
    "Brazil",
    "Canada",
    "Mexico",
    "Egypt",
    "Kenya",
    "India",
    "Vietnam",
    "Peru",
    "Chile",
    "Norway",
    "Sweden",
    "Portugal",
    "Greece",
    "Turkey",
    "Morocco",
    "Thailand",
    "Indonesia",
    "Australia",
    "Argentina",
    "Poland",
    "Ireland",
    "Iceland",
    "Nepal",
    "Colombia",
    "Ghana",
]
CITIES = [
    "Paris",
    "Madrid",
    "Rome",
    "Berlin",
    "Tokyo",
    "Kyoto",
    "Lisbon",
    "Prague",
    "Vienna",
    "Budapest",
    "Istanbul",
    "Cairo",
    "Nairobi",
    "Mumbai",
    "Delhi",
    "Hanoi",
    "Bangkok",
    "Seoul",
    "Sydney",
    "Melbourne",
    "Toronto",
    "Vancouver",
    "Chicago",
    "Boston",
    "Seattle",
    "Denver",
    "Austin",
    "Lima",
    "Bogota",
    "Santiago",
    "Oslo",
    "Stockholm",
    "Copenhagen",
    "Dublin",
    "Edinburgh",
    "Amsterdam",
    "Brussels",
    "Zurich",
    "Athens",
    "Marrakech",
]
FOODS = [
    "lasagna",
    "chicken curry",
    "banana bread",
    "sourdough bread",
    "pad thai",
    "vegetable soup",
    "beef stew",
    "mushroom risotto",
    "chocolate chip cookies",
    "falafel",
    "ramen",
    "apple pie",
    "paella",
    "shakshuka",
    "tacos al pastor",
    "lentil dal",
    "pancakes",
    "guacamole",
    "tiramisu",
    "fried rice",
]
SUBJECTS = [
    "a lighthouse keeper",
    "a lost cat",
    "the first day of spring",
    "a robot learning to paint",
    "an old bookstore",
    "a storm at sea",
    "a city at night",
    "two rival chefs",
    "a forgotten letter",
    "a dragon who is afraid of fire",
    "a long train journey",
    "the last tree on Earth",
    "a time traveler stuck in 1920",
    "a detective who cannot see colors",
    "a village without music",
    "a friendship between a fox and a crow",
]
FORMS = ["a short story", "a poem", "a haiku", "a limerick", "a song", "a bedtime story", "a sonnet", "a fable"]
BUSINESSES = [
    "a small coffee shop",
    "a bike repair startup",
    "an online bookstore",
    "a dog grooming service",
    "a yoga studio",
    "a bakery",
    "a mobile app for budgeting",
    "a tutoring service",
    "a vintage clothing store",
    "a food truck",
    "a plant nursery",
    "a local gym",
]
DOCS = ["a cover letter", "an email to my landlord", "a product description", "a LinkedIn summary",
        "a wedding toast", "a complaint letter", "a project proposal", "a thank-you note", "a press release",
        "a resignation letter"]  # fmt: skip
SITUATIONS = [
    "my roommate never cleans the kitchen",
    "I want to ask for a raise",
    "I keep procrastinating on my thesis",
    "I feel nervous before job interviews",
    "my teenager spends all day on the phone",
    "I want to switch careers into data science",
    "I have trouble sleeping",
    "I want to start running",
    "my coworker takes credit for my work",
    "I need to save money for a house",
    "I am moving to a new city alone",
    "I want to learn a new language quickly",
]
PEOPLE = ["Marie Curie", "Napoleon", "Ada Lovelace", "Abraham Lincoln", "Cleopatra", "Nikola Tesla", "Frida Kahlo",
          "Genghis Khan", "Isaac Newton", "Nelson Mandela", "Leonardo da Vinci", "Alan Turing", "Joan of Arc",
          "Charles Darwin", "Mahatma Gandhi", "Queen Victoria"]  # fmt: skip
EVENTS = ["the fall of the Roman Empire", "the French Revolution", "the Industrial Revolution", "World War I",
          "the Cold War", "the Renaissance", "the moon landing", "the invention of the printing press",
          "the Black Death", "the collapse of the Soviet Union", "the American Civil War",
          "the Meiji Restoration"]  # fmt: skip
NUMBERS = [str(n) for n in (3, 5, 7, 10, 12, 15, 20, 25, 50, 100)]
PREFIXES = ["", "", "", "", "I'm a beginner. ", "Quick question: ", "Hi! ", "For a school project, ",
            "I've been stuck on this for hours. ", "My boss asked me this today. ", "Just curious, ",
            "As a teacher, ", "Hello, ", "This is for my blog. "]  # fmt: skip
SUFFIXES = ["", "", "", "", " Please keep it short.", " Use bullet points.", " Explain step by step.",
            " Include an example.", " Thanks!", " Keep it under 200 words.", " Assume I know nothing.",
            " Please be detailed.", " Give me a few options.", " Avoid jargon."]  # fmt: skip

TEMPLATES: list[tuple[str, dict[str, list[str]]]] = [
    ("Write a {lang} function to {task}.", {"lang": LANGS, "task": CODE_TASKS}),
    ("How do I {task} in {lang}?", {"lang": LANGS, "task": CODE_TASKS}),
    ("My {lang} program crashes with {error}. How do I debug it?", {"lang": LANGS, "error": ERRORS}),
    ("What is the idiomatic way in {lang} to {task}?", {"lang": LANGS, "task": CODE_TASKS}),
    (
        "Can you review this approach: I want to {task} using {lang}. Is there a faster way?",
        {"lang": LANGS, "task": CODE_TASKS},
    ),
    ("Explain {concept} to {audience}.", {"concept": CONCEPTS, "audience": AUDIENCES}),
    ("What is the difference between {concept} and {concept2}?", {"concept": CONCEPTS, "concept2": CONCEPTS}),
    ("Give me {n} surprising facts about {concept}.", {"n": NUMBERS, "concept": CONCEPTS}),
    (
        "Why is {concept} important, and how would you teach it to {audience}?",
        {"concept": CONCEPTS, "audience": AUDIENCES},
    ),
    ("What is the capital of {country}, and what is it known for?", {"country": COUNTRIES}),
    ("Plan a {n}-day trip to {city} on a tight budget.", {"n": NUMBERS, "city": CITIES}),
    ("What are the best neighborhoods to stay in {city} for {audience}?", {"city": CITIES, "audience": AUDIENCES}),
    ("Compare the cost of living in {city} and {city2}.", {"city": CITIES, "city2": CITIES}),
    ("What should I know about the food culture of {country} before visiting?", {"country": COUNTRIES}),
    ("Give me a recipe for {food} that serves {n} people.", {"food": FOODS, "n": NUMBERS}),
    ("How can I make {food} without an oven?", {"food": FOODS}),
    ("What wine or drink goes well with {food}?", {"food": FOODS}),
    ("I burned my {food} again. What am I doing wrong?", {"food": FOODS}),
    ("Write {form} about {subject}.", {"form": FORMS, "subject": SUBJECTS}),
    ("Write {form} about {subject} for {audience}.", {"form": FORMS, "subject": SUBJECTS, "audience": AUDIENCES}),
    ("Help me write {doc} for {business}.", {"doc": DOCS, "business": BUSINESSES}),
    ("Draft {doc}; the context is that {situation}.", {"doc": DOCS, "situation": SITUATIONS}),
    ("Create a marketing plan for {business} in {city}.", {"business": BUSINESSES, "city": CITIES}),
    ("What are {n} low-cost ways to get customers for {business}?", {"n": NUMBERS, "business": BUSINESSES}),
    ("Write a business plan outline for {business}.", {"business": BUSINESSES}),
    ("{situation}. What should I do?", {"situation": SITUATIONS}),
    (
        "Any advice? {situation}, and I am {audience_self}.",
        {
            "situation": SITUATIONS,
            "audience_self": [
                "a student",
                "a single parent",
                "in my fifties",
                "an introvert",
                "a new manager",
                "unemployed",
                "a nurse on night shifts",
            ],
        },
    ),
    ("Summarize the life and achievements of {person}.", {"person": PEOPLE}),
    ("What would {person} think about {concept}?", {"person": PEOPLE, "concept": CONCEPTS}),
    ("What were the main causes of {event}?", {"event": EVENTS}),
    ("How did {event} change daily life for ordinary people?", {"event": EVENTS}),
    (
        "Write a dialogue between {person} and {person2} about {event}.",
        {"person": PEOPLE, "person2": PEOPLE, "event": EVENTS},
    ),
    (
        "If a train leaves {city} at {n} km/h and another leaves {city2} at {n2} km/h, when do they meet?",
        {"city": CITIES, "city2": CITIES, "n": NUMBERS, "n2": NUMBERS},
    ),
    ("What is {n} percent of {n2} times {n3}? Show your work.", {"n": NUMBERS, "n2": NUMBERS, "n3": NUMBERS}),
    ("Solve for x: {n}x + {n2} = {n3}.", {"n": NUMBERS, "n2": NUMBERS, "n3": NUMBERS}),
    ("Prove that the sum of the first {n} odd numbers is a perfect square.", {"n": NUMBERS}),
    ("Brainstorm {n} names for {business}.", {"n": NUMBERS, "business": BUSINESSES}),
    (
        "Brainstorm {n} gift ideas for {audience} who loves {food}.",
        {"n": NUMBERS, "audience": AUDIENCES, "food": FOODS},
    ),
    ("Pretend you are {person} and describe {city} today.", {"person": PEOPLE, "city": CITIES}),
    (
        "Analyze this data: sales in {city} rose {n} percent while sales in {city2} fell {n2} percent. "
        "What could explain it?",
        {"city": CITIES, "city2": CITIES, "n": NUMBERS, "n2": NUMBERS},
    ),
]

PARAPHRASES = [
    ("How do I", "How can I"),
    ("How can I", "What's the best way to"),
    ("Write", "Could you write"),
    ("Explain", "Can you explain"),
    ("Give me", "Can you give me"),
    ("What is", "What's"),
    ("What are", "Which are"),
    ("Help me", "Please help me"),
    ("Create", "Put together"),
    ("Summarize", "Give a summary of"),
    ("Brainstorm", "Come up with"),
    ("What should I do?", "What do you suggest?"),
    ("Plan", "Help me plan"),
]
APPENDED = [
    " Thanks in advance!",
    " I really appreciate your help.",
    " Please answer in English.",
    " This is urgent.",
    " Be concise.",
    " Sorry if this is a dumb question.",
]
KEYS = "qwertyuiopasdfghjklzxcvbnm"


def _fill(rng: random.Random, template: str, slots: dict[str, list[str]], values: dict | None = None) -> dict:
    return dict(values) if values else {k: rng.choice(v) for k, v in slots.items()}


def _render(template: str, values: dict, prefix: str, suffix: str) -> str:
    text = template.format(**values)
    if prefix:
        text = prefix + text[0].lower() + text[1:] if prefix.endswith(", ") else prefix + text
    return text + suffix


def _typo(rng: random.Random, text: str) -> str:
    positions = [i for i, c in enumerate(text) if c.isalpha()]
    if len(positions) < 4:
        return text
    i = rng.choice(positions[1:-1])
    op = rng.randrange(4)
    if op == 0:
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    if op == 1:
        return text[:i] + text[i + 1 :]
    if op == 2:
        return text[:i] + text[i] + text[i:]
    return text[:i] + rng.choice(KEYS) + text[i + 1 :]


def _edit(rng: random.Random, text: str, kind: str) -> str:
    if kind == "case":
        return rng.choice([text.lower(), text.upper(), text.capitalize()])
    if kind == "punct":
        stripped = text.rstrip(".?!")
        return rng.choice([stripped, stripped + "??", stripped + "!", text.replace(",", ""), text.replace(". ", "; ")])
    if kind == "typo":
        for _ in range(rng.randint(1, 3)):
            text = _typo(rng, text)
        return text
    if kind == "swap":
        words = text.split()
        if len(words) > 3:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    if kind == "paraphrase":
        options = [(a, b) for a, b in PARAPHRASES if a in text]
        if options:
            a, b = rng.choice(options)
            return text.replace(a, b, 1)
        return _edit(rng, text, "append")
    return text + rng.choice(APPENDED)


EDITS = ["case", "punct", "typo", "swap", "paraphrase", "append"]


PACKAGES = ["sklearn", "torch", "transformers", "pandas", "sympy", "scipy", "numpy", "matplotlib", "networkx",
            "datasets", "pyarrow", "huggingface_hub", "sentence_transformers", "pydantic", "jinja2", "rich",
            "click", "faiss", "pip", "setuptools", "llama_cpp", "openai"]  # fmt: skip


def docstring_sentences() -> list[str]:
    """Real sentences from installed packages' docstrings (cached)."""
    from synth.similarity.embed import cache_dir

    path = cache_dir() / "bench" / "docstring-sentences.txt"
    if path.exists():
        return path.read_text(encoding="utf-8").splitlines()
    found: dict[str, None] = {}
    root = Path(site.getsitepackages()[0])
    for package in PACKAGES:
        for file in sorted((root / package).rglob("*.py")):
            try:
                tree = ast.parse(file.read_text(encoding="utf-8", errors="ignore"))
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                    continue
                for para in re.split(r"\n\s*\n", ast.get_docstring(node) or ""):
                    for sentence in re.split(r"(?<=[.?!])\s+(?=[A-Z])", " ".join(para.split())):
                        if _usable(sentence):
                            found.setdefault(sentence)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(found), encoding="utf-8")
    return list(found)


def _usable(s: str) -> bool:
    return (
        40 <= len(s) <= 400
        and s[0].isupper()
        and s[-1] in ".?!"
        and not re.search(r">>>|---|===|::|\||http|\\", s)
        and sum(c.isalpha() or c == " " for c in s) > 0.8 * len(s)
    )


def _clean_pool(seed: int) -> list[tuple[str, tuple | None]]:
    """Docstring sentences plus template prompts, with no near-duplicate pairs among them."""
    from synth.similarity.duplicates import dedup_minhash
    from synth.similarity.embed import cache_dir

    rng = random.Random(seed)
    path = cache_dir() / "bench" / f"pool-{seed}.txt"
    templated: list[tuple[str, tuple]] = []
    seen: set[tuple] = set()
    for _ in range(60_000):
        t = rng.randrange(len(TEMPLATES))
        template, slots = TEMPLATES[t]
        values = _fill(rng, template, slots)
        prefix, suffix = rng.choice(PREFIXES), rng.choice(SUFFIXES)
        # one row per request: no two rows differ only in greetings, closing words, numbers or wording
        core = _core(values)
        if core not in seen:
            seen.add(core)
            templated.append((_render(template, values, prefix, suffix), (t, values, prefix, suffix)))
    sentences = docstring_sentences()
    rng.shuffle(sentences)
    pool = [(s, None) for s in sentences] + templated
    if path.exists():
        keep = {line for line in path.read_text(encoding="utf-8").splitlines()}
        return [item for item in pool if item[0] in keep]
    result = dedup_minhash([text for text, _ in pool], threshold=0.5)
    cleaned = [item for item, k in zip(pool, result.keep.tolist(), strict=True) if k]
    path.write_text("\n".join(text for text, _ in cleaned), encoding="utf-8")
    return cleaned


def _core(values: dict) -> tuple:
    """What a templated prompt is about: its content slots, whatever the template's wording."""
    return tuple(sorted(v for k, v in values.items() if not k.startswith("n")))


def _sentences_in(text: str) -> list[str]:
    return [
        s
        for para in re.split(r"\n\s*\n", text)
        for s in re.split(r"(?<=[.?!])\s+(?=[A-Z])", " ".join(para.split()))
        if _usable(s)
    ]


def _python_text(file: Path) -> list[str]:
    """Docstrings, comment blocks and long string literals of a Python file."""
    source = file.read_text(encoding="utf-8", errors="ignore")
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            parts.append(ast.get_docstring(node) or "")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and 40 <= len(node.value) <= 400:
            parts.append(node.value)
    block: list[str] = []
    for line in source.splitlines() + [""]:
        line = line.strip()
        if line.startswith("#") and not line.startswith("#!"):
            block.append(line.lstrip("#").strip())
        elif block:
            parts.append(" ".join(block))
            block = []
    return [s for part in parts for s in _sentences_in(part)]


def _gunzip(file: Path) -> str:
    with gzip.open(file, "rt", errors="ignore") as f:
        return f.read()


def _man_text(file: Path) -> list[str]:
    """The running text of a roff manual page."""
    lines = []
    for line in _gunzip(file).splitlines():
        if line.startswith((".", "'")):
            lines.append("\n" if line.startswith((".PP", ".SH", ".SS", ".TP", ".IP", ".P ", ".LP", ".sp")) else "")
            continue
        lines.append(re.sub(r"\\f[BIRP]|\\f\(..|\\\(..|\\[-e&|^]|\\s[-+]?\d", "", line).replace("\\-", "-"))
    return _sentences_in("\n".join(lines))


def more_sentences() -> list[str]:
    """For corpora beyond the docstring pool (about 100k rows): real English sentences from every
    installed Python package (docstrings, comments, messages), the standard library, the English
    manual pages and /usr/share/doc (cached; about 650k, a few minutes once)."""
    from synth.similarity.embed import cache_dir

    path = cache_dir() / "bench" / "more-sentences.txt"
    if path.exists():
        return path.read_text(encoding="utf-8").splitlines()
    found: dict[str, None] = dict.fromkeys(docstring_sentences())
    roots = [Path(site.getsitepackages()[0]), Path("/usr/lib/python3"), *Path("/usr/lib").glob("python3.*")]
    for root in roots:
        for file in sorted(root.rglob("*")):
            try:
                if file.suffix == ".py":
                    found.update(dict.fromkeys(_python_text(file)))
                elif file.name in ("METADATA", "PKG-INFO") or file.suffix in (".md", ".rst", ".txt"):
                    found.update(dict.fromkeys(_sentences_in(file.read_text(encoding="utf-8", errors="ignore"))))
            except OSError:
                continue
    for file in sorted(Path("/usr/share/man").glob("man*/*.gz")) + sorted(Path("/usr/share/doc").rglob("*.gz")):
        try:
            if file.parts[3] == "man":
                found.update(dict.fromkeys(_man_text(file)))
            elif not file.name.endswith(".tar.gz"):
                found.update(dict.fromkeys(_sentences_in(_gunzip(file))))
        except (OSError, EOFError, ValueError):
            continue
    path.write_text("\n".join(found), encoding="utf-8")
    return list(found)


def _large_pool(seed: int) -> list[str]:
    """more_sentences() without near-duplicates among them (as _clean_pool), cached."""
    from synth.similarity.duplicates import dedup_minhash
    from synth.similarity.embed import cache_dir

    path = cache_dir() / "bench" / f"large-pool-{seed}.txt"
    if path.exists():
        return path.read_text(encoding="utf-8").splitlines()
    sentences = more_sentences()
    random.Random(seed).shuffle(sentences)
    keep = dedup_minhash(sentences, threshold=0.5).keep.tolist()
    cleaned = [s for s, k in zip(sentences, keep, strict=True) if k]
    path.write_text("\n".join(cleaned), encoding="utf-8")
    return cleaned


def _pairs_of(rng: random.Random, sentences: list[str], n: int) -> list[str]:
    """n distinct rows of two sentences each, for corpora larger than the sentences: sentences of
    close lengths are paired (so no row is mostly one shared sentence), each sentence in about the
    same number of rows, and no two rows share more than one sentence."""
    by_length = sorted(sentences, key=len)
    rows: dict[tuple[int, int], None] = {}
    window = 64
    while len(rows) < n:
        for i in range(len(by_length)):
            step = rng.randrange(1, window)
            j = i + step if i + step < len(by_length) else i - step
            if 0 <= j != i:
                rows.setdefault((min(i, j), max(i, j)))
            if len(rows) >= n:
                break
        window *= 2
    picked = list(rows)
    rng.shuffle(picked)
    return [
        f"{by_length[i]} {by_length[j]}" if rng.random() < 0.5 else f"{by_length[j]} {by_length[i]}" for i, j in picked
    ]


def make_corpus(n: int, dup_rate: float = 0.1, lookalike_rate: float = 0.1, seed: int = 0):
    """n texts and their cluster ids; see the module docstring."""
    rng = random.Random(seed)
    pool = _clean_pool(seed)
    n_base = n - int(n * dup_rate) - int(n * lookalike_rate)
    chat = [item for item in pool if item[1] is not None]
    docs = [item for item in pool if item[1] is None]
    n_chat = min(len(chat), n_base // 4)
    spare: list[str] = []  # large corpora: distinct rows that stand in for look-alikes the templates cannot make
    if n_base - n_chat > len(docs):  # beyond the docstring pool: more sentences, then pairs of them
        known = {text for text, _ in pool}
        docs += [(s, None) for s in _large_pool(seed) if s not in known]
        if n_base - n_chat + int(n * lookalike_rate) > len(docs):
            wanted = n_base - n_chat + int(n * lookalike_rate)
            docs = [(s, None) for s in _pairs_of(rng, [text for text, _ in docs], wanted)]
        spare = [text for text, _ in docs[n_base - n_chat :]]
        docs = docs[: n_base - n_chat]
    picked = rng.sample(chat, n_chat) + rng.sample(docs, n_base - n_chat)
    base = [(text, cluster, info) for cluster, (text, info) in enumerate(picked)]
    seen = {text for text, _, _ in base}
    cores = {_core(info[1]) for _, _, info in base if info is not None}
    # look-alikes change a content slot (a topic, city, dish, language, person), not only a number:
    # "5 vs 25 ways to ..." is left out, as no embedding model tells those apart
    templated = [item for item in base if item[2] is not None and any(not k.startswith("n") for k in item[2][1])]
    rows = [(text, cluster) for text, cluster, _ in base]
    looks, attempts = 0, 0
    # The templates' content slots allow only so many distinct look-alikes: stop trying after a
    # while rather than loop forever, and say how many there are.
    while looks < int(n * lookalike_rate) and attempts < 200 * max(1, min(int(n * lookalike_rate), 20_000)):
        attempts += 1
        _, _, (t, values, prefix, suffix) = rng.choice(templated)
        template, slots = TEMPLATES[t]
        key = rng.choice([k for k in slots if not k.startswith("n")])
        changed = dict(values, **{key: rng.choice([v for v in slots[key] if v != values[key]])})
        text = _render(template, changed, prefix, suffix)
        if text not in seen and _core(changed) not in cores:
            seen.add(text)
            cores.add(_core(changed))
            rows.append((text, len(base) + looks))
            looks += 1
    if looks < int(n * lookalike_rate):
        print(f"  (only {looks} distinct look-alikes exist for {n} rows)", flush=True)
    fill = spare[: int(n * lookalike_rate) - looks]
    rows += [(text, len(base) + looks + i) for i, text in enumerate(fill)]
    if fill:
        print(f"  ({len(fill)} more distinct rows in their place)", flush=True)
    rng.shuffle(rows)
    keyed = [(float(i), text, cluster) for i, (text, cluster) in enumerate(rows)]
    where = {cluster: float(i) for i, (_, cluster) in enumerate(rows)}
    for _ in range(int(n * dup_rate)):
        text, cluster, _ = rng.choice(base)
        for kind in rng.sample(EDITS, rng.choice([1, 1, 2])):
            text = _edit(rng, text, kind)
        # placed after its source, so the source is the representative
        keyed.append((rng.uniform(where[cluster] + 0.5, len(rows)), text, cluster))
    keyed.sort()
    rows = [(text, cluster) for _, text, cluster in keyed]
    return [t for t, _ in rows], [c for _, c in rows]

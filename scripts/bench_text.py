"""Measure the text front-end's bounds (issue 25) and print the figures docs/benchmarks.md quotes.

    .venv/bin/python scripts/bench_text.py matchers   # lexicon matching: old regex, RE2, trie, Aho-Corasick
    .venv/bin/python scripts/bench_text.py split      # the lead/core/trail split: old regex, strips
    .venv/bin/python scripts/bench_text.py sandbox    # a job's analysis in-process vs in the child

RE2 is a candidate only, not a dependency: ``pip install --target /tmp/re2 google-re2`` and
``PYTHONPATH=/tmp/re2`` (left out of the table when it is not importable). Each figure is the
median of ``--repeat`` runs (wall; CPU, this process's and the child's, is the mean), on
whatever machine runs it: the doc says which.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.text import lexicon as lexicons  # noqa: E402
from pipeline.text.matcher import Matcher  # noqa: E402

Found = list[tuple[int, int, str]]

# -- candidates: each builds from a folded table and finds (start, end, grapheme) like finditer --


def old_regex(table: Iterable[str]) -> Callable[[str], Found]:
    """The matcher before issue 25: one alternation, longest first, lookarounds for whole words."""
    keys = sorted(table, key=lambda g: (-len(g), g))
    alts = "|".join(r"\s+".join(re.escape(part) for part in g.split(" ")) for g in keys)
    pattern = re.compile(rf"(?<!\w)(?:{alts})(?!\w)")
    return lambda text: [(m.start(), m.end(), " ".join(m.group().split())) for m in pattern.finditer(text)]


def aho_corasick(table: Iterable[str]) -> Callable[[str], Found]:
    """pipeline.text.matcher: boundaries woven into the text, so only valid occurrences come out."""
    return Matcher(table, r"\w", always=True).find


def aho_corasick_every(table: Iterable[str]) -> Callable[[str], Found]:
    """Aho-Corasick reporting every occurrence, boundaries checked in Python afterwards (the first
    version: "a" * k graphemes over "a" * 100,000 made it check 20 M occurrences)."""
    import ahocorasick

    from pipeline.text.matcher import _fold

    automaton = ahocorasick.Automaton()
    for g in table:
        automaton.add_word(g, len(g))
    automaton.make_automaton()
    is_word = re.compile(r"\w").match

    def find(text: str) -> Found:
        folded, where = _fold(text)
        last = len(folded) - 1
        best: dict[int, int] = {}
        for end, n in automaton.iter(folded):
            start = end - n + 1
            if n <= best.get(start, 0):
                continue
            if (start > 0 and is_word(folded[start - 1])) or (end < last and is_word(folded[end + 1])):
                continue
            best[start] = n
        out: Found = []
        pos = 0
        for start in sorted(best):
            if start >= pos:
                end = start + best[start]
                g = folded[start:end]
                out.append((start, end, g) if where is None else (where[start], where[end - 1] + 1, g))
                pos = end
        return out

    return find


def python_trie(table: Iterable[str]) -> Callable[[str], Found]:
    """A trie over the folded text, walked from each position that may start a whole word."""
    from pipeline.text.matcher import _fold

    root: dict[str, Any] = {}
    for g in table:
        node = root
        for c in g:
            node = node.setdefault(c, {})
        node[""] = len(g)
    is_word = re.compile(r"\w").match

    def find(text: str) -> Found:
        folded, where = _fold(text)
        n = len(folded)
        out: Found = []
        i = 0
        while i < n:
            if (i and is_word(folded[i - 1])) or folded[i] not in root:
                i += 1
                continue
            node, j, best = root, i, 0
            while j < n and folded[j] in node:
                node = node[folded[j]]
                j += 1
                if "" in node and (j == n or not is_word(folded[j])):
                    best = j - i
            if not best:
                i += 1
                continue
            g = folded[i : i + best]
            out.append((i, i + best, g) if where is None else (where[i], where[i + best - 1] + 1, g))
            i += best
        return out

    return find


def re2_candidate(table: Iterable[str]) -> Callable[[str], Found] | None:
    """RE2 has no lookarounds and an ASCII \\w: whole words with a consumed boundary character on
    each side of a padded, folded text, \\w written as Unicode classes. Leftmost-first like re."""
    try:
        import re2  # type: ignore[import-not-found]
    except ImportError:
        return None
    from pipeline.text.matcher import _fold

    keys = sorted(table, key=lambda g: (-len(g), g))
    word = r"[\p{L}\p{N}_]"
    alts = "|".join(re2.escape(g) for g in keys)
    options = re2.Options()
    options.max_mem = 256 << 20
    pattern = re2.compile(rf"[^\p{{L}}\p{{N}}_]({alts})(?:[^\p{{L}}\p{{N}}_])", options)
    del word

    def find(text: str) -> Found:
        folded, where = _fold(text)
        padded = f" {folded} "
        out: Found = []
        pos = 0
        while True:
            m = pattern.search(padded, pos)
            if m is None:
                return out
            s, e = m.start(1) - 1, m.end(1) - 1
            g = folded[s:e]
            out.append((s, e, g) if where is None else (where[s], where[e - 1] + 1, g))
            pos = m.end(1)  # the boundary after it may be the next one's boundary before

    return find


# -- cases ---------------------------------------------------------------------------------------


def hostile() -> tuple[dict[str, str], str]:
    """Issue 25: 1,000 graphemes of 200 characters that almost match, over 100,000 characters."""
    return {("a " * 98 + f"b{i:03d}"): "x" for i in range(1000)}, "a " * 50000


def letters() -> tuple[dict[str, str], str]:
    """Occurrences everywhere, none a whole word: 200 graphemes "a" ... "a" * 200 over "a" * 100,000."""
    return {"a" * k: "x" for k in range(1, 201)}, "a" * 100_000


def dots_nested() -> tuple[dict[str, str], str]:
    """The most whole-word occurrences per position: "." ... "." * 200 over "." * 100,000 (every
    run of dots is whole words: a dot is not a letter)."""
    return {"." * k: "x" for k in range(1, 201)}, "." * 100_000


def dots_near_miss() -> tuple[dict[str, str], str]:
    """The longest walk from every position: "." * 199 + "x" over "." * 100,000."""
    return {"." * 199 + "x": "x"}, "." * 100_000


def every_word() -> tuple[dict[str, str], str]:
    """A match at every word: 50,000 of them (each a new search from where the last one ended)."""
    return {"a": "x"}, "a " * 50_000


def nested() -> tuple[dict[str, str], str]:
    """The worst case for reporting every occurrence: 100 graphemes, each a suffix of the next."""
    return {" ".join(["a"] * k): "x" for k in range(1, 101)}, "a " * 50000


def normal() -> tuple[dict[str, str], str]:
    """An ordinary lexicon job: 50 entries (names, acronyms, a phrase) over 5,000 characters."""
    lex = {f"Name{i}": f"name {i}" for i in range(40)}
    lex |= {"GIF": "jif", "SQL": "sequel", "New York": "the big apple", "W3C": "w three c", "nginx": "engine x"}
    lex |= {"Dr. Who": "doctor who", "C++": "c plus plus", "e.g.": "for example", "AT&T": "a t and t", "Qt": "cute"}
    sentence = "Name3 met Dr. Who in New York, e.g. at the GIF museum; SQL and C++ on AT&T's nginx. "
    return lex, (sentence * 60)[:5000]


def one_sentence() -> tuple[dict[str, str], str]:
    return {"GIF": "jif", "New York": "the big apple"}, "She sent a GIF from New York."


def _median(f: Callable[[], Any], repeat: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        f()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def matchers(repeat: int, skip_old: bool, only: list[str] | None = None) -> None:
    cases = {
        "hostile": hostile(),
        "letters": letters(),
        "nested": nested(),
        "every word": every_word(),
        "dots, nested": dots_nested(),
        "dots, near miss": dots_near_miss(),
        "normal": normal(),
        "one sentence": one_sentence(),
    }
    candidates: dict[str, Callable[[Iterable[str]], Any]] = {
        "re (old)": old_regex,
        "google-re2": re2_candidate,
        "Python trie": python_trie,
        "Aho-Corasick, every occurrence": aho_corasick_every,
        "Aho-Corasick, boundaries woven in (chosen)": aho_corasick,
    }
    print("| case | matcher | build (s) | find (s) | matches |")
    print("|---|---|---|---|---|")
    for case, (lex, text) in cases.items():
        if only and case not in only:
            continue
        table = lexicons.table(tuple(sorted(lex.items())))
        expected: Found | None = None
        for name, make in candidates.items():
            if name == "re (old)" and skip_old and case in ("hostile", "letters", "nested"):
                continue
            t0 = time.perf_counter()
            find = make(table)
            build = time.perf_counter() - t0
            if find is None:
                continue
            n = 1 if name == "re (old)" and case in ("hostile", "letters", "nested") else repeat
            found: Found = []

            def run(find: Callable[[str], Found] = find, text: str = text) -> None:
                nonlocal found
                found = find(text)

            wall, _ = _median(run, n)
            if expected is None:
                expected = found
            same = "" if found == expected else " (DIFFERS)"
            print(f"| {case} | {name} | {build:.3f} | {wall:.4f} | {len(found)}{same} |", flush=True)


def split(repeat: int) -> None:
    from pipeline.text import normalize

    old = re.compile(rf"([{normalize._LEAD}]*)(.*?)([{normalize._TRAIL}]*)", re.S)
    print("| word | old regex (s) | strips (s) |")
    print("|---|---|---|")
    for n in (10_000, 25_000, 50_000, 99_999):
        word = "." * n + "a"
        wall_old, _ = _median(lambda word=word: old.fullmatch(word), 1)
        wall_new, _ = _median(lambda word=word: normalize._split(word), repeat)
        print(f'| `"." * {n:,} + "a"` | {wall_old:.3f} | {wall_new:.6f} |', flush=True)


def sandbox(repeat: int) -> None:
    from pipeline.jobs.contract import Manifest
    from pipeline.text import script
    from pipeline.text.sandbox import TextSandbox

    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from test_longform import long_text  # type: ignore[import-not-found]

    jobs = {
        "one sentence": Manifest(text="She sent the 3 files from New York at 10:30 am.", voice="v"),
        "100,000 characters (eng)": Manifest(text=long_text(), voice="v"),
        "100,000 characters (auto)": Manifest(text=long_text(), voice="v", language="auto"),
    }

    def child_cpu(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def go() -> None:
        box = TextSandbox(20.0)
        t0 = time.perf_counter()
        await box.start()
        print(f"child start (spawn, imports, warm-up): {time.perf_counter() - t0:.2f} s wall")
        assert box.pid is not None
        print("| job | in-process wall (s) | in-process CPU (s) | child: wall (s) | worker CPU (s) | child CPU (s) |")
        print("|---|---|---|---|---|---|")
        for name, manifest in jobs.items():
            script.analyse(manifest, {})  # warm (lingua for auto) on both sides
            await box.analyse(manifest, {}, max_pause_s=10, max_total_pause_s=600, max_spoken=300_000)
            wall_in, cpu_in = _median(lambda m=manifest: script.analyse(m, {}), repeat)
            walls = []
            c_child, c = child_cpu(box.pid), time.process_time()  # in ticks: summed over the runs
            for _ in range(repeat):
                w = time.perf_counter()
                await box.analyse(manifest, {}, max_pause_s=10, max_total_pause_s=600, max_spoken=300_000)
                walls.append(time.perf_counter() - w)
            worker, child = (time.process_time() - c) / repeat, (child_cpu(box.pid) - c_child) / repeat
            print(
                f"| {name} | {wall_in:.4f} | {cpu_in:.4f} | {statistics.median(walls):.4f} | "
                f"{worker:.4f} | {child:.4f} |",
                flush=True,
            )
        box.close()

    asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["matchers", "split", "sandbox"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-old", action="store_true", help="leave out the old regex on the hostile cases")
    parser.add_argument("--case", action="append", help="only this case (matchers; may repeat)")
    args = parser.parse_args()
    if args.what == "matchers":
        matchers(args.repeat, args.skip_old, args.case)
    elif args.what == "split":
        split(args.repeat)
    else:
        sandbox(args.repeat)


if __name__ == "__main__":
    main()

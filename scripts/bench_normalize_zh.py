"""Measure our Chinese normalization against cn2an and WeTextProcessing; write the Chinese section of
docs/normalization.md.

All engines run the same table (``CHINESE_CASES`` in tests/unit/normalize_cases.py). cn2an and
WeTextProcessing (which needs pynini) are not app dependencies, so they live in a throwaway
virtualenv; run the script with either interpreter and each run adds what it could measure to
.cache/bench/normalize_zh.json, then renders the section from everything recorded there:

    .venv/bin/python scripts/bench_normalize_zh.py                          # ours
    python3.11 -m venv /tmp/zhbench && /tmp/zhbench/bin/pip install cn2an WeTextProcessing rjieba num2words
    PYTHONPATH=$PWD /tmp/zhbench/bin/python scripts/bench_normalize_zh.py --cold   # ours, cn2an, WeTextProcessing

``--cold`` also builds WeTextProcessing's grammars from scratch into a temporary folder (the wheel
ships them prebuilt; that load is measured every run). The section sits between the markers below
in docs/normalization.md; scripts/bench_normalize.py keeps it when it rewrites the English part.
"""

from __future__ import annotations

import importlib
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_normalize import env, score  # noqa: E402  (run as scripts/bench_normalize_zh.py)

from tests.unit.normalize_cases import CHINESE_CASES  # noqa: E402

RESULTS = ROOT / ".cache" / "bench" / "normalize_zh.json"
DOC = ROOT / "docs" / "normalization.md"
BEGIN, END = "<!-- chinese:begin (scripts/bench_normalize_zh.py) -->", "<!-- chinese:end -->"
CHARS = 100_000
_PUNCT = re.compile(r"[\s\W_]+")


def _loose(s: str) -> str:
    """Credit an engine for style: punctuation (full or half width), spaces, letter case, 两/二, 幺/一."""
    return _PUNCT.sub("", s).lower().replace("两", "二").replace("幺", "一")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _installed_mb(*dists: str) -> float | None:
    """What the distributions put on disk (their RECORD files), in MB."""
    from importlib.metadata import PackageNotFoundError, files

    total = 0
    try:
        for dist in dists:
            for f in files(dist) or ():
                path = Path(str(f.locate()))
                if path.is_file():
                    total += path.stat().st_size
    except PackageNotFoundError:
        return None
    return total / 1e6


def _per_case_ms(run: Callable[[str], str], rounds: int) -> float:
    t0 = time.perf_counter()
    for _ in range(rounds):
        for text, _ in CHINESE_CASES:
            run(text)
    return (time.perf_counter() - t0) * 1000 / (rounds * len(CHINESE_CASES))


# A realistic mixed text: news-like sentences with numbers of every kind, drawn with a fixed seed so
# that the numbers vary (the readings are cached per number and context; repeating one sentence would
# measure the cache, not the rules).
_CITIES = ("北京", "上海", "广州", "深圳", "成都", "杭州", "武汉", "西安", "南京", "重庆")
_TEMPLATES = (
    "{city}的常住人口约为{n4}万，面积{n5}平方公里，人均GDP达到{d2}万元。",
    "{y}年{m}月{d}日，{city}举行了第{n2}届国际马拉松比赛，共有{n5}名选手参加。",
    "据统计，今年前{m}个月，全市社会消费品零售总额同比增长{p}%，达到¥{d2}亿。",
    "会议定于{y}-{m2}-{d2d}上午{h}:{mm}在{city}召开，预计持续{k}个小时。",
    "我用 iPhone {n2} Pro 拍了{n3}张照片，又花了${n3}买了一个{n2}GB的 iPad。",
    "{city}明天最高气温{t}°C，最低气温-{k}°C，东北风{k}级，空气质量指数为{n3}。",
    "请拨打客服热线400-{n3}-{n4d}或手机{phone}，工作时间为每天{h}:00-{h2}:30。",
    "这辆车百公里加速只要{d1}秒，最高时速{n3}km/h，电池容量{n2}kWh，续航{n3}公里。",
    "他的身高是{d1}米，体重{n2}kg，每天跑{k}公里，坚持了{n2}年。",
    "公司第{k}季度营收为{d2}亿元，净利润率约为{d1}%，较去年同期提高了{k}个百分点。",
    "COVID-19疫情期间，约{p}%的员工选择远程办公，其中{k}/{k2}的人表示效率更高。",
    "比赛最终以{k}:{k}结束，全场共有{n5}名观众，门票价格从{n3}元到{n4}元不等。",
)


def _filler(rng: random.Random) -> str:
    k = rng.randint(1, 9)
    return rng.choice(_TEMPLATES).format(
        city=rng.choice(_CITIES),
        n2=rng.randint(2, 99),
        n3=rng.randint(100, 999),
        n4=rng.randint(1000, 9999),
        n4d=f"{rng.randint(0, 9999):04d}",
        n5=rng.randint(10000, 99999),
        d1=f"{rng.randint(1, 9)}.{rng.randint(0, 9)}",
        d2=f"{rng.randint(1, 99)}.{rng.randint(0, 99):02d}",
        y=rng.randint(1990, 2030),
        m=rng.randint(1, 12),
        m2=f"{rng.randint(1, 12):02d}",
        d=rng.randint(1, 28),
        d2d=f"{rng.randint(1, 28):02d}",
        h=rng.randint(8, 11),
        h2=rng.randint(17, 21),
        mm=f"{rng.randint(0, 59):02d}",
        p=f"{rng.randint(1, 99)}.{rng.randint(1, 9)}",
        t=rng.randint(10, 35),
        k=k,
        k2=k + rng.randint(1, 9),
        phone=f"1{rng.randint(3, 9)}{rng.randint(0, 999999999):09d}",
    )


def big_text() -> str:
    rng = random.Random(20261201)
    parts: list[str] = []
    size = 0
    while size < CHARS:
        parts.append(_filler(rng))
        size += len(parts[-1])
    return "".join(parts)[:CHARS]


def bench_ours() -> dict[str, Any]:
    t0 = time.perf_counter()
    module = importlib.import_module("pipeline.text.normalize")
    module.normalize("今天是2026年12月1日，气温是15度。", "zho")
    first = time.perf_counter() - t0
    normalize, spoken_text = module.normalize, module.spoken_text

    def run(text: str) -> str:
        return spoken_text(normalize(text, "zho"))

    outputs = [run(text) for text, _ in CHINESE_CASES]
    per_case_ms = _per_case_ms(run, 20)
    big = big_text()
    zh = importlib.import_module("pipeline.text.zh")
    for cached in (zh._reading, zh._cut, zh._cardinal):  # the first run sees every number for the first time
        cached.cache_clear()
    t0 = time.perf_counter()
    spoken_text(normalize(big, "zho"))
    cold = time.perf_counter() - t0
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        tokens = normalize(big, "zho")
        spoken_text(tokens)
        runs.append(time.perf_counter() - t0)
    digits_left = sum(any("0" <= c <= "9" for c in t.spoken) for t in tokens)
    return {
        "engine": "ours",
        "version": "pipeline.text.zh + rjieba " + _version("rjieba"),
        "first_construction_s": first,
        "per_case_ms": per_case_ms,
        "chars_100k_s": statistics.median(runs),
        "chars_100k_min_s": min(runs),
        "chars_100k_cold_s": cold,
        "chars_100k_tokens": len(tokens),
        "chars_100k_digits_left": digits_left,
        **score(outputs, CHINESE_CASES, _loose),
        **env(),
    }


def bench_cn2an() -> dict[str, Any] | None:
    t0 = time.perf_counter()
    try:
        import cn2an
    except Exception as exc:
        print(f"cn2an is not importable with {sys.executable}: {exc!r}", file=sys.stderr)
        return None

    def run(text: str) -> str:
        return cn2an.transform(text, "an2cn")

    run("今天是2026年12月1日，气温是15度。")
    first = time.perf_counter() - t0
    outputs = [run(text) for text, _ in CHINESE_CASES]
    per_case_ms = _per_case_ms(run, 5)
    big = big_text()
    t0 = time.perf_counter()
    run(big)
    return {
        "engine": "cn2an",
        "version": "cn2an " + _version("cn2an"),
        "installed_mb": _installed_mb("cn2an", "proces"),
        "first_construction_s": first,
        "per_case_ms": per_case_ms,
        "chars_100k_s": time.perf_counter() - t0,
        **score(outputs, CHINESE_CASES, _loose),
        **env(),
    }


def bench_wetext(cold: bool) -> dict[str, Any] | None:
    t0 = time.perf_counter()
    try:
        from tn.chinese.normalizer import Normalizer
    except Exception as exc:  # pynini is not an app dependency
        print(f"WeTextProcessing is not importable with {sys.executable}: {exc!r}", file=sys.stderr)
        return None
    import logging

    logging.getLogger("wetext").setLevel(logging.WARNING)
    normalizer = Normalizer()  # the grammars the wheel ships
    loaded = time.perf_counter() - t0
    compiled = None
    if cold:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            Normalizer(cache_dir=tmp, overwrite_cache=True)
            compiled = time.perf_counter() - t0

    def run(text: str) -> str:
        return normalizer.normalize(text)

    outputs = [run(text) for text, _ in CHINESE_CASES]
    per_case_ms = _per_case_ms(run, 2)
    previous = _previous().get("wetext") or {}
    return {
        "engine": "wetext",
        "version": "WeTextProcessing " + _version("WeTextProcessing") + ", pynini " + _version("pynini"),
        "installed_mb": _installed_mb("WeTextProcessing", "pynini"),
        "first_construction_s": loaded,
        "compile_s": compiled if compiled is not None else previous.get("compile_s"),
        "per_case_ms": per_case_ms,
        **score(outputs, CHINESE_CASES, _loose),
        **env(),
    }


def _previous() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


_NAMES = {"ours": "ours", "cn2an": "cn2an", "wetext": "WeTextProcessing"}


def render(results: dict[str, Any]) -> str:
    ours, cn2an, wetext = results.get("ours"), results.get("cn2an"), results.get("wetext")
    cases = len(CHINESE_CASES)
    lines = [
        BEGIN,
        "## Chinese",
        "",
        "Written by `scripts/bench_normalize_zh.py` from what it measured; regenerate with the commands in its",
        f"docstring. Every engine runs the same table of {cases} Chinese cases (`CHINESE_CASES` in",
        "`tests/unit/normalize_cases.py`, mixed Chinese-English included). *Loose* compares the outputs without",
        "punctuation (full or half width), spaces and letter case, and takes 两 for 二 and 幺 for 一, so an",
        'engine is not penalised for style (WeTextProcessing turns "，" into ","; 幺三八 is a fine way',
        "to read a phone number). As for English, the table was written alongside our rules, so our score is by",
        "construction; the misses below show what the others would read differently for a client. Times are",
        "wall-clock on the machines named below the table and vary between runs (a shared machine); compare",
        "them within one table, not across documents.",
        "",
        "| engine | exact | loose | ms per case | set-up | 100,000 characters |",
        "|---|---|---|---|---|---|",
    ]
    if ours:
        lines.append(
            f"| ours ({ours['version']}) | {ours['exact']}/{cases} | {ours['loose']}/{cases} | "
            f"{ours['per_case_ms']:.3f} | {ours['first_construction_s']:.2f} s (import + jieba dictionary + "
            f"first call) | {ours['chars_100k_cold_s']:.2f} s first run, {ours['chars_100k_s']:.2f} s after "
            f"({ours['chars_100k_tokens']} tokens, {ours['chars_100k_digits_left']} with a digit left) |"
        )
    else:
        lines.append("| ours | not measured | | | | |")
    if cn2an:
        lines.append(
            f'| cn2an `transform(text, "an2cn")` ({cn2an["version"]}) | {cn2an["exact"]}/{cases} | '
            f"{cn2an['loose']}/{cases} | {cn2an['per_case_ms']:.3f} | {cn2an['first_construction_s']:.2f} s "
            f"(import + first call) | {cn2an['chars_100k_s']:.2f} s (a string, no offsets) |"
        )
    else:
        lines.append("| cn2an | not measured (not importable here) | | | | |")
    if wetext:
        compile_s = wetext.get("compile_s")
        built = f"; {compile_s:.0f} s to build them from the grammars" if compile_s is not None else ""
        lines.append(
            f"| WeTextProcessing `Normalizer()` ({wetext['version']}) | {wetext['exact']}/{cases} | "
            f"{wetext['loose']}/{cases} | {wetext['per_case_ms']:.2f} | {wetext['first_construction_s']:.2f} s "
            f"(import + load the shipped FSTs{built}) | not measured (sentence at a time) |"
        )
    else:
        lines.append("| WeTextProcessing | not measured (not importable here) | | | | |")
    lines.append("")
    for r in (ours, cn2an, wetext):
        if r:
            lines.append(
                f"*{_NAMES[r['engine']]}*: Python {r['python']} on {r['machine']}, {r['cpus']} CPU cores, {r['when']}."
            )
    lines.append("")
    for r in (cn2an, wetext, ours):
        if r and r["misses"]:
            name = _NAMES[r["engine"]]
            lines += [f"### Where {name} differs ({len(r['misses'])} of {cases}, loose comparison)", ""]
            lines += [f"| input | expected | {name} |", "|---|---|---|"]
            for miss in r["misses"]:
                cells = [str(miss[k]).replace("|", "\\|") for k in ("input", "expected", "got")]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["### Choice: our rules on rjieba", ""]
    facts = []
    if ours:
        facts.append(
            f"Ours matched {ours['loose']}/{cases} cases at {ours['per_case_ms']:.3f} ms per case and reads "
            f"{CHARS:,} characters of mixed text in one thread in {ours['chars_100k_cold_s']:.2f} s the first "
            f"time (every number new to its cache) and {ours['chars_100k_s']:.2f} s after (median of 5; best "
            f"{ours['chars_100k_min_s']:.2f} s)."
        )
    if cn2an:
        facts.append(f"cn2an matched {cn2an['loose']}/{cases} at {cn2an['per_case_ms']:.3f} ms per case.")
    if wetext:
        facts.append(
            f"WeTextProcessing matched {wetext['loose']}/{cases} at {wetext['per_case_ms']:.2f} ms per case"
            + (
                f", and building its grammars took {wetext['compile_s']:.0f} s"
                if wetext.get("compile_s") is not None
                else ""
            )
            + "."
        )
    lines += [
        " ".join(facts),
        "",
        "- **Offsets and words.** Both libraries return a new string. The pipeline needs one token per word with",
        "  exact offsets into the client's text, for word timings; ours segments first (rjieba, the segmenter",
        "  f5-tts itself uses) and reads each number in place, so there is nothing to re-align.",
        "- **Readings.** cn2an's `an2cn` turns digit runs into numerals and leaves the rest: dates with dashes or",
        "  slashes, times, currency symbols, units and phone numbers come out wrong or half-read (its misses",
        "  above). WeTextProcessing reads most of the table; some of its misses are defensible alternatives",
        "  (三点五零元, 负十摄氏度, 110 read 幺幺零, 12345678 as a cardinal), others are errors a client would",
        "  hear (5-10% as 五减百分之十, mAh as 米Ah, COVID-19 as 负十九, a US date, ¥ before 亿).",
        "- **Weight.** "
        + (
            f"WeTextProcessing brings pynini/OpenFst, {wetext['installed_mb']:.0f} MB of native libraries and"
            " FSTs on disk, "
            if wetext and wetext.get("installed_mb")
            else "WeTextProcessing brings pynini/OpenFst, a native stack, "
        )
        + "which the worker image does not carry; "
        + (
            f"cn2an is pure Python ({cn2an['installed_mb']:.1f} MB) but covers only numerals. "
            if cn2an and cn2an.get("installed_mb")
            else "cn2an is pure Python but covers only numerals. "
        )
        + "Ours adds no dependency: rjieba and pypinyin are already there for f5-tts.",
        "- **Lexicon first.** Client pronunciations (pinyin aliases included) must win over every rule; with",
        "  our tokens that is a segmentation step, as in English.",
        "- **Cost.** The rules are ours to maintain; `CHINESE_CASES` is where a client's misreading becomes a case.",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_doc(section: str) -> None:
    doc = DOC.read_text() if DOC.exists() else ""
    if BEGIN in doc and END in doc:
        head, _, rest = doc.partition(BEGIN)
        _, _, tail = rest.partition(END)
        doc = head + section.rstrip("\n") + tail
    else:
        doc = doc.rstrip("\n") + "\n\n" + section
    DOC.write_text(doc if doc.endswith("\n") else doc + "\n")


def main() -> int:
    cold = "--cold" in sys.argv[1:]
    results = _previous()
    ours = bench_ours()
    results["ours"] = ours
    print(
        f"ours: {ours['exact']}/{ours['cases']} exact, {ours['loose']}/{ours['cases']} loose, "
        f"{ours['per_case_ms']:.3f} ms/case, first {ours['first_construction_s']:.2f} s, "
        f"{CHARS} chars in {ours['chars_100k_cold_s']:.3f} s cold, {ours['chars_100k_s']:.3f} s warm "
        f"(best {ours['chars_100k_min_s']:.3f} s), "
        f"{ours['chars_100k_tokens']} tokens, {ours['chars_100k_digits_left']} with digits"
    )
    for name, bench in (("cn2an", bench_cn2an), ("wetext", lambda: bench_wetext(cold))):
        r = bench()
        if r:
            results[name] = r
            print(
                f"{name}: {r['exact']}/{r['cases']} exact, {r['loose']}/{r['cases']} loose, "
                f"{r['per_case_ms']:.3f} ms/case, first {r['first_construction_s']:.2f} s"
                + (f", compile {r['compile_s']:.1f} s" if r.get("compile_s") is not None else "")
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    write_doc(render(results))
    print(f"wrote {DOC.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

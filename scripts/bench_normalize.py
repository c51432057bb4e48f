"""Measure our text normalization against NVIDIA NeMo text processing and write docs/normalization.md.

Both run the same English case table (tests/unit/normalize_cases.py). NeMo needs pynini, which the
app does not depend on, so it lives in its own virtualenv; run the script with either interpreter
and each run adds what it could measure to .cache/bench/normalize.json, then renders the doc from
everything recorded there:

    .venv/bin/python scripts/bench_normalize.py                     # ours
    python3.11 -m venv /tmp/nemo-venv && /tmp/nemo-venv/bin/pip install nemo-text-processing num2words
    PYTHONPATH=$PWD /tmp/nemo-venv/bin/python scripts/bench_normalize.py --cold   # ours and NeMo

``--cold`` empties NeMo's grammar cache (.cache/nemo-tn) first, so its first construction compiles.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.unit.normalize_cases import ENGLISH_CASES  # noqa: E402

RESULTS = ROOT / ".cache" / "bench" / "normalize.json"
DOC = ROOT / "docs" / "normalization.md"
NEMO_CACHE = ROOT / ".cache" / "nemo-tn"
CHARS = 100_000


def _loose(s: str) -> str:
    """Credit an engine for style: casing, punctuation, hyphens, "and" in numbers, "a m" vs "AM"."""
    words = [w for w in re.sub(r"[^\w']+", " ", s.lower().replace("-", " ")).split() if w != "and"]
    out: list[str] = []
    spelled = False  # out[-1] was built from single letters: "a m" == "am", "h t t p s" == "https"
    for w in words:
        single = len(w) == 1 and w.isalpha()
        if single and spelled:
            out[-1] += w
        else:
            out.append(w)
        spelled = single
    return " ".join(out)


def score(
    outputs: list[str], cases: list[tuple[str, str]] = ENGLISH_CASES, loose_form: Callable[[str], str] = _loose
) -> dict[str, Any]:
    """Cases right, exactly and loosely (``loose_form`` of both sides equal), and the misses."""
    exact = [o == e for o, (_, e) in zip(outputs, cases, strict=True)]
    loose = [loose_form(o) == loose_form(e) for o, (_, e) in zip(outputs, cases, strict=True)]
    misses = [
        {"input": t, "expected": e, "got": o} for o, (t, e), ok in zip(outputs, cases, loose, strict=True) if not ok
    ]
    return {"cases": len(cases), "exact": sum(exact), "loose": sum(loose), "misses": misses}


def env() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "interpreter": sys.executable,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def bench_ours() -> dict[str, Any]:
    t0 = time.perf_counter()
    module = importlib.import_module("pipeline.text.normalize")
    module.normalize("It costs $3.50 on 12/25/2026.")
    first = time.perf_counter() - t0
    normalize, spoken_text = module.normalize, module.spoken_text

    outputs = [spoken_text(normalize(text)) for text, _ in ENGLISH_CASES]
    rounds = 20
    t0 = time.perf_counter()
    for _ in range(rounds):
        for text, _ in ENGLISH_CASES:
            normalize(text)
    per_case_ms = (time.perf_counter() - t0) * 1000 / (rounds * len(ENGLISH_CASES))

    parts: list[str] = []
    size = 0
    i = 0
    while size < CHARS:
        text = ENGLISH_CASES[i % len(ENGLISH_CASES)][0]
        parts.append(text)
        size += len(text) + 1
        i += 1
    big = " ".join(parts)[:CHARS]
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        tokens = normalize(big)
        runs.append(time.perf_counter() - t0)
    return {
        "engine": "ours",
        "version": "pipeline.text.normalize + num2words " + _version("num2words"),
        "first_construction_s": first,
        "per_case_ms": per_case_ms,
        "chars_100k_s": statistics.median(runs),
        "chars_100k_tokens": len(tokens),
        **score(outputs),
        **env(),
    }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def bench_nemo() -> dict[str, Any] | None:
    try:
        from nemo_text_processing.text_normalization.normalize import Normalizer
    except Exception as exc:  # not installed here: pynini and friends are not app dependencies
        print(f"NeMo text processing is not importable with {sys.executable}: {exc!r}", file=sys.stderr)
        return None
    NEMO_CACHE.mkdir(parents=True, exist_ok=True)
    cold = not any(NEMO_CACHE.iterdir())
    t0 = time.perf_counter()
    normalizer = Normalizer(input_case="cased", lang="en", cache_dir=str(NEMO_CACHE))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    normalizer = Normalizer(input_case="cased", lang="en", cache_dir=str(NEMO_CACHE))
    cached = time.perf_counter() - t0

    def run(text: str) -> str:
        return normalizer.normalize(text, verbose=False, punct_post_process=True)

    outputs = [run(text) for text, _ in ENGLISH_CASES]  # also the warm-up
    t0 = time.perf_counter()
    for text, _ in ENGLISH_CASES:
        run(text)
    per_case_ms = (time.perf_counter() - t0) * 1000 / len(ENGLISH_CASES)
    return {
        "engine": "nemo",
        "version": "nemo-text-processing " + _version("nemo_text_processing") + ", pynini " + _version("pynini"),
        "first_construction_s": first if cold else None,
        "cached_construction_s": cached,
        "per_case_ms": per_case_ms,
        **score(outputs),
        **env(),
    }


def render(results: dict[str, Any]) -> str:
    ours, nemo = results.get("ours"), results.get("nemo")
    cases = len(ENGLISH_CASES)
    lines = [
        "# Text normalization: measured, chosen, justified",
        "",
        "Written by `scripts/bench_normalize.py` from what it measured; regenerate with the commands in",
        f"its docstring. Both engines run the same table of {cases} English cases (`tests/unit/normalize_cases.py`).",
        "*Exact* means the spoken text equals the expected text character for character; *loose* compares",
        'lowercased words without punctuation, hyphens or the word "and", with spelled letters run',
        'together, so an engine is not penalised for style ("december", "one hundred and five", "AM" for',
        '"a m"). The table was written alongside our rules, so our exact score is by construction;',
        "NeMo's misses below show what would read differently for a client.",
        "",
        "| engine | exact | loose | ms per case | first construction | 100,000 characters |",
        "|---|---|---|---|---|---|",
    ]
    if ours:
        lines.append(
            f"| ours ({ours['version']}) | {ours['exact']}/{ours['cases']} | {ours['loose']}/{ours['cases']} | "
            f"{ours['per_case_ms']:.3f} | {ours['first_construction_s']:.2f} s (import + first call) | "
            f"{ours['chars_100k_s']:.2f} s ({ours['chars_100k_tokens']} tokens) |"
        )
    if nemo:
        first = nemo.get("first_construction_s")
        built = f"{first:.1f} s (grammar compile), then " if first is not None else ""
        lines.append(
            f"| NeMo ({nemo['version']}) | {nemo['exact']}/{nemo['cases']} | {nemo['loose']}/{nemo['cases']} | "
            f"{nemo['per_case_ms']:.1f} | {built}{nemo['cached_construction_s']:.1f} s from its cache | "
            "not measured (sentence at a time) |"
        )
    else:
        lines.append(
            "| NeMo | not measured | | | | |",
        )
    lines.append("")
    for r in (ours, nemo):
        if r:
            lines.append(
                f"*{r['engine']}*: Python {r['python']} on {r['machine']}, {r['cpus']} CPU cores, {r['when']}."
            )
    lines.append("")
    if not nemo:
        lines += [
            "NeMo was not measured: `nemo_text_processing` could not be imported by the interpreters this",
            "script ran with. Install it in a separate virtualenv (see the script) and run the script there.",
            "",
        ]
    if nemo and nemo["misses"]:
        lines += [f"## Where NeMo differs ({len(nemo['misses'])} of {cases}, loose comparison)", ""]
        lines += ["| input | expected | NeMo |", "|---|---|---|"]
        for miss in nemo["misses"]:
            cells = [str(miss[k]).replace("|", "\\|") for k in ("input", "expected", "got")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if ours and ours["misses"]:
        lines += [f"## Where ours differs ({len(ours['misses'])})", ""]
        lines += [f"- `{m['input']}` -> `{m['got']}` (expected `{m['expected']}`)" for m in ours["misses"]]
        lines.append("")
    lines += ["## Choice: our rules on num2words", ""]
    facts = []
    if ours and nemo:
        facts.append(
            f"On this table ours matched {ours['loose']}/{cases} cases and NeMo {nemo['loose']}/{cases} (loose), "
            f"at {ours['per_case_ms']:.3f} ms against {nemo['per_case_ms']:.1f} ms per case"
            + (
                f", and NeMo's first construction compiled its grammars for {nemo['first_construction_s']:.1f} s"
                if nemo.get("first_construction_s") is not None
                else ""
            )
            + "."
        )
    elif ours:
        facts.append(f"Ours matched {ours['loose']}/{cases} cases at {ours['per_case_ms']:.3f} ms per case.")
    if ours:
        facts.append(f"Ours normalizes {CHARS:,} characters in {ours['chars_100k_s']:.2f} s in one thread.")
    lines += [
        " ".join(facts),
        "",
        "- **Offsets.** The pipeline points every spoken word's timing back at what the client wrote.",
        "  Ours returns tokens with exact character offsets (`pipeline.text.tokens.Token`); NeMo rewrites",
        "  a whole sentence into a new string and gives no mapping back, so we would have to re-align its",
        "  output to the input ourselves, which is the hard part of the problem.",
        "- **Lexicon first.** Client lexicons must win over every rule; with our tokens that is a",
        "  segmentation step, with NeMo it would need a custom whitelist grammar per job.",
        "- **Speed and weight.** No grammar compilation and no `pynini`/OpenFst native dependency in the",
        "  worker image; `num2words` is pure Python.",
        "- **Cost.** Our rules are ours to maintain and cover English fully and six other languages at a",
        "  basic level (numbers, ordinals, percentages, euros); NeMo has richer grammars for some",
        "  languages. The table in `tests/unit/normalize_cases.py` is the place to add a case when a",
        "  client reports a misreading.",
        "",
    ]
    return "\n".join(lines)


def _chinese_section() -> str:
    """The Chinese section that scripts/bench_normalize_zh.py keeps at the end of the same doc."""
    doc = DOC.read_text() if DOC.exists() else ""
    start = doc.find("<!-- chinese:begin")
    return "\n" + doc[start:] if start >= 0 else ""


def main() -> int:
    if "--cold" in sys.argv[1:]:  # measure NeMo's grammar compilation, not a load from its cache
        shutil.rmtree(NEMO_CACHE, ignore_errors=True)
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    ours = bench_ours()
    results["ours"] = ours
    print(
        f"ours: {ours['exact']}/{ours['cases']} exact, {ours['loose']}/{ours['cases']} loose, "
        f"{ours['per_case_ms']:.3f} ms/case, first {ours['first_construction_s']:.2f} s, "
        f"{CHARS} chars in {ours['chars_100k_s']:.3f} s"
    )
    nemo = bench_nemo()
    if nemo:
        results["nemo"] = nemo
        first = nemo["first_construction_s"]
        print(
            f"nemo: {nemo['exact']}/{nemo['cases']} exact, {nemo['loose']}/{nemo['cases']} loose, "
            f"{nemo['per_case_ms']:.1f} ms/case, first {first if first is None else round(first, 1)} s, "
            f"cached {nemo['cached_construction_s']:.1f} s"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    DOC.write_text(render(results) + _chinese_section())
    print(f"wrote {DOC.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time to first audio through the streaming speech API, and what a poll for new chunks costs.

    python -m scripts.latency.ttfa            # prints JSON

A 10-sentence request through OpenAI's client (``with_streaming_response``, ``pcm``): the time
to the first audio byte against the time to the last, per request; the same requests as FLAC
(not streamed: the whole job first) for comparison. Then the cost of one poll of the stream
(``pipeline.web.stream``: a LIST of the job's chunk prefix after the last chunk, plus a status
GET) on the same LocalStack.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from datetime import datetime
from typing import Any

from scripts.latency.common import VOICE, Stack, stack

TEN_SENTENCES = " ".join(
    [
        "The morning train left the station a little after seven.",
        "Most of the passengers were still half asleep.",
        "A child by the window counted the bridges aloud.",
        "Her father pretended not to hear, and smiled.",
        "Outside, the fields were white with frost.",
        "Somewhere near the river, the brakes began to sing.",
        "Nobody looked up from their newspapers.",
        "The conductor walked the length of the carriage twice.",
        "At the last stop, the doors opened onto snow.",
        "And that was how the long winter began.",
    ]
)


def _request(openai: Any, url: str, fmt: str, s: Stack) -> dict[str, float]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    t0 = time.perf_counter()
    first = None
    size = 0
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=VOICE, input=TEN_SENTENCES, response_format=fmt
    ) as response:
        job_id = response.headers["x-job-id"]
        for part in response.iter_bytes():
            if first is None and part:
                first = time.perf_counter() - t0
            size += len(part)
    last = time.perf_counter() - t0
    status = json.loads(s.run("status", "--json", job_id))
    started, finished = (datetime.fromisoformat(status[k]) for k in ("started_at", "finished_at"))
    return {"first_s": first or last, "last_s": last, "bytes": size, "job_s": (finished - started).total_seconds()}


async def _poll_cost(s: Stack, rounds: int = 100) -> dict[str, float]:
    import os

    from pipeline.client import jobs as client
    from pipeline.cloud.store import open_store
    from pipeline.config import Settings
    from pipeline.jobs.chunks import ChunkStore

    os.environ.update({k: v for k, v in s.env.items() if k.startswith(("AWS_", "TTS_"))})
    settings = Settings()
    async with open_store(settings, "bench") as store:
        job = client.new_job_id()
        await store.put_bytes(f"inbox/{job}.json", b"{}", "application/json")
        chunks = ChunkStore(store, job)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await chunks.listed(after=3)
            await client.get_status(store, job)
            times.append((time.perf_counter() - t0) * 1000)
    return {"poll_ms_mean": statistics.mean(times), "poll_ms_p95": sorted(times)[int(0.95 * len(times))]}


def run(requests: int = 5) -> dict[str, Any]:
    import openai

    with stack("bench-ttfa") as s:
        s.worker()
        url = s.console()
        _request(openai, url, "pcm", s)  # warm: the first job pays one-off costs (voice cache, imports)
        streamed, whole = [], []
        for _ in range(requests):  # alternated, so a drift in the machine's load hits both alike
            streamed.append(_request(openai, url, "pcm", s))
            whole.append(_request(openai, url, "flac", s))
        poll = asyncio.run(_poll_cost(s))
    ratios = [r["first_s"] / r["last_s"] for r in streamed]
    return {
        "requests": requests,
        "input_chars": len(TEN_SENTENCES),
        "streamed_first_s_median": statistics.median(r["first_s"] for r in streamed),
        "streamed_last_s_median": statistics.median(r["last_s"] for r in streamed),
        "first_over_last_median": statistics.median(ratios),
        "first_over_last_max": max(ratios),
        "flac_whole_s_median": statistics.median(r["last_s"] for r in whole),
        # The worker's own time (status started_at -> finished_at): what streaming costs the job.
        "streamed_job_s_median": statistics.median(r["job_s"] for r in streamed),
        "flac_job_s_median": statistics.median(r["job_s"] for r in whole),
        **poll,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))

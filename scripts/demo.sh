#!/usr/bin/env bash
# `make demo`: one voice-cloning job through the whole pipeline, the way a client drives it.
#
#   LocalStack (unless AWS_ENDPOINT_URL is already set) -> bootstrap -> model bundle in the S3
#   model cache -> `aws s3 cp` a voice and a manifest -> worker -> status + result from S3.
#
# Everything it starts, it stops. Override the defaults with DEMO_TEXT, DEMO_VOICE (a local audio
# file), DEMO_REF_TEXT, DEMO_PORT. `scripts/demo.sh --console` (`make console`) then keeps a worker
# running and serves the console (http://127.0.0.1:8080/) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

TTS=.venv/bin/tts-pipeline
AWS=localstack/.venv/bin/aws
REAL_MODEL=F5TTS_v1_Base
PORT=${DEMO_PORT:-4566}
F5_EXAMPLE=$(.venv/bin/python -c "from importlib.resources import files; print(files('f5_tts') / 'infer/examples/basic/basic_ref_en.wav')")
VOICE_FILE=${DEMO_VOICE:-$F5_EXAMPLE}
REF_TEXT=${DEMO_REF_TEXT-Some call me nature, others call me mother nature.}
TEXT=${DEMO_TEXT:-Hello from the event-driven voice cloning pipeline. This sentence was dropped into an S3 inbox, queued, and spoken by a worker.}
JOB_ID=demo-$(date -u +%Y%m%d-%H%M%S)
BUCKET=${TTS_BUCKET:-tts-jobs}
VOICE_KEY=voices/demo-voice.${VOICE_FILE##*.}
mkdir -p out

export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
export TTS_CACHE_DIR=${TTS_CACHE_DIR:-$PWD/.cache/tts-pipeline}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

worker_pid=""
started_localstack=0
cleanup() {
  if [[ -n $worker_pid ]] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  if ((started_localstack)); then
    $TTS localstack stop --port "$PORT" >/dev/null || true
  fi
}
trap cleanup EXIT

if [[ -z ${AWS_ENDPOINT_URL:-} ]]; then
  export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
  if $TTS localstack status >/dev/null 2>&1; then
    step "Using the LocalStack already running at $AWS_ENDPOINT_URL"
  else
    step "Starting LocalStack (host mode, no Docker) on $AWS_ENDPOINT_URL"
    $TTS localstack start --port "$PORT"
    started_localstack=1
  fi
else
  step "Using AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL"
fi

step "Bootstrap: bucket, queue, DLQ, S3 -> SQS notification (idempotent)"
$TTS bootstrap

step "Model bundle"
if $TTS model list | cut -f1 | grep -qx "$REAL_MODEL"; then
  export TTS_MODEL_NAME=$REAL_MODEL
  echo "Real $REAL_MODEL bundle found in the S3 model cache: using it."
else
  export TTS_MODEL_NAME=f5tts-tiny
  if [[ ! -f .cache/tiny-bundle/bundle.json ]]; then
    $TTS model build-tiny .cache/tiny-bundle
  fi
  $TTS model push .cache/tiny-bundle
  cat <<'BANNER'

  ****************************************************************************************
  *  No real F5TTS_v1_Base bundle in the S3 model cache: this demo runs the TINY bundle,  *
  *  randomly initialised. The pipeline is real end to end, but the AUDIO IS NOISE.       *
  *  Push real weights with `tts-pipeline model push DIR` to hear a cloned voice.         *
  ****************************************************************************************
BANNER
fi

step "Client side, with the AWS CLI: upload the reference voice and drop the job manifest"
$AWS s3 cp --only-show-errors "$VOICE_FILE" "s3://$BUCKET/$VOICE_KEY"
.venv/bin/python - "$TEXT" "$REF_TEXT" "$VOICE_KEY" >"out/$JOB_ID.json" <<'PY'
import json, sys
text, ref_text, voice = sys.argv[1:4]
print(json.dumps({"text": text, "voice": voice, "ref_text": ref_text,
                  "seed": 42, "subtitles": ["srt", "vtt"]}, indent=2))
PY
cat "out/$JOB_ID.json"
$AWS s3 cp --only-show-errors "out/$JOB_ID.json" "s3://$BUCKET/inbox/$JOB_ID.json"
echo "uploaded s3://$BUCKET/inbox/$JOB_ID.json"

step "Worker: loads the model once, consumes the S3 event from SQS"
$TTS worker --idle-exit 300 > "out/$JOB_ID.worker.log" 2>&1 &
worker_pid=$!
if ! $TTS wait "$JOB_ID" --timeout 900 > "out/$JOB_ID.status.json"; then
  cat "out/$JOB_ID.status.json"
  echo "--- worker log ---"; tail -n 40 "out/$JOB_ID.worker.log"
  exit 1
fi
kill -TERM "$worker_pid"; wait "$worker_pid" || true; worker_pid=""
grep -E "ready:|RANDOM WEIGHTS|result published" "out/$JOB_ID.worker.log" | cut -c1-220

step "Status (an S3 read: tts-pipeline status $JOB_ID)"
cat "out/$JOB_ID.status.json"

step "Result (tts-pipeline result $JOB_ID --out out/$JOB_ID.wav)"
$TTS result "$JOB_ID" --out "out/$JOB_ID.wav" | tee "out/$JOB_ID.result.json"
# The result names its outputs (outputs/<job_id>/attempt-<n>.*): read the subtitles' URI from it.
SRT_URI=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["subtitles"]["srt"])' "out/$JOB_ID.result.json")
$AWS s3 cp --only-show-errors "$SRT_URI" "out/$JOB_ID.srt"

.venv/bin/python - "out/$JOB_ID.result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["timings_ms"]
print(f"\nCOMPLETED {r['job_id']}: {r['audio']['duration_s']:.2f}s of {r['audio']['format']} at "
      f"{r['audio']['sample_rate']} Hz, {len(r['word_timings'] or [])} word timings, model "
      f"{r['model']['name']}/{r['model']['version']} on {r['model']['device']}")
print("stage timings (ms): " + ", ".join(f"{k}={v:.0f}" for k, v in t.items()))
for w in r["warnings"]:
    print(f"WARNING {w['code']}: {w['message']}")
PY
echo "audio: out/$JOB_ID.wav   subtitles: out/$JOB_ID.srt   worker log: out/$JOB_ID.worker.log"

CONSOLE_URL="http://${TTS_CONSOLE_HOST:-127.0.0.1}:${TTS_CONSOLE_PORT:-8080}"
if [[ ${1:-} != --console ]]; then
  echo "see it in a browser: make console   (a worker and the console at $CONSOLE_URL/jobs/$JOB_ID)"
  exit 0
fi
step "Console: $CONSOLE_URL/jobs/$JOB_ID (OpenAI-compatible API at $CONSOLE_URL/v1); Ctrl-C stops everything"
$TTS worker > "out/console.worker.log" 2>&1 &
worker_pid=$!
$TTS console

#!/bin/sh
# Container entry point: serve PLUGIN on 0.0.0.0:8080. With OPENAI_API_KEY the live model is
# used; without it, the shipped demo recording is replayed (ask about the weather in Paris).
set -e
PLUGIN=${PLUGIN:-/app/libweather_agent.so}
if [ -z "$OPENAI_API_KEY" ] && [ -z "$MYAGENT_NO_REPLAY" ]; then
  echo "OPENAI_API_KEY is not set: replaying /app/recordings/weather-demo.jsonl" >&2
  set -- --replay /app/recordings/weather-demo.jsonl "$@"
fi
exec /app/myagent-host serve "$PLUGIN" --host 0.0.0.0 --port 8080 "$@"

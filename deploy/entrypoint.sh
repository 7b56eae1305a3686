#!/bin/sh
# Container entry point: serve PLUGIN on 0.0.0.0:8080. With OPENAI_API_KEY the live model is
# used; without it, the shipped demo recording is replayed (ask about the weather in Paris).
set -e
PLUGIN=${PLUGIN:-/app/libweather_agent.so}
# docker-compose publishes nginx on ${MYAGENT_PUBLISH:-127.0.0.1}; beyond loopback, refuse to
# start without tokens (anyone could use the agent, and the model key behind it).
case "${MYAGENT_PUBLISH:-127.0.0.1}" in
  127.*|localhost|::1) ;;
  *) if [ -z "$MYAGENT_AUTH_TOKENS" ]; then
       echo "error: MYAGENT_PUBLISH=$MYAGENT_PUBLISH publishes the agent beyond this machine; set MYAGENT_AUTH_TOKENS too" >&2
       exit 1
     fi ;;
esac
if [ -z "$OPENAI_API_KEY" ] && [ -z "$MYAGENT_NO_REPLAY" ]; then
  echo "OPENAI_API_KEY is not set: replaying /app/recordings/weather-demo.jsonl" >&2
  set -- --replay /app/recordings/weather-demo.jsonl "$@"
fi
exec /app/myagent-host serve "$PLUGIN" --host 0.0.0.0 --port 8080 "$@"

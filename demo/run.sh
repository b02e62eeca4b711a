#!/usr/bin/env bash
# The adapterctl lifecycle on the embedded SQLite default with a tiny local model.
# Run through `make demo`, which puts .venv/bin on PATH. Everything lives in .demo/ (deleted first).
set -euo pipefail
cd "$(dirname "$0")/.."

export ADAPTERCTL_HOME="$PWD/.demo/home"
export ADAPTERCTL_USER="demo-operator"
unset ADAPTERCTL_DB_URL
rm -rf .demo
mkdir -p .demo

step() {
    printf '\n\033[1m== %s\033[0m\n$' "$1"
    printf ' %q' "${@:2}"
    printf '\n'
    "${@:2}"
}

step "Create the home and the database (SQLite, schema by Alembic)" adapterctl init
step "Write a tiny Llama model + tokenizer and teach it a few general facts (no download)" \
    adapterctl base create-tiny .demo/tiny-model --layers 2 --knows demo/base-knowledge.jsonl
step "Register it as a base model; its files are hashed" adapterctl base register tiny .demo/tiny-model
step "Create a line: a stream of adapters on that base" adapterctl line create support-bot --base tiny --description "Acme support assistant"
step "Import the bundled feedback: all or nothing" adapterctl feedback import demo/feedback.jsonl --line support-bot
step "A serving app or a person logs one more record" adapterctl feedback log --line support-bot \
    --prompt "Do you have a mobile app?" --response "No." --rating -1 \
    --correction "Yes, for iOS and Android: search for Acme in the app store." --source user-7781
step "What came in, per line and source" adapterctl feedback stats --by-source
step "The newest records" adapterctl feedback list --limit 5
printf '\n$ adapterctl feedback import (a file with a bad line 2)\n'
printf '{"prompt": "ok", "response": "fine", "rating": 1}\n{"prompt": "bad", "response": "x", "rating": 7}\n' > .demo/bad.jsonl
adapterctl feedback import .demo/bad.jsonl --line support-bot || echo "(exit $?: nothing was written)"
step "A regression suite: answers the line must give (versioned; results name the version)" \
    adapterctl eval suite add policies demo/suite.jsonl --line support-bot
step "The cron job, default settings: new feedback -> candidate LoRA adapter, trained until it answers its corrections -> gate" \
    adapterctl train --line support-bot
step "The line was given no reference set, so the base model wrote one; every run anchors on it" \
    adapterctl eval suite show reference --line support-bot
step "Cron again: nothing new, nothing written" adapterctl train --line support-bot
step "Candidates that passed the gate wait for review" adapterctl review list
step "Reviewers are registered by name; the first is an admin" adapterctl reviewer add demo-operator --role admin
step "...who adds a colleague" adapterctl reviewer add alice
step "The report a reviewer decides from: evals vs base, gate, loss, data provenance, samples" adapterctl review show 1
step "Alice approves: the candidate becomes version v1 of the line" adapterctl --user alice review approve 1 --note "policies right"
printf '\n\033[1m== A server: the base model once, each line'"'"'s active adapter beside it (OpenAI-compatible HTTP)\033[0m\n'
export DEMO_PORT="$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")" DEMO_TOKEN="$(adapterctl token create --scope generate --name demo)"
echo "$ adapterctl token create --scope generate   # printed once, stored as sha256"
echo "$ adapterctl serve --port $DEMO_PORT &"
adapterctl serve --port "$DEMO_PORT" --poll 0.2 2>.demo/serve.log &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
python demo/ask.py --wait
QUESTION="What payment methods do you accept?"
step "Before any promotion the line serves the base model" python demo/ask.py "$QUESTION"
step "Promote v1: the artifact's hash is checked, then the line serves it" adapterctl promote support-bot v1 --reason "policies right"
sleep 0.5
step "The running server swapped it in, no restart; the response names the version" python demo/ask.py "$QUESTION"
step "Any OpenAI client works: a version by name, stop strings, logprobs; what is not implemented is refused, never ignored" \
    python demo/openai_client.py
step "Limits: a prompt longer than the model's context is refused before it can hold the model" python demo/ask.py --repeat 2000 "Why?"
step "Continuous regression: re-evaluate the active version on today's suites (cron-friendly)" adapterctl eval run --line support-bot
step "Roll back: back to what served before, at once" adapterctl rollback support-bot --reason "demo"
sleep 0.5
step "The server follows" python demo/ask.py "$QUESTION"
printf '\n\033[1m== A canary: v1 to half of the end users, judged live by their feedback\033[0m\n'
export DEMO_FEEDBACK_TOKEN="$(adapterctl token create --scope feedback --name demo-rater)"
step "The line's canary test: judge after 20 ratings a side (demo-sized; the default is 50)" \
    adapterctl line set support-bot canary.min_feedback=20 canary.prior_ratings=50
step "Serve v1 to 50% of end users (sticky per user), the base model to the rest" \
    adapterctl promote support-bot v1 --canary 50% --reason "try v1 on half the users"
sleep 0.5
step "A synthetic rater: users on v1 rate it down, the rest rate the base model up" \
    python demo/rate.py support-bot@base support-bot@v1
step "The server's watcher rolled the canary back; the evidence is in the history" adapterctl history support-bot
step "...and in the report v1's reviewers read" bash -c "adapterctl review show 1 | tail -n 4"
step "Promote v1 to everyone anyway (a person decides)" adapterctl promote support-bot v1 --reason "override after review"
step "A user asks to be forgotten: content erased, tombstone kept, versions trained on it revoked, the line falls back" \
    adapterctl feedback forget --source user-2210 --reason "privacy request #17"
sleep 0.5
step "The server follows the fallback" python demo/ask.py "$QUESTION"
step "v1 is revoked and can never go live again" adapterctl adapters list
step "Every activation, append-only: who, when, why" adapterctl history support-bot
step "The whole deployment on one screen, with what needs attention" adapterctl status
step "Every change is in the hash-chained audit log" adapterctl audit log --limit 8
step "Nobody edited or deleted an event" adapterctl audit verify
printf '\n\033[1m== Operations: a source that floods is kept out of training; the home is checked, backed up and restored\033[0m\n'
step "Keep a suspicious source out of training until a reviewer releases it" \
    adapterctl feedback quarantine --source bulk-importer-3 --reason "flood of one answer"
step "The database and the artifact store agree: hashes, leftovers of crashes, leases, the audit chain" adapterctl doctor
step "Back up while the server serves: a database snapshot, the artifacts, a manifest of hashes" \
    adapterctl backup .demo/backup
step "Restore into an empty home: every file checked first" adapterctl --home .demo/restored restore .demo/backup
step "The restored home passes the same checks" adapterctl --home .demo/restored doctor
printf '\nDone. Explore with: ADAPTERCTL_HOME=%s .venv/bin/adapterctl --help\n' "$ADAPTERCTL_HOME"

"""A synthetic rater for the demo's canary: many end users ask the demo server; each rates the answer up
when the active version gave it and down when the canary did. Stops once the canary is gone."""

import json
import os
import sys
import urllib.request

URL = f"http://127.0.0.1:{os.environ['DEMO_PORT']}"
ACTIVE, CANARY = sys.argv[1], sys.argv[2]  # support-bot@base support-bot@v1


def call(path: str, body: dict, token: str) -> dict:
    request = urllib.request.Request(
        f"{URL}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


counts = {ACTIVE: [0, 0], CANARY: [0, 0]}  # requests, ratings
since_canary = 0
for turn in range(1, 601):
    answer = call(
        "/v1/chat/completions",
        {
            "model": "support-bot",
            "max_tokens": 4,
            "user": f"user-{turn}",
            "messages": [{"role": "user", "content": "Can I change my delivery address?"}],
        },
        os.environ["DEMO_TOKEN"],
    )
    served = answer["model"]
    counts[served][0] += 1
    since_canary = 0 if served == CANARY else since_canary + 1
    if since_canary >= 40:  # 40 users in a row on the active version: the canary is gone
        break
    call("/v1/feedback", {"response_id": answer["id"], "rating": 1 if served == ACTIVE else -1}, os.environ["DEMO_FEEDBACK_TOKEN"])
    counts[served][1] += 1
print(
    f"{turn} users asked; {ACTIVE} answered {counts[ACTIVE][0]} (rated up {counts[ACTIVE][1]}), "
    f"{CANARY} answered {counts[CANARY][0]} (rated down {counts[CANARY][1]})"
)
print(
    f"the last {since_canary} users all got {ACTIVE}: the server rolled the canary back" if since_canary >= 40 else "the canary still runs"
)

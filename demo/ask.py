"""Ask the demo server one question, as any OpenAI client would, and print which version answered."""

import json
import os
import sys
import time
import urllib.error
import urllib.request

url = f"http://127.0.0.1:{os.environ['DEMO_PORT']}"
if sys.argv[1:] == ["--wait"]:
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1)
            sys.exit(0)
        except OSError:
            time.sleep(0.2)
    sys.exit("the demo server did not come up")
repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 1  # --repeat N QUESTION
body = {"model": "support-bot", "max_tokens": 24, "messages": [{"role": "user", "content": " ".join([sys.argv[-1]] * repeat)}]}
request = urllib.request.Request(
    f"{url}/v1/chat/completions",
    data=json.dumps(body).encode(),
    method="POST",
    headers={"Content-Type": "application/json", "Authorization": f"Bearer {os.environ['DEMO_TOKEN']}"},
)
try:
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
except urllib.error.HTTPError as refused:
    error = json.load(refused)["error"]
    print(f"[{refused.code} {error['code'] or error['type']}] {error['message']}")
    sys.exit(0)
print(f"[{answer['model']}] {answer['choices'][0]['message']['content']}")

"""Ask the demo server one question, as any OpenAI client would, and print which version answered."""

import json
import os
import sys
import time
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
body = {"model": "support-bot", "max_tokens": 24, "messages": [{"role": "user", "content": sys.argv[1]}]}
request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {os.environ['DEMO_TOKEN']}"})
with urllib.request.urlopen(request, timeout=60) as response:
    answer = json.load(response)
print(f"[{answer['model']}] {answer['choices'][0]['message']['content']}")

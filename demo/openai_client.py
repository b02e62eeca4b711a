"""The demo server through the official `openai` client: a pinned version, a stop string, logprobs, a refusal."""

import os

import openai

client = openai.OpenAI(base_url=f"http://127.0.0.1:{os.environ['DEMO_PORT']}/v1", api_key=os.environ["DEMO_TOKEN"], max_retries=0)
question = [{"role": "user", "content": "What payment methods do you accept?"}]
answer = client.chat.completions.create(model="support-bot@v1", messages=question, max_tokens=24, stop=[","], logprobs=True, top_logprobs=2)
choice = answer.choices[0]
print(f"[{answer.model}] {choice.message.content!r}  finish_reason={choice.finish_reason} (stop=[','])")
for entry in choice.logprobs.content[:3]:
    alternatives = ", ".join(f"{top.token!r} {top.logprob:.2f}" for top in entry.top_logprobs)
    print(f"   token {entry.token!r} logprob {entry.logprob:.2f}   likeliest: {alternatives}")
try:
    client.chat.completions.create(model="support-bot", messages=question, tools=[{"type": "function", "function": {"name": "pay"}}])
except openai.BadRequestError as refused:
    print(f"[400 {refused.body['code']}] {refused.body['message']}")

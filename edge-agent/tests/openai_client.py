"""Drives a running edge agent with the official `openai` client library, unchanged.

Usage: python openai_client.py BASE_URL MODEL
Exits non-zero (with the assertion) when the agent does not behave as the library expects.
"""
import json
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

models = client.models.list()
assert [m.id for m in models.data] == [model], models

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Hello!"}],
    max_tokens=12,
    temperature=0,
)
assert chat.object == "chat.completion", chat
assert chat.choices[0].message.role == "assistant"
assert chat.choices[0].finish_reason in ("stop", "length")
assert chat.usage.completion_tokens >= 1
whole = chat.choices[0].message.content

pieces, finish, usage = [], None, None
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Hello!"}],
    max_tokens=12,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage is not None:
        usage = chunk.usage
assert "".join(pieces) == whole, ("".join(pieces), whole)
assert finish == chat.choices[0].finish_reason
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens

completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0)
assert completion.object == "text_completion"
assert completion.usage.completion_tokens >= 1

extra = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Hi"}],
    max_tokens=4,
    extra_body={"mode": "standalone"},
)
assert extra.usage.model_extra.get("mode") == "standalone", extra.usage

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert "no-such-model" in str(e)

try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=10**6)
    raise AssertionError("max_tokens beyond the context was accepted")
except openai.BadRequestError as e:
    assert e.code == "context_length_exceeded", e

print(json.dumps({"ok": True, "text": whole, "usage": usage.model_dump()}))

"""Drives a running edge agent with the official `openai` client library, unchanged.

Usage: python openai_client.py BASE_URL MODEL API_KEY
Exits non-zero (with the assertion) when the agent does not behave as the library expects.
"""
import json
import sys

import openai

base, model, key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
hello = [{"role": "user", "content": "Hello!"}]

models = client.models.list()
assert [m.id for m in models.data] == [model], models

chat = client.chat.completions.create(model=model, messages=hello, max_tokens=12, temperature=0)
assert chat.object == "chat.completion", chat
assert chat.choices[0].message.role == "assistant"
assert chat.choices[0].finish_reason in ("stop", "length")
assert chat.usage.completion_tokens >= 1
# usage holds OpenAI's numbers only; our extension is the top-level `collm` object.
assert not chat.usage.model_extra, chat.usage
assert chat.model_extra["collm"]["mode"] == "collaborative", chat.model_extra
whole = chat.choices[0].message.content

pieces, finish, usage = [], None, None
stream = client.chat.completions.create(
    model=model, messages=hello, max_tokens=12, temperature=0, stream=True,
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

# Log probabilities, whole and streamed, in the library's own types.
scored = client.chat.completions.create(
    model=model, messages=hello, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2,
)
content = scored.choices[0].logprobs.content
assert len(content) == scored.usage.completion_tokens, scored
for entry in content:
    assert entry.logprob <= 0 and len(entry.top_logprobs) == 2, entry
    assert entry.top_logprobs[0].token == entry.token, entry
    assert isinstance(entry.bytes, list)
streamed = []
for chunk in client.chat.completions.create(
    model=model, messages=hello, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2,
    stream=True,
):
    if chunk.choices and chunk.choices[0].logprobs is not None:
        streamed.extend(chunk.choices[0].logprobs.content)
assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]

# A bias of -100 on the first token's id bans it (the agent reports ids in `collm.tokens`).
first = chat.model_extra["collm"]["tokens"][0]
banned = client.chat.completions.create(
    model=model, messages=hello, max_tokens=12, temperature=0, logit_bias={str(first): -100},
    frequency_penalty=1.0,
)
assert first not in banned.model_extra["collm"]["tokens"], banned.model_extra

completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=1)
assert completion.object == "text_completion"
assert completion.usage.completion_tokens >= 1
assert len(completion.choices[0].logprobs.token_logprobs) == completion.usage.completion_tokens

extra = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
    extra_body={"mode": "standalone"},
)
assert extra.model_extra["collm"]["mode"] == "standalone", extra.model_extra

# `seed` is OpenAI's int64: a negative one is a seed like any other, and reproducible.
seeded = [
    client.chat.completions.create(model=model, messages=hello, max_tokens=8, temperature=0.9, seed=-7)
    .choices[0].message.content
    for _ in range(2)
]
assert seeded[0] == seeded[1], seeded

# What the server cannot do is an exception, not a plain answer.
tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]
try:
    client.chat.completions.create(model=model, messages=hello, tools=tools)
    raise AssertionError("tools were accepted")
except openai.BadRequestError as e:
    assert e.code == "unsupported_parameter" and e.param == "tools", e
try:
    client.chat.completions.create(model=model, messages=hello, response_format={"type": "json_object"})
    raise AssertionError("JSON mode was accepted")
except openai.BadRequestError as e:
    assert e.param == "response_format", e

try:
    client.chat.completions.create(model=model, messages=hello, stream_options={"include_usage": True})
    raise AssertionError("stream_options without stream was accepted")
except openai.BadRequestError as e:
    assert e.param == "stream_options", e

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

# The key "none" means the agent was started without --api-key (any key is accepted).
if key != "none":
    try:
        openai.OpenAI(base_url=f"{base}/v1", api_key=key + "x", max_retries=0).models.list()
        raise AssertionError("a wrong API key was accepted")
    except openai.AuthenticationError as e:
        assert e.code == "invalid_api_key", e

print(json.dumps({"ok": True, "text": whole, "usage": usage.model_dump()}))

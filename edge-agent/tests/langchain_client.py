"""Drives a running edge agent with LangChain's ChatOpenAI (`langchain-openai`), unchanged.

Usage: python langchain_client.py BASE_URL MODEL API_KEY [QUESTION EXPECTED]
With QUESTION and EXPECTED (a real model), the greedy answer to QUESTION must contain EXPECTED.
Exits non-zero (with the assertion) when the agent does not behave as LangChain expects.
"""
import json
import sys

import openai
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

base, model, key = sys.argv[1], sys.argv[2], sys.argv[3]
llm = ChatOpenAI(base_url=f"{base}/v1", api_key=key, model=model, max_tokens=16, temperature=0, max_retries=0)
messages = [SystemMessage("Be brief."), HumanMessage("Hello!")]

answer = llm.invoke(messages)
assert isinstance(answer.content, str), answer
assert answer.response_metadata["finish_reason"] in ("stop", "length"), answer.response_metadata
assert answer.usage_metadata["output_tokens"] >= 1, answer.usage_metadata

streamed = "".join(chunk.content for chunk in llm.stream(messages))
assert streamed == answer.content, (streamed, answer.content)

scored = llm.bind(logprobs=True, top_logprobs=2).invoke(messages)
content = scored.response_metadata["logprobs"]["content"]
assert len(content) == scored.usage_metadata["output_tokens"], scored.response_metadata
assert all(e["logprob"] <= 0 and len(e["top_logprobs"]) == 2 for e in content), content


@tool
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


# bind_tools must fail loudly: a plain-text answer would look like "no tool needed".
try:
    llm.bind_tools([add]).invoke("What is 2 + 3?")
    raise AssertionError("bind_tools was answered with plain text")
except openai.BadRequestError as e:
    assert e.param == "tools", e


class Answer(BaseModel):
    text: str


try:
    llm.with_structured_output(Answer).invoke("Say hi.")
    raise AssertionError("structured output was answered without a schema being enforced")
except openai.BadRequestError as e:
    assert e.param in ("tools", "response_format"), e

if len(sys.argv) == 6:
    question, expected = sys.argv[4], sys.argv[5]
    reply = ChatOpenAI(
        base_url=f"{base}/v1", api_key=key, model=model, max_tokens=48, temperature=0, max_retries=0,
    ).invoke(question)
    assert expected.lower() in reply.content.lower(), reply.content

print(json.dumps({"ok": True, "text": answer.content}))

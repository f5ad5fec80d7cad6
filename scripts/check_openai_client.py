"""Drives `sympathy serve` with the official `openai` Python package.

Usage: check_openai_client.py BASE_URL API_KEY (BASE_URL like http://127.0.0.1:8080/v1).
Checks streamed completions with logprobs, streamed chat with usage, models.list(),
and the typed errors the client raises for 400, 401 and 404. Exits 1 on the first
failure, printing what differed; prints "all checks passed" otherwise.
"""

import sys

import openai


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def main():
    base_url, key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)

    models = client.models.list()
    ids = [m.id for m in models.data]
    check(len(ids) == 1, f"models.list() lists the model served: {ids}")
    model = ids[0]

    prompt = "def f(n):\n    return"
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=20, seed=4, logprobs=3)
    chunks = list(client.completions.create(model=model, prompt=prompt, max_tokens=20, seed=4,
                                            logprobs=3, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    check(text == whole.choices[0].text, "streamed completion joins to the whole one")
    streamed_tokens = [t for c in chunks if c.choices and c.choices[0].logprobs
                       for t in c.choices[0].logprobs.tokens]
    check(streamed_tokens == whole.choices[0].logprobs.tokens, "streamed logprobs tokens match")
    check(all(len(t) <= 3 for t in whole.choices[0].logprobs.top_logprobs), "top_logprobs hold at most 3")
    check(chunks[-1].choices[0].finish_reason in ("stop", "length"), "the last chunk carries finish_reason")

    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "squares of a list"}],
        max_tokens=12, seed=2, stream=True, stream_options={"include_usage": True},
        logprobs=True, top_logprobs=2)
    chat = list(stream)
    check(chat[0].choices[0].delta.role == "assistant", "the first chat chunk carries the role")
    check(chat[-1].usage is not None and chat[-1].choices == [], "the last chat chunk carries usage")
    content = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    n = chat[-1].usage.completion_tokens
    check(0 < n <= 12, f"usage.completion_tokens = {n}")
    finish = [c.choices[0].finish_reason for c in chat if c.choices and c.choices[0].finish_reason]
    check(finish in (["stop"], ["length"]), f"one finish_reason: {finish}")
    whole_chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "squares of a list"}], max_tokens=12, seed=2)
    check(whole_chat.choices[0].message.content == content, "streamed chat joins to the whole one")

    try:
        client.completions.create(model=model, prompt="x", max_tokens=100000)
        check(False, "max_tokens 100000 raises")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and "max_tokens" in str(e), "BadRequestError names max_tokens")
    try:
        client.completions.create(model="no-such-model", prompt="x")
        check(False, "an unknown model raises")
    except openai.NotFoundError as e:
        check(e.status_code == 404, "NotFoundError for an unknown model")
    try:
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
        check(False, "a wrong key raises")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "AuthenticationError for a wrong key")
    print("all checks passed")


if __name__ == "__main__":
    main()

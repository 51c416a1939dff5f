"""Drive `steermoe serve` with OpenAI's own Python client (run by .ci/run; needs `pip install openai`).

    python3 tests/serve/openai_client.py http://127.0.0.1:PORT/v1 MODEL [API_KEY]

Chat (whole and streamed, with a usage chunk), text completions, the model list, the steering and
routed-experts extensions (through `extra_body`), and the client's own error types for a bad
request and a wrong key. Exits non-zero on the first failed check.
"""

import sys

import openai

url, model = sys.argv[1], sys.argv[2]
key = sys.argv[3] if len(sys.argv) > 3 else "unused"
client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)

assert [m.id for m in client.models.list().data] == [model]

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Hello"}],
    max_tokens=8,
    temperature=0,
)
text = chat.choices[0].message.content
assert chat.choices[0].finish_reason in ("stop", "length"), chat
assert chat.usage.completion_tokens >= 1, chat.usage

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Hello"}],
    max_tokens=8,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
parts, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage is not None:
        usage = chunk.usage
assert "".join(parts) == text, ("".join(parts), text)
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage

done = client.completions.create(model=model, prompt="Once upon a time", max_tokens=4, temperature=0)
assert done.usage.completion_tokens == 4, done.usage

routed = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Hello"}],
    max_tokens=4,
    temperature=0,
    extra_body={"return_routed_experts": True, "steering": {"deactivate": [[0, 0]]}},
)
routing = routed.model_dump()["choices"][0]["routing"]
assert len(routing) == 4, routing
assert all(0 not in token["routed_experts"][0] for token in routing), routing

try:
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=0
    )
    raise SystemExit("max_tokens=0 was accepted")
except openai.BadRequestError as e:
    assert "max_tokens" in str(e), e

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    raise SystemExit("an unknown model was accepted")
except openai.NotFoundError:
    pass

if len(sys.argv) > 3:
    bad = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        raise SystemExit("a wrong key was accepted")
    except openai.AuthenticationError:
        pass

print(f"openai {openai.__version__}: every check passed against {url}")

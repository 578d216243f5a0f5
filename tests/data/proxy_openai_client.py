"""A user's application: the official openai client, pointed at the proxy.

Streams chat and completions (the proxy's `: tracebench-metrics` comment line
must not disturb the SDK), asks for usage itself once, reads a JSON answer's
`metrics` object, and opts in to the metrics as a data event. Prints one JSON
object with what it saw.
"""

import json
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-test-not-a-secret", max_retries=0)
seen = {}

chunks = list(
    client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=6,
        stream=True,
        extra_headers={"x-request-id": "sdk-stream"},
    )
)
seen["chat_stream"] = {
    "chunks": len(chunks),
    "text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
    "usage_chunks": sum(1 for c in chunks if c.usage is not None),
    "finish": [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason],
}

chunks = list(
    client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
)
seen["chat_stream_usage"] = {"completion_tokens": [c.usage.completion_tokens for c in chunks if c.usage]}

chunks = list(client.completions.create(model="tiny", prompt="Once", max_tokens=5, stream=True))
seen["completions_stream"] = {"chunks": len(chunks), "text": "".join(c.choices[0].text for c in chunks if c.choices)}

whole = client.chat.completions.create(
    model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
)
seen["chat_json"] = {
    "completion_tokens": whole.usage.completion_tokens,
    "metrics": (whole.model_extra or {}).get("metrics"),
}

chunks = list(
    client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=2,
        stream=True,
        extra_headers={"x-tracebench-metrics": "data"},
    )
)
metrics = [(c.model_extra or {}).get("metrics") for c in chunks if not c.choices]
seen["chat_stream_metrics_data"] = {"metrics": [m for m in metrics if m]}

print(json.dumps(seen))

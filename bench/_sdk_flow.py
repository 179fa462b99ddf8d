"""The openai SDK's upload -> create -> poll -> download -> parse, as a command of its own.

    python bench/_sdk_flow.py BASE_URL API_KEY FILE POLL_S

`bench_run` times it from outside, start-up and `import openai` included, the way it times
`batchrelay run FILE`: two commands a user would run, measured alike. Imports nothing of
batchrelay or the bench.
"""

from __future__ import annotations

import sys
import time

import openai
import orjson

CHAT = "/v1/chat/completions"


def main() -> None:
    base, key, path, poll_s = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    client = openai.OpenAI(base_url=base, api_key=key)
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    while batch.status != "completed":
        time.sleep(poll_s)
        batch = client.batches.retrieve(batch.id)
    assert batch.output_file_id is not None
    content = client.files.content(batch.output_file_id).content
    parsed = [orjson.loads(line) for line in content.splitlines()]
    print(len(parsed))


if __name__ == "__main__":
    main()

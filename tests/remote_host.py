"""One host of a fleet, in its own process: a Session over its own disk and a shared remote.

    python remote_host.py MODEL STORE_DIR REDIS_URL CONVERSATION MESSAGE_FILE

Prints the turn's figures as JSON.
"""

import json
import sys
from dataclasses import asdict

from kvcpu import Session

model, store_dir, url, conversation, message_file = sys.argv[1:6]
with Session(model, codec="int8", n_ctx=4096, disk_dir=store_dir, remote=url) as s:
    reply = s.chat(conversation, open(message_file).read(), max_tokens=8)
    s.flush()
    print(json.dumps({**asdict(s.last_turn), "tokens": len(s.get(conversation).tokens), "reply": reply}))

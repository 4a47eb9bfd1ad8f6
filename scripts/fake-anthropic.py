#!/usr/bin/env python3
"""A stand-in for the Anthropic Messages API on loopback, for API fuzzing: every request gets
the same small workflow as the assistant's reply, so instruction tasks can be planned without a
real provider. Prints its base URL on stdout, then serves until killed. Standard library only."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORKFLOW = """version: 1
name: fuzzed
description: A fixed plan for API fuzzing.
steps:
  - id: note
    write:
      path: note.txt
      content: "planned\\n"
"""


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        body = json.dumps({
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-6",
            "content": [{"type": "text", "text": "```yaml\n" + WORKFLOW + "```\n"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 100, "output_tokens": 40},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
sys.stdout.close()
server.serve_forever()

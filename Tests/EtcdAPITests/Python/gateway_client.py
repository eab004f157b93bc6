"""Sends JSON-gateway requests to an etcd v3 endpoint and prints the answers.

Usage: gateway_client.py <base-url>   (requests on stdin, one JSON object per line:
{"method": "POST", "path": "/v3/kv/put", "body": {...}, "stream": N})
Prints one JSON line per request: {"status": <http status>, "body": <parsed JSON or
text>}; for "stream": N, the first N chunks of a streaming answer as "chunks".
Only the standard library (urllib), as a shell user's script would.
"""
import json
import sys
import urllib.error
import urllib.request


def call(base, request):
    data = None
    if request.get("method", "POST") == "POST":
        data = json.dumps(request.get("body", {})).encode()
    req = urllib.request.Request(base + request["path"], data=data, method=request.get("method", "POST"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            if request.get("stream"):
                chunks = []
                while len(chunks) < request["stream"]:
                    line = response.readline()
                    if not line:
                        break
                    chunks.append(json.loads(line))
                return {"status": response.status, "chunks": chunks}
            text = response.read().decode()
            return {"status": response.status, "body": json.loads(text) if text else None}
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return {"status": error.code, "body": body}


def main():
    base = sys.argv[1]
    for line in sys.stdin:
        line = line.strip()
        if line:
            print(json.dumps(call(base, json.loads(line)), sort_keys=True), flush=True)


if __name__ == "__main__":
    main()

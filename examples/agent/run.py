#!/usr/bin/env python3
"""A complete external agent for convoy (agent.kind = "external"), standard library only.

convoy runs it in the conversation's own session and workdir with:
  OPENAI_BASE_URL    convoy's gateway (ends in /v1); OPENAI_API_KEY: this conversation's token
  CONVOY_PROMPT_FILE, CONVOY_SYSTEM_FILE   the task's rendered prompts
  CONVOY_ANSWER      where to write the final answer
It loops on chat completions with its own two tools, runs the calls, and writes the answer.
"""
import json, os, subprocess, urllib.request

TOOLS = [
    {"type": "function", "function": {"name": "bash", "description": "Run a shell command.",
     "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
    {"type": "function", "function": {"name": "finish", "description": "End with the answer.",
     "parameters": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}}},
]


def chat(messages):
    body = json.dumps({"model": os.environ.get("OPENAI_MODEL", "default"), "messages": messages,
                       "tools": TOOLS}).encode()
    req = urllib.request.Request(os.environ["OPENAI_BASE_URL"].rstrip("/") + "/chat/completions", data=body,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)["choices"][0]["message"]


def run(command):
    try:
        p = subprocess.run(["bash", "-c", command], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, errors="replace", timeout=120)
        return (p.stdout + p.stderr)[-10000:] + ("" if p.returncode == 0 else f"\n[exit code {p.returncode}]")
    except subprocess.TimeoutExpired:
        return "[timed out after 120 s]"


def main():
    read = lambda var: open(os.environ[var]).read() if os.environ.get(var) else ""
    messages = [{"role": "system", "content": read("CONVOY_SYSTEM_FILE")}] if read("CONVOY_SYSTEM_FILE") else []
    messages.append({"role": "user", "content": read("CONVOY_PROMPT_FILE")})
    answer = None
    for _ in range(50):
        reply = chat(messages)
        calls = reply.get("tool_calls") or []
        # Sent back as strict servers want it: a string content, only these keys.
        messages.append({"role": "assistant", "content": reply.get("content") or "", **({"tool_calls": calls} if calls else {})})
        if not calls:
            answer = reply.get("content") or ""
            break
        for call in calls:
            name, args = call["function"]["name"], json.loads(call["function"]["arguments"] or "{}")
            if name == "finish":
                answer = args.get("message", "")
                out = "ok"
            elif name == "bash":
                out = run(args.get("command", ""))
            else:
                out = f"error: there is no tool {name}"
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": out})
        if answer is not None:
            break
    with open(os.environ["CONVOY_ANSWER"], "w") as f:
        f.write(answer if answer is not None else "")
    return 0 if answer is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())

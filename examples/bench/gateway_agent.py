# The gateway benchmark's agent (scripts/bench.sh --gateway): 10 model calls
# in a row through convoy's gateway, answering each tool call with "ok";
# prints the time of each call as the agent saw it, in seconds.
import json, os, time, urllib.request as u

base, token = os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"]
messages = [{"role": "user", "content": open(os.environ["CONVOY_PROMPT_FILE"]).read()}]
seen = []
for _ in range(10):
    body = json.dumps({"model": "m", "messages": messages}).encode()
    req = u.Request(base + "/chat/completions", data=body,
                    headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    start = time.perf_counter()
    with u.urlopen(req) as r:
        reply = json.load(r)["choices"][0]["message"]
    seen.append(time.perf_counter() - start)
    calls = reply.get("tool_calls") or []
    messages.append({"role": "assistant", "content": reply.get("content") or "",
                     **({"tool_calls": calls} if calls else {})})
    messages += [{"role": "tool", "tool_call_id": c["id"], "content": "ok"} for c in calls]
open(os.environ["CONVOY_ANSWER"], "w").write("done")
print(" ".join("%.6f" % s for s in seen))

"""The real model templates (llama.cpp's models/templates, unpacked by scripts/setup.sh into
.deps/llama.cpp) rendered by asl-chat-template, asl-server's renderer (llama.cpp's Jinja engine via
tok::ChatTemplate), against Hugging Face's apply_chat_template renderer
(transformers.utils.chat_template_utils.render_jinja_template, jinja2 with trim_blocks and
lstrip_blocks) on the same conversations: plain turns, a system prompt, a multi-turn history without
the generation prompt, and tools with a tool call and its result.

Both renderers get the same context: the messages as asl-server passes them to the template
(asl-chat-template reports them: tool-call arguments as objects only for templates that index into
them, a tool-calling turn's null content as "" for templates that render tool calls; llama.cpp's
capability probe decides, as in llama-server). Equal text is required, and an error where Hugging
Face raises. Where the template does not render tools (llama.cpp's probe), asl-server refuses a
request's tools (400) instead of dropping them; the test then checks that Hugging Face's render is
indeed the same with and without them. KNOWN_DIFFERENCES lists the (template, conversation) pairs where the two engines differ
for a documented reason (docs/chat_templates.md); exactly those must differ, so a change on either
side shows up."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = Path(os.environ.get("ASL_LLAMA_TEMPLATES_DIR", ROOT / ".deps/llama.cpp/models/templates"))
BIN = Path(os.environ.get("ASL_BIN_DIR", ROOT / "build/bin")) / "asl-chat-template"
BOS, EOS = "<s>", "</s>"

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {
            "type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]},
    },
}]

CONVERSATIONS = {
    "user": dict(messages=[{"role": "user", "content": "Hello, who are you?"}]),
    "system": dict(messages=[{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": "Name a colour."}]),
    "history": dict(messages=[{"role": "system", "content": "You are terse."},
                              {"role": "user", "content": "Name a colour."},
                              {"role": "assistant", "content": "Blue."},
                              {"role": "user", "content": "  Another one, with spaces around.  "}],
                    add_generation_prompt=False),
    "tools": dict(messages=[{"role": "user", "content": "Weather in Paris?"},
                            {"role": "assistant", "content": None, "tool_calls": [{
                                "id": "call_1", "type": "function",
                                "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather",
                             "content": "{\"temp\": 21}"},
                            {"role": "user", "content": "Thanks."}],
                  tools=TOOLS),
}

# template file -> (the conversations that differ, whether Hugging Face raises there (and we
# render), why); kept in step with docs/chat_templates.md.
_UNDEFINED_TOOLS = "iterates `tools` unguarded: jinja2 raises on None, llama.cpp's engine iterates nothing"
_NULL_CONTENT = "concatenates a null content: jinja2 raises, llama.cpp's engine renders none as ''"
KNOWN_DIFFERENCES: dict[str, tuple[set[str], bool, str]] = {
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja": (
        {"user", "system", "history", "tools"}, True,
        _UNDEFINED_TOOLS + "; with tools it reads Cohere's own tool fields (description at the top level), "
        "undefined in OpenAI's shape: jinja2 raises, llama.cpp's engine renders them empty"),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": ({"user", "system", "history"}, True, _UNDEFINED_TOOLS),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": ({"user", "system", "history"}, True, _UNDEFINED_TOOLS),
    "fireworks-ai-llama-3-firefunction-v2.jinja": (
        {"user", "system", "history"}, True,
        "reads a `functions` variable nobody passes: jinja2 raises UndefinedError, llama.cpp's engine renders it empty"),
    "Kimi-K2-Instruct.jinja": ({"tools"}, True, "calls list.append, which jinja2's sandbox forbids"),
    "Kimi-K2-Thinking.jinja": ({"tools"}, True, "calls list.append, which jinja2's sandbox forbids"),
    "ibm-granite-granite-3.3-2B-Instruct.jinja": ({"tools"}, True, _NULL_CONTENT),
    "llama-cpp-deepseek-r1.jinja": ({"tools"}, True, "applies |tojson to a generator, which Python's json cannot encode"),
    "meetkai-functionary-medium-v3.1.jinja": (
        {"tools"}, False,
        "'...'|safe + text makes a markupsafe Markup, which HTML-escapes the |tojson text joined to it "
        "(&#34; for quotes); llama.cpp's engine has no Markup type and leaves the JSON as is"),
}


def _templates():
    if not TEMPLATES.is_dir():
        return []
    return sorted(p.name for p in TEMPLATES.glob("*.jinja"))


def _hf_render(source: str, case: dict, context: dict | None):
    from transformers.utils.chat_template_utils import render_jinja_template
    messages = context["messages"] if context else case["messages"]
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages], tools=case.get("tools"), chat_template=source,
            add_generation_prompt=case.get("add_generation_prompt", True), bos_token=BOS, eos_token=EOS)
        return True, rendered[0]
    except Exception as e:  # the template raised (raise_exception, a type error...)
        return False, f"{type(e).__name__}: {e}"


@pytest.fixture(scope="module")
def ours():
    """All templates x conversations through one asl-chat-template --batch process."""
    if not BIN.exists():
        pytest.skip(f"{BIN} is not built")
    cases, keys = [], []
    for name in _templates():
        for conv, case in CONVERSATIONS.items():
            c = json.loads(json.dumps(case))
            c.update(template=str(TEMPLATES / name), bos_token=BOS, eos_token=EOS)
            cases.append(json.dumps(c))
            keys.append((name, conv))
    out = subprocess.run([str(BIN), "--batch"], input="\n".join(cases) + "\n", capture_output=True, text=True,
                         timeout=300, check=True).stdout.splitlines()
    assert len(out) == len(cases), "one result line per case"
    return {k: json.loads(line) for k, line in zip(keys, out)}


def test_templates_are_there():
    assert len(_templates()) >= 60, f"expected llama.cpp's ~70 model templates under {TEMPLATES} (scripts/setup.sh)"


@pytest.mark.parametrize("name", _templates())
def test_template_renders_like_hugging_face(name, ours):
    source = (TEMPLATES / name).read_text()
    mismatches = []
    for conv, case in CONVERSATIONS.items():
        got = ours[(name, conv)]
        hf_ok, hf = _hf_render(source, case, got.get("context"))
        if not got["ok"] and "does not render tools" in got["error"]:
            # Refused rather than dropped: then the template must really ignore them.
            assert _hf_render(source, {**case, "tools": None}, None) == (hf_ok, hf), f"[{conv}] renders tools"
            continue
        if hf_ok != got["ok"] or (hf_ok and hf != got["text"]):
            mismatches.append((conv, hf_ok, hf, got))
    expected, hf_raises, why = KNOWN_DIFFERENCES.get(name, (set(), False, ""))
    differing = {m[0] for m in mismatches}
    for conv, hf_ok, hf, got in mismatches:
        if conv in expected:
            assert got["ok"] and hf_ok != hf_raises, f"[{conv}] not the known difference: {why}"
    assert differing >= expected, f"{sorted(expected - differing)} now render like Hugging Face: update KNOWN_DIFFERENCES"
    mismatches = [m for m in mismatches if m[0] not in expected]
    assert not mismatches, "\n".join(
        f"[{conv}] HF ok={hf_ok}: {hf!r}\n       ours: {got!r}" for conv, hf_ok, hf, got in mismatches)


def test_request_text_is_marked_as_input(ours):
    """Message contents are input ranges: the tokenizer then encodes control tokens there as text."""
    got = ours[("Qwen-Qwen2.5-7B-Instruct.jinja", "system")]
    assert got["ok"]
    marked = [got["text"][b:e] for b, e in got["input_ranges"]]
    assert "You are terse." in marked and "Name a colour." in marked
    assert not any("<|im_start|>" in m for m in marked)

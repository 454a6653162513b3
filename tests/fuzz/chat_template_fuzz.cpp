// libFuzzer target: chat-template rendering (engine/tokenizer/chat_template.*, over llama.cpp's
// Jinja engine) with what a request controls: message roles and contents, tools JSON and
// chat_template_kwargs JSON. The templates are fixed (the model's or the operator's, not request
// input): the first part of the input picks how it is split, the built-in ChatML and Llama 3
// templates plus a Hermes-style tools template render it.
// Input: a preamble (ignored, kept so earlier seeds stay valid), then "\n--messages--\n", then
// messages separated by "\x1e", each "role\x1fcontent" (a message without "\x1f" is all content, role
// "user"); a message whose role is "tools" or "kwargs" supplies that JSON instead.
#include "engine/tokenizer/chat_template.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const std::vector<asl::tok::ChatTemplate>& Templates() {
  static const std::vector<asl::tok::ChatTemplate> all = [] {
    std::vector<asl::tok::ChatTemplate> out;
    for (const char* name : {"chatml", "llama3"}) {
      out.push_back(*asl::tok::ChatTemplate::Compile(*asl::tok::BuiltinChatTemplateSource(name), "<s>", "</s>"));
    }
    out.push_back(*asl::tok::ChatTemplate::Compile(
        "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}"
        "<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% else %}{{ m.content | trim }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "<s>", "</s>"));
    return out;
  }();
  return all;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view preamble, rest;
  asl::fuzz::Split(std::string_view(reinterpret_cast<const char*>(data), size), "\n--messages--\n", &preamble, &rest);
  std::vector<asl::tok::ChatMessage> messages;
  asl::tok::ChatRenderOptions options;
  options.add_generation_prompt = size % 2 == 0;
  while (!rest.empty()) {
    std::string_view one, after;
    asl::fuzz::Split(rest, "\x1e", &one, &after);
    std::string_view role, content;
    asl::fuzz::Split(one, "\x1f", &role, &content);
    if (one.find('\x1f') == std::string_view::npos) {
      content = one;
      role = "user";
    }
    if (role == "tools") {
      options.tools_json = std::string(content);
    } else if (role == "kwargs") {
      options.extra_context_json = std::string(content);
    } else {
      asl::tok::ChatMessage m{.role = std::string(role), .content = std::string(content)};
      if (role == "assistant" && content.rfind("{", 0) == 0) m.tool_calls.push_back({"c", "f", std::string(content)});
      messages.push_back(std::move(m));
    }
    if (one.size() == rest.size()) break;
    rest = after;
  }
  for (const asl::tok::ChatTemplate& t : Templates()) {
    auto out = t.Render(messages, options);
    if (out.ok() && messages.empty()) __builtin_trap();  // no messages must be an error
    if (out.ok()) {
      size_t last = 0;  // input ranges are sorted, disjoint and inside the text
      for (const asl::tok::TextRange& r : out->input_ranges) {
        if (r.begin < last || r.end <= r.begin || r.end > out->text.size()) __builtin_trap();
        last = r.end;
      }
    }
  }
  return 0;
}

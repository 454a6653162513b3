// libFuzzer target: chat-template rendering as it is today (engine/tokenizer/chat_template.*): the
// Jinja text is recognised (ChatTemplate::FromJinja: family and ChatML default system message),
// then messages are rendered with it and with both built-in families.
// Input: the Jinja text, then "\n--messages--\n", then messages separated by "\x1e", each
// "role\x1fcontent" (a message without "\x1f" is all content, role "user").
#include "engine/tokenizer/chat_template.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view jinja, rest;
  asl::fuzz::Split(std::string_view(reinterpret_cast<const char*>(data), size), "\n--messages--\n", &jinja, &rest);
  std::vector<asl::tok::ChatMessage> messages;
  while (!rest.empty()) {
    std::string_view one, after;
    asl::fuzz::Split(rest, "\x1e", &one, &after);
    std::string_view role, content;
    asl::fuzz::Split(one, "\x1f", &role, &content);
    if (one.find('\x1f') == std::string_view::npos) {
      content = one;
      role = "user";
    }
    messages.push_back({std::string(role), std::string(content)});
    if (one.size() == rest.size()) break;
    rest = after;
  }
  const bool gen = size % 2 == 0;
  if (auto t = asl::tok::ChatTemplate::FromJinja(std::string(jinja), "<|begin_of_text|>")) {
    auto out = t->Apply(messages, gen);
    if (out.ok() && messages.empty()) __builtin_trap();  // no messages must be an error
  }
  for (auto kind : {asl::tok::ChatTemplateKind::kChatML, asl::tok::ChatTemplateKind::kLlama3}) {
    (void)asl::tok::ApplyChatTemplate(kind, messages, gen, std::string(jinja.substr(0, 64)));
  }
  (void)asl::tok::ParseChatTemplateKind(jinja);
  return 0;
}

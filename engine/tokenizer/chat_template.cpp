#include "engine/tokenizer/chat_template.h"

#include <algorithm>
#include <cctype>

#include "engine/tokenizer/utf8.h"

namespace asl::tok {
namespace {

bool IsPythonSpace(char32_t c) {  // str.isspace(), which Jinja's |trim (str.strip) uses
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string JinjaTrim(const std::string& s) {
  if (!IsValidUtf8(s)) return s;  // cannot happen for API input (proto strings are UTF-8)
  size_t begin = 0, end = s.size();
  for (size_t i = 0; i < s.size();) {
    const size_t at = i;
    if (!IsPythonSpace(NextCodePoint(s, &i))) {
      begin = at;
      break;
    }
    begin = i;
  }
  end = begin;
  for (size_t i = begin; i < s.size();) {
    if (!IsPythonSpace(NextCodePoint(s, &i))) end = i;
  }
  return s.substr(begin, end - begin);
}

bool ValidRole(const std::string& role) {
  return role == "system" || role == "user" || role == "assistant" || role == "tool";
}

// The default system message a ChatML template writes when messages[0] is not "system", e.g.
// SmolLM2's "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n' }}":
// the literal text between "<|im_start|>system" + newline (real or escaped) and "<|im_end|>".
std::string ExtractChatMLDefaultSystem(const std::string& jinja) {
  static const std::string kOpen = "<|im_start|>system";
  if (jinja.find("!= 'system'") == std::string::npos && jinja.find("!= \"system\"") == std::string::npos &&
      jinja.find("else") == std::string::npos)
    return "";
  for (size_t pos = jinja.find(kOpen); pos != std::string::npos; pos = jinja.find(kOpen, pos + 1)) {
    size_t body = pos + kOpen.size();
    if (jinja.compare(body, 1, "\n") == 0) {
      body += 1;
    } else if (jinja.compare(body, 2, "\\n") == 0) {
      body += 2;
    } else {
      continue;
    }
    const size_t end = jinja.find("<|im_end|>", body);
    if (end == std::string::npos) continue;
    std::string text = jinja.substr(body, end - body);
    // Only a literal qualifies: anything that splices in a variable is the user's system message.
    if (text.empty() || text.find_first_of("'\"{}+") != std::string::npos) continue;
    std::string out;
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == 'n') {
        out += '\n';
        ++i;
      } else {
        out += text[i];
      }
    }
    return out;
  }
  return "";
}

}  // namespace

std::optional<ChatTemplateKind> DetectChatTemplate(const std::string& jinja_text) {
  if (jinja_text.find("<|start_header_id|>") != std::string::npos) return ChatTemplateKind::kLlama3;
  if (jinja_text.find("<|im_start|>") != std::string::npos) return ChatTemplateKind::kChatML;
  return std::nullopt;
}

std::optional<ChatTemplateKind> ParseChatTemplateKind(std::string_view name) {
  std::string n(name);
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
  if (n == "chatml") return ChatTemplateKind::kChatML;
  if (n == "llama3" || n == "llama-3") return ChatTemplateKind::kLlama3;
  return std::nullopt;
}

const char* ChatTemplateKindName(ChatTemplateKind kind) {
  return kind == ChatTemplateKind::kChatML ? "chatml" : "llama3";
}

StatusOr<std::string> ApplyChatTemplate(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt, const std::string& default_system,
                                        const std::string& bos_token) {
  // Hugging Face refuses an empty conversation too.
  if (messages.empty()) return InvalidArgument("messages: at least one message is required");
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!ValidRole(messages[i].role)) {
      return InvalidArgument("messages[" + std::to_string(i) + "].role: '" + messages[i].role +
                             "' is not one of system, user, assistant, tool");
    }
  }
  std::vector<const ChatMessage*> msgs;
  ChatMessage injected{"system", default_system};
  if (!messages.empty() && messages[0].role != "system" && !default_system.empty()) msgs.push_back(&injected);
  for (const ChatMessage& m : messages) msgs.push_back(&m);

  std::string out;
  if (kind == ChatTemplateKind::kChatML) {
    for (const ChatMessage* m : msgs) out += "<|im_start|>" + m->role + "\n" + m->content + "<|im_end|>\n";
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
  } else {
    for (size_t i = 0; i < msgs.size(); ++i) {
      if (i == 0) out += bos_token;
      out += "<|start_header_id|>" + msgs[i]->role + "<|end_header_id|>\n\n" + JinjaTrim(msgs[i]->content) + "<|eot_id|>";
    }
    if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  return out;
}

std::optional<ChatTemplate> ChatTemplate::FromJinja(const std::string& jinja_text, std::string bos_token) {
  const std::optional<ChatTemplateKind> kind = DetectChatTemplate(jinja_text);
  if (!kind) return std::nullopt;
  std::string default_system;
  if (*kind == ChatTemplateKind::kChatML) default_system = ExtractChatMLDefaultSystem(jinja_text);
  return ChatTemplate(*kind, std::move(default_system), std::move(bos_token));
}

}  // namespace asl::tok

// Chat templates, reimplemented natively for the template families we serve (no Jinja engine):
// ChatML (SmolLM2, Qwen2) and Llama 3. Each renders exactly what Hugging Face's
// apply_chat_template(..., tokenize=False) renders with the model's own Jinja template.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/status.h"

namespace asl::tok {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
};

enum class ChatTemplateKind { kChatML, kLlama3 };

// The family of a model's Jinja chat template: kLlama3 when it uses <|start_header_id|>, kChatML
// when it uses <|im_start|>; nullopt otherwise.
std::optional<ChatTemplateKind> DetectChatTemplate(const std::string& jinja_text);
// A user's override: "chatml" or "llama3" (case-insensitive); nullopt otherwise.
std::optional<ChatTemplateKind> ParseChatTemplateKind(std::string_view name);
const char* ChatTemplateKindName(ChatTemplateKind kind);

inline constexpr const char* kLlama3BosToken = "<|begin_of_text|>";

// Renders `messages`. A non-empty `default_system` is inserted as a system message when the first
// message is not one (SmolLM2's and Qwen2's templates do this). ChatML:
//   <|im_start|>{role}\n{content}<|im_end|>\n ...  [+ <|im_start|>assistant\n]
// Llama 3 ({content} trimmed like Jinja's |trim):
//   {bos}<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|> ...
//   [+ <|start_header_id|>assistant<|end_header_id|>\n\n]
// InvalidArgument for no messages, and naming messages[i].role for a role outside
// system/user/assistant/tool.
[[nodiscard]] StatusOr<std::string> ApplyChatTemplate(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                                                      bool add_generation_prompt, const std::string& default_system,
                                                      const std::string& bos_token = kLlama3BosToken);

// A model's template: its family plus what the Jinja text fixes (the default system message).
class ChatTemplate {
 public:
  explicit ChatTemplate(ChatTemplateKind kind, std::string default_system = "",
                        std::string bos_token = kLlama3BosToken)
      : kind_(kind), default_system_(std::move(default_system)), bos_token_(std::move(bos_token)) {}

  // nullopt when the Jinja text is no family we know. `bos_token` is the text the template's
  // {{ bos_token }} renders to (Llama 3 writes it into the prompt).
  static std::optional<ChatTemplate> FromJinja(const std::string& jinja_text, std::string bos_token);

  ChatTemplateKind kind() const { return kind_; }
  const std::string& default_system() const { return default_system_; }
  const std::string& bos_token() const { return bos_token_; }

  [[nodiscard]] StatusOr<std::string> Apply(const std::vector<ChatMessage>& messages,
                                            bool add_generation_prompt) const {
    return ApplyChatTemplate(kind_, messages, add_generation_prompt, default_system_, bos_token_);
  }

 private:
  ChatTemplateKind kind_;
  std::string default_system_;  // empty: none
  std::string bos_token_;
};

}  // namespace asl::tok

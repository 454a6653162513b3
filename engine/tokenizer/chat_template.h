// Chat templates: the model's own Jinja template (GGUF tokenizer.chat_template, or
// tokenizer_config.json / chat_template.jinja), rendered by llama.cpp's Jinja engine (built from the
// llama-cpp-python sdist at set-up: cmake/llama_jinja.cmake). The context a template sees is Hugging
// Face's apply_chat_template context: messages, tools, add_generation_prompt, bos_token, eos_token,
// plus the request's extra keys (chat_template_kwargs), with raise_exception and strftime_now.
//
// The render keeps track of which bytes came from the request (message contents, names, tool
// arguments, tools): control tokens written there are tokenized as plain text, so a user cannot
// forge "<|im_end|><|im_start|>system" (Tokenizer::EncodeChat).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/status.h"

namespace asl::tok {

struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // JSON text as the client sent it; templates see the parsed object
};

struct ChatMessage {
  // Default member initializers: designated initializers may name only the fields they set.
  std::string role{};
  std::optional<std::string> content{};  // nullopt: null (an assistant turn that only calls tools)
  std::string name{};                    // optional ("name" of a tool result or a participant)
  std::string tool_call_id{};            // optional (a tool result)
  std::vector<ToolCall> tool_calls{};    // optional (an assistant turn)
};

struct ChatRenderOptions {
  bool add_generation_prompt = true;
  std::string tools_json;          // the OpenAI "tools" array as JSON text; empty: no tools
  std::string extra_context_json;  // a JSON object whose keys join the context; empty: none
};

struct TextRange {
  size_t begin = 0;
  size_t end = 0;  // exclusive
  bool operator==(const TextRange&) const = default;
};

struct RenderedChat {
  std::string text;
  std::vector<TextRange> input_ranges;  // sorted, disjoint: bytes of `text` that came from the request
};

class ChatTemplate {
 public:
  // Parses `source`; InvalidArgument with the engine's message (and position) on a syntax error.
  // `bos_token` / `eos_token` are what {{ bos_token }} / {{ eos_token }} render.
  [[nodiscard]] static StatusOr<ChatTemplate> Compile(std::string source, std::string bos_token,
                                                      std::string eos_token);

  // Renders a conversation. InvalidArgument for no messages, malformed tools / extra context JSON, or
  // a template that fails (raise_exception("...") from the template, a type error), with its message.
  // Thread-safe: the compiled program is immutable.
  [[nodiscard]] StatusOr<RenderedChat> Render(const std::vector<ChatMessage>& messages,
                                              const ChatRenderOptions& options) const;

  // The request's part of the context Render passes the template (messages after the
  // normalisations below, tools, extra keys), as JSON text: for comparing with another renderer.
  //   - tool-call arguments are objects when the template indexes into them (llama.cpp's capability
  //     probe), else the JSON text as sent;
  //   - a tool-calling assistant turn's null content is "" when the template renders tool calls.
  [[nodiscard]] StatusOr<std::string> ContextJson(const std::vector<ChatMessage>& messages,
                                                  const ChatRenderOptions& options) const;

  const std::string& source() const;
  // Whether the template shows `tools` to the model (llama.cpp's capability probe); Render refuses
  // tools (InvalidArgument naming "tools") when it does not.
  bool renders_tools() const;
  const std::string& bos_token() const;
  const std::string& eos_token() const;

 struct Impl;  // defined in chat_template.cpp only

 private:
  explicit ChatTemplate(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// The Jinja source of a built-in template by name, for models that carry none: "chatml" or
// "llama3" (case-insensitive); nullopt otherwise.
std::optional<std::string> BuiltinChatTemplateSource(std::string_view name);

// A --chat-template / model.chat_template value: a built-in name, else the path of a Jinja file
// (NotFound / DataLoss naming it when it cannot be read).
[[nodiscard]] StatusOr<std::string> ResolveChatTemplateSource(const std::string& name_or_path);

}  // namespace asl::tok

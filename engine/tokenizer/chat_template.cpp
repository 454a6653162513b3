#include "engine/tokenizer/chat_template.h"

#include <algorithm>
#include <cctype>
#include <exception>
#include <fstream>
#include <iterator>
#include <mutex>

#include <nlohmann/json.hpp>

// llama.cpp's Jinja engine (third-party, built by cmake/llama_jinja.cmake).
#include "jinja/caps.h"
#include "jinja/lexer.h"
#include "jinja/parser.h"
#include "jinja/runtime.h"
#include "jinja/value.h"
#include "json.h"

namespace asl::tok {

struct ChatTemplate::Impl {
  std::string source;
  std::string bos_token;
  std::string eos_token;
  jinja::program program;
  // From llama.cpp's capability probe (jinja::caps_get), as llama-server applies them: tool-call
  // arguments reach the template as objects only when it indexes into them, else as the JSON text;
  // a tool-calling turn's null content becomes "" for templates that render tool calls.
  bool object_arguments = false;
  bool non_null_tool_call_content = false;
  bool renders_tools = true;  // the template shows `tools` to the model (else a request's tools are refused)
  // The engine's strftime_now calls std::localtime, whose result is one static buffer: renders of
  // a template that uses it take turns.
  bool uses_localtime = false;
  mutable std::mutex localtime_mu;
};

namespace {

// ordered_json: object keys keep the client's order, as in Python dicts (|tojson and |items show it).
using json = nlohmann::ordered_json;

// Hugging Face's ChatML and Meta's Llama 3 templates, verbatim.
constexpr const char* kChatMLSource =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
constexpr const char* kLlama3Source =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
    "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

// An OpenAI tool call as templates expect it: {"id", "type": "function", "function": {"name",
// "arguments"}}; `object_arguments`: the arguments parsed (when they are JSON).
json ToolCallJson(const ToolCall& call, bool object_arguments) {
  json args = call.arguments;
  if (object_arguments) {
    json parsed = json::parse(call.arguments, nullptr, /*allow_exceptions=*/false);
    if (!parsed.is_discarded()) args = std::move(parsed);
  }
  json fn = {{"name", call.name}, {"arguments", std::move(args)}};
  json out = {{"type", "function"}, {"function", std::move(fn)}};
  if (!call.id.empty()) out["id"] = call.id;
  return out;
}

json MessageJson(const ChatMessage& m, const ChatTemplate::Impl& t) {
  json out = json::object();
  out["role"] = m.role;
  if (m.content) {
    out["content"] = *m.content;
  } else {
    out["content"] = !m.tool_calls.empty() && t.non_null_tool_call_content ? json("") : json(nullptr);
  }
  if (!m.name.empty()) out["name"] = m.name;
  if (!m.tool_call_id.empty()) out["tool_call_id"] = m.tool_call_id;
  if (!m.tool_calls.empty()) {
    json calls = json::array();
    for (const ToolCall& c : m.tool_calls) calls.push_back(ToolCallJson(c, t.object_arguments));
    out["tool_calls"] = std::move(calls);
  }
  return out;
}

// JSON text -> the engine's JSON (the engine converts that into its values).
common_json EngineJson(const json& j) { return common_json::parse(j.dump()); }

}  // namespace

StatusOr<ChatTemplate> ChatTemplate::Compile(std::string source, std::string bos_token, std::string eos_token) {
  auto impl = std::make_shared<Impl>();
  try {
    jinja::lexer lexer;
    jinja::lexer_result tokens = lexer.tokenize(source);
    impl->program = jinja::parse_from_tokens(tokens);
    const jinja::caps caps = jinja::caps_get(impl->program);
    impl->object_arguments = caps.supports_object_arguments;
    impl->non_null_tool_call_content = caps.supports_tool_calls;
    impl->renders_tools = caps.supports_tools;
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("chat template: ") + e.what());
  }
  impl->uses_localtime = source.find("strftime_now") != std::string::npos;
  impl->source = std::move(source);
  impl->bos_token = std::move(bos_token);
  impl->eos_token = std::move(eos_token);
  return ChatTemplate(std::move(impl));
}

const std::string& ChatTemplate::source() const { return impl_->source; }
bool ChatTemplate::renders_tools() const { return impl_->renders_tools; }
const std::string& ChatTemplate::bos_token() const { return impl_->bos_token; }
const std::string& ChatTemplate::eos_token() const { return impl_->eos_token; }

namespace {

// The part of the template's context the request supplies: messages, tools, extra keys.
StatusOr<json> InputContext(const ChatTemplate::Impl& t, const std::vector<ChatMessage>& messages,
                            const ChatRenderOptions& options) {
  // Hugging Face refuses an empty conversation too.
  if (messages.empty()) return InvalidArgument("messages: at least one message is required");
  json input = json::object();
  json msgs = json::array();
  for (const ChatMessage& m : messages) msgs.push_back(MessageJson(m, t));
  if (!options.extra_context_json.empty()) {
    json extra = json::parse(options.extra_context_json, nullptr, /*allow_exceptions=*/false);
    if (extra.is_discarded() || !extra.is_object()) {
      return InvalidArgument("chat_template_kwargs: must be a JSON object");
    }
    for (auto& [k, v] : extra.items()) input[k] = v;
  }
  if (!options.tools_json.empty()) {
    json tools = json::parse(options.tools_json, nullptr, /*allow_exceptions=*/false);
    if (tools.is_discarded() || !tools.is_array()) return InvalidArgument("tools: must be a JSON array");
    // Silently dropping them would leave the model unaware of its tools.
    if (!tools.empty() && !t.renders_tools) {
      return InvalidArgument(
          "tools: the chat template in use does not render tools; serve the model with a template that does "
          "(model.chat_template)");
    }
    input["tools"] = std::move(tools);
  }
  input["messages"] = std::move(msgs);
  return input;
}

}  // namespace

StatusOr<std::string> ChatTemplate::ContextJson(const std::vector<ChatMessage>& messages,
                                                const ChatRenderOptions& options) const {
  ASL_ASSIGN_OR_RETURN(json input, InputContext(*impl_, messages, options));
  return input.dump();
}

StatusOr<RenderedChat> ChatTemplate::Render(const std::vector<ChatMessage>& messages,
                                            const ChatRenderOptions& options) const {
  // What the request supplied: marked as input, so its control-token text stays text.
  ASL_ASSIGN_OR_RETURN(json input, InputContext(*impl_, messages, options));
  // What the server supplies (Hugging Face's special_tokens_map and flags): template text.
  json fixed = {{"bos_token", impl_->bos_token},
                {"eos_token", impl_->eos_token},
                {"add_generation_prompt", options.add_generation_prompt}};

  RenderedChat out;
  std::unique_lock<std::mutex> lock(impl_->localtime_mu, std::defer_lock);
  if (impl_->uses_localtime) lock.lock();
  try {
    jinja::context ctx(impl_->source);
    jinja::global_from_json(ctx, EngineJson(input), /*mark_input=*/true);
    jinja::global_from_json(ctx, EngineJson(fixed), /*mark_input=*/false);
    jinja::runtime runtime(ctx);
    const jinja::value results = runtime.execute(impl_->program);
    const jinja::value_string parts = jinja::runtime::gather_string_parts(results);
    for (const jinja::string_part& p : parts->val_str.parts) {
      if (p.is_input && !p.val.empty()) {
        if (!out.input_ranges.empty() && out.input_ranges.back().end == out.text.size()) {
          out.input_ranges.back().end += p.val.size();
        } else {
          out.input_ranges.push_back({out.text.size(), out.text.size() + p.val.size()});
        }
      }
      out.text += p.val;
    }
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("chat template: ") + e.what());
  }
  return out;
}

std::optional<std::string> BuiltinChatTemplateSource(std::string_view name) {
  std::string n(name);
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
  if (n == "chatml") return std::string(kChatMLSource);
  if (n == "llama3" || n == "llama-3") return std::string(kLlama3Source);
  return std::nullopt;
}

StatusOr<std::string> ResolveChatTemplateSource(const std::string& name_or_path) {
  if (std::optional<std::string> builtin = BuiltinChatTemplateSource(name_or_path)) return *builtin;
  std::ifstream f(name_or_path, std::ios::binary);
  if (!f) return NotFound("chat template: '" + name_or_path + "' is neither chatml, llama3 nor a readable file");
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) return DataLoss("chat template: reading '" + name_or_path + "' failed");
  if (text.empty()) return InvalidArgument("chat template: '" + name_or_path + "' is empty");
  return text;
}

}  // namespace asl::tok

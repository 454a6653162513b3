// Tool calls in generated text -> OpenAI tool_calls, in the format the model's chat template teaches
// (vLLM's --tool-call-parser, chosen here from the template unless --tool-call-parser names one):
//   hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call>, any number, text around
//                them is content (Hermes 2/3, Qwen2.5, Qwen3, SmolLM3, ...);
//   llama3_json  the whole reply is {"name": ..., "parameters": {...}} (or "arguments"), several
//                separated by ";" (Llama 3.1/3.2/3.3 with JSON tool calling).
// and two that a request's tool_choice forces (vLLM's semantics; the sampler's grammar guarantees the
// shape, docs/structured_output.md), whatever the template:
//   required     the whole reply is a JSON array of {"name": ..., "parameters": {...}}, >= 1 call;
//   named        the whole reply is the arguments object of the function tool_choice names.
// Streaming: ToolCallParser takes the text as it arrives and returns what is certainly content
// (holding back what may open a call) and each call once it is complete. A block that does not
// parse as a call is returned as content, as vLLM does.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace asl::gateway {

enum class ToolCallFormat { kNone, kHermes, kLlama3Json, kRequired, kNamed };

// "hermes", "llama3_json", "none" (the formats a template teaches); nullopt otherwise.
[[nodiscard]] std::optional<ToolCallFormat> ParseToolCallFormat(std::string_view name);
[[nodiscard]] const char* ToolCallFormatName(ToolCallFormat format);
// The format a chat template's Jinja source teaches: hermes when it writes <tool_call>, llama3_json
// for Llama 3 templates that render tools (<|start_header_id|> and "parameters"), else none.
[[nodiscard]] ToolCallFormat DetectToolCallFormat(std::string_view template_source);

struct ParsedToolCall {
  std::string id;         // "call_<request-unique suffix>_<n>"
  std::string name;
  std::string arguments;  // JSON text of an object
};

class ToolCallParser {
 public:
  // `id_prefix` + index names the calls ("call_<id>_0", ...). kNamed: `function` is the name the
  // call gets.
  ToolCallParser(ToolCallFormat format, std::string id_prefix, std::string function = "");

  struct Output {
    std::string content;                // text for the message content
    std::vector<ParsedToolCall> calls;  // calls completed by this piece of text
  };
  Output Feed(std::string_view text);
  // The end of the generation: what was held back, as calls where it parses, else as content.
  Output Finish();
  int num_calls() const { return num_calls_; }

 private:
  void TakeHermes(bool final, Output* out);
  // `block` (a call's JSON) -> calls; false when it is not one.
  bool ParseCalls(std::string_view block, std::vector<ParsedToolCall>* out);

  ToolCallFormat format_;
  std::string id_prefix_;
  std::string function_;  // kNamed
  std::string pending_;   // text not yet returned
  bool in_call_ = false;  // hermes: inside <tool_call> ... </tool_call>
  bool decided_ = false;  // llama3_json: whether the reply is a call is known
  bool json_reply_ = false;
  int num_calls_ = 0;
};

}  // namespace asl::gateway

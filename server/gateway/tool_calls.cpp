#include "server/gateway/tool_calls.h"

#include <algorithm>

#include <nlohmann/json.hpp>

namespace asl::gateway {
namespace {

// ordered_json: the arguments keep the model's key order.
using json = nlohmann::ordered_json;

constexpr std::string_view kHermesOpen = "<tool_call>";
constexpr std::string_view kHermesClose = "</tool_call>";

bool IsSpace(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

// The length of the longest suffix of `s` that is a proper prefix of `marker` (it may open one).
size_t HeldBack(std::string_view s, std::string_view marker) {
  for (size_t n = std::min(s.size(), marker.size() - 1); n > 0; --n) {
    if (s.substr(s.size() - n) == marker.substr(0, n)) return n;
  }
  return 0;
}

// {"name": "...", "arguments" | "parameters": {...} or "..."} -> a call; false otherwise.
bool CallFromJson(const json& j, ParsedToolCall* out) {
  if (!j.is_object()) return false;
  auto name = j.find("name");
  if (name == j.end() || !name->is_string() || name->get<std::string>().empty()) return false;
  auto args = j.find("arguments");
  if (args == j.end()) args = j.find("parameters");
  out->name = name->get<std::string>();
  if (args == j.end() || args->is_null()) {
    out->arguments = "{}";
  } else if (args->is_string()) {
    out->arguments = args->get<std::string>();
  } else if (args->is_object()) {
    out->arguments = args->dump();
  } else {
    return false;
  }
  return true;
}

}  // namespace

std::optional<ToolCallFormat> ParseToolCallFormat(std::string_view name) {
  if (name == "hermes") return ToolCallFormat::kHermes;
  if (name == "llama3_json") return ToolCallFormat::kLlama3Json;
  if (name == "none") return ToolCallFormat::kNone;
  return std::nullopt;
}

const char* ToolCallFormatName(ToolCallFormat format) {
  switch (format) {
    case ToolCallFormat::kHermes: return "hermes";
    case ToolCallFormat::kLlama3Json: return "llama3_json";
    case ToolCallFormat::kRequired: return "required";
    case ToolCallFormat::kNamed: return "named";
    case ToolCallFormat::kNone: break;
  }
  return "none";
}

ToolCallFormat DetectToolCallFormat(std::string_view source) {
  if (source.find(kHermesOpen) != std::string_view::npos) return ToolCallFormat::kHermes;
  if (source.find("<|start_header_id|>") != std::string_view::npos && source.find("tools") != std::string_view::npos &&
      source.find("parameters") != std::string_view::npos) {
    return ToolCallFormat::kLlama3Json;
  }
  return ToolCallFormat::kNone;
}

ToolCallParser::ToolCallParser(ToolCallFormat format, std::string id_prefix, std::string function)
    : format_(format), id_prefix_(std::move(id_prefix)), function_(std::move(function)) {}

bool ToolCallParser::ParseCalls(std::string_view block, std::vector<ParsedToolCall>* out) {
  block = Trim(block);
  std::vector<json> items;
  json whole = json::parse(block.begin(), block.end(), nullptr, /*allow_exceptions=*/false);
  if (!whole.is_discarded()) {
    if (whole.is_array()) {
      items.assign(whole.begin(), whole.end());
    } else {
      items.push_back(std::move(whole));
    }
  } else if (format_ == ToolCallFormat::kLlama3Json) {  // several calls: {...}; {...}
    size_t start = 0;
    while (start <= block.size()) {
      const size_t semi = block.find(';', start);
      const std::string_view piece = Trim(block.substr(start, semi == std::string_view::npos ? semi : semi - start));
      json j = json::parse(piece.begin(), piece.end(), nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded()) return false;
      items.push_back(std::move(j));
      if (semi == std::string_view::npos) break;
      start = semi + 1;
    }
  } else {
    return false;
  }
  if (items.empty()) return false;
  std::vector<ParsedToolCall> calls(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    if (!CallFromJson(items[i], &calls[i])) return false;
  }
  for (ParsedToolCall& c : calls) {
    c.id = id_prefix_ + std::to_string(num_calls_++);
    out->push_back(std::move(c));
  }
  return true;
}

void ToolCallParser::TakeHermes(bool final, Output* out) {
  while (true) {
    if (!in_call_) {
      const size_t open = pending_.find(kHermesOpen);
      if (open == std::string::npos) {
        const size_t keep = final ? 0 : HeldBack(pending_, kHermesOpen);
        out->content.append(pending_, 0, pending_.size() - keep);
        pending_.erase(0, pending_.size() - keep);
        return;
      }
      out->content.append(pending_, 0, open);
      pending_.erase(0, open + kHermesOpen.size());
      in_call_ = true;
    }
    const size_t close = pending_.find(kHermesClose);
    if (close == std::string::npos) {
      if (!final) return;
      // Generation ended inside a call (a stop token before </tool_call>): a call if it parses.
      if (!ParseCalls(pending_, &out->calls)) out->content += std::string(kHermesOpen) + pending_;
      pending_.clear();
      in_call_ = false;
      return;
    }
    const std::string block = pending_.substr(0, close);
    if (!ParseCalls(block, &out->calls)) {
      out->content += std::string(kHermesOpen) + block + std::string(kHermesClose);
    }
    pending_.erase(0, close + kHermesClose.size());
    in_call_ = false;
  }
}

ToolCallParser::Output ToolCallParser::Feed(std::string_view text) {
  Output out;
  switch (format_) {
    case ToolCallFormat::kNone:
      out.content = text;
      break;
    case ToolCallFormat::kHermes:
      pending_ += text;
      TakeHermes(/*final=*/false, &out);
      break;
    case ToolCallFormat::kLlama3Json:
      if (decided_ && !json_reply_) {
        out.content = text;
        break;
      }
      pending_ += text;
      if (!decided_ && !Trim(pending_).empty()) {
        decided_ = true;
        json_reply_ = Trim(pending_).front() == '{';
        if (!json_reply_) out.content = std::move(pending_), pending_.clear();
      }
      break;
    case ToolCallFormat::kRequired:
    case ToolCallFormat::kNamed:
      pending_ += text;  // one JSON value: parsed whole at the end
      break;
  }
  return out;
}

ToolCallParser::Output ToolCallParser::Finish() {
  Output out;
  if (format_ == ToolCallFormat::kHermes) {
    TakeHermes(/*final=*/true, &out);
  } else if (format_ == ToolCallFormat::kNamed) {
    // The arguments object; a reply cut short (max_tokens) is not one and stays content.
    const std::string_view block = Trim(pending_);
    json args = json::parse(block.begin(), block.end(), nullptr, /*allow_exceptions=*/false);
    if (!args.is_discarded() && args.is_object()) {
      out.calls.push_back(ParsedToolCall{id_prefix_ + std::to_string(num_calls_++), function_, args.dump()});
    } else {
      out.content = std::move(pending_);
    }
    pending_.clear();
  } else if (format_ == ToolCallFormat::kRequired) {
    const std::string_view block = Trim(pending_);
    if (block.empty() || block.front() != '[' || !ParseCalls(block, &out.calls)) out.content = std::move(pending_);
    pending_.clear();
  } else if (!pending_.empty()) {
    if (!(format_ == ToolCallFormat::kLlama3Json && json_reply_ && ParseCalls(pending_, &out.calls))) {
      out.content = std::move(pending_);
    }
    pending_.clear();
  }
  return out;
}

}  // namespace asl::gateway

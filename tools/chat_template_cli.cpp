// asl-chat-template: renders conversations with a chat template exactly as asl-server does
// (tok::ChatTemplate over llama.cpp's Jinja engine), for checking a template before serving it and
// for the comparison with Hugging Face's apply_chat_template (tests/tokenizer/test_chat_templates.py).
//
//   asl-chat-template --template FILE|chatml|llama3 [--bos-token S] [--eos-token S] < request.json
//       request.json: {"messages": [...], "tools": [...], "add_generation_prompt": true,
//                      "chat_template_kwargs": {...}} (OpenAI shapes); prints the rendered text.
//   asl-chat-template --batch < cases.jsonl
//       each line: the request plus "template" (a file or built-in name), "bos_token", "eos_token";
//       prints one JSON line each: {"ok": true, "text": ..., "input_ranges": [[begin, end], ...]}
//       or {"ok": false, "error": ...}.
// Exit status: 0, 1 when a single render fails (the error on stderr), 2 on bad usage.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <map>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "engine/tokenizer/chat_template.h"

namespace {

using json = nlohmann::ordered_json;  // keys keep their order, as Hugging Face's Python dicts do
using asl::StatusOr;
namespace tok = asl::tok;

std::string JsonText(const json& j) { return j.is_string() ? j.get<std::string>() : j.dump(); }

// OpenAI message objects -> ChatMessage; content parts are joined with "\n" like vLLM.
std::vector<tok::ChatMessage> Messages(const json& arr) {
  std::vector<tok::ChatMessage> out;
  for (const json& m : arr) {
    tok::ChatMessage& c = out.emplace_back();
    c.role = m.at("role").get<std::string>();
    if (auto it = m.find("content"); it != m.end() && !it->is_null()) {
      if (it->is_string()) {
        c.content = it->get<std::string>();
      } else {
        std::string text;
        for (const json& part : *it) text += (text.empty() ? "" : "\n") + part.at("text").get<std::string>();
        c.content = text;
      }
    }
    c.name = m.value("name", "");
    c.tool_call_id = m.value("tool_call_id", "");
    for (const json& call : m.value("tool_calls", json::array())) {
      const json& fn = call.at("function");
      c.tool_calls.push_back({call.value("id", ""), fn.at("name").get<std::string>(), JsonText(fn.at("arguments"))});
    }
  }
  return out;
}

tok::ChatRenderOptions Options(const json& req) {
  tok::ChatRenderOptions options;
  options.add_generation_prompt = req.value("add_generation_prompt", true);
  if (req.contains("tools") && !req.at("tools").is_null()) options.tools_json = req.at("tools").dump();
  if (req.contains("chat_template_kwargs")) options.extra_context_json = req.at("chat_template_kwargs").dump();
  return options;
}

StatusOr<tok::RenderedChat> Render(const tok::ChatTemplate& tmpl, const json& req) {
  return tmpl.Render(Messages(req.at("messages")), Options(req));
}

json Result(const StatusOr<tok::RenderedChat>& r) {
  if (!r.ok()) return {{"ok", false}, {"error", r.status().message()}};
  json ranges = json::array();
  for (const tok::TextRange& t : r->input_ranges) ranges.push_back({t.begin, t.end});
  return {{"ok", true}, {"text", r->text}, {"input_ranges", std::move(ranges)}};
}

// The render plus "context": what the template saw of the request (ChatTemplate::ContextJson).
json ResultWithContext(const tok::ChatTemplate& tmpl, const json& req) {
  json out = Result(Render(tmpl, req));
  if (StatusOr<std::string> ctx = tmpl.ContextJson(Messages(req.at("messages")), Options(req)); ctx.ok()) {
    out["context"] = json::parse(*ctx);
  }
  return out;
}

StatusOr<tok::ChatTemplate> Compile(const std::string& name_or_path, const std::string& bos, const std::string& eos) {
  ASL_ASSIGN_OR_RETURN(std::string source, tok::ResolveChatTemplateSource(name_or_path));
  return tok::ChatTemplate::Compile(std::move(source), bos, eos);
}

int RunBatch() {
  std::map<std::string, StatusOr<tok::ChatTemplate>> compiled;  // template file -> program
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    json out;
    try {
      const json req = json::parse(line);
      const std::string key = req.at("template").get<std::string>() + '\0' + req.value("bos_token", "") + '\0' +
                              req.value("eos_token", "");
      auto it = compiled.find(key);
      if (it == compiled.end()) {
        it = compiled.emplace(key, Compile(req.at("template"), req.value("bos_token", ""), req.value("eos_token", "")))
                 .first;
      }
      out = it->second.ok() ? ResultWithContext(*it->second, req) : Result(it->second.status());
    } catch (const std::exception& e) {
      out = {{"ok", false}, {"error", std::string("bad case: ") + e.what()}};
    }
    std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << '\n' << std::flush;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Render chat conversations with a Jinja chat template, as asl-server does"};
  std::string template_name, bos, eos;
  bool batch = false, json_out = false;
  app.add_option("--template", template_name, "a Jinja file, or a built-in: chatml, llama3");
  app.add_option("--bos-token", bos, "what {{ bos_token }} renders");
  app.add_option("--eos-token", eos, "what {{ eos_token }} renders");
  app.add_flag("--batch", batch, "JSON lines in, JSON lines out (each line names its template)");
  app.add_flag("--json", json_out, "print {ok, text, input_ranges} instead of the text");
  CLI11_PARSE(app, argc, argv);
  if (batch) return RunBatch();
  if (template_name.empty()) {
    std::fprintf(stderr, "asl-chat-template: --template is required (or --batch)\n");
    return 2;
  }
  StatusOr<tok::ChatTemplate> tmpl = Compile(template_name, bos, eos);
  if (!tmpl.ok()) {
    std::fprintf(stderr, "asl-chat-template: %s\n", tmpl.status().message().c_str());
    return 1;
  }
  json req;
  try {
    req = json::parse(std::string(std::istreambuf_iterator<char>(std::cin), {}));
    StatusOr<tok::RenderedChat> r = Render(*tmpl, req);
    if (json_out) {
      std::cout << Result(r).dump() << '\n';
      return r.ok() ? 0 : 1;
    }
    if (!r.ok()) {
      std::fprintf(stderr, "asl-chat-template: %s\n", r.status().message().c_str());
      return 1;
    }
    std::cout << r->text;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "asl-chat-template: bad request JSON: %s\n", e.what());
    return 2;
  }
  return 0;
}

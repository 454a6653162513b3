// Unit tests of the gateway's request parsing and error mapping (no server, no network).
#include <gtest/gtest.h>

#include <set>
#include <type_traits>
#include <variant>

#include "proto/pruning_fields.h"

#include "server/gateway/errors.h"
#include "server/gateway/openai_request.h"
#include "server/gateway/openai_response.h"
#include "server/gateway/request_id.h"

namespace asl::gateway {
namespace {

ParsedRequest ParseOk(Endpoint e, const std::string& body) {
  ParsedRequest r;
  ApiError err;
  EXPECT_TRUE(ParseRequest(e, body, &r, &err)) << err.message;
  return r;
}

ApiError ParseFails(Endpoint e, const std::string& body) {
  ParsedRequest r;
  ApiError err;
  EXPECT_FALSE(ParseRequest(e, body, &r, &err));
  EXPECT_EQ(err.http_status, 400);
  return err;
}

TEST(ParseRequest, ChatCarriesToolsToolCallsAndTemplateKwargs) {
  const ParsedRequest r = ParseOk(Endpoint::kChatCompletions, R"({
    "model": "m", "tool_choice": "auto", "parallel_tool_calls": true,
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "b": 1, "a": 2}}}],
    "chat_template_kwargs": {"enable_thinking": false},
    "messages": [{"role": "user", "content": "Weather?"},
                 {"role": "assistant", "content": null, "tool_calls": [
                   {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                   {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
                 {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "21C"}]})");
  const v1::ChatMessages& chat = r.grpc.chat();
  ASSERT_EQ(chat.messages_size(), 3);
  // Key order is the client's: templates print tools with |tojson.
  EXPECT_EQ(chat.tools_json(),
            R"([{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","b":1,"a":2}}}])");
  EXPECT_EQ(chat.chat_template_kwargs_json(), R"({"enable_thinking":false})");
  const v1::ChatMessage& call = chat.messages(1);
  EXPECT_FALSE(call.has_content());  // null stays null for a tool-calling turn
  ASSERT_EQ(call.tool_calls_size(), 2);
  EXPECT_EQ(call.tool_calls(0).id(), "c1");
  EXPECT_EQ(call.tool_calls(0).arguments(), R"({"city": "Paris"})");
  EXPECT_EQ(call.tool_calls(1).arguments(), R"({"city":"Rome"})");
  EXPECT_EQ(chat.messages(2).tool_call_id(), "c1");
  EXPECT_EQ(chat.messages(2).name(), "get_weather");
  EXPECT_TRUE(chat.messages(0).has_content());
}

TEST(ParseRequest, ChatMapsOpenAiAndAslFields) {
  const ParsedRequest r = ParseOk(Endpoint::kChatCompletions, R"({
    "model": "m", "messages": [{"role": "system", "content": "S"},
                               {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": -1, "stop": "X",
    "presence_penalty": 0.1, "frequency_penalty": 0.2, "top_k": 3, "min_p": 0.05, "repetition_penalty": 1.1,
    "ignore_eos": true, "logprobs": true, "top_logprobs": 0, "stream": true,
    "stream_options": {"include_usage": true}, "user": "u", "unknown_top_level": 1, "cache_prompt": false,
    "pruning": {"policy": "asl", "tau": 0.25, "kv_budget": 256, "select_k": 256.0, "detailed_report": true}})");
  const v1::GenerateRequest& g = r.grpc;
  ASSERT_EQ(g.chat().messages_size(), 2);
  EXPECT_EQ(g.chat().messages(1).content(), "a\nb");  // text parts joined like vLLM
  EXPECT_EQ(g.sampling().max_tokens(), 7);  // max_completion_tokens wins
  EXPECT_DOUBLE_EQ(g.sampling().temperature(), 0.5);
  EXPECT_EQ(g.sampling().seed(), UINT64_MAX);
  ASSERT_EQ(g.sampling().stop_size(), 1);
  EXPECT_EQ(g.sampling().top_k(), 3);
  EXPECT_TRUE(g.sampling().ignore_eos());
  EXPECT_EQ(g.sampling().logprobs(), 1);  // sampled logprob only: one candidate asked, none returned
  EXPECT_EQ(r.top_logprobs, 0);
  EXPECT_TRUE(r.stream && r.include_usage && r.logprobs);
  EXPECT_EQ(g.pruning().policy(), "asl");
  EXPECT_EQ(g.pruning().kv_budget(), 256);
  EXPECT_EQ(g.pruning().select_k(), 256);
  EXPECT_FALSE(g.pruning().has_window());  // unset knobs stay unset: server defaults
  EXPECT_TRUE(g.detailed_pruning_report());
  EXPECT_DOUBLE_EQ(g.sampling().repetition_penalty(), 1.1);
  EXPECT_TRUE(g.has_cache_prompt() && !g.cache_prompt());
}

TEST(ParseRequest, OpenAiDefaults) {
  // No temperature: OpenAI's 1, not the gRPC default (greedy). No max_tokens: 0, the rest of the
  // context (vLLM's default), not the gRPC default of 256.
  for (Endpoint e : {Endpoint::kChatCompletions, Endpoint::kCompletions}) {
    const ParsedRequest r = ParseOk(e, R"({"model": "m", "prompt": "x", "messages": [{"role": "user", "content": "x"}]})");
    EXPECT_TRUE(r.grpc.sampling().has_temperature());
    EXPECT_DOUBLE_EQ(r.grpc.sampling().temperature(), 1.0);
    EXPECT_TRUE(r.grpc.sampling().has_max_tokens());
    EXPECT_EQ(r.grpc.sampling().max_tokens(), 0);
  }
  const ParsedRequest g = ParseOk(Endpoint::kCompletions, R"({"model": "m", "prompt": "x", "temperature": 0, "max_tokens": 9})");
  EXPECT_DOUBLE_EQ(g.grpc.sampling().temperature(), 0.0);
  EXPECT_EQ(g.grpc.sampling().max_tokens(), 9);
}

TEST(ParseRequest, CompletionPromptForms) {
  EXPECT_EQ(ParseOk(Endpoint::kCompletions, R"({"model": "m", "prompt": "hi"})").grpc.prompt(), "hi");
  EXPECT_EQ(ParseOk(Endpoint::kCompletions, R"({"model": "m", "prompt": ["hi"]})").grpc.prompt(), "hi");
  EXPECT_EQ(ParseOk(Endpoint::kCompletions, R"({"model": "m", "prompt": [1, 2, 3]})").grpc.token_ids().ids_size(), 3);
  EXPECT_EQ(ParseOk(Endpoint::kCompletions, R"({"model": "m", "prompt": [[4, 5]]})").grpc.token_ids().ids(1), 5);
  const ParsedRequest lp = ParseOk(Endpoint::kCompletions, R"({"model": "m", "prompt": "x", "logprobs": 3})");
  EXPECT_EQ(lp.grpc.sampling().logprobs(), 3);
  EXPECT_EQ(ParseFails(Endpoint::kCompletions, R"({"model": "m", "prompt": [1, -2]})").param, "prompt[1]");
  EXPECT_EQ(ParseFails(Endpoint::kCompletions, R"({"model": "m", "prompt": [[1], -2]})").param, "prompt[1]");
  EXPECT_EQ(ParseFails(Endpoint::kCompletions, R"({"model": "m", "prompt": ["a", [1, -2]]})").param, "prompt[1][1]");
  EXPECT_EQ(ParseFails(Endpoint::kCompletions, R"({"model": "m"})").param, "prompt");
  const ParsedRequest echo = ParseOk(Endpoint::kCompletions, R"({"model": "m", "prompt": "x", "echo": true, "logprobs": 2})");
  EXPECT_TRUE(echo.echo);
  EXPECT_EQ(echo.grpc.prompt_logprobs(), 2);  // the server computes the prompt's logprobs
  EXPECT_FALSE(ParseOk(Endpoint::kCompletions, R"({"model": "m", "prompt": "x", "echo": true})").grpc.has_prompt_logprobs());
}

TEST(ParseRequest, BatchesNAndBestOfMakeOneCallPerGeneration) {
  const ParsedRequest r = ParseOk(Endpoint::kCompletions,
                                  R"({"model": "m", "prompt": ["a", [5, 6]], "n": 2, "seed": 10, "max_tokens": 3})");
  EXPECT_EQ(r.n, 2);
  const std::vector<GenerationCall> calls = CallsFor(r);
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[0].grpc.prompt(), "a");
  EXPECT_EQ(calls[1].grpc.prompt(), "a");
  EXPECT_EQ(calls[2].grpc.token_ids().ids(1), 6);
  EXPECT_EQ(calls[3].prompt_index, 1);
  EXPECT_EQ(calls[3].sample_index, 1);
  EXPECT_EQ(calls[0].grpc.sampling().seed(), 10u);
  EXPECT_EQ(calls[1].grpc.sampling().seed(), 11u);  // samples differ
  EXPECT_EQ(calls[2].grpc.sampling().seed(), 10u);
  EXPECT_EQ(calls[3].grpc.sampling().max_tokens(), 3);
  const ParsedRequest b = ParseOk(Endpoint::kCompletions, R"({"model": "m", "prompt": "a", "n": 2, "best_of": 3})");
  EXPECT_EQ(CallsFor(b).size(), 3u);
  EXPECT_EQ(b.grpc.sampling().logprobs(), 1);  // to rank the candidates
  EXPECT_FALSE(b.logprobs);                    // but not returned
  const ParsedRequest chat = ParseOk(Endpoint::kChatCompletions, R"({"model": "m", "n": 3, "messages": [{"role": "user", "content": "x"}]})");
  EXPECT_EQ(CallsFor(chat).size(), 3u);
  EXPECT_EQ(CallsFor(chat)[2].grpc.chat().messages_size(), 1);
  const Endpoint c = Endpoint::kCompletions;
  EXPECT_EQ(ParseFails(c, R"({"model": "m", "prompt": "a", "n": 0})").param, "n");
  EXPECT_EQ(ParseFails(c, R"({"model": "m", "prompt": "a", "n": 65})").param, "n");
  EXPECT_EQ(ParseFails(c, R"({"model": "m", "prompt": "a", "n": 2, "best_of": 1})").param, "best_of");
  EXPECT_EQ(ParseFails(c, R"({"model": "m", "prompt": "a", "best_of": 2, "stream": true})").param, "best_of");
  EXPECT_EQ(ParseFails(c, R"({"model": "m", "prompt": ["a", "b"], "n": 40})").param, "prompt");
}

TEST(ParseRequest, ErrorsNameTheField) {
  const Endpoint chat = Endpoint::kChatCompletions;
  const std::string msgs = R"("messages": [{"role": "user", "content": "x"}])";
  EXPECT_EQ(ParseFails(chat, "{").param, "");
  EXPECT_EQ(ParseFails(chat, "[]").param, "");
  EXPECT_EQ(ParseFails(chat, "{" + msgs + "}").param, "model");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m"})").param, "messages");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "messages": []})").param, "messages");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "messages": [{"role": 1}]})").param, "messages[0].role");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "n": 0, )" + msgs + "}").param, "n");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "temperature": 2.5, )" + msgs + "}").param, "temperature");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "max_tokens": 1.5, )" + msgs + "}").param, "max_tokens");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "stop": [1], )" + msgs + "}").param, "stop");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "top_logprobs": 2, )" + msgs + "}").param, "top_logprobs");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "pruning": {"tau": "x"}, )" + msgs + "}").param, "pruning.tau");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "pruning": {"budget": 1}, )" + msgs + "}").param, "pruning.budget");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "tools": [{}], )" + msgs + "}").param, "tools[0]");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "tools": {}, )" + msgs + "}").param, "tools");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "tool_choice": "required", )" + msgs + "}").param, "tool_choice");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "chat_template_kwargs": [1], )" + msgs + "}").param,
            "chat_template_kwargs");
  EXPECT_EQ(ParseFails(chat, R"({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]})")
                .param,
            "messages[0].tool_calls[0].function.name");
  EXPECT_EQ(ParseFails(Endpoint::kCompletions, R"({"model": "m", "prompt": "x", "tools": [{"function": {"name": "f"}}]})")
                .param,
            "tools");
  // n = 1 and null fields are fine.
  ParseOk(chat, R"({"model": "m", "n": 1, "temperature": null, "stop": null, )" + msgs + "}");
}

// Every knob of engine/common/pruning_knobs.h is a key of the `pruning` object, set into the proto
// field of its name; a value of the wrong JSON type is an error naming pruning.<knob>.
// Issue 18 D1, the general case: every value anywhere in a full request, replaced by a value of
// every JSON type, is either accepted or refused with a 400 that names a field; parsing never
// throws (a throw is the gateway's HTTP 500).
void EveryValueOfEveryType(Endpoint endpoint, const nlohmann::json& body, int min_cases = 100) {
  const nlohmann::json kinds[] = {nullptr, true, 5, -1, 1.5, "x", nlohmann::json::array(),
                                  nlohmann::json::array({1, "a"}), nlohmann::json::object(),
                                  nlohmann::json::object({{"type", 5}})};
  const nlohmann::json flat = body.flatten();
  // Every path and every container above a leaf ("/messages/1/content" as well as its parts).
  std::set<std::string> paths;
  for (auto it = flat.begin(); it != flat.end(); ++it) {
    nlohmann::json::json_pointer ptr(it.key());
    while (!ptr.empty()) {
      paths.insert(ptr.to_string());
      ptr = ptr.parent_pointer();
    }
  }
  int cases = 0;
  for (const std::string& path : paths) {
    for (const nlohmann::json& v : kinds) {
      nlohmann::json mutated = body;
      mutated[nlohmann::json::json_pointer(path)] = v;
      ParsedRequest r;
      ApiError err;
      bool ok = false;
      ASSERT_NO_THROW(ok = ParseRequest(endpoint, mutated.dump(), &r, &err)) << path << " = " << v.dump();
      if (!ok) {
        EXPECT_EQ(err.http_status, 400) << path << " = " << v.dump();
        EXPECT_FALSE(err.param.empty()) << path << " = " << v.dump() << ": " << err.message;
        EXPECT_EQ(err.message.rfind(err.param + ": ", 0), 0u) << err.message;
      }
      cases++;
    }
  }
  EXPECT_GT(cases, min_cases);
}

TEST(ParseRequest, StructuredOutputFromEveryFieldThatNamesIt) {
  const std::string msgs = R"("model": "m", "messages": [{"role": "user", "content": "x"}])";
  const Endpoint chat = Endpoint::kChatCompletions;
  auto constraint = [&](const std::string& fields, Endpoint e = Endpoint::kChatCompletions) {
    const std::string body = e == chat ? "{" + msgs + ", " + fields + "}" : R"({"model": "m", "prompt": "x", )" + fields + "}";
    const ParsedRequest r = ParseOk(e, body);
    EXPECT_TRUE(r.grpc.sampling().has_structured_output()) << fields;
    return std::make_pair(r.grpc.sampling().structured_output(), r.constraint_param);
  };
  auto [c, param] = constraint(R"("response_format": {"type": "json_object"})");
  EXPECT_TRUE(c.json_object());
  EXPECT_EQ(param, "response_format");
  std::tie(c, param) = constraint(
      R"("response_format": {"type": "json_schema", "json_schema": {"name": "n", "strict": true, "schema": {"type": "integer"}}})");
  EXPECT_EQ(c.json_schema(), R"({"type":"integer"})");
  std::tie(c, param) = constraint(R"("response_format": {"type": "json_schema", "json_schema": {"name": "n"}})");
  EXPECT_TRUE(c.json_object());  // no schema: any object
  std::tie(c, param) = constraint(R"("structured_outputs": {"regex": "[0-9]+"})", Endpoint::kCompletions);
  EXPECT_EQ(c.regex(), "[0-9]+");
  EXPECT_EQ(param, "structured_outputs.regex");
  std::tie(c, param) = constraint(R"("structured_outputs": {"choice": ["yes", "no \"way\""]})");
  EXPECT_EQ(c.grammar(), R"(root ::= "yes" | "no \"way\"")");
  std::tie(c, param) = constraint(R"("structured_outputs": {"json": {"type": "boolean"}})");
  EXPECT_EQ(c.json_schema(), R"({"type":"boolean"})");
  std::tie(c, param) = constraint(R"("guided_json": "{\"type\": \"null\"}")");
  EXPECT_EQ(c.json_schema(), R"({"type": "null"})");
  std::tie(c, param) = constraint(R"("guided_grammar": "root ::= \"a\"")", Endpoint::kCompletions);
  EXPECT_EQ(c.grammar(), R"(root ::= "a")");
  std::tie(c, param) = constraint(R"("grammar": "root ::= [a-z]+")");  // llama.cpp's server
  EXPECT_EQ(param, "grammar");
  std::tie(c, param) = constraint(R"("json_schema": {"type": "string"})");
  EXPECT_EQ(c.json_schema(), R"({"type":"string"})");

  // Forced tool calls: vLLM's schemas, and the reply parser told.
  const std::string tools =
      R"("tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
                   {"type": "function", "function": {"name": "g"}}])";
  ParsedRequest r = ParseOk(chat, "{" + msgs + ", " + tools + R"(, "tool_choice": "required", "parallel_tool_calls": false})");
  EXPECT_EQ(r.forced_tool, ToolCallFormat::kRequired);
  EXPECT_EQ(r.constraint_param, "tool_choice");
  EXPECT_EQ(nlohmann::json::parse(r.grpc.sampling().structured_output().json_schema()), nlohmann::json::parse(R"({
    "type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "object", "anyOf": [
      {"properties": {"name": {"type": "string", "enum": ["f"]},
                      "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}},
       "required": ["name", "parameters"]},
      {"properties": {"name": {"type": "string", "enum": ["g"]}, "parameters": {"type": "object"}},
       "required": ["name", "parameters"]}]}})"));
  r = ParseOk(chat, "{" + msgs + ", " + tools + R"(, "tool_choice": {"type": "function", "function": {"name": "f"}}})");
  EXPECT_EQ(r.forced_tool, ToolCallFormat::kNamed);
  EXPECT_EQ(r.forced_function, "f");
  EXPECT_EQ(r.grpc.sampling().structured_output().json_schema(),
            R"({"type":"object","properties":{"a":{"type":"integer"}}})");
  EXPECT_TRUE(r.parse_tool_calls);
  r = ParseOk(chat, "{" + msgs + ", " + tools + R"(, "tool_choice": "auto", "response_format": {"type": "text"}})");
  EXPECT_FALSE(r.grpc.sampling().has_structured_output());
  EXPECT_EQ(r.forced_tool, ToolCallFormat::kNone);

  // Errors name the field.
  EXPECT_EQ(ParseFails(chat, "{" + msgs + R"(, "response_format": {"type": "yaml"}})").param, "response_format.type");
  EXPECT_EQ(ParseFails(chat, "{" + msgs + R"(, "response_format": {"type": "json_schema"}})").param,
            "response_format.json_schema");
  EXPECT_EQ(ParseFails(chat, "{" + msgs + R"(, "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}})")
                .param,
            "response_format.json_schema.name");
  EXPECT_EQ(ParseFails(chat, "{" + msgs + R"(, "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": 3}}})")
                .param,
            "response_format");
  EXPECT_EQ(ParseFails(chat, "{" + msgs + R"(, "structured_outputs": {"yaml": "x"}})").param, "structured_outputs");
  EXPECT_EQ(ParseFails(chat, "{" + msgs + R"(, "structured_outputs": {"choice": []}})").param, "structured_outputs.choice");
  EXPECT_EQ(ParseFails(chat, "{" + msgs + R"(, "structured_outputs": {"regex": 5}})").param, "structured_outputs.regex");
  // Two constraints: the second field is refused.
  EXPECT_EQ(ParseFails(chat, "{" + msgs + R"(, "response_format": {"type": "json_object"}, "guided_regex": "a"})").param,
            "guided_regex");
  EXPECT_EQ(ParseFails(chat, "{" + msgs + ", " + tools + R"(, "response_format": {"type": "json_object"}, "tool_choice": "required"})")
                .param,
            "tool_choice");
  EXPECT_EQ(ParseFails(chat, "{" + msgs + ", " + tools + R"(, "tool_choice": {"type": "function", "function": {"name": "h"}}})")
                .param,
            "tool_choice");
  EXPECT_EQ(ParseFails(chat, "{" + msgs + ", " + tools + R"(, "tool_choice": {"type": "function"}})").param,
            "tool_choice.function");
  EXPECT_EQ(ParseFails(chat, "{" + msgs + ", " + tools + R"(, "tool_choice": "sometimes"})").param, "tool_choice");
  EXPECT_EQ(ParseFails(Endpoint::kCompletions, R"({"model": "m", "prompt": "x", "tool_choice": "required"})").param,
            "tool_choice");
}

TEST(ParseRequest, NoValueOfAnyTypeAnywhereThrows) {
  EveryValueOfEveryType(Endpoint::kChatCompletions, nlohmann::json::parse(R"({
    "model": "m", "messages": [{"role": "system", "content": "S"},
                               {"role": "user", "content": [{"type": "text", "text": "a"}]}],
    "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 1, "stop": ["X"],
    "presence_penalty": 0.1, "frequency_penalty": 0.2, "top_k": 3, "min_p": 0.05, "repetition_penalty": 1.1,
    "ignore_eos": true, "logprobs": true, "top_logprobs": 2, "stream": true, "stop_token_ids": [2],
    "stream_options": {"include_usage": true}, "user": "u", "n": 1, "add_generation_prompt": true,
    "response_format": {"type": "text"}, "tools": [], "logit_bias": {"5": 1.5},
    "pruning": {"policy": "asl", "tau": 0.25, "kv_budget": 256, "select_k": 256, "detailed_report": true}})"));
  EveryValueOfEveryType(Endpoint::kChatCompletions, nlohmann::json::parse(R"({
    "model": "m", "messages": [{"role": "user", "content": "a"}], "parallel_tool_calls": false,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": {"type": "function", "function": {"name": "f"}}})"), 50);
  EveryValueOfEveryType(Endpoint::kChatCompletions, nlohmann::json::parse(R"({
    "model": "m", "messages": [{"role": "user", "content": "a"}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "n", "strict": true, "schema": {"type": "object"}}}})"), 50);
  EveryValueOfEveryType(Endpoint::kCompletions, nlohmann::json::parse(R"({
    "model": "m", "prompt": "a", "structured_outputs": {"choice": ["a", "b"], "json_object": false}})"), 50);
  EveryValueOfEveryType(Endpoint::kCompletions, nlohmann::json::parse(R"({
    "model": "m", "prompt": [[1, 2, 3]], "max_tokens": 5, "logprobs": 2, "echo": false, "best_of": 1,
    "suffix": "", "add_bos": true, "stop": "X", "pruning": {"policy": "snapkv", "window": 8}})"));
}

TEST(ParseRequest, EveryPruningKnobIsAJsonField) {
  const std::string head = R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "pruning": )";
  auto pruning = [&](const std::string& object) {
    return ParseOk(Endpoint::kChatCompletions, head + object + "}").grpc.pruning();
  };
  for (const PruningKnob& knob : kPruningKnobs) {
    SCOPED_TRACE(knob.name);
    const std::string key = std::string("\"") + knob.name + "\"";
    std::visit(
        [&](auto member) {
          using T = KnobValueT<decltype(member)>;
          if constexpr (std::is_same_v<T, int>) {
            const v1::PruningParams p = pruning("{" + key + ": 17}");
            EXPECT_EQ(v1::KnobInt32(p, knob), 17);
            EXPECT_EQ(ParseFails(Endpoint::kChatCompletions, head + "{" + key + ": 1.5}}").param,
                      std::string("pruning.") + knob.name);
            EXPECT_EQ(ParseFails(Endpoint::kChatCompletions, head + "{" + key + ": 3000000000}}").param,
                      std::string("pruning.") + knob.name);
          } else if constexpr (std::is_same_v<T, double>) {
            const v1::PruningParams p = pruning("{" + key + ": 0.125}");
            EXPECT_DOUBLE_EQ(v1::KnobDouble(p, knob), 0.125);
          } else {
            // Names pass through as given: the server checks them.
            const v1::PruningParams p = pruning("{" + key + ": \"zz\"}");
            EXPECT_EQ(v1::KnobString(p, knob), "zz");
          }
        },
        knob.member);
    const v1::PruningParams unset = pruning("{" + key + ": null}");
    for (const PruningKnob& k : kPruningKnobs) EXPECT_FALSE(v1::HasKnob(unset, k)) << k.name;
    const bool is_string = std::visit(
        [](auto member) { return !std::is_arithmetic_v<KnobValueT<decltype(member)>>; }, knob.member);
    EXPECT_EQ(ParseFails(Endpoint::kChatCompletions, head + "{" + key + (is_string ? ": 1}}" : ": \"1\"}}")).param,
              std::string("pruning.") + knob.name);
  }
  const v1::GenerateRequest all = ParseOk(Endpoint::kChatCompletions, head + R"({"policy": "asl", "window": 16,
      "kernel": 5, "pooling": "max", "min_layer": 9, "obs_layers": 4, "tau": 0.5, "select_k": 300, "kv_budget": 0,
      "max_layer": 20, "select_layer": 11, "detailed_report": false}})").grpc;
  const v1::PruningParams& p = all.pruning();
  EXPECT_EQ(p.policy(), "asl");
  EXPECT_EQ(p.window(), 16);
  EXPECT_EQ(p.kernel(), 5);
  EXPECT_EQ(p.pooling(), "max");
  EXPECT_EQ(p.min_layer(), 9);
  EXPECT_EQ(p.obs_layers(), 4);
  EXPECT_DOUBLE_EQ(p.tau(), 0.5);
  EXPECT_EQ(p.select_k(), 300);
  EXPECT_TRUE(p.has_kv_budget());
  EXPECT_EQ(p.max_layer(), 20);
  EXPECT_EQ(p.select_layer(), 11);
  EXPECT_FALSE(all.detailed_pruning_report());
}

TEST(FromGrpcStatus, MapsCodesAndFieldPaths) {
  ApiError e = FromGrpcStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "sampling.top_p: must be in (0, 1]"));
  EXPECT_EQ(e.http_status, 400);
  EXPECT_EQ(e.param, "top_p");
  EXPECT_EQ(e.message, "top_p: must be in (0, 1]");
  e = FromGrpcStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "chat.messages[1].content: not valid UTF-8"));
  EXPECT_EQ(e.param, "messages[1].content");
  e = FromGrpcStatus(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "waiting queue is full (256)"));
  EXPECT_EQ(e.http_status, 429);
  EXPECT_EQ(e.param, "");
  EXPECT_EQ(ErrorHeaders(e), (std::vector<std::pair<std::string, std::string>>{{"Retry-After", "1"}}));
  EXPECT_TRUE(ErrorHeaders(FromGrpcStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "x: bad"))).empty());
  EXPECT_TRUE(ErrorHeaders(InvalidRequest("model", "unknown")).empty());
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "draining")).http_status, 503);
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "")).http_status, 504);
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::INTERNAL, "req-3 failed")).http_status, 500);
  EXPECT_EQ(OpenAiParamFor("token_ids[3]"), "prompt[3]");
  const nlohmann::json j = ToJson(e);
  EXPECT_TRUE(j["error"]["param"].is_null());
  // Issue 18 D5: a chat over the limits names OpenAI's field and says context_length_exceeded.
  ApiError t = FromGrpcStatus(grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                                           "chat: 3000 tokens, more than the longest prompt accepted (2500)"));
  EXPECT_EQ(t.http_status, 400);
  EXPECT_EQ(t.code, "context_length_exceeded");
  EXPECT_EQ(t.param, "messages");
  EXPECT_EQ(t.message, "messages: 3000 tokens, more than the longest prompt accepted (2500)");
  t = FromGrpcStatus(grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "sampling.max_tokens: prompt (5 tokens) + ..."));
  EXPECT_EQ(t.param, "max_tokens");
  EXPECT_EQ(t.code, "context_length_exceeded");
}

TEST(Responses, UsageAndFinishChunk) {
  v1::GenerateComplete c;
  c.set_finish_reason(v1::FINISH_REASON_LENGTH);
  c.mutable_usage()->set_prompt_tokens(10);
  c.mutable_usage()->set_completion_tokens(3);
  c.mutable_usage()->set_cached_tokens(8);
  c.mutable_pruning()->set_policy("asl");
  c.mutable_pruning()->set_outcome(v1::SELECTION_OUTCOME_FORCED);
  ResponseContext ctx;
  ctx.id = "chatcmpl-x";
  ctx.model = "m";
  const nlohmann::json full = CompletionJson(ctx, "abc", nullptr, c);
  EXPECT_EQ(full["usage"]["total_tokens"], 13);
  EXPECT_EQ(full["usage"]["prompt_tokens_details"]["cached_tokens"], 8);  // OpenAI's field
  EXPECT_EQ(full["choices"][0]["message"]["content"], "abc");
  EXPECT_EQ(full["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(full["asl"]["pruning"]["outcome"], "forced");
  const nlohmann::json fin = FinishChunkJson(ctx, c);
  EXPECT_EQ(fin["object"], "chat.completion.chunk");
  EXPECT_TRUE(fin["choices"][0]["delta"].empty());
  EXPECT_EQ(UsageChunkJson(ctx, c)["choices"].size(), 0u);
  EXPECT_EQ(SseEvent(nlohmann::json{{"a", 1}}), "data: {\"a\":1}\n\n");
}

TEST(Responses, LogprobsCarryTheTokensTextAndBytes) {
  // "é🙂": the emoji's 4 bytes split over two tokens; the first has its bytes and "" as text.
  v1::GenerateChunk chunk;
  auto add = [&](int32_t id, const std::string& text, const std::string& bytes, float lp) {
    v1::TokenLogprob* t = chunk.add_logprobs();
    t->set_token_id(id);
    t->set_text(text);
    t->set_token_bytes(bytes);
    t->set_logprob(lp);
    v1::TokenLogprob* alt = chunk.add_top_logprobs()->add_candidates();
    *alt = *t;
    alt->set_text(text.empty() ? "\xEF\xBF\xBD" : text);
    v1::TokenLogprob* other = chunk.mutable_top_logprobs(chunk.top_logprobs_size() - 1)->add_candidates();
    *other = *alt;  // another id with the same text: legacy keeps the likelier
    other->set_logprob(lp - 1);
  };
  add(7, "\xC3\xA9", "\xC3\xA9", -0.5f);
  add(8, "", "\xF0\x9F", -1.f);
  add(9, "\xF0\x9F\x99\x82", "\x99\x82", -2.f);
  ResponseContext ctx;
  ctx.logprobs = true;
  ctx.top_logprobs = 2;
  LogprobsBuilder chat(ctx);
  chat.Append(chunk);
  const nlohmann::json c = chat.Take()["content"];
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[1]["token"], "");
  EXPECT_EQ(c[1]["bytes"], nlohmann::json::array({0xF0, 0x9F}));
  EXPECT_EQ(c[2]["token"], "\xF0\x9F\x99\x82");
  EXPECT_EQ(c[2]["bytes"], nlohmann::json::array({0x99, 0x82}));
  EXPECT_EQ(c[1]["top_logprobs"][0]["token"], "\xEF\xBF\xBD");
  EXPECT_EQ(c[1]["top_logprobs"].size(), 2u);

  ResponseContext legacy_ctx = ctx;
  legacy_ctx.endpoint = Endpoint::kCompletions;
  LogprobsBuilder legacy(legacy_ctx);
  legacy.Append(chunk);
  const nlohmann::json l = legacy.Take();
  EXPECT_EQ(l["tokens"], nlohmann::json::array({"\xC3\xA9", "", "\xF0\x9F\x99\x82"}));
  EXPECT_EQ(l["text_offset"], nlohmann::json::array({0, 1, 1}));  // characters, not bytes
  EXPECT_EQ(l["top_logprobs"][0].size(), 1u);
  EXPECT_FLOAT_EQ(l["top_logprobs"][0]["\xC3\xA9"].get<float>(), -0.5f);
}

TEST(Responses, EchoLogprobsPutThePromptFirstWithANullFirstLogprob) {
  v1::GenerateChunk chunk;
  for (const char* t : {"The", " sky"}) {
    v1::TokenLogprob* p = chunk.add_prompt_logprobs();
    p->set_text(t);
    p->set_logprob(-3.f);
    chunk.add_prompt_top_logprobs();
  }
  chunk.mutable_prompt_top_logprobs(1)->add_candidates()->set_text(" sea");
  v1::TokenLogprob* g = chunk.add_logprobs();
  g->set_text(" is");
  g->set_logprob(-1.f);
  chunk.add_top_logprobs();
  ResponseContext ctx;
  ctx.endpoint = Endpoint::kCompletions;
  ctx.logprobs = true;
  ctx.top_logprobs = 1;
  LogprobsBuilder b(ctx);
  b.Append(chunk);
  const nlohmann::json l = b.Take();
  EXPECT_EQ(l["tokens"], nlohmann::json::array({"The", " sky", " is"}));
  EXPECT_TRUE(l["token_logprobs"][0].is_null());
  EXPECT_FLOAT_EQ(l["token_logprobs"][1].get<float>(), -3.f);
  EXPECT_TRUE(l["top_logprobs"][0].is_null());
  EXPECT_TRUE(l["top_logprobs"][1].contains(" sea"));
  EXPECT_EQ(l["text_offset"], nlohmann::json::array({0, 3, 7}));
}

// The served name itself (file stem, no spaces) is the server's ServedModelName
// (tests/server/pruning_knobs_tests.cpp); the gateway takes it unless --model-name is set.
TEST(Models, IdIsTheNameOrTheServersServedName) {
  v1::ModelInfo info;
  info.set_name("SmolLM2 135M Instruct");
  info.set_path("/data/hf/Qwen2.5 0.5B/");
  info.set_served_name("SmolLM2-135M-Instruct.Q4_1");
  EXPECT_EQ(ModelId("", info), "SmolLM2-135M-Instruct.Q4_1");
  EXPECT_EQ(ModelId("my-model", info), "my-model");
  info.set_served_name("");  // an older server
  EXPECT_EQ(ModelId("", info), "model");
  const nlohmann::json m = ModelJson("x", info, 5);
  EXPECT_EQ(m["root"], "x");
  EXPECT_EQ(m.dump().find("/data"), std::string::npos);
}

TEST(RequestId, SanitisedBoundedOrNew) {
  EXPECT_EQ(SanitizeRequestId("abc-123_x.y:z"), "abc-123_x.y:z");
  EXPECT_EQ(SanitizeRequestId("a b\r\n<script>"), "abscript");
  EXPECT_EQ(SanitizeRequestId(std::string(500, 'k')).size(), kMaxRequestIdBytes);
  EXPECT_EQ(RequestIdFor("given"), "given");
  const std::string a = RequestIdFor(" \t"), b = RequestIdFor("");
  EXPECT_FALSE(a.empty());
  EXPECT_NE(a, b);
}

TEST(ParseTokenize, PromptOrMessages) {
  ParsedTokenize t;
  ApiError err;
  ASSERT_TRUE(ParseTokenizeRequest(R"({"model": "m", "prompt": "hi", "add_special_tokens": false})", &t, &err));
  EXPECT_EQ(t.grpc.text(), "hi");
  EXPECT_TRUE(t.grpc.has_add_bos() && !t.grpc.add_bos());
  ParsedTokenize c;
  ASSERT_TRUE(ParseTokenizeRequest(R"({"messages": [{"role": "developer", "content": "x"}], "return_token_strs": true})",
                                   &c, &err));
  EXPECT_EQ(c.grpc.chat().messages_size(), 1);
  EXPECT_TRUE(c.grpc.return_pieces());
  ParsedTokenize bad;
  EXPECT_FALSE(ParseTokenizeRequest(R"({"prompt": "a", "messages": []})", &bad, &err));
  EXPECT_EQ(err.param, "prompt");
  v1::DetokenizeRequest d;
  ASSERT_TRUE(ParseDetokenizeRequest(R"({"tokens": [1, 2, 3]})", &d, &err));
  EXPECT_EQ(d.token_ids_size(), 3);
  EXPECT_FALSE(ParseDetokenizeRequest(R"({"tokens": [1, -2]})", &d, &err));
  EXPECT_EQ(err.param, "tokens[1]");
}

TEST(ParseRequest, LogitBiasAndDeveloperRole) {
  const ParsedRequest r = ParseOk(Endpoint::kChatCompletions, R"({"model": "m",
    "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "logit_bias": {"42": -100, "7": 2.5}})");
  EXPECT_EQ(r.grpc.chat().messages(0).role(), "system");  // OpenAI's developer = system
  ASSERT_EQ(r.grpc.sampling().logit_bias_size(), 2);
  EXPECT_FLOAT_EQ(r.grpc.sampling().logit_bias().at(42), -100.f);
  EXPECT_FLOAT_EQ(r.grpc.sampling().logit_bias().at(7), 2.5f);
  for (const char* bad : {R"({"x": 1})", R"({"-1": 1})", R"({"5": 101})", R"({"5": "a"})", R"({"1e3": 1})", R"([1])"}) {
    const ApiError e = ParseFails(Endpoint::kChatCompletions,
                                  std::string(R"({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "logit_bias": )") +
                                      bad + "}");
    EXPECT_EQ(e.param, "logit_bias") << bad;
  }
  const ApiError e = FromGrpcStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                                 "sampling.logit_bias[99999]: token id 99999 outside the vocabulary"));
  EXPECT_EQ(e.param, "logit_bias");
  EXPECT_EQ(e.message, "logit_bias: token id 99999 outside the vocabulary");
}

}  // namespace
}  // namespace asl::gateway

namespace asl::gateway {
namespace {

// Feeds `text` in pieces of `step` bytes, then finishes; returns (content, calls).
std::pair<std::string, std::vector<ParsedToolCall>> ParseInPieces(ToolCallFormat f, const std::string& text, size_t step,
                                                                   const std::string& function = "") {
  ToolCallParser p(f, "call_x_", function);
  std::string content;
  std::vector<ParsedToolCall> calls;
  auto take = [&](ToolCallParser::Output o) {
    content += o.content;
    for (auto& c : o.calls) calls.push_back(std::move(c));
  };
  for (size_t i = 0; i < text.size(); i += step) take(p.Feed(text.substr(i, step)));
  take(p.Finish());
  EXPECT_EQ(p.num_calls(), static_cast<int>(calls.size()));
  return {content, calls};
}

TEST(ToolCalls, HermesBlocksBecomeCallsInAnyPieces) {
  const std::string reply =
      "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"n\": 2}}\n"
      "</tool_call>\n<tool_call>{\"name\": \"f\", \"arguments\": \"{}\"}</tool_call> done <tool";
  for (size_t step : {1, 2, 5, 1000}) {
    auto [content, calls] = ParseInPieces(ToolCallFormat::kHermes, reply, step);
    EXPECT_EQ(content, "Let me check.\n done <tool") << step;  // a half marker at the end is content
    ASSERT_EQ(calls.size(), 2u) << step;
    EXPECT_EQ(calls[0].name, "get_weather");
    EXPECT_EQ(calls[0].arguments, R"({"city":"Paris","n":2})");  // the model's key order
    EXPECT_EQ(calls[0].id, "call_x_0");
    EXPECT_EQ(calls[1].arguments, "{}");
    EXPECT_EQ(calls[1].id, "call_x_1");
  }
}

TEST(ToolCalls, HermesBadBlocksStayContentAndAnUnclosedCallCounts) {
  auto [content, calls] = ParseInPieces(ToolCallFormat::kHermes, "a<tool_call>not json</tool_call>b", 3);
  EXPECT_EQ(content, "a<tool_call>not json</tool_call>b");
  EXPECT_TRUE(calls.empty());
  // Generation stopped (a stop token) before </tool_call>: still a call when the JSON is whole.
  std::tie(content, calls) = ParseInPieces(ToolCallFormat::kHermes, "<tool_call>{\"name\": \"g\"}", 4);
  EXPECT_EQ(content, "");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].arguments, "{}");
  std::tie(content, calls) = ParseInPieces(ToolCallFormat::kHermes, "<tool_call>{\"name\": ", 4);
  EXPECT_EQ(content, "<tool_call>{\"name\": ");
  EXPECT_TRUE(calls.empty());
}

TEST(ToolCalls, Llama3JsonRepliesAndPlainText) {
  auto [content, calls] = ParseInPieces(ToolCallFormat::kLlama3Json,
                                        " {\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}", 3);
  EXPECT_EQ(content, "");
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].arguments, R"({"x":1})");
  EXPECT_EQ(calls[1].name, "b");
  std::tie(content, calls) = ParseInPieces(ToolCallFormat::kLlama3Json, "The answer is {1}.", 2);
  EXPECT_EQ(content, "The answer is {1}.");
  EXPECT_TRUE(calls.empty());
  std::tie(content, calls) = ParseInPieces(ToolCallFormat::kLlama3Json, "{\"not\": \"a call\"}", 2);
  EXPECT_EQ(content, "{\"not\": \"a call\"}");
}

TEST(ToolCalls, ForcedRepliesAreTheCallsJson) {
  // tool_choice "required": an array of {name, parameters}.
  auto [content, calls] = ParseInPieces(
      ToolCallFormat::kRequired, R"([{"name": "a", "parameters": {"x": 1}}, {"name": "b", "parameters": {}}])", 3);
  EXPECT_EQ(content, "");
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].name, "a");
  EXPECT_EQ(calls[0].arguments, R"({"x":1})");
  EXPECT_EQ(calls[1].id, "call_x_1");
  // Cut off by max_tokens: not a call, the text is the content.
  std::tie(content, calls) = ParseInPieces(ToolCallFormat::kRequired, R"([{"name": "a", "param)", 4);
  EXPECT_EQ(content, R"([{"name": "a", "param)");
  EXPECT_TRUE(calls.empty());
  // A named function: the reply is its arguments.
  std::tie(content, calls) = ParseInPieces(ToolCallFormat::kNamed, R"({"city": "Rome"})", 2, "get_weather");
  EXPECT_EQ(content, "");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].name, "get_weather");
  EXPECT_EQ(calls[0].arguments, R"({"city":"Rome"})");
  std::tie(content, calls) = ParseInPieces(ToolCallFormat::kNamed, R"({"city": )", 2, "get_weather");
  EXPECT_EQ(content, R"({"city": )");
  EXPECT_TRUE(calls.empty());
}

TEST(ToolCalls, FormatFromTheTemplate) {
  EXPECT_EQ(DetectToolCallFormat("{% for tool in tools %}...<tool_call>\\n{{ tool_call | tojson }}</tool_call>"),
            ToolCallFormat::kHermes);
  EXPECT_EQ(DetectToolCallFormat("<|start_header_id|>{% if tools %}{\"name\": function name, \"parameters\": ...}"),
            ToolCallFormat::kLlama3Json);
  EXPECT_EQ(DetectToolCallFormat("<|im_start|>{{ m.content }}"), ToolCallFormat::kNone);
  EXPECT_EQ(ParseToolCallFormat("hermes"), ToolCallFormat::kHermes);
  EXPECT_EQ(ParseToolCallFormat("auto"), std::nullopt);
  EXPECT_STREQ(ToolCallFormatName(ToolCallFormat::kLlama3Json), "llama3_json");
}

}  // namespace
}  // namespace asl::gateway

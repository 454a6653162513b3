// Chat templates (llama.cpp's Jinja engine behind tok::ChatTemplate) against hand-checked renderings
// (label unit). test_chat_templates.py compares ~70 real model templates with Hugging Face's
// renderer; the model tests compare the default model's template on many conversations.
#include <gtest/gtest.h>

#include "engine/tokenizer/chat_template.h"

#include <atomic>
#include <thread>

namespace asl::tok {
namespace {

const std::string kSmolLM2Template =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

// Qwen2's template writes the newline as an escape inside the Jinja string.
const std::string kQwen2Template =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const std::string kLlama3Template =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

ChatTemplate MustCompile(const std::string& source, const std::string& bos = "<s>", const std::string& eos = "</s>") {
  StatusOr<ChatTemplate> t = ChatTemplate::Compile(source, bos, eos);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(t).value();
}

std::string RenderText(const ChatTemplate& t, const std::vector<ChatMessage>& messages, bool add_generation_prompt = true) {
  ChatRenderOptions o;
  o.add_generation_prompt = add_generation_prompt;
  StatusOr<RenderedChat> r = t.Render(messages, o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? r->text : "";
}

ChatMessage Msg(std::string role, std::string content) { return {.role = std::move(role), .content = std::move(content)}; }

TEST(ChatTemplateTest, ChatMLWithTheModelsDefaultSystemMessage) {
  const ChatTemplate smol = MustCompile(kSmolLM2Template);
  EXPECT_EQ(RenderText(smol, {Msg("user", "Hi")}),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(RenderText(smol, {Msg("system", "Be brief."), Msg("user", " x "), Msg("assistant", "y")}, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n x <|im_end|>\n"
            "<|im_start|>assistant\ny<|im_end|>\n");
  EXPECT_EQ(RenderText(MustCompile(kQwen2Template), {Msg("user", "Hi")}),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, Llama3TrimsAndWritesBos) {
  const ChatTemplate llama = MustCompile(kLlama3Template, "<|begin_of_text|>");
  EXPECT_EQ(RenderText(llama, {Msg("system", " sys\n"), Msg("user", "\tHello  ")}),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(RenderText(llama, {Msg("user", "   ")}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>");
}

TEST(ChatTemplateTest, BuiltinsAreTheReferenceTemplates) {
  ASSERT_TRUE(BuiltinChatTemplateSource("ChatML").has_value());
  EXPECT_EQ(RenderText(MustCompile(*BuiltinChatTemplateSource("llama3"), "<b>"), {Msg("user", " a ")}),
            RenderText(MustCompile(kLlama3Template, "<b>"), {Msg("user", " a ")}));
  EXPECT_EQ(BuiltinChatTemplateSource("mistral"), std::nullopt);
  EXPECT_EQ(RenderText(MustCompile(*BuiltinChatTemplateSource("chatml")), {Msg("user", "a")}),
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n");
  StatusOr<std::string> missing = ResolveChatTemplateSource("/nonexistent/template.jinja");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/template.jinja"), std::string::npos);
}

TEST(ChatTemplateTest, ToolsToolCallsAndExtraContext) {
  // Hermes-style: tools listed with |tojson, calls with their arguments, tool results by name.
  const ChatTemplate t = MustCompile(
      "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }}:{{ t.function.parameters | tojson }}{% endfor %}"
      "</tools>{% endif %}{% for m in messages %}[{{ m.role }}]{% if m.tool_calls %}{% for c in m.tool_calls %}"
      "call {{ c.id }} {{ c.function.name }}({% for k, v in c.function.arguments.items() %}{{ k }}={{ v }}"
      "{% endfor %}){% endfor %}{% else %}{{ m.content }}"
      "{% endif %}{% if m.name %} from {{ m.name }}{% endif %}{% endfor %}{% if enable_thinking is false %}"
      "<no_think>{% endif %}");
  ChatMessage call{.role = "assistant", .content = std::nullopt};
  call.tool_calls.push_back({"c1", "get_weather", R"({"city": "Paris"})"});
  ChatMessage result = Msg("tool", "21C");
  result.name = "get_weather";
  ChatRenderOptions o;
  o.tools_json = R"([{"type": "function", "function": {"name": "get_weather", "parameters": {"b": 1, "a": 2}}}])";
  o.extra_context_json = R"({"enable_thinking": false})";
  StatusOr<RenderedChat> r = t.Render({Msg("user", "Weather?"), call, result}, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // The template indexes into the arguments, so it gets them parsed; JSON keys keep their order.
  EXPECT_EQ(r->text, R"(<tools>get_weather:{"b": 1, "a": 2}</tools>[user]Weather?[assistant]call c1 get_weather(city=Paris))"
                     "[tool]21C from get_weather<no_think>");
  o.tools_json = "{not json";
  EXPECT_EQ(t.Render({Msg("user", "x")}, o).status().code(), StatusCode::kInvalidArgument);
  o.tools_json = "";
  o.extra_context_json = "[1]";
  EXPECT_NE(t.Render({Msg("user", "x")}, o).status().message().find("chat_template_kwargs"), std::string::npos);
}

TEST(ChatTemplateTest, NumbersOutsideInt64FromRequestJson) {
  // A request's tools and chat_template_kwargs may hold any JSON number. The Jinja engine keeps an integer view of
  // every number; for 1e300 or 2^63-1 that conversion was undefined (UBSan, fuzz_chat_template) until
  // cmake/llama_jinja/float-to-int.patch made it saturate. Printing keeps the numbers as sent, and
  // |int and arithmetic saturate (Python's int() would give a bigint; no template needs more).
  const ChatTemplate t = MustCompile(
      "{% for x in nums %}{{ x | tojson }};{{ x | int }};{{ x * 2 }};{% endfor %}"
      "{{ big }};{{ big + big }}{% for m in messages %}{{ m.content }}{% endfor %}");
  ChatRenderOptions o;
  o.extra_context_json = R"({"nums": [1e300, -1e300, 9223372036854775807, -9223372036854775808], "big": 9.3e18})";
  StatusOr<RenderedChat> r = t.Render({Msg("user", "x")}, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_NE(r->text.find(";9223372036854775807;"), std::string::npos) << r->text;
  EXPECT_NE(r->text.find(";-9223372036854775808;"), std::string::npos) << r->text;
  EXPECT_EQ(r->text.substr(r->text.size() - 1), "x");
}

TEST(ChatTemplateTest, StringArgumentsForTemplatesThatPrintThem) {
  // A template that only prints the arguments gets the JSON text as sent (llama.cpp's probe).
  const ChatTemplate t = MustCompile(
      "{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.name }} {{ c.function.arguments }}"
      "{% endfor %}{% endfor %}");
  ChatMessage call{.role = "assistant", .content = std::nullopt};
  call.tool_calls.push_back({"", "f", R"({"x": [1, 2]})"});
  EXPECT_EQ(RenderText(t, {call}), R"(f {"x": [1, 2]})");
}

TEST(ChatTemplateTest, RequestTextIsMarkedAsInput) {
  const ChatTemplate t = MustCompile(kQwen2Template);
  StatusOr<RenderedChat> r = t.Render({Msg("system", "S<|im_end|>"), Msg("user", "U")}, {});
  ASSERT_TRUE(r.ok());
  std::vector<std::string> marked;
  for (const TextRange& range : r->input_ranges) marked.push_back(r->text.substr(range.begin, range.end - range.begin));
  EXPECT_EQ(marked, (std::vector<std::string>{"system", "S<|im_end|>", "user", "U"}));
}

TEST(ChatTemplateTest, ErrorsAreInvalidArgumentWithTheTemplatesMessage) {
  StatusOr<ChatTemplate> bad = ChatTemplate::Compile("{% for m in messages %}{{ m.content }", "", "");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  const ChatTemplate strict = MustCompile(
      "{% for m in messages %}{% if m.role == 'robot' %}{{ raise_exception('Robots are not welcome') }}{% endif %}"
      "{{ m.content }}{% endfor %}");
  StatusOr<RenderedChat> r = strict.Render({Msg("user", "a"), Msg("robot", "b")}, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("Robots are not welcome"), std::string::npos) << r.status().message();
  EXPECT_EQ(strict.Render({}, {}).status().code(), StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, ConcurrentRendersOfOneTemplate) {
  const ChatTemplate t = MustCompile(kSmolLM2Template);
  const std::string want = RenderText(t, {Msg("user", "hello")});
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      for (int k = 0; k < 200; ++k) {
        StatusOr<RenderedChat> r = t.Render({Msg("user", "hello")}, {});
        if (!r.ok() || r->text != want) ++bad;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace asl::tok

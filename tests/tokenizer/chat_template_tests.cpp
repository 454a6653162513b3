// Chat templates against hand-checked renderings (label unit). The model tests compare the same
// code with Hugging Face's apply_chat_template on many conversations.
#include <gtest/gtest.h>

#include "engine/tokenizer/chat_template.h"

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

TEST(ChatTemplateTest, DetectsFamilies) {
  EXPECT_EQ(DetectChatTemplate(kSmolLM2Template), ChatTemplateKind::kChatML);
  EXPECT_EQ(DetectChatTemplate(kQwen2Template), ChatTemplateKind::kChatML);
  EXPECT_EQ(DetectChatTemplate(kLlama3Template), ChatTemplateKind::kLlama3);
  EXPECT_EQ(DetectChatTemplate("{{ messages }}"), std::nullopt);
  EXPECT_EQ(ParseChatTemplateKind("chatml"), ChatTemplateKind::kChatML);
  EXPECT_EQ(ParseChatTemplateKind("Llama3"), ChatTemplateKind::kLlama3);
  EXPECT_EQ(ParseChatTemplateKind("mistral"), std::nullopt);
  EXPECT_STREQ(ChatTemplateKindName(ChatTemplateKind::kLlama3), "llama3");
}

TEST(ChatTemplateTest, RemembersTheDefaultSystemMessage) {
  auto smol = ChatTemplate::FromJinja(kSmolLM2Template, "<|im_start|>");
  ASSERT_TRUE(smol.has_value());
  EXPECT_EQ(smol->default_system(), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  auto qwen = ChatTemplate::FromJinja(kQwen2Template, "");
  ASSERT_TRUE(qwen.has_value());
  EXPECT_EQ(qwen->default_system(), "You are a helpful assistant.");
  auto llama = ChatTemplate::FromJinja(kLlama3Template, "<|begin_of_text|>");
  ASSERT_TRUE(llama.has_value());
  EXPECT_EQ(llama->default_system(), "");
  // A ChatML template without a default system message.
  auto plain = ChatTemplate::FromJinja(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
      "{% endfor %}",
      "");
  ASSERT_TRUE(plain.has_value());
  EXPECT_EQ(plain->default_system(), "");
}

TEST(ChatTemplateTest, ChatMLRendering) {
  auto smol = ChatTemplate::FromJinja(kSmolLM2Template, "<|im_start|>");
  auto text = smol->Apply({{"user", "Hi"}}, /*add_generation_prompt=*/true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  text = smol->Apply({{"system", "Be brief."}, {"user", " x "}, {"assistant", "y"}}, false);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n x <|im_end|>\n"
                   "<|im_start|>assistant\ny<|im_end|>\n");
}

TEST(ChatTemplateTest, Llama3Rendering) {
  auto text = ApplyChatTemplate(ChatTemplateKind::kLlama3, {{"system", " sys\n"}, {"user", "\tHello  "}}, true, "");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // Jinja's |trim is Python's str.strip(): Unicode spaces go too.
  text = ApplyChatTemplate(ChatTemplateKind::kLlama3, {{"user", "\u3000\u00a0hi\u2028"}}, false, "", "<s>");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<s><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
  text = ApplyChatTemplate(ChatTemplateKind::kLlama3, {{"user", "   "}}, false, "");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|eot_id|>");
}

TEST(ChatTemplateTest, RejectsBadRolesAndEmptyConversations) {
  auto text = ApplyChatTemplate(ChatTemplateKind::kChatML, {{"user", "a"}, {"robot", "b"}}, true, "");
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(text.status().message().find("messages[1].role"), std::string::npos) << text.status().message();
  EXPECT_EQ(ApplyChatTemplate(ChatTemplateKind::kLlama3, {}, true, "").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace asl::tok

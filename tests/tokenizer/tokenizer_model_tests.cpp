// The default model's tokenizer against Hugging Face (label model). The reference comes from
// tests/python/tokenizer_reference.py (ctest runs it first, fixture tokenizer_ref); every test skips
// when it is missing. Both ways of building the tokenizer are checked: the GGUF metadata (dumped
// to gguf_spec.json by the script, pre = "smollm") and tokenizer.json (SpecFromTokenizerJson).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace asl::tok {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

std::string RefDir() {
  const char* env = std::getenv("ASL_TOKENIZER_REF_DIR");
  return env != nullptr && *env != '\0' ? env : ASL_TOKENIZER_REF_DIR;
}

const json* Reference() {
  static const json* ref = [] () -> const json* {
    std::ifstream f(fs::path(RefDir()) / "tokenizer_reference.json");
    if (!f) return nullptr;
    return new json(json::parse(f));
  }();
  return ref;
}

StatusOr<TokenizerSpec> SpecFromGgufDump(const fs::path& path) {
  std::ifstream f(path);
  if (!f) return NotFound(path.string());
  const json j = json::parse(f);
  TokenizerSpec spec;
  spec.model = j.at("model").get<std::string>();
  spec.pre = j.at("pre").get<std::string>();
  spec.tokens = j.at("tokens").get<std::vector<std::string>>();
  for (int t : j.at("token_types").get<std::vector<int>>()) spec.token_types.push_back(static_cast<TokenType>(t));
  spec.merges = j.at("merges").get<std::vector<std::string>>();
  spec.add_bos = j.at("add_bos").get<bool>();
  spec.chat_template = j.at("chat_template").get<std::string>();
  auto id = [&](const char* key) -> std::optional<int32_t> {
    return j.at(key).is_null() ? std::nullopt : std::optional<int32_t>(j.at(key).get<int32_t>());
  };
  spec.bos_id = id("bos_id");
  spec.eos_id = id("eos_id");
  spec.eot_id = id("eot_id");
  spec.pad_id = id("padding_id");
  spec.unk_id = id("unknown_id");
  return spec;
}

enum class Source { kGguf, kTokenizerJson };
void PrintTo(Source s, std::ostream* os) { *os << (s == Source::kGguf ? "gguf_spec.json" : "tokenizer.json"); }

class ModelTokenizerTest : public ::testing::TestWithParam<Source> {
 protected:
  void SetUp() override {
    if (Reference() == nullptr) GTEST_SKIP() << "no reference in " << RefDir() << " (run tests/python/tokenizer_reference.py)";
    StatusOr<TokenizerSpec> spec = GetParam() == Source::kGguf
                                       ? SpecFromGgufDump(fs::path(RefDir()) / "gguf_spec.json")
                                       : Tokenizer::SpecFromTokenizerJson((fs::path(RefDir()) / "hf_tokenizer").string());
    ASSERT_TRUE(spec.ok()) << spec.status().ToString();
    auto tok = Tokenizer::Create(std::move(spec).value());
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tok_ = std::move(tok).value();
  }
  const json& ref() const { return *Reference(); }
  std::unique_ptr<Tokenizer> tok_;
};

std::string Show(const std::string& s) { return json(s).dump(); }

TEST_P(ModelTokenizerTest, EncodeMatchesHuggingFace) {
  int matched = 0, total = 0, matched_no_special = 0;
  for (const json& c : ref().at("cases")) {
    const auto text = c.at("text").get<std::string>();
    const auto want = c.at("ids").get<std::vector<int32_t>>();
    const auto want_ns = c.at("ids_no_special").get<std::vector<int32_t>>();
    ++total;
    const std::vector<int32_t> got = tok_->Encode(text, /*add_bos=*/false);
    if (got == want) {
      ++matched;
    } else {
      ADD_FAILURE() << "ids differ for " << Show(text) << "\n got  " << json(got).dump() << "\n want " << json(want).dump();
    }
    const std::vector<int32_t> got_ns = tok_->Encode(text, false, /*parse_special=*/false);
    if (got_ns == want_ns) {
      ++matched_no_special;
    } else {
      ADD_FAILURE() << "ids (parse_special=false) differ for " << Show(text);
    }
  }
  std::cout << "[ matched ] " << matched << "/" << total << " strings (parse_special), " << matched_no_special << "/"
            << total << " (no parse_special)\n";
  EXPECT_GE(total, 200);
}

TEST_P(ModelTokenizerTest, DecodeRoundTripsAndMatchesHuggingFace) {
  int lossy = 0;
  for (const json& c : ref().at("cases")) {
    const auto text = c.at("text").get<std::string>();
    const std::vector<int32_t> ids = tok_->Encode(text, false);
    // Bytes missing from the vocabulary are dropped (by Hugging Face too): no round trip there.
    const bool round_trips = c.at("decode").get<std::string>() == text;
    if (round_trips) {
      EXPECT_EQ(tok_->Decode(ids, false), text) << Show(text);
    }
    lossy += round_trips ? 0 : 1;
    EXPECT_EQ(tok_->Decode(ids, false), c.at("decode").get<std::string>()) << Show(text);
    EXPECT_EQ(tok_->Decode(ids, true), c.at("decode_skip_special").get<std::string>()) << Show(text);
  }
  EXPECT_LE(lossy, 2);  // only the strings written to contain missing bytes
  // Arbitrary ids: cut byte sequences become U+FFFD exactly where Hugging Face puts them.
  for (const json& c : ref().at("decode_cases")) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(tok_->Decode(ids, false), c.at("decode").get<std::string>()) << json(ids).dump();
    EXPECT_EQ(tok_->Decode(ids, true), c.at("decode_skip_special").get<std::string>()) << json(ids).dump();
  }
}

// Pushing ids one at a time: every piece is valid UTF-8, and on every prefix what came out plus a
// flush equals Decode of that prefix.
void CheckIncremental(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special, bool every_prefix) {
  IncrementalDecoder d(tok, skip_special);
  std::string got;
  for (size_t k = 0; k < ids.size(); ++k) {
    const std::string piece = d.Push(ids[k]);
    ASSERT_TRUE(IsValidUtf8(piece)) << json(ids).dump() << " at " << k;
    got += piece;
    if (every_prefix) {
      IncrementalDecoder copy = d;
      ASSERT_EQ(got + copy.Flush(), tok.Decode(std::vector<int32_t>(ids.begin(), ids.begin() + k + 1), skip_special))
          << json(ids).dump() << " at " << k;
    }
  }
  got += d.Flush();
  ASSERT_EQ(got, tok.Decode(ids, skip_special)) << json(ids).dump();
}

TEST_P(ModelTokenizerTest, IncrementalDecoderMatchesDecode) {
  for (const json& c : ref().at("cases")) {
    const std::vector<int32_t> ids = c.at("ids").get<std::vector<int32_t>>();
    for (bool skip : {false, true}) CheckIncremental(*tok_, ids, skip, /*every_prefix=*/ids.size() <= 600);
  }
  for (const json& c : ref().at("decode_cases")) {
    for (bool skip : {false, true}) CheckIncremental(*tok_, c.at("ids").get<std::vector<int32_t>>(), skip, true);
  }
}

TEST_P(ModelTokenizerTest, ChatTemplatesMatchHuggingFace) {
  auto llama3 = ChatTemplate::Compile(ref().at("llama3_template").get<std::string>(), "<|begin_of_text|>", "");
  ASSERT_TRUE(llama3.ok()) << llama3.status().ToString();
  ASSERT_TRUE(tok_->chat_template().has_value());
  int n = 0, unicode_trim = 0;
  for (const json& c : ref().at("chat")) {
    std::vector<ChatMessage> messages;
    bool control_text = false, unicode_edge_space = false;
    for (const json& m : c.at("messages")) {
      const std::string content = m.at("content").get<std::string>();
      control_text |= content.find("<|") != std::string::npos;
      // U+3000 / U+00A0 / U+2028 at either end (the reference's Unicode whitespace cases).
      for (const char* u : {"\u3000", "\u00a0", "\u2028"}) {
        const std::string s(u);
        unicode_edge_space |= content.rfind(s, 0) == 0 ||
                              (content.size() >= s.size() && content.compare(content.size() - s.size(), s.size(), s) == 0);
      }
      messages.push_back({.role = m.at("role").get<std::string>(), .content = content});
    }
    // llama.cpp's |trim strips ASCII whitespace only; Python's str.strip (Hugging Face's) strips
    // Unicode whitespace too (docs/chat_templates.md). Only the Llama 3 template trims.
    if (c.at("template") == "llama3" && unicode_edge_space) {
      ++unicode_trim;
      continue;
    }
    ChatRenderOptions options;
    options.add_generation_prompt = c.at("add_generation_prompt").get<bool>();
    const auto want = c.at("text").get<std::string>();
    StatusOr<RenderedChat> got = c.at("template") == "model" ? tok_->ApplyChatTemplate(messages, options)
                                                             : llama3->Render(messages, options);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->text, want) << c.dump();
    // Without control-token text in the request, EncodeChat is Hugging Face's tokenization; with
    // it, that text stays text.
    if (!control_text) EXPECT_EQ(tok_->EncodeChat(*got), tok_->Encode(want, false, true)) << c.dump();
    if (control_text) EXPECT_NE(tok_->EncodeChat(*got), tok_->Encode(want, false, true)) << c.dump();
    ++n;
  }
  EXPECT_GE(n, 20);
  EXPECT_LE(unicode_trim, 4);
}

TEST_P(ModelTokenizerTest, SpecialIds) {
  EXPECT_EQ(tok_->vocab_size(), 49152);
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_FALSE(tok_->add_bos());
  EXPECT_EQ(tok_->stop_token_ids(), (std::vector<int32_t>{0, 2}));  // <|endoftext|>, <|im_end|>
  EXPECT_EQ(tok_->TokenToId("<|im_start|>"), 1);
  EXPECT_TRUE(tok_->IsSpecial(1));
  EXPECT_FALSE(tok_->IsSpecial(17));
  EXPECT_EQ(tok_->TokenText(1), "<|im_start|>");
}

TEST_P(ModelTokenizerTest, TenThousandTokenPromptIsFast) {
  std::string text;
  for (const json& c : ref().at("cases")) {
    if (c.at("decode") != c.at("text")) continue;  // keep the text round-trippable
    text += c.at("text").get<std::string>();
    text += "\n";
  }
  while (text.size() < 60000) text += text;
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok_->Encode(text, false);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ timing  ] " << text.size() << " bytes -> " << ids.size() << " tokens in " << secs * 1e3 << " ms\n";
  EXPECT_GE(ids.size(), 10000u);
  EXPECT_LT(secs, 2.0);
  EXPECT_TRUE(tok_->Decode(ids, false) == text);
}

INSTANTIATE_TEST_SUITE_P(Sources, ModelTokenizerTest, ::testing::Values(Source::kGguf, Source::kTokenizerJson),
                         [](const auto& info) { return info.param == Source::kGguf ? "Gguf" : "TokenizerJson"; });

}  // namespace
}  // namespace asl::tok

// Self-contained tokenizer tests (label unit): a toy byte-level vocabulary with a handful of merges,
// so every expected id is derivable by hand.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>
#include <unistd.h>

#include "engine/tokenizer/bpe.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace asl::tok {
namespace {

// ids 0..255: the byte tokens (byte b has id b); then merges' results; then added tokens.
struct Toy {
  TokenizerSpec spec;
  int32_t Id(const std::string& token) const {
    for (size_t i = 0; i < spec.tokens.size(); ++i) {
      if (spec.tokens[i] == token) return static_cast<int32_t>(i);
    }
    ADD_FAILURE() << "no token " << token;
    return -1;
  }
};

Toy MakeToy(const std::string& pre = "gpt2") {
  Toy t;
  t.spec.pre = pre;
  for (int b = 0; b < 256; ++b) t.spec.tokens.push_back(ByteToUnicode()[b]);
  t.spec.token_types.assign(256, TokenType::kNormal);
  const std::vector<std::string> merges = {"h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "a a",
                                           "1 2", "12 3", "123 4", "aa a"};
  for (const auto& m : merges) {
    const size_t sp = m.find(' ');
    t.spec.tokens.push_back(m.substr(0, sp) + m.substr(sp + 1));
    t.spec.token_types.push_back(TokenType::kNormal);
    t.spec.merges.push_back(m);
  }
  for (auto [text, type] : {std::pair{"<|im_start|>", TokenType::kControl}, {"<|im_end|>", TokenType::kControl},
                            {"<|im_start|>x", TokenType::kControl}, {"<x>", TokenType::kUserDefined}}) {
    t.spec.tokens.emplace_back(text);
    t.spec.token_types.push_back(type);
  }
  t.spec.bos_id = t.Id("<|im_start|>");
  t.spec.eos_id = t.Id("<|im_end|>");
  return t;
}

std::unique_ptr<Tokenizer> MakeTokenizer(TokenizerSpec spec) {
  auto t = Tokenizer::Create(std::move(spec));
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

std::vector<int32_t> Bytes(std::string_view s) {
  std::vector<int32_t> out;
  for (unsigned char c : s) out.push_back(c);
  return out;
}

TEST(BpeTest, MergesByRank) {
  Toy toy = MakeToy();
  auto tok = MakeTokenizer(toy.spec);
  EXPECT_EQ(tok->Encode("hello", false), (std::vector<int32_t>{toy.Id("hello")}));
  EXPECT_EQ(tok->Encode("hello world", false),
            (std::vector<int32_t>{toy.Id("hello"), toy.Id("Ġwo"), 'r', 'l', 'd'}));
  EXPECT_EQ(tok->Encode("help", false), (std::vector<int32_t>{toy.Id("he"), 'l', 'p'}));
}

TEST(BpeTest, EqualRanksMergeLeftmostFirst) {
  Toy toy = MakeToy();
  auto tok = MakeTokenizer(toy.spec);
  // "aa a" ranks after "a a": aaaa -> (aa)(aa), aaa -> (aa)a -> (aaa).
  EXPECT_EQ(tok->Encode("aaaa", false), (std::vector<int32_t>{toy.Id("aa"), toy.Id("aa")}));
  EXPECT_EQ(tok->Encode("aaa", false), (std::vector<int32_t>{toy.Id("aaa")}));
  EXPECT_EQ(tok->Encode("aaaaa", false), (std::vector<int32_t>{toy.Id("aa"), toy.Id("aaa")}));
}

TEST(BpeTest, LongPieceIsFast) {
  Toy toy = MakeToy();
  auto tok = MakeTokenizer(toy.spec);
  const std::string s(200000, 'a');  // one pre-tokenizer piece of 200k symbols
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok->Encode(s, false);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(ids.size(), 100000u);
  EXPECT_LT(secs, 2.0);
}

TEST(BpeTest, LongWhitespaceRunAndConcurrentEncodes) {
  Toy toy = MakeToy("llama-bpe");
  auto tok = MakeTokenizer(toy.spec);
  const std::string spaces(100000, ' ');
  EXPECT_EQ(tok->Encode(spaces + "x", false).size(), 100001u);
  // A Tokenizer is shared by every request thread: concurrent Encode calls agree.
  const std::string text = "hello world 1234 <|im_start|> é😀 " + std::string(1000, '\n') + "aaaa";
  const std::vector<int32_t> want = tok->Encode(text, true);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      bool all = true;
      for (int i = 0; i < 200; ++i) all = all && tok->Encode(text, true) == want;
      ok[t] = all ? 1 : 0;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok, std::vector<int>(4, 1));
}

TEST(PreTokenizerTest, DigitGroupingFollowsThePreName) {
  for (auto [pre, expect] : {std::pair<std::string, std::vector<std::string>>{"gpt2", {"1234"}},
                             {"llama-bpe", {"123", "4"}},
                             {"qwen2", {"1", "2", "3", "4"}},
                             {"smollm", {"1", "2", "3", "4"}}}) {
    Toy toy = MakeToy(pre);
    auto tok = MakeTokenizer(toy.spec);
    std::vector<int32_t> want;
    for (const auto& s : expect) want.push_back(toy.Id(s));
    EXPECT_EQ(tok->Encode("1234", false), want) << pre;
  }
}

TEST(PreTokenizerTest, WhitespaceRunKeepsLastSpaceForNextWord) {
  Toy toy = MakeToy();
  auto tok = MakeTokenizer(toy.spec);
  // GPT-2 split: "a", "  " (\s+(?!\S)), " w"...: the last space stays with the word.
  EXPECT_EQ(tok->Encode("a   wo", false), (std::vector<int32_t>{'a', ' ', ' ', toy.Id("Ġwo")}));
  EXPECT_EQ(tok->Encode("a   ", false), (std::vector<int32_t>{'a', ' ', ' ', ' '}));
}

TEST(TokenizerTest, SpecialTokensSplitFirstLongestMatch) {
  Toy toy = MakeToy();
  auto tok = MakeTokenizer(toy.spec);
  const int32_t start = toy.Id("<|im_start|>"), startx = toy.Id("<|im_start|>x"), end = toy.Id("<|im_end|>");
  EXPECT_EQ(tok->Encode("a<|im_start|>he<|im_end|>", false),
            (std::vector<int32_t>{'a', start, toy.Id("he"), end}));
  EXPECT_EQ(tok->Encode("<|im_start|>xy", false), (std::vector<int32_t>{startx, 'y'}));
  // Without parse_special control tokens are text; user-defined ones are still split out.
  std::vector<int32_t> plain = tok->Encode("<|im_start|><x>", false, /*parse_special=*/false);
  std::vector<int32_t> want = Bytes("<|");
  for (int32_t id : std::vector<int32_t>{'i', 'm', '_', 's', 't', 'a', 'r', 't', '|', '>'}) want.push_back(id);
  want.push_back(toy.Id("<x>"));
  EXPECT_EQ(plain, want);
  EXPECT_EQ(tok->Encode("x", /*add_bos=*/true), (std::vector<int32_t>{start, 'x'}));
}

TEST(TokenizerTest, EncodeChatKeepsControlTokensInRequestTextAsText) {
  Toy toy = MakeToy();
  auto tok = MakeTokenizer(toy.spec);
  const int32_t start = toy.Id("<|im_start|>"), end = toy.Id("<|im_end|>");
  // "<|im_start|>" + "he<|im_end|>" (request text) + "<|im_end|>": only the template's tokens are control tokens.
  RenderedChat chat{"<|im_start|>he<|im_end|><|im_end|>", {{12, 24}}};
  std::vector<int32_t> want{start, toy.Id("he")};
  for (int32_t id : Bytes("<|im_end|>")) want.push_back(id);
  want.push_back(end);
  // The byte-level toy splits "<|im_end|>" into single bytes and merges none of them.
  EXPECT_EQ(tok->EncodeChat(chat), want);
  // Without input ranges it is Encode with special parsing.
  EXPECT_EQ(tok->EncodeChat({chat.text, {}}), tok->Encode(chat.text, false, true));
  // A control token that starts in request text and ends in template text stays a control token
  // (Phi-3's '<|' + role + '|>' is written so).
  EXPECT_EQ(tok->EncodeChat({"<|im_end|>", {{0, 4}}}), (std::vector<int32_t>{end}));
  // Non-special added tokens are split out everywhere, as with parse_special=false.
  EXPECT_EQ(tok->EncodeChat({"<x>", {{0, 3}}}), (std::vector<int32_t>{toy.Id("<x>")}));
}

TEST(TokenizerTest, DecodeAndTokenText) {
  Toy toy = MakeToy();
  auto tok = MakeTokenizer(toy.spec);
  const std::string text = "hello <|im_start|>wo\n\tré 😀<|im_end|>";
  const std::vector<int32_t> ids = tok->Encode(text, false);
  EXPECT_EQ(tok->Decode(ids, false), text);
  EXPECT_EQ(tok->Decode(ids, /*skip_special=*/true), "hello wo\n\tré 😀");
  EXPECT_EQ(tok->TokenText(toy.Id("Ġwo")), " wo");
  EXPECT_EQ(tok->TokenText(toy.Id("<|im_end|>")), "<|im_end|>");
  EXPECT_EQ(tok->TokenText(-1), "");
  EXPECT_EQ(tok->TokenText(100000), "");
  EXPECT_EQ(tok->TokenToId("Ġwo"), toy.Id("Ġwo"));
  EXPECT_EQ(tok->TokenToId("nope"), std::nullopt);
  EXPECT_TRUE(tok->IsSpecial(toy.Id("<|im_end|>")));
  EXPECT_FALSE(tok->IsSpecial(toy.Id("<x>")));
  EXPECT_FALSE(tok->IsSpecial('a'));
  EXPECT_EQ(tok->vocab_size(), static_cast<int32_t>(toy.spec.tokens.size()));
  EXPECT_EQ(tok->stop_token_ids(), (std::vector<int32_t>{toy.Id("<|im_end|>")}));
  // A cut multi-byte character and ids out of range.
  EXPECT_EQ(tok->Decode({0xE2, 0x82, 'a', -5, 999999}, false), "\xEF\xBF\xBD" "a");
}

TEST(TokenizerTest, InvalidUtf8InputIsRepaired) {
  Toy toy = MakeToy();
  auto tok = MakeTokenizer(toy.spec);
  const std::vector<int32_t> ids = tok->Encode("a\xFF" "b\xE2\x82", false);
  EXPECT_EQ(tok->Decode(ids, false), "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
}

TEST(TokenizerTest, CreateRejectsBadSpecs) {
  Toy toy = MakeToy();
  TokenizerSpec spec = toy.spec;
  spec.model = "llama";
  EXPECT_EQ(Tokenizer::Create(spec).status().code(), StatusCode::kUnimplemented);
  spec = toy.spec;
  spec.merges.push_back("x nothere");
  EXPECT_EQ(Tokenizer::Create(spec).status().code(), StatusCode::kDataLoss);
  spec = toy.spec;
  spec.eos_id = 1 << 20;
  auto st = Tokenizer::Create(spec).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("eos_id"), std::string::npos);
  spec = toy.spec;
  spec.pre_regexes = {"(unclosed"};
  EXPECT_EQ(Tokenizer::Create(spec).status().code(), StatusCode::kInvalidArgument);
}

TEST(Utf8Test, LossyReplacesMaximalSubparts) {
  const std::string r(kReplacementChar);
  EXPECT_EQ(Utf8Lossy("ok"), "ok");
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98" "A"), r + "A");          // truncated 4-byte sequence: one U+FFFD
  EXPECT_EQ(Utf8Lossy("\xED\xA0\x80"), r + r + r);            // a surrogate: each byte
  EXPECT_EQ(Utf8Lossy("\xC0\xAF"), r + r);                    // overlong
  EXPECT_EQ(Utf8Lossy("\xE2\x82"), r);                        // cut at the end
  EXPECT_EQ(Utf8Lossy("\x80\xBF"), r + r);                    // lone continuation bytes
  EXPECT_TRUE(IsValidUtf8("héllo 😀"));
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));
}

TEST(IncrementalDecoderTest, HoldsBackCutSequences) {
  Toy toy = MakeToy();
  auto tok = MakeTokenizer(toy.spec);
  IncrementalDecoder d(*tok, /*skip_special=*/false);
  EXPECT_EQ(d.Push('a'), "a");
  EXPECT_EQ(d.Push(0xF0), "");
  EXPECT_EQ(d.Push(0x9F), "");
  EXPECT_EQ(d.Push(0x98), "");
  EXPECT_EQ(d.Push(0x80), "😀");
  EXPECT_EQ(d.Push(0xFF), "\xEF\xBF\xBD");  // never valid: replaced at once
  EXPECT_EQ(d.Push(0xE2), "");
  EXPECT_EQ(d.Push('b'), "\xEF\xBF\xBD" "b");  // the cut sequence is over: one U+FFFD
  EXPECT_EQ(d.Push(0xE2), "");
  EXPECT_EQ(d.Push(0x82), "");
  EXPECT_EQ(d.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(d.Flush(), "");
  EXPECT_EQ(d.Push(toy.Id("<|im_end|>")), "<|im_end|>");
  IncrementalDecoder skip(*tok, /*skip_special=*/true);
  EXPECT_EQ(skip.Push(toy.Id("<|im_end|>")), "");
  EXPECT_EQ(skip.Push(toy.Id("<x>")), "<x>");
}

TEST(IncrementalDecoderTest, ConcatenationEqualsDecodeOnEveryPrefix) {
  Toy toy = MakeToy();
  auto tok = MakeTokenizer(toy.spec);
  // Every byte sequence of length 3 over a set of interesting bytes.
  const std::vector<int32_t> alphabet = {'a', 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x80, 0xFF, toy.Id("<|im_end|>")};
  for (int32_t x : alphabet) {
    for (int32_t y : alphabet) {
      for (int32_t z : alphabet) {
        for (bool skip : {false, true}) {
          const std::vector<int32_t> ids = {x, y, z};
          IncrementalDecoder d(*tok, skip);
          std::string got;
          for (size_t k = 0; k < ids.size(); ++k) {
            const std::string piece = d.Push(ids[k]);
            ASSERT_TRUE(IsValidUtf8(piece));
            got += piece;
            IncrementalDecoder copy = d;
            const std::vector<int32_t> prefix(ids.begin(), ids.begin() + k + 1);
            ASSERT_EQ(got + copy.Flush(), tok->Decode(prefix, skip));
          }
        }
      }
    }
  }
}

// A tokenizer.json written by hand: Sequence[Split(Regex), ByteLevel(use_regex=false)], an added
// special token, a TemplateProcessing that adds BOS, and tokenizer_config.json's chat template.
TEST(TokenizerJsonTest, ReadsSpecFromTokenizerJson) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("asl_tokjson_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string vocab;
  for (int b = 0; b < 256; ++b) {
    std::string s = ByteToUnicode()[b];
    if (s == "\"" || s == "\\") s = "\\" + s;
    vocab += "\"" + s + "\": " + std::to_string(b) + ",";
  }
  vocab += "\"he\": 256, \"ll\": 257, \"hell\": 258, \"hello\": 259";
  std::ofstream(dir / "tokenizer.json") << R"({"version": "1.0", "normalizer": null,
    "added_tokens": [{"id": 260, "content": "<|begin_of_text|>", "special": true},
                     {"id": 261, "content": "<|eot_id|>", "special": true},
                     {"id": 262, "content": "<tool>", "special": false}],
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}| ?\\p{L}+|\\s+|[^\\s\\p{L}\\p{N}]+"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
              "vocab": {)" << vocab << R"(}, "merges": [["h", "e"], ["l", "l"], "he ll", ["hell", "o"]]}})";
  std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token": "<|begin_of_text|>",
    "eos_token": {"content": "<|eot_id|>"},
    "chat_template": "{{ bos_token }}{% for m in messages %}<|start_header_id|>...{% endfor %}"})";

  auto spec = Tokenizer::SpecFromTokenizerJson(dir.string());
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->tokens.size(), 263u);
  EXPECT_EQ(spec->bos_id, 260);
  EXPECT_EQ(spec->eos_id, 261);
  EXPECT_EQ(spec->eot_id, 261);
  EXPECT_TRUE(spec->add_bos);
  EXPECT_EQ(spec->ignore_merges, true);
  EXPECT_EQ(spec->token_types[260], TokenType::kControl);
  EXPECT_EQ(spec->token_types[262], TokenType::kUserDefined);
  ASSERT_EQ(spec->merges.size(), 4u);
  EXPECT_EQ(spec->merges[2], "he ll");
  auto tok = MakeTokenizer(*spec);
  EXPECT_EQ(tok->Encode("hello 12345<tool>", true), (std::vector<int32_t>{260, 259, ' ', '1', '2', '3', '4', '5', 262}));
  ASSERT_TRUE(tok->chat_template().has_value());
  EXPECT_EQ(tok->chat_template()->bos_token(), "<|begin_of_text|>");
  EXPECT_EQ(tok->chat_template()->eos_token(), "<|eot_id|>");
  EXPECT_EQ(tok->stop_token_ids(), (std::vector<int32_t>{261}));
  // Also accepted: the path of the file itself.
  EXPECT_TRUE(Tokenizer::SpecFromTokenizerJson((dir / "tokenizer.json").string()).ok());

  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "Unigram", "vocab": []}})";
  EXPECT_EQ(Tokenizer::SpecFromTokenizerJson(dir.string()).status().code(), StatusCode::kUnimplemented);
  std::ofstream(dir / "tokenizer.json") << "{not json";
  EXPECT_EQ(Tokenizer::SpecFromTokenizerJson(dir.string()).status().code(), StatusCode::kDataLoss);
  // Token ids are JSON integers in [0, 2^24): a huge one was narrowed to int32 and sized the
  // vocabulary table (tens of GB; tests/fuzz/tokenizer_json_fuzz). Vocabulary and added tokens.
  fs::remove(dir / "tokenizer_config.json");
  for (const char* bad : {R"("vocab": {"a": 0, "b": 111100000000072})", R"("vocab": {"a": 0, "b": 16777216})",
                          R"("vocab": {"a": -1})", R"("vocab": {"a": 1.5})", R"("vocab": {"a": "0"})",
                          R"("vocab": {"a": 18446744073709551615})"}) {
    SCOPED_TRACE(bad);
    std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "BPE", )" << bad << R"(, "merges": []}})";
    const auto st = Tokenizer::SpecFromTokenizerJson(dir.string()).status();
    EXPECT_EQ(st.code(), StatusCode::kDataLoss);
    EXPECT_NE(st.message().find("token id"), std::string::npos) << st.ToString();
  }
  std::ofstream(dir / "tokenizer.json") << R"({"added_tokens": [{"id": 4294967296, "content": "<x>"}],
    "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})";
  EXPECT_NE(Tokenizer::SpecFromTokenizerJson(dir.string()).status().message().find("token id 4294967296 for '<x>'"),
            std::string::npos);
  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 300}, "merges": []}})";
  const auto gap = Tokenizer::SpecFromTokenizerJson(dir.string());  // gaps stay allowed
  EXPECT_TRUE(gap.ok()) << gap.status().ToString();
  EXPECT_EQ(gap->tokens.size(), 301u);
  EXPECT_EQ(MakeTokenizer(*gap)->Encode("ab", false), (std::vector<int32_t>{0, 300}));
  // ... but not a sparse id space: 3 tokens with an id near 2^24 built tables of 16M entries (F4).
  std::ofstream(dir / "tokenizer.json") << R"({"added_tokens": [{"id": 16000000, "content": "<x>"}],
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}})";
  const auto sparse = Tokenizer::SpecFromTokenizerJson(dir.string()).status();
  EXPECT_EQ(sparse.code(), StatusCode::kDataLoss);
  EXPECT_NE(sparse.message().find("token ids are sparse: the largest is 16000000 but there are only 3 tokens"),
            std::string::npos) << sparse.ToString();
  // The bound is 2 x tokens + 1024: 1028 for two.
  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1028}, "merges": []}})";
  EXPECT_TRUE(Tokenizer::SpecFromTokenizerJson(dir.string()).ok());
  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1029}, "merges": []}})";
  EXPECT_EQ(Tokenizer::SpecFromTokenizerJson(dir.string()).status().code(), StatusCode::kDataLoss);
  fs::remove_all(dir);
  EXPECT_EQ(Tokenizer::SpecFromTokenizerJson(dir.string()).status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace asl::tok

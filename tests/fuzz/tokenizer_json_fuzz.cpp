// libFuzzer target: tokenizer.json loading (Tokenizer::SpecFromTokenizerJson), then Create and an
// Encode/Decode round of a fixed text when the spec is accepted. The input is one tokenizer.json;
// after a line "\n--config--\n", the rest is tokenizer_config.json.
#include <filesystem>

#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = asl::fuzz::ScratchPath("tokenizer");
  static bool made = std::filesystem::create_directories(dir) || true;
  (void)made;
  std::string_view json, config;
  asl::fuzz::Split(std::string_view(reinterpret_cast<const char*>(data), size), "\n--config--\n", &json, &config);
  asl::fuzz::WriteFile(dir + "/tokenizer.json", reinterpret_cast<const uint8_t*>(json.data()), json.size());
  std::filesystem::remove(dir + "/tokenizer_config.json");
  if (!config.empty() || json.size() != size) {
    asl::fuzz::WriteFile(dir + "/tokenizer_config.json", reinterpret_cast<const uint8_t*>(config.data()),
                         config.size());
  }
  auto spec = asl::tok::Tokenizer::SpecFromTokenizerJson(dir);
  if (!spec.ok()) return 0;
  auto tok = asl::tok::Tokenizer::Create(std::move(*spec));
  if (!tok.ok()) return 0;
  const auto& t = **tok;
  auto ids = t.Encode("Hello wörld 123 <|im_start|>user\n\xff 🙂", /*add_bos=*/true);
  for (int32_t id : ids) {
    if (id < 0 || id >= t.vocab_size()) __builtin_trap();
  }
  (void)t.Decode(ids, /*skip_special=*/false);
  (void)t.Decode({-1, 0, 1, 2, t.vocab_size()}, /*skip_special=*/true);
  (void)t.stop_token_ids();
  std::vector<asl::tok::ChatMessage> chat = {{.role = "system", .content = "s"}, {.role = "user", .content = "hi"}};
  if (auto r = t.ApplyChatTemplate(chat, {}); r.ok()) {
    for (int32_t id : t.EncodeChat(*r)) {
      if (id < 0 || id >= t.vocab_size()) __builtin_trap();
    }
  }
  return 0;
}

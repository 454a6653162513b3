#include "tools/eval/haystack.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace asl::eval {

uint64_t Rng::Below(uint64_t n) {
  ASL_CHECK(n > 0, "Rng::Below(0)");
  // Reject the top partial bucket so every residue is equally likely.
  const uint64_t limit = UINT64_MAX - (UINT64_MAX % n + 1) % n;
  uint64_t x;
  do {
    x = gen_();
  } while (x > limit);
  return x % n;
}

std::vector<int64_t> Rng::Sample(int64_t n, int64_t k) {
  ASL_CHECK(k >= 0 && k <= n, "Rng::Sample: k > n");
  std::vector<int64_t> pool(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pool[i] = i;
  std::vector<int64_t> out;
  out.reserve(k);
  for (int64_t i = 0; i < k; ++i) {
    const int64_t j = i + static_cast<int64_t>(Below(static_cast<uint64_t>(n - i)));
    std::swap(pool[i], pool[j]);
    out.push_back(pool[i]);
  }
  return out;
}

uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t SampleSeed(uint64_t seed, std::string_view task, int64_t length, int64_t index) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a of the task name
  for (char c : task) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  uint64_t s = Mix64(seed);
  s = Mix64(s ^ h);
  s = Mix64(s ^ static_cast<uint64_t>(length));
  return Mix64(s ^ static_cast<uint64_t>(index));
}

bool EndsSentence(std::string_view w) {
  while (!w.empty()) {
    const char c = w.back();
    if (c == '"' || c == '\'' || c == ')' || c == ']') {
      w.remove_suffix(1);
      continue;
    }
    // Closing curly quotes (UTF-8 E2 80 9D / E2 80 99).
    if (w.size() >= 3 && static_cast<unsigned char>(w[w.size() - 3]) == 0xE2 &&
        static_cast<unsigned char>(w[w.size() - 2]) == 0x80 &&
        (static_cast<unsigned char>(c) == 0x9D || static_cast<unsigned char>(c) == 0x99)) {
      w.remove_suffix(3);
      continue;
    }
    break;
  }
  if (w.size() < 2) return false;  // a lone "." or "?" is not a sentence
  const char c = w.back();
  return c == '.' || c == '!' || c == '?';
}

static std::vector<std::string> SplitWhitespace(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string w;
  while (in >> w) out.push_back(std::move(w));
  return out;
}

EvalData MakeEvalData(const std::vector<std::string>& essay_texts, std::vector<std::string> nouns,
                      std::vector<std::string> adjectives, std::vector<std::string> verbs) {
  EvalData d;
  for (const std::string& text : essay_texts) {
    std::vector<std::string> words = SplitWhitespace(text);
    for (size_t i = 0; i < words.size(); ++i) {
      d.essays.ends_sentence.push_back(i + 1 == words.size() || EndsSentence(words[i]));
      d.essays.words.push_back(std::move(words[i]));
    }
  }
  std::set<std::string> all;
  for (const auto* list : {&nouns, &adjectives, &verbs}) all.insert(list->begin(), list->end());
  d.cwe_words.assign(all.begin(), all.end());
  Rng fixed(42);
  fixed.Shuffle(d.cwe_words);
  d.nouns = std::move(nouns);
  d.adjectives = std::move(adjectives);
  d.verbs = std::move(verbs);
  return d;
}

static StatusOr<std::string> ReadFile(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) return NotFound("eval data: cannot read " + p.string());
  return std::string(std::istreambuf_iterator<char>(f), {});
}

static StatusOr<std::vector<std::string>> ReadLines(const std::filesystem::path& p) {
  ASL_ASSIGN_OR_RETURN(std::string text, ReadFile(p));
  std::vector<std::string> out;  // one entry a line ("ice cream" is one noun); trimmed
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const size_t b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos) continue;
    out.push_back(line.substr(b, line.find_last_not_of(" \t\r") - b + 1));
  }
  if (out.empty()) return DataLoss("eval data: empty word list " + p.string());
  return out;
}

StatusOr<EvalData> LoadEvalData(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path essays_dir = fs::path(dir) / "pg-essays";
  std::error_code ec;
  if (!fs::is_directory(essays_dir, ec)) return NotFound("eval data: no directory " + essays_dir.string());
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(essays_dir)) {
    if (e.path().extension() == ".txt") files.push_back(e.path());
  }
  if (files.empty()) return NotFound("eval data: no .txt essays in " + essays_dir.string());
  std::sort(files.begin(), files.end());
  std::vector<std::string> texts;
  for (const auto& f : files) {
    ASL_ASSIGN_OR_RETURN(std::string t, ReadFile(f));
    texts.push_back(std::move(t));
  }
  const fs::path lists = fs::path(dir) / "wordlists";
  ASL_ASSIGN_OR_RETURN(auto nouns, ReadLines(lists / "nounlist.txt"));
  ASL_ASSIGN_OR_RETURN(auto adjs, ReadLines(lists / "adjectivelist.txt"));
  ASL_ASSIGN_OR_RETURN(auto verbs, ReadLines(lists / "verblist.txt"));
  return MakeEvalData(texts, std::move(nouns), std::move(adjs), std::move(verbs));
}

std::string RandomNumber(Rng& rng, int digits) {
  int64_t lo = 1;
  for (int i = 1; i < digits; ++i) lo *= 10;
  return std::to_string(rng.Range(lo, lo * 10 - 1));
}

std::string RandomUuid4(Rng& rng) {
  uint64_t hi = rng.Next(), lo = rng.Next();
  hi = (hi & ~0xF000ULL) | 0x4000ULL;                         // version 4
  lo = (lo & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;  // variant 10
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%08llx-%04llx-%04llx-%04llx-%012llx",
                static_cast<unsigned long long>(hi >> 32), static_cast<unsigned long long>((hi >> 16) & 0xFFFF),
                static_cast<unsigned long long>(hi & 0xFFFF), static_cast<unsigned long long>(lo >> 48),
                static_cast<unsigned long long>(lo & 0xFFFFFFFFFFFFULL));
  return buf;
}

std::string RandomWordKey(Rng& rng, const EvalData& data) {
  const std::string& adj = data.adjectives[rng.Below(data.adjectives.size())];
  const std::string& noun = data.nouns[rng.Below(data.nouns.size())];
  return adj + "-" + noun;
}

static std::string RandomLetters(Rng& rng, int n, char base) {
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(static_cast<char>(base + rng.Below(26)));
  return s;
}
std::string RandomUpper(Rng& rng, int letters) { return RandomLetters(rng, letters, 'A'); }
std::string RandomLower(Rng& rng, int letters) { return RandomLetters(rng, letters, 'a'); }

std::vector<std::string> EssaySentences(const EssayCorpus& corpus, int64_t start, int64_t num_words) {
  std::vector<std::string> out;
  std::string cur;
  const int64_t n = corpus.size();
  for (int64_t i = 0; i < num_words; ++i) {
    const int64_t j = (start + i) % n;
    if (!cur.empty()) cur.push_back(' ');
    cur += corpus.words[j];
    if (corpus.ends_sentence[j]) out.push_back(std::move(cur)), cur.clear();
  }
  return out;  // an unfinished last sentence is dropped
}

int64_t RandomSentenceStart(Rng& rng, const EssayCorpus& corpus) {
  const int64_t n = corpus.size();
  int64_t i = static_cast<int64_t>(rng.Below(static_cast<uint64_t>(n)));
  // Move to the word after the next sentence end (wrapping).
  for (int64_t k = 0; k < n; ++k) {
    const int64_t prev = (i + n - 1) % n;
    if (corpus.ends_sentence[prev]) return i;
    i = (i + 1) % n;
  }
  return 0;
}

std::string Join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

std::string ToLowerAscii(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

}  // namespace asl::eval

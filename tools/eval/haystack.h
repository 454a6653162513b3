// Inputs of the accuracy benchmark (benchmarks.md §A): the essay haystack, the word lists, and a
// random generator whose draws are identical on every standard library (std::mt19937_64 is fully
// specified; the std:: distributions are not, so none is used).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/status.h"

namespace asl::eval {

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  uint64_t Next() { return gen_(); }
  // Uniform in [0, n), n > 0 (rejection sampling, no modulo bias).
  uint64_t Below(uint64_t n);
  // Uniform in [lo, hi], inclusive.
  int64_t Range(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(Below(static_cast<uint64_t>(hi - lo) + 1)); }
  // k distinct indices of [0, n), in draw order (partial Fisher-Yates). k <= n.
  std::vector<int64_t> Sample(int64_t n, int64_t k);
  template <typename T>
  void Shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[Below(i)]);
  }

 private:
  std::mt19937_64 gen_;
};

// splitmix64 finaliser: decorrelates seeds built from small integers.
uint64_t Mix64(uint64_t x);
// The seed of one sample: a function of the run seed, the task, the length and the sample index
// only, so a sample does not change when other tasks, lengths or policies are added to a run.
uint64_t SampleSeed(uint64_t seed, std::string_view task, int64_t length, int64_t index);

// The essay corpus as one circular sequence of whitespace-separated words (RULER joins the essays
// and splits on whitespace), with the sentence ends marked.
struct EssayCorpus {
  std::vector<std::string> words;
  std::vector<bool> ends_sentence;  // words[i] ends a sentence (also the last word of every essay)
  int64_t size() const { return static_cast<int64_t>(words.size()); }
};

struct EvalData {
  EssayCorpus essays;
  std::vector<std::string> nouns, adjectives, verbs;
  // RULER's common-words vocabulary: the sorted union of the three lists, shuffled once with a fixed
  // seed (cwe_utils.py does the same with random.Random(42)).
  std::vector<std::string> cwe_words;
};

// Reads <dir>/pg-essays/*.txt (sorted by name) and <dir>/wordlists/{noun,adjective,verb}list.txt.
// Errors name the missing file.
StatusOr<EvalData> LoadEvalData(const std::string& dir);
// Builds the derived fields (cwe_words, sentence ends) from essays' texts and the lists; used by
// LoadEvalData and by tests with small in-memory inputs.
EvalData MakeEvalData(const std::vector<std::string>& essay_texts, std::vector<std::string> nouns,
                      std::vector<std::string> adjectives, std::vector<std::string> verbs);

// True when a word ends a sentence: its last character, after closing quotes and brackets, is one
// of . ! ? (a simple stand-in for nltk's sent_tokenize, which RULER uses).
bool EndsSentence(std::string_view word);

// RULER's random values.
std::string RandomNumber(Rng& rng, int digits);   // digits long, no leading zero
std::string RandomUuid4(Rng& rng);                // lowercase 8-4-4-4-12, version 4, RFC 4122 variant
std::string RandomWordKey(Rng& rng, const EvalData& data);  // "adjective-noun"
std::string RandomUpper(Rng& rng, int letters);   // VT variable names
std::string RandomLower(Rng& rng, int letters);   // FWE coded words

// A run of the essay corpus: at most `num_words` words from `start` (wrapping around the end), cut
// into sentences. The first sentence starts at `start`; an unfinished last sentence is dropped, so
// every sentence is whole.
std::vector<std::string> EssaySentences(const EssayCorpus& corpus, int64_t start, int64_t num_words);
// A random sentence start of the corpus.
int64_t RandomSentenceStart(Rng& rng, const EssayCorpus& corpus);

std::string Join(const std::vector<std::string>& parts, std::string_view sep);
std::string ToLowerAscii(std::string_view s);

}  // namespace asl::eval

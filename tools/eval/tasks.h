// The samples of the accuracy benchmark (benchmarks.md §A): RULER's 11 synthetic tasks with RULER's
// texts, and the needle-in-a-haystack grid. Generation is a pure function of (sample seed, haystack
// size); SampleBuilder picks the largest size whose prompt, in the model's chat template, plus the
// task's generation length fits the target length.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/request.h"
#include "tools/eval/haystack.h"

namespace asl::eval {

// The needle-in-a-haystack grid's task name (a pseudo-task next to RULER's).
inline constexpr const char* kNiahGrid = "niah";

struct TaskSpec {
  std::string name;
  int max_tokens = 128;   // tokens to generate (benchmarks.md's table)
  int num_answers = 1;    // reference strings per sample
  int64_t min_size = 1;   // smallest haystack, in the task's units (words, lines, noises)
  int64_t max_size = 1 << 22;
};

// RULER's 11 tasks in the table's order.
const std::vector<TaskSpec>& RulerTasks();
// A RULER task or the NIAH grid; nullptr for an unknown name.
const TaskSpec* FindTask(const std::string& name);
// The 10 (or n) grid depths: 0..100 % evenly spaced.
std::vector<double> NiahDepths(int n);

struct SampleText {
  std::string user;                  // the user message (task text)
  std::string answer_prefix;         // follows the chat template's generation prompt, as in RULER
  std::vector<std::string> answers;  // references for string_match_all
};

// One sample's text for a haystack of `size` units. `target_length` only selects RULER's
// length-dependent variants (cwe repeats below 4096 tokens, fwe vocabulary = length / 50).
// Precondition: size within [min_size, max_size] of the task.
SampleText GenerateRuler(const std::string& task, const EvalData& data, uint64_t sample_seed, int64_t size,
                         int target_length);
// The grid's needle "The special magic {city} number is: {7 digits}." spliced at the sentence
// boundary of `size` essay words nearest to `depth_percent` of the text. The city, number and essay
// start depend on the seed only, so a grid row differs only in the depth.
SampleText GenerateNiahGrid(const EvalData& data, uint64_t sample_seed, int64_t size, double depth_percent);

// Renders a sample into prompt token ids: the chat template around `user`, then `answer_prefix`.
using PromptEncoder =
    std::function<StatusOr<std::vector<TokenId>>(const std::string& user, const std::string& answer_prefix)>;

struct Sample {
  std::string task;
  int length = 0;               // target: prompt tokens + max_tokens <= length
  int index = 0;
  double depth_percent = -1.0;  // NIAH grid only
  int max_tokens = 0;
  int64_t size = 0;             // haystack units used
  SampleText text;
  std::vector<TokenId> prompt_ids;
};

class SampleBuilder {
 public:
  SampleBuilder(const EvalData& data, uint64_t seed, PromptEncoder encoder)
      : data_(data), seed_(seed), encoder_(std::move(encoder)) {}

  // The index-th sample of `task` at `length`, the largest haystack (within 1/64 of the estimate's
  // units) that fits. Fails when even the smallest haystack does not fit, or the encoder fails.
  StatusOr<Sample> Build(const std::string& task, int length, int index, double depth_percent = -1.0);

  int64_t num_encodes() const { return num_encodes_; }

 private:
  struct Probe {
    bool fits = false;
    SampleText text;
    std::vector<TokenId> ids;
  };
  StatusOr<Probe> Try(const TaskSpec& spec, int length, uint64_t sample_seed, int64_t size, double depth);
  // Largest fitting size for one sample by galloping and bisection.
  StatusOr<int64_t> Search(const TaskSpec& spec, int length, uint64_t sample_seed, double depth);

  const EvalData& data_;
  uint64_t seed_;
  PromptEncoder encoder_;
  std::map<std::pair<std::string, int>, int64_t> size_estimate_;
  int64_t num_encodes_ = 0;
};

}  // namespace asl::eval

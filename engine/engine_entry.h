// Entry: everything the engine thread keeps for one request (control-plane Sequence plus the
// runtime parts). Private to engine.cpp; a header only so the file stays readable.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/prune/policy.h"
#include "engine/runner/model_runner.h"
#include "engine/request.h"
#include "engine/sample/sampler.h"
#include "engine/sample/stop_matcher.h"
#include "engine/sched/sequence.h"
#include "engine/tokenizer/tokenizer.h"

namespace asl {

struct Entry {
  sched::Sequence seq;
  GenerateRequest request;
  std::shared_ptr<RequestSink> sink;
  // Recreated at every (re-)admission; the prefill in flight points to it until the sequence
  // leaves the prefill.
  std::unique_ptr<prune::PruningPolicy> policy;
  std::unique_ptr<sample::SamplerState> sampler;   // kept across preemption (seeded draws continue)
  std::unique_ptr<tok::IncrementalDecoder> detok;
  std::unique_ptr<sample::StopMatcher> stop;
  PruningReport report_final;                      // from the first prefill
  int64_t cached_tokens = 0;                       // prompt tokens the first prefill took from the prefix cache
  double prefill_seconds = 0;                      // of the prefill in flight, summed over its slices
  std::string stop_string;
  runner::PromptLogprobs prompt_logprobs;          // from the first prefill, until the first chunk sends them
  std::vector<double> inter_token_seconds;
};

}  // namespace asl

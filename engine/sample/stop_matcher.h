// StopMatcher: finds stop strings in a request's streamed text, across token boundaries, and
// decides what text is safe to emit now. A stop string is never emitted: the text before it is,
// the rest is dropped. Text that could still turn into a stop string (a suffix that is a proper
// prefix of one) is held back until later text settles it; Flush releases it at the end.
//
// Which match wins: the one that completes first in the text (smallest end), and among those the
// one that starts first. That is what a byte-by-byte stream would report, so the outcome does not
// depend on how the text was split into chunks. (vLLM instead takes the first stop string in list
// order that occurs; the two differ only when several stop strings occur in one chunk.)
//
// Input must be valid UTF-8 (the incremental detokenizer's output) and so must the stop strings
// (ValidateSamplingParams checks them); then emitted text never ends inside a character.
//
// Thread: the engine thread of the owning request.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace asl::sample {

class StopMatcher {
 public:
  struct Result {
    std::string text;         // safe to emit now (never contains a stop string)
    bool matched = false;     // a stop string has matched: the request should finish with kStop
    std::string stop_string;  // which one, when matched
  };

  explicit StopMatcher(std::vector<std::string> stop_strings);

  // Feeds the text decoded this step. After a match the matcher is done: later calls return no
  // text and repeat matched = true with the same stop string.
  Result Push(std::string_view text);

  // End of generation: feeds `text` (the detokenizer's own flush, may be empty), then returns all
  // held text; a stop string found in it still truncates it (see matched()/stop_string()).
  std::string Flush(std::string_view text = {});

  bool matched() const { return matched_; }
  const std::string& stop_string() const { return matched_ ? stop_strings_[match_index_] : empty_; }
  // Bytes currently held back (for tests and metrics).
  size_t num_held_bytes() const { return held_.size(); }

 private:
  // Appends text to the held buffer; on a match records it and returns the text before it.
  // Otherwise returns everything except the suffix that could still start a stop string.
  std::string Process(std::string_view text, bool final);

  std::vector<std::string> stop_strings_;
  size_t max_stop_len_ = 0;
  std::string held_;
  bool matched_ = false;
  size_t match_index_ = 0;
  std::string empty_;
};

}  // namespace asl::sample

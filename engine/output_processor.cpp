#include "engine/output_processor.h"

#include <algorithm>

#include "engine/common/logging.h"
#include "engine/kv/kv_cache.h"
#include "engine/sched/scheduler.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace asl {
namespace {

double Seconds(sched::Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

Entry& OutputProcessor::Add(std::unique_ptr<Entry> entry) {
  Entry& e = *entry;
  entries_[e.seq.id] = std::move(entry);
  return e;
}

Entry* OutputProcessor::Find(RequestId id) {
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : it->second.get();
}

const Entry* OutputProcessor::Find(RequestId id) const {
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : it->second.get();
}

std::vector<Entry*> OutputProcessor::All() {
  std::vector<Entry*> all;
  for (auto& [id, e] : entries_) all.push_back(e.get());
  return all;
}

void OutputProcessor::Accept(Entry& e, const sample::SampleResult& r) {
  sched::Sequence& s = e.seq;
  const auto now = sched::Clock::now();
  if (s.output_ids.empty()) s.first_token_time = now;
  else e.inter_token_seconds.push_back(Seconds(now - s.last_token_time));
  s.last_token_time = now;
  s.output_ids.push_back(r.token_id);
  if (!e.sampler->Observe(r.token_id)) {
    // The sampler draws from the grammar's mask, so this is a defect, not the client's input.
    const std::string why = e.sampler->grammar_error();
    Finish(e, FinishReason::kError,
           Internal("structured output: the grammar rejected the sampled token " + std::to_string(r.token_id) +
                    (why.empty() ? "" : " (" + why + ")")));
    return;
  }

  const SamplingParams& sp = e.request.sampling;
  bool stop_token = false;
  if (!sp.ignore_eos && std::find(eos_ids_.begin(), eos_ids_.end(), r.token_id) != eos_ids_.end()) stop_token = true;
  if (std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), r.token_id) != sp.stop_token_ids.end()) stop_token = true;
  // A complete structured output ends at the end token its grammar accepted, ignore_eos or not.
  if (e.sampler->grammar_terminated()) stop_token = true;

  TokenChunk chunk;
  chunk.token_ids.push_back(r.token_id);
  const bool with_logprobs = sp.logprobs > 0;
  if (with_logprobs) {
    TokenLogprob sampled;
    sampled.token_id = r.token_id;
    sampled.logprob = r.logprob;
    chunk.sampled_logprobs.push_back(std::move(sampled));
    chunk.top_logprobs.push_back(r.top_logprobs);
    for (TokenLogprob& alt : chunk.top_logprobs.back()) {
      alt.bytes = tokenizer_->TokenText(alt.token_id);
      alt.text = tok::Utf8Lossy(alt.bytes);
    }
  }
  if (!e.prompt_logprobs.empty()) {  // the first chunk carries the prompt's logprobs
    tok::IncrementalDecoder prompt_text(*tokenizer_, /*skip_special=*/false);
    const std::vector<TokenId>& ids = e.request.prompt_ids;
    for (size_t i = 0; i < ids.size(); ++i) {
      TokenLogprob t;
      t.token_id = ids[i];
      t.logprob = e.prompt_logprobs.logprobs[i];
      t.text = prompt_text.Push(ids[i]);
      if (i + 1 == ids.size()) t.text += prompt_text.Flush();
      t.bytes = tokenizer_->TokenText(ids[i]);
      chunk.prompt_logprobs.push_back(std::move(t));
      std::vector<TokenLogprob>& top = chunk.prompt_top_logprobs.emplace_back();
      for (const auto& [id, lp] : e.prompt_logprobs.top[i]) {
        TokenLogprob alt;
        alt.token_id = id;
        alt.logprob = lp;
        alt.bytes = tokenizer_->TokenText(id);
        alt.text = tok::Utf8Lossy(alt.bytes);
        top.push_back(std::move(alt));
      }
    }
    e.prompt_logprobs = {};
  }
  bool stop_string = false;
  if (!stop_token) {
    std::string text = e.detok->Push(r.token_id);
    if (with_logprobs) {
      TokenLogprob& sampled = chunk.sampled_logprobs.back();
      sampled.text = text;
      // What the detokenizer skips (control tokens) adds no bytes to the output.
      if (!tokenizer_->IsSpecial(r.token_id)) sampled.bytes = tokenizer_->TokenText(r.token_id);
    }
    sample::StopMatcher::Result m = e.stop->Push(std::move(text));
    chunk.text = std::move(m.text);
    if (m.matched) {
      stop_string = true;
      e.stop_string = m.stop_string;
    }
  }
  const bool length = static_cast<int64_t>(s.output_ids.size()) >= s.max_tokens ||
                      s.num_prompt_tokens + static_cast<int64_t>(s.output_ids.size()) >= max_model_len_;
  const bool finishing = stop_token || stop_string || length;
  if (finishing && !stop_string) {
    // The detokenizer's tail may still complete a stop string: Flush truncates it then.
    std::string tail = e.detok->Flush();
    if (with_logprobs) chunk.sampled_logprobs.back().text += tail;  // U+FFFD for a character cut off
    chunk.text += e.stop->Flush(std::move(tail));
    if (e.stop->matched()) {
      stop_string = true;
      e.stop_string = e.stop->stop_string();
    }
  }
  e.sink->OnTokens(chunk);
  if (finishing) Finish(e, (stop_token || stop_string) ? FinishReason::kStop : FinishReason::kLength);
}

void OutputProcessor::Finish(Entry& e, FinishReason reason, Status status) {
  sched::Sequence& s = e.seq;
  const auto now = sched::Clock::now();
  if (e.request.cache_prompt && reason != FinishReason::kError && reason != FinishReason::kAbort) {
    // Its in-order layers' blocks of prompt + fed outputs join the prefix cache (multi-turn chats).
    std::vector<TokenId> ids = e.request.prompt_ids;
    if (s.state == sched::SeqState::kRunning) {
      ids.insert(ids.end(), s.output_ids.begin(), s.output_ids.begin() + s.num_fed_outputs);
    }
    kv_->CacheSequence(static_cast<kv::SeqId>(s.id), ids);
  }
  kv_->FreeSequence(static_cast<kv::SeqId>(s.id));
  scheduler_->Remove(&s);
  if (!s.scheduled_once) waiting_->Release(s.id);
  s.state = sched::SeqState::kFinished;

  FinishEvent ev;
  ev.reason = reason;
  ev.status = reason == FinishReason::kError || reason == FinishReason::kAbort ? status : Status::Ok();
  ev.stop_string = e.stop_string;
  ev.usage.prompt_tokens = s.num_prompt_tokens;
  ev.usage.completion_tokens = static_cast<int64_t>(s.output_ids.size());
  ev.usage.kv_tokens_kept = e.report_final.num_kv_tokens_kept;
  ev.usage.cached_tokens = e.cached_tokens;
  ev.timings.queue_seconds = s.scheduled_once ? Seconds(s.first_scheduled_time - s.arrival_time) : Seconds(now - s.arrival_time);
  ev.timings.ttft_seconds = s.output_ids.empty() ? 0.0 : Seconds(s.first_token_time - s.arrival_time);
  ev.timings.e2e_seconds = Seconds(now - s.arrival_time);
  if (s.output_ids.size() > 1) {
    ev.timings.mean_tpot_seconds = Seconds(s.last_token_time - s.first_token_time) / static_cast<double>(s.output_ids.size() - 1);
  }
  ev.timings.inter_token_seconds = std::move(e.inter_token_seconds);
  ev.pruning = e.report_final;
  ev.pruning.policy = e.request.pruning.policy;
  ev.num_preemptions = s.num_preemptions;
  ASL_LOG_DEBUG("request {} ({}) finished: {} prompt + {} output tokens, policy {}, selection {} {}, kv kept {}/{}, "
               "{} prefill slices, ttft {:.3f}s, e2e {:.3f}s, reason {}{}",
               s.id, e.request.client_id, s.num_prompt_tokens, s.output_ids.size(), PolicyName(e.request.pruning.policy),
               SelectionOutcomeName(ev.pruning.outcome), ev.pruning.selection_layer, ev.pruning.num_kv_tokens_kept,
               ev.pruning.num_kv_tokens_full, ev.pruning.num_prefill_slices, ev.timings.ttft_seconds,
               ev.timings.e2e_seconds, FinishReasonName(reason), status.ok() ? "" : " (" + status.message() + ")");
  if (metrics_) metrics_->OnRequestFinished(e.request, ev);
  e.sink->OnFinish(ev);
  entries_.erase(s.id);  // destroys e
}

void OutputProcessor::FailAll(const std::vector<sched::Sequence*>& seqs, const Status& status) {
  std::vector<RequestId> ids;
  for (sched::Sequence* s : seqs) ids.push_back(s->id);
  for (RequestId id : ids) {
    if (Entry* e = Find(id)) Finish(*e, FinishReason::kError, Internal("request " + std::to_string(id) + ": " + status.message()));
  }
}

}  // namespace asl

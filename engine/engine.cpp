// EngineImpl: the engine thread, its inbox, and one step of the loop (docs/architecture.md).
//
// Ownership: the engine thread owns every Entry once it leaves the inbox; Submit and Cancel only
// touch the inbox under mu_. Sinks are called on the engine thread only.
#include "engine/engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "engine/common/logging.h"
#include "engine/engine_entry.h"
#include "engine/kv/block_pool.h"
#include "engine/model/llama_model.h"
#include "engine/model/model_loader.h"
#include "engine/prune/policy.h"
#include "engine/runner/model_runner.h"
#include "engine/sample/sampler.h"
#include "engine/sched/scheduler.h"
#include "engine/tokenizer/tokenizer.h"

namespace asl {
namespace {

using sched::Clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// FNV-1a over the token ids: identifies identical prompts for the scheduler's prefill budget.
uint64_t HashTokens(const std::vector<TokenId>& ids) {
  uint64_t h = 1469598103934665603ull;
  for (TokenId t : ids) {
    for (int b = 0; b < 4; ++b) {
      h ^= (static_cast<uint32_t>(t) >> (8 * b)) & 0xffu;
      h *= 1099511628211ull;
    }
  }
  return h;
}

int64_t AvailableHostMemory() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

class EngineImpl final : public Engine, private sched::BlockFacts {
 public:
  EngineImpl(EngineConfig config, std::shared_ptr<EngineMetrics> metrics)
      : config_(std::move(config)), metrics_(std::move(metrics)) {}
  ~EngineImpl() override { Shutdown(false, std::chrono::milliseconds(0)); }

  Status Init();

  StatusOr<RequestId> Submit(GenerateRequest request, std::shared_ptr<RequestSink> sink) override;
  void Cancel(RequestId id) override;
  void Shutdown(bool drain, std::chrono::milliseconds grace) override;
  const tok::Tokenizer& tokenizer() const override { return *tokenizer_; }
  const ModelInfo& model_info() const override { return info_; }
  const EngineConfig& config() const override { return config_; }
  EngineStats Stats() const override {
    std::lock_guard<std::mutex> lock(stats_mu_);
    return stats_;
  }

 private:
  // sched::BlockFacts
  int64_t num_free_blocks() const override { return pool_->num_blocks_free(); }
  int64_t num_total_blocks() const override { return pool_->num_blocks_total(); }
  int64_t BlocksForNextToken(const sched::Sequence& seq) const override;

  void Loop();
  bool HasWork() const { return scheduler_->num_waiting() + scheduler_->num_running() > 0; }
  void DrainInbox();
  void Step();
  void RunPrefill(const std::vector<sched::Sequence*>& seqs);
  void RunDecode(const std::vector<sched::Sequence*>& seqs);
  void Accept(Entry& e, const sample::SampleResult& result);
  void Finish(Entry& e, FinishReason reason, Status status = Status::Ok());
  void FailAll(const std::vector<sched::Sequence*>& seqs, const Status& status);
  void PublishStats();
  Entry& EntryOf(const sched::Sequence* s) { return *entries_.at(s->id); }

  EngineConfig config_;
  std::shared_ptr<EngineMetrics> metrics_;
  ModelInfo info_;
  std::unique_ptr<model::LlamaModel> model_;
  std::unique_ptr<tok::Tokenizer> tokenizer_;
  std::unique_ptr<kv::BlockPool> pool_;
  std::unique_ptr<kv::PagedKvCache> kv_;
  std::unique_ptr<runner::ModelRunner> runner_;
  std::unique_ptr<sched::Scheduler> scheduler_;
  std::vector<TokenId> eos_ids_;
  int64_t kv_bytes_per_token_ = 0;  // one token of one layer, K and V, all KV heads

  // Inbox: the only state shared across threads.
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Entry>> inbox_;
  std::vector<RequestId> cancels_;
  bool accepting_ = true;
  bool stopping_ = false;
  bool drain_ = false;
  Clock::time_point drain_deadline_;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<int64_t> num_queued_{0};  // inbox + waiting, for the max_waiting check
  std::thread thread_;
  std::once_flag shutdown_once_;

  // Engine-thread state.
  std::unordered_map<RequestId, std::unique_ptr<Entry>> entries_;
  uint64_t next_arrival_ = 1;
  int64_t num_preemptions_ = 0;

  mutable std::mutex stats_mu_;
  EngineStats stats_;
};

Status EngineImpl::Init() {
  if (config_.num_threads > 0) at::set_num_threads(config_.num_threads);
  at::Device device(at::kCPU);
  try {
    device = at::Device(config_.device);
  } catch (const std::exception&) {
    return InvalidArgument("device: unknown device '" + config_.device + "' (use cpu or cuda[:N])");
  }
  if (device.is_cuda() && !at::hasCUDA()) return InvalidArgument("device: cuda requested but no CUDA device is available");
  at::ScalarType dtype;
  if (config_.dtype == "float32") dtype = at::kFloat;
  else if (config_.dtype == "bfloat16") dtype = at::kBFloat16;
  else return InvalidArgument("dtype: must be float32 or bfloat16, got '" + config_.dtype + "'");
  if (config_.block_size < 1 || config_.block_size > 1024) return InvalidArgument("block_size: must be in [1, 1024]");
  if (config_.max_num_seqs < 1) return InvalidArgument("max_num_seqs: must be >= 1");
  if (config_.max_waiting < 0) return InvalidArgument("max_waiting: must be >= 0");
  if (config_.max_prefill_tokens < 1) return InvalidArgument("max_prefill_tokens: must be >= 1");

  ASL_ASSIGN_OR_RETURN(model::LoadedModel loaded, model::LoadModel(config_.model_path, device, dtype));
  const model::ModelConfig mc = loaded.config;
  if (loaded.gguf_tokenizer) {
    ASL_ASSIGN_OR_RETURN(tokenizer_, tok::Tokenizer::Create(*loaded.gguf_tokenizer));
  } else {
    ASL_ASSIGN_OR_RETURN(tok::TokenizerSpec spec, tok::Tokenizer::SpecFromTokenizerJson(loaded.tokenizer_dir));
    ASL_ASSIGN_OR_RETURN(tokenizer_, tok::Tokenizer::Create(std::move(spec)));
  }
  eos_ids_ = tokenizer_->stop_token_ids();
  model_ = std::make_unique<model::LlamaModel>(mc, std::move(loaded.weights));

  PruningParams probe = config_.default_pruning;
  ASL_RETURN_IF_ERROR(ResolvePruningParams(&probe, static_cast<int>(mc.num_layers)));

  const int64_t elem = at::elementSize(dtype);
  kv_bytes_per_token_ = 2 * mc.num_kv_heads * mc.head_dim * elem;
  int64_t bytes = config_.kv_cache_bytes;
  if (bytes <= 0) {
    if (!(config_.kv_cache_memory_fraction > 0 && config_.kv_cache_memory_fraction < 1)) {
      return InvalidArgument("kv_cache_memory_fraction: must be in (0, 1)");
    }
    int64_t avail = device.is_cuda() ? kv::FreeDeviceMemory(device) : AvailableHostMemory();
    bytes = static_cast<int64_t>(static_cast<double>(avail) * config_.kv_cache_memory_fraction);
  }
  ASL_ASSIGN_OR_RETURN(pool_, kv::BlockPool::Create(kv::BlockPoolOptions{
                                  static_cast<int>(mc.num_layers), mc.num_kv_heads, mc.head_dim, dtype, device,
                                  config_.block_size, /*num_blocks=*/0, bytes}));
  kv_ = std::make_unique<kv::PagedKvCache>(pool_.get());
  runner_ = std::make_unique<runner::ModelRunner>(model_.get(), kv_.get());
  scheduler_ = std::make_unique<sched::Scheduler>(sched::SchedulerConfig{
      config_.max_num_seqs, config_.max_prefill_tokens, static_cast<int>(mc.num_layers), config_.block_size,
      config_.optimistic_admission ? sched::AdmissionMode::kOptimistic : sched::AdmissionMode::kReserve});
  if (config_.max_model_len <= 0 || config_.max_model_len > mc.max_position_embeddings) {
    config_.max_model_len = static_cast<int>(mc.max_position_embeddings);
  }

  info_.name = mc.name;
  info_.arch = model::ArchName(mc.arch);
  info_.path = config_.model_path;
  info_.device = device.str();
  info_.dtype = config_.dtype;
  info_.num_layers = mc.num_layers;
  info_.num_heads = mc.num_heads;
  info_.num_kv_heads = mc.num_kv_heads;
  info_.head_dim = mc.head_dim;
  info_.hidden_size = mc.hidden_size;
  info_.vocab_size = mc.vocab_size;
  info_.context_length = config_.max_model_len;
  info_.kv_blocks_total = pool_->num_blocks_total();
  info_.kv_block_size = config_.block_size;
  info_.kv_bytes_total = pool_->bytes_total();
  info_.eos_token_ids = eos_ids_;
  ASL_LOG_INFO("engine ready: model {} ({} layers) on {} {}, KV pool {} blocks x {} tokens ({:.1f} MiB)", info_.name,
               info_.num_layers, info_.device, info_.dtype, info_.kv_blocks_total, info_.kv_block_size,
               info_.kv_bytes_total / 1048576.0);
  PublishStats();
  thread_ = std::thread([this] { Loop(); });
  return Status::Ok();
}

StatusOr<RequestId> EngineImpl::Submit(GenerateRequest request, std::shared_ptr<RequestSink> sink) {
  const model::ModelConfig& mc = model_->config();
  const int64_t n = static_cast<int64_t>(request.prompt_ids.size());
  if (n == 0) return InvalidArgument("prompt: empty (no tokens)");
  for (size_t i = 0; i < request.prompt_ids.size(); ++i) {
    const TokenId t = request.prompt_ids[i];
    if (t < 0 || t >= mc.vocab_size) {
      return InvalidArgument("prompt_ids[" + std::to_string(i) + "]: token id " + std::to_string(t) +
                             " outside the vocabulary [0, " + std::to_string(mc.vocab_size) + ")");
    }
  }
  ASL_RETURN_IF_ERROR(ValidateSamplingParams(request.sampling, mc.vocab_size));
  ASL_RETURN_IF_ERROR(ResolvePruningParams(&request.pruning, static_cast<int>(mc.num_layers)));
  if (n + request.sampling.max_tokens > config_.max_model_len) {
    return InvalidArgument("max_tokens: prompt (" + std::to_string(n) + " tokens) + max_tokens (" +
                           std::to_string(request.sampling.max_tokens) + ") exceeds the context length (" +
                           std::to_string(config_.max_model_len) + ")");
  }
  // Reject what could never run even alone in an empty pool.
  const int bs = config_.block_size;
  int64_t lifetime_blocks = 0;
  for (int l = 0; l < mc.num_layers; ++l) {
    lifetime_blocks += (prune::KvTokensUpperBound(request.pruning, l, n) + request.sampling.max_tokens + bs - 1) / bs;
  }
  const int64_t admission = prune::PromptKvBlocksUpperBound(request.pruning, static_cast<int>(mc.num_layers), n, bs);
  if (std::max(lifetime_blocks, admission + mc.num_layers) > pool_->num_blocks_total()) {
    return ResourceExhausted("prompt: " + std::to_string(n) + " tokens with max_tokens " +
                             std::to_string(request.sampling.max_tokens) + " need " + std::to_string(lifetime_blocks) +
                             " KV blocks under policy " + PolicyName(request.pruning.policy) +
                             ", more than the whole pool (" + std::to_string(pool_->num_blocks_total()) + ")");
  }

  auto e = std::make_unique<Entry>();
  e->request = std::move(request);
  e->sink = std::move(sink);
  e->seq.num_prompt_tokens = n;
  e->seq.prompt_hash = HashTokens(e->request.prompt_ids);
  e->seq.max_tokens = e->request.sampling.max_tokens;
  e->seq.admission_blocks = admission;
  e->seq.lifetime_blocks = std::max(lifetime_blocks, admission + mc.num_layers);
  e->seq.arrival_time = Clock::now();
  e->sampler = std::make_unique<sample::SamplerState>(e->request.sampling, e->request.prompt_ids);
  e->detok = std::make_unique<tok::IncrementalDecoder>(*tokenizer_, /*skip_special=*/true);
  e->stop = std::make_unique<sample::StopMatcher>(e->request.sampling.stop);

  std::lock_guard<std::mutex> lock(mu_);
  if (!accepting_) return Unavailable("engine is shutting down");
  if (num_queued_.load() >= config_.max_waiting) {
    return ResourceExhausted("queue full: " + std::to_string(config_.max_waiting) + " requests already waiting");
  }
  const RequestId id = next_id_++;
  e->seq.id = id;
  num_queued_++;
  inbox_.push_back(std::move(e));
  cv_.notify_one();
  return id;
}

void EngineImpl::Cancel(RequestId id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.push_back(id);
  cv_.notify_one();
}

void EngineImpl::Shutdown(bool drain, std::chrono::milliseconds grace) {
  std::call_once(shutdown_once_, [&] {
    {
      std::lock_guard<std::mutex> lock(mu_);
      accepting_ = false;
      stopping_ = true;
      drain_ = drain;
      drain_deadline_ = Clock::now() + grace;
      cv_.notify_one();
    }
    if (thread_.joinable()) thread_.join();
  });
}

int64_t EngineImpl::BlocksForNextToken(const sched::Sequence& seq) const {
  int64_t need = 0;
  for (int l = 0; l < model_->config().num_layers; ++l) {
    if (kv_->Length(static_cast<kv::SeqId>(seq.id), l) % config_.block_size == 0) need++;
  }
  return need;
}

void EngineImpl::Loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(50),
                   [&] { return !inbox_.empty() || !cancels_.empty() || stopping_ || HasWork(); });
    }
    DrainInbox();
    bool stop_now = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) stop_now = !drain_ || Clock::now() >= drain_deadline_ || !HasWork();
    }
    if (stop_now) {
      std::vector<Entry*> all;
      for (auto& [id, e] : entries_) all.push_back(e.get());
      for (Entry* e : all) Finish(*e, FinishReason::kAbort, Unavailable("engine shut down"));
      PublishStats();
      return;
    }
    if (HasWork()) {
      Step();
    } else {
      PublishStats();  // cancellations may have freed blocks without a step
    }
  }
}

void EngineImpl::DrainInbox() {
  std::vector<std::unique_ptr<Entry>> arrivals;
  std::vector<RequestId> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    arrivals.swap(inbox_);
    cancels.swap(cancels_);
  }
  for (auto& e : arrivals) {
    e->seq.arrival_seq = next_arrival_++;
    Entry* raw = e.get();
    entries_[raw->seq.id] = std::move(e);
    scheduler_->AddWaiting(&raw->seq);
    ASL_LOG_DEBUG("request {} ({}) queued: {} prompt tokens, policy {}", raw->seq.id, raw->request.client_id,
                  raw->seq.num_prompt_tokens, PolicyName(raw->request.pruning.policy));
  }
  for (RequestId id : cancels) {
    auto it = entries_.find(id);
    if (it != entries_.end()) Finish(*it->second, FinishReason::kCancelled, Cancelled("cancelled by the client"));
  }
}

void EngineImpl::Step() {
  sched::StepPlan plan = scheduler_->Schedule(*this);
  for (sched::Sequence* s : plan.preempted) {
    // Recompute later: drop the KV now; outputs stay and are replayed through decode (no re-emit).
    kv_->FreeSequence(static_cast<kv::SeqId>(s->id));
    s->num_fed_outputs = 0;
    s->next_position = 0;
    num_preemptions_++;
    if (metrics_) metrics_->OnPreemption();
    ASL_LOG_DEBUG("request {} preempted (recompute), {} outputs kept", s->id, s->output_ids.size());
  }
  int64_t prefill_tokens = 0;
  for (sched::Sequence* s : plan.prefill) {
    prefill_tokens += s->num_prompt_tokens;
    if (!s->scheduled_once) {
      s->scheduled_once = true;
      s->first_scheduled_time = Clock::now();
      num_queued_--;
    }
  }
  if (!plan.prefill.empty()) RunPrefill(plan.prefill);
  if (!plan.decode.empty()) RunDecode(plan.decode);
  PublishStats();
  if (metrics_) metrics_->OnStep(Stats(), prefill_tokens, static_cast<int64_t>(plan.decode.size()));
}

void EngineImpl::RunPrefill(const std::vector<sched::Sequence*>& seqs) {
  const model::ModelConfig& mc = model_->config();
  std::vector<runner::PrefillSeq> batch;
  for (sched::Sequence* s : seqs) {
    Entry& e = EntryOf(s);
    Status st = kv_->AddSequence(static_cast<kv::SeqId>(s->id));
    if (!st.ok()) {
      FailAll(seqs, st);
      return;
    }
    e.policy = std::make_unique<prune::PruningPolicy>(e.request.pruning, static_cast<int>(mc.num_layers),
                                                      mc.num_kv_heads, s->num_prompt_tokens);
    batch.push_back(runner::PrefillSeq{static_cast<kv::SeqId>(s->id), e.request.prompt_ids, e.policy.get()});
  }
  const auto t0 = Clock::now();
  StatusOr<runner::PrefillOutput> out = runner_->Prefill(batch);
  const double seconds = Seconds(Clock::now() - t0);
  if (!out.ok()) {
    ASL_LOG_ERROR("prefill of {} sequences failed: {}", seqs.size(), out.status().ToString());
    FailAll(seqs, out.status());
    return;
  }
  std::vector<sample::SamplerState*> states;
  std::vector<size_t> rows;
  for (size_t i = 0; i < seqs.size(); ++i) {
    sched::Sequence* s = seqs[i];
    Entry& e = EntryOf(s);
    s->next_position = out->next_positions[i];
    if (s->num_preemptions == 0 || e.report_final.num_prompt_tokens == 0) {
      e.report_final = e.policy->report();
      e.report_final.prefill_seconds = seconds;
      e.report_final.num_kv_tokens_kept = runner_->KvTokens(static_cast<kv::SeqId>(s->id));
      e.report_final.num_kv_tokens_full = mc.num_layers * s->num_prompt_tokens;
      e.report_final.kv_bytes = e.report_final.num_kv_tokens_kept * kv_bytes_per_token_;
    }
    if (s->output_ids.empty()) {  // a re-admitted sequence replays its outputs instead
      states.push_back(e.sampler.get());
      rows.push_back(i);
    }
  }
  if (states.empty()) return;
  at::Tensor logits = out->logits.index_select(0, at::tensor(std::vector<int64_t>(rows.begin(), rows.end()), at::kLong));
  std::vector<sample::SampleResult> results = sample::Sample(logits, states);
  for (size_t j = 0; j < rows.size(); ++j) Accept(EntryOf(seqs[rows[j]]), results[j]);
}

void EngineImpl::RunDecode(const std::vector<sched::Sequence*>& seqs) {
  std::vector<runner::DecodeSeq> batch;
  std::vector<sched::Sequence*> live;
  for (sched::Sequence* s : seqs) {
    if (entries_.find(s->id) == entries_.end() || s->state != sched::SeqState::kRunning) continue;
    if (s->num_fed_outputs >= static_cast<int64_t>(s->output_ids.size())) continue;  // nothing to feed
    batch.push_back(runner::DecodeSeq{static_cast<kv::SeqId>(s->id), s->output_ids[s->num_fed_outputs], s->next_position});
    live.push_back(s);
  }
  if (batch.empty()) return;
  StatusOr<at::Tensor> logits = runner_->Decode(batch);
  if (!logits.ok()) {
    ASL_LOG_ERROR("decode of {} sequences failed: {}", live.size(), logits.status().ToString());
    FailAll(live, logits.status());
    return;
  }
  std::vector<sample::SamplerState*> states;
  std::vector<int64_t> rows;
  for (size_t i = 0; i < live.size(); ++i) {
    sched::Sequence* s = live[i];
    s->num_fed_outputs++;
    s->next_position++;
    if (s->num_fed_outputs == static_cast<int64_t>(s->output_ids.size())) {
      states.push_back(EntryOf(s).sampler.get());
      rows.push_back(static_cast<int64_t>(i));
    }
  }
  if (states.empty()) return;
  std::vector<sample::SampleResult> results = sample::Sample(logits->index_select(0, at::tensor(rows, at::kLong)), states);
  for (size_t j = 0; j < rows.size(); ++j) Accept(EntryOf(live[rows[j]]), results[j]);
}

void EngineImpl::Accept(Entry& e, const sample::SampleResult& r) {
  sched::Sequence& s = e.seq;
  const auto now = Clock::now();
  if (s.output_ids.empty()) s.first_token_time = now;
  else e.inter_token_seconds.push_back(Seconds(now - s.last_token_time));
  s.last_token_time = now;
  s.output_ids.push_back(r.token_id);
  e.sampler->Observe(r.token_id);

  const SamplingParams& sp = e.request.sampling;
  bool stop_token = false;
  if (!sp.ignore_eos && std::find(eos_ids_.begin(), eos_ids_.end(), r.token_id) != eos_ids_.end()) stop_token = true;
  if (std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), r.token_id) != sp.stop_token_ids.end()) stop_token = true;

  TokenChunk chunk;
  chunk.token_ids.push_back(r.token_id);
  if (sp.logprobs > 0) {
    chunk.sampled_logprobs.push_back(TokenLogprob{r.token_id, r.logprob});
    chunk.top_logprobs.push_back(r.top_logprobs);
  }
  bool stop_string = false;
  if (!stop_token) {
    sample::StopMatcher::Result m = e.stop->Push(e.detok->Push(r.token_id));
    chunk.text = std::move(m.text);
    if (m.matched) {
      stop_string = true;
      e.stop_string = m.stop_string;
    }
  }
  const bool length = static_cast<int64_t>(s.output_ids.size()) >= s.max_tokens ||
                      s.num_prompt_tokens + static_cast<int64_t>(s.output_ids.size()) >= config_.max_model_len;
  const bool finishing = stop_token || stop_string || length;
  if (finishing && !stop_string) {
    // The detokenizer's tail may still complete a stop string: Flush truncates it then.
    chunk.text += e.stop->Flush(e.detok->Flush());
    if (e.stop->matched()) {
      stop_string = true;
      e.stop_string = e.stop->stop_string();
    }
  }
  e.sink->OnTokens(chunk);
  if (finishing) Finish(e, (stop_token || stop_string) ? FinishReason::kStop : FinishReason::kLength);
}

void EngineImpl::Finish(Entry& e, FinishReason reason, Status status) {
  sched::Sequence& s = e.seq;
  const auto now = Clock::now();
  kv_->FreeSequence(static_cast<kv::SeqId>(s.id));
  scheduler_->Remove(&s);
  if (!s.scheduled_once) num_queued_--;
  s.state = sched::SeqState::kFinished;

  FinishEvent ev;
  ev.reason = reason;
  ev.status = reason == FinishReason::kError || reason == FinishReason::kAbort ? status : Status::Ok();
  ev.stop_string = e.stop_string;
  ev.usage.prompt_tokens = s.num_prompt_tokens;
  ev.usage.completion_tokens = static_cast<int64_t>(s.output_ids.size());
  ev.usage.kv_tokens_kept = e.report_final.num_kv_tokens_kept;
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
               "ttft {:.3f}s, e2e {:.3f}s, reason {}{}",
               s.id, e.request.client_id, s.num_prompt_tokens, s.output_ids.size(), PolicyName(e.request.pruning.policy),
               SelectionOutcomeName(ev.pruning.outcome), ev.pruning.selection_layer, ev.pruning.num_kv_tokens_kept,
               ev.pruning.num_kv_tokens_full, ev.timings.ttft_seconds, ev.timings.e2e_seconds, FinishReasonName(reason),
               status.ok() ? "" : " (" + status.message() + ")");
  if (metrics_) metrics_->OnRequestFinished(e.request, ev);
  e.sink->OnFinish(ev);
  entries_.erase(s.id);  // destroys e
}

void EngineImpl::FailAll(const std::vector<sched::Sequence*>& seqs, const Status& status) {
  std::vector<RequestId> ids;
  for (sched::Sequence* s : seqs) ids.push_back(s->id);
  for (RequestId id : ids) {
    auto it = entries_.find(id);
    if (it != entries_.end()) Finish(*it->second, FinishReason::kError, Internal("request " + std::to_string(id) + ": " + status.message()));
  }
}

void EngineImpl::PublishStats() {
  EngineStats st;
  st.num_running = static_cast<int64_t>(scheduler_->num_running());
  st.num_waiting = static_cast<int64_t>(scheduler_->num_waiting());
  st.kv_blocks_total = pool_->num_blocks_total();
  st.kv_blocks_used = pool_->num_blocks_used();
  st.kv_bytes_used = pool_->bytes_used();
  st.num_preemptions = num_preemptions_;
  st.device_memory_allocated = kv::DeviceMemoryAllocated(model_->device());
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_ = st;
}

}  // namespace

StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineConfig& config, std::shared_ptr<EngineMetrics> metrics) {
  auto engine = std::make_unique<EngineImpl>(config, std::move(metrics));
  try {
    ASL_RETURN_IF_ERROR(engine->Init());
  } catch (const std::exception& e) {
    return Internal(std::string("engine initialisation failed: ") + e.what());
  }
  return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace asl

// EngineImpl: the engine thread, its inbox, and one step of the loop (docs/architecture.md).
//
// Ownership: the engine thread owns every Entry once it leaves the inbox; Submit and Cancel only
// touch the inbox under mu_. Sinks are called on the engine thread only.
#include "engine/engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "engine/common/cpu_quota.h"
#include "engine/common/logging.h"
#include "engine/engine_entry.h"
#include "engine/kv/block_pool.h"
#include "engine/model/llama_model.h"
#include "engine/model/model_loader.h"
#include "engine/output_processor.h"
#include "engine/prune/policy.h"
#include "engine/runner/model_runner.h"
#include "engine/sample/sampler.h"
#include "engine/sched/block_accounting.h"
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

class EngineImpl final : public Engine, private sched::PoolFacts {
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
  void ResetPrefixCache() override {
    std::lock_guard<std::mutex> lock(mu_);
    reset_prefix_cache_ = true;
    cv_.notify_one();
  }
  EngineStats Stats() const override {
    std::lock_guard<std::mutex> lock(stats_mu_);
    return stats_;
  }

 private:
  // sched::PoolFacts
  int64_t num_free_blocks() const override { return pool_->num_blocks_free(); }
  int64_t num_total_blocks() const override { return pool_->num_blocks_total(); }
  int64_t Length(RequestId seq, int layer) const override { return pool_->Length(static_cast<kv::SeqId>(seq), layer); }
  sched::PrefixHit CachedPrefix(const sched::Sequence& seq) const override;
  // The cached prefix the prefill of `e` would use now (0 when caching is off for it).
  kv::CachedPrefix LookupPrefix(const Entry& e) const;
  // Registers the sequences admitted this step in the pool and pins their cached prefixes, before
  // anything else in the step can allocate (and so evict what the admission counted on).
  void AdmitToPool(const std::vector<sched::Sequence*>& seqs);

  void Loop();
  bool HasWork() const { return scheduler_->num_waiting() + scheduler_->num_running() > 0; }
  void DrainInbox();
  void Step();
  // Starts the next prefill batch with the sequences admitted this step.
  void StartPrefill(const std::vector<sched::Sequence*>& seqs);
  // Runs one slice of the prefill in flight; sequences it finishes sample their first token.
  void AdvancePrefill(double budget, StepStats& step);
  // Whether `id` is still in the prefill in flight (not finished, cancelled or preempted).
  bool InPrefill(kv::SeqId id) const;
  // Drops the prefill in flight once none of its sequences is left in it.
  void ForgetEmptyPrefill();
  void RunDecode(const std::vector<sched::Sequence*>& seqs);
  void PublishStats();

  EngineConfig config_;
  std::shared_ptr<EngineMetrics> metrics_;
  ModelInfo info_;
  std::unique_ptr<model::LlamaModel> model_;
  std::unique_ptr<tok::Tokenizer> tokenizer_;
  std::unique_ptr<kv::BlockPool> pool_;
  std::unique_ptr<kv::PagedKvCache> kv_;
  std::unique_ptr<runner::ModelRunner> runner_;
  std::unique_ptr<sched::Scheduler> scheduler_;
  std::unique_ptr<sched::BlockAccounting> accounting_;
  std::unique_ptr<sample::GrammarCompiler> grammars_;  // structured output; thread-safe (Submit)
  int64_t kv_bytes_per_token_ = 0;  // one token of one layer, K and V, all KV heads

  // Inbox: the only state shared across threads.
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Entry>> inbox_;
  std::vector<RequestId> cancels_;
  bool accepting_ = true;
  bool stopping_ = false;
  bool reset_prefix_cache_ = false;
  bool drain_ = false;
  Clock::time_point drain_deadline_;
  std::atomic<uint64_t> next_id_{1};
  WaitingSlots waiting_;  // inbox + waiting, for the max_waiting check
  std::thread thread_;
  std::once_flag shutdown_once_;

  // Engine-thread state.
  std::unique_ptr<OutputProcessor> outputs_;  // owns every request's Entry
  std::optional<runner::PrefillJob> prefill_;  // the prefill in flight, if any
  uint64_t next_arrival_ = 1;
  int64_t num_preemptions_ = 0;
  int64_t prefix_query_tokens_ = 0;
  int64_t prefix_hit_tokens_ = 0;

  mutable std::mutex stats_mu_;
  EngineStats stats_;
};

Status EngineImpl::Init() {
  if (config_.onednn_primitive_cache > 0) {
    // Before any GEMM: both are read once. setenv's overwrite = 0 keeps an operator's own values.
    // ideep (libtorch's oneDNN wrapper) keeps its own LRU of primitive descriptors beside oneDNN's
    // primitive cache; each holds about half of a shape's ~0.7 MiB.
    const std::string cap = std::to_string(config_.onednn_primitive_cache);
    setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", cap.c_str(), 0);
    setenv("LRU_CACHE_CAPACITY", cap.c_str(), 0);
  }
  {
    const char* primitives = std::getenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY");
    const char* descriptors = std::getenv("LRU_CACHE_CAPACITY");
    ASL_LOG_INFO("oneDNN caches: {} primitives, {} descriptors", primitives ? primitives : "1024 (default)",
                 descriptors ? descriptors : "1024 (default)");
  }
  if (config_.num_threads > 0) {
    at::set_num_threads(config_.num_threads);
    ASL_LOG_INFO("threads: {} (model.threads)", config_.num_threads);
  } else {
    // Not libtorch's default (the host's cores): in a container that oversubscribes the CPU quota.
    const CpuBudget cpus = ReadCpuBudget();
    at::set_num_threads(cpus.num_cpus);
    ASL_LOG_INFO("threads: {} ({}; affinity {} CPUs)", cpus.num_cpus, cpus.cgroup_limit, cpus.num_affinity_cpus);
  }
  at::Device device(at::kCPU);
  try {
    device = at::Device(config_.device);
  } catch (const std::exception&) {
    return InvalidArgument("device: unknown device '" + config_.device + "' (use cpu or cuda[:N])");
  }
  if (device.is_cuda() && !at::hasCUDA()) return InvalidArgument("device: cuda requested but no CUDA device is available");
  ASL_ASSIGN_OR_RETURN(const at::ScalarType dtype, model::ResolveDtype(config_.dtype, device));
  std::string kv_dtype_name = config_.kv_dtype;
  if (kv_dtype_name == "auto") kv_dtype_name = dtype == at::kBFloat16 ? "bfloat16" : "float16";
  at::ScalarType kv_dtype;
  if (kv_dtype_name == "float32") kv_dtype = at::kFloat;
  else if (kv_dtype_name == "bfloat16") kv_dtype = at::kBFloat16;
  else if (kv_dtype_name == "float16") kv_dtype = at::kHalf;
  else return InvalidArgument("kv_dtype: must be auto, float32, bfloat16 or float16, got '" + config_.kv_dtype + "'");
  model::Activations activations;
  if (!model::ParseActivations(config_.decode_activations, &activations)) {
    return InvalidArgument("decode_activations: must be float32 or int8, got '" + config_.decode_activations + "'");
  }
  if (config_.block_size < 1 || config_.block_size > 1024) return InvalidArgument("block_size: must be in [1, 1024]");
  if (config_.max_num_seqs < 1) return InvalidArgument("max_num_seqs: must be >= 1");
  if (config_.max_waiting < 0) return InvalidArgument("max_waiting: must be >= 0");
  if (config_.max_prefill_tokens < 1) return InvalidArgument("max_prefill_tokens: must be >= 1");
  if (!(config_.step_prefill_budget >= 0)) return InvalidArgument("step_prefill_budget: must be >= 0 (0 = no limit)");
  if (config_.prefill_chunk_rows < 0) return InvalidArgument("prefill_chunk_rows: must be >= 0 (0 = whole layers)");

  ASL_ASSIGN_OR_RETURN(model::LoadedModel loaded, model::LoadModel(config_.model_path, device, dtype));
  const model::ModelConfig mc = loaded.config;
  if (loaded.gguf_tokenizer) {
    ASL_ASSIGN_OR_RETURN(tokenizer_, tok::Tokenizer::Create(*loaded.gguf_tokenizer));
  } else {
    ASL_ASSIGN_OR_RETURN(tok::TokenizerSpec spec, tok::Tokenizer::SpecFromTokenizerJson(loaded.tokenizer_dir));
    ASL_ASSIGN_OR_RETURN(tokenizer_, tok::Tokenizer::Create(std::move(spec)));
  }
  if (!config_.chat_template.empty()) ASL_RETURN_IF_ERROR(tokenizer_->OverrideChatTemplate(config_.chat_template));
  model_ = std::make_unique<model::LlamaModel>(mc, std::move(loaded.weights), activations);
  {
    // Structured output sees each token as the bytes it adds to the text; control tokens add none.
    std::vector<std::string> token_bytes(static_cast<size_t>(tokenizer_->vocab_size()));
    for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
      if (!tokenizer_->IsSpecial(id)) token_bytes[id] = tokenizer_->TokenText(id);
    }
    grammars_ = std::make_unique<sample::GrammarCompiler>(token_bytes, std::max<int64_t>(mc.vocab_size, tokenizer_->vocab_size()),
                                                          tokenizer_->stop_token_ids(), at::get_num_threads(),
                                                          config_.grammar_cache_bytes);
  }

  PruningParams probe = config_.default_pruning;
  ASL_RETURN_IF_ERROR(ResolvePruningParams(&probe, static_cast<int>(mc.num_layers)));

  const int64_t elem = at::elementSize(kv_dtype);
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
                                  static_cast<int>(mc.num_layers), mc.num_kv_heads, mc.head_dim, kv_dtype, device,
                                  config_.block_size, /*num_blocks=*/0, bytes}));
  if (config_.prefix_cache) {
    if (!(config_.prefix_cache_share > 0 && config_.prefix_cache_share <= 1)) {
      return InvalidArgument("prefix_cache.max_share: must be in (0, 1]");
    }
    // Salt: what changes the cached numbers besides the tokens (one pool serves one model).
    // (Decode activations too: a chat's generated tokens' K/V come from decode steps.)
    const std::string salt = config_.model_path + "|" + config_.dtype + "|" + kv_dtype_name + "|" + config_.device +
                             "|" + config_.decode_activations;
    pool_->SetCacheCapacity(
        std::max<int64_t>(1, static_cast<int64_t>(config_.prefix_cache_share * static_cast<double>(pool_->num_blocks_total()))),
        HashTokens(std::vector<TokenId>(salt.begin(), salt.end())));
  }
  kv_ = std::make_unique<kv::PagedKvCache>(pool_.get());
  runner_ = std::make_unique<runner::ModelRunner>(model_.get(), kv_.get(),
                                                  runner::PrefillOptions{config_.prefill_chunk_rows});
  scheduler_ = std::make_unique<sched::Scheduler>(sched::SchedulerConfig{
      config_.max_num_seqs, config_.max_prefill_tokens, config_.step_prefill_budget,
      config_.optimistic_admission ? sched::AdmissionMode::kOptimistic : sched::AdmissionMode::kReserve});
  accounting_ = std::make_unique<sched::BlockAccounting>(static_cast<int>(mc.num_layers), config_.block_size,
                                                        static_cast<const sched::PoolFacts*>(this));
  if (config_.max_model_len <= 0 || config_.max_model_len > mc.max_position_embeddings) {
    config_.max_model_len = static_cast<int>(mc.max_position_embeddings);
  }
  outputs_ = std::make_unique<OutputProcessor>(tokenizer_->stop_token_ids(), config_.max_model_len, tokenizer_.get(),
                                               kv_.get(), scheduler_.get(), metrics_.get(), &waiting_);

  info_.name = mc.name;
  info_.arch = model::ArchName(mc.arch);
  info_.path = config_.model_path;
  info_.device = device.str();
  info_.dtype = dtype == at::kBFloat16 ? "bfloat16" : "float32";  // "auto" resolved
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
  info_.kv_dtype = kv_dtype_name;
  info_.decode_activations = model::ActivationsName(activations);
  info_.eos_token_ids = tokenizer_->stop_token_ids();
  ASL_LOG_INFO("engine ready: model {} ({} layers) on {} {}, decode activations {}, KV pool {} blocks x {} tokens of "
               "{} ({:.1f} MiB)",
               info_.name, info_.num_layers, info_.device, info_.dtype, info_.decode_activations, info_.kv_blocks_total,
               info_.kv_block_size, info_.kv_dtype, info_.kv_bytes_total / 1048576.0);
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
  if (request.prompt_logprobs != -1) {
    if (!(request.prompt_logprobs >= 0 && request.prompt_logprobs <= 20)) {
      return InvalidArgument("prompt_logprobs: must be in [0, 20] (or unset), got " +
                             std::to_string(request.prompt_logprobs));
    }
    if (Policy(request.pruning.policy).selects) {
      return InvalidArgument(std::string("prompt_logprobs: needs a policy that keeps every prompt row (full or snapkv), "
                                         "not ") + PolicyName(request.pruning.policy));
    }
    request.cache_prompt = false;  // a cached prefix's rows are never computed
  }
  const std::vector<int64_t> prompt_kv = prune::KvTokensUpperBounds(request.pruning, static_cast<int>(mc.num_layers), n);
  if (request.sampling.max_tokens == 0) {
    // As many as the context leaves (vLLM's default), and no more than the pool can ever hold for
    // this request alone: the largest m whose lifetime bound fits the whole pool (monotonic in m).
    int64_t lo = 0, hi = config_.max_model_len - n;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (accounting_->Bounds(prompt_kv, mid).lifetime <= pool_->num_blocks_total()) lo = mid;
      else hi = mid - 1;
    }
    if (lo < 1) {
      return OutOfRange("prompt: " + std::to_string(n) + " tokens leave no room for output in the context (" +
                        std::to_string(config_.max_model_len) + ") or the KV pool (" +
                        std::to_string(pool_->num_blocks_total()) + " blocks) under policy " +
                        PolicyName(request.pruning.policy));
    }
    request.sampling.max_tokens = static_cast<int>(lo);
  }
  if (n + request.sampling.max_tokens > config_.max_model_len) {
    return OutOfRange("sampling.max_tokens: prompt (" + std::to_string(n) + " tokens) + max_tokens (" +
                           std::to_string(request.sampling.max_tokens) + ") exceeds the context length (" +
                           std::to_string(config_.max_model_len) + ")");
  }
  // Reject what could never run even alone in an empty pool: not RESOURCE_EXHAUSTED, which
  // clients retry (OpenAI's SDK does on 429); retrying cannot help, a smaller kv_budget can.
  const sched::RequestBlocks blocks = accounting_->Bounds(prompt_kv, request.sampling.max_tokens);
  if (blocks.lifetime > pool_->num_blocks_total()) {
    return OutOfRange("prompt: " + std::to_string(n) + " tokens with max_tokens " +
                             std::to_string(request.sampling.max_tokens) + " need " + std::to_string(blocks.lifetime) +
                             " KV blocks under policy " + PolicyName(request.pruning.policy) +
                             ", more than the whole pool (" + std::to_string(pool_->num_blocks_total()) + ")");
  }

  // Last: compiling a grammar is the costly check (milliseconds to seconds; cached by spec).
  ASL_ASSIGN_OR_RETURN(std::shared_ptr<const sample::CompiledConstraint> grammar,
                       grammars_->Compile(request.sampling.constraint));

  auto e = std::make_unique<Entry>();
  e->request = std::move(request);
  e->sink = std::move(sink);
  e->seq.num_prompt_tokens = n;
  e->seq.prompt_hash = HashTokens(e->request.prompt_ids);
  e->seq.max_tokens = e->request.sampling.max_tokens;
  e->seq.admission_blocks = blocks.prompt;
  e->seq.lifetime_blocks = blocks.lifetime;
  e->seq.arrival_time = Clock::now();
  std::unique_ptr<sample::GrammarState> matcher;
  if (grammar) {
    std::vector<TokenId> end_tokens = tokenizer_->stop_token_ids();
    end_tokens.insert(end_tokens.end(), e->request.sampling.stop_token_ids.begin(), e->request.sampling.stop_token_ids.end());
    matcher = std::make_unique<sample::GrammarState>(std::move(grammar), end_tokens);
  }
  e->sampler = std::make_unique<sample::SamplerState>(e->request.sampling, e->request.prompt_ids, std::move(matcher));
  e->detok = std::make_unique<tok::IncrementalDecoder>(*tokenizer_, /*skip_special=*/true);
  e->stop = std::make_unique<sample::StopMatcher>(e->request.sampling.stop);

  std::lock_guard<std::mutex> lock(mu_);
  if (!accepting_) return Unavailable("engine is shutting down");
  const RequestId id = next_id_++;
  if (!waiting_.Take(id, config_.max_waiting)) {
    return ResourceExhausted("queue full: " + std::to_string(config_.max_waiting) + " requests already waiting");
  }
  e->seq.id = id;
  inbox_.push_back(std::move(e));
  cv_.notify_one();
  return id;
}

void EngineImpl::Cancel(RequestId id) {
  waiting_.Release(id);  // at once: the engine thread sees the cancel only after its current step
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
      for (Entry* e : outputs_->All()) outputs_->Finish(*e, FinishReason::kAbort, Unavailable("engine shut down"));
      ForgetEmptyPrefill();
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
  bool reset = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    arrivals.swap(inbox_);
    cancels.swap(cancels_);
    std::swap(reset, reset_prefix_cache_);
  }
  if (reset) {
    const int64_t cached = pool_->num_blocks_cached();
    pool_->ResetCache();
    ASL_LOG_INFO("prefix cache reset: {} cached blocks dropped", cached);
  }
  for (auto& arrival : arrivals) {
    arrival->seq.arrival_seq = next_arrival_++;
    Entry& e = outputs_->Add(std::move(arrival));
    scheduler_->AddWaiting(&e.seq);
    ASL_LOG_DEBUG("request {} ({}) queued: {} prompt tokens, policy {}", e.seq.id, e.request.client_id,
                  e.seq.num_prompt_tokens, PolicyName(e.request.pruning.policy));
  }
  for (RequestId id : cancels) {
    if (Entry* e = outputs_->Find(id)) outputs_->Finish(*e, FinishReason::kCancelled, Cancelled("cancelled by the client"));
  }
  ForgetEmptyPrefill();
}

bool EngineImpl::InPrefill(kv::SeqId id) const {
  const Entry* e = static_cast<const OutputProcessor&>(*outputs_).Find(static_cast<RequestId>(id));
  return e != nullptr && e->seq.state == sched::SeqState::kPrefilling;
}

void EngineImpl::ForgetEmptyPrefill() {
  if (!prefill_) return;
  for (kv::SeqId id : prefill_->members()) {
    if (InPrefill(id)) return;
  }
  prefill_.reset();
}

kv::CachedPrefix EngineImpl::LookupPrefix(const Entry& e) const {
  if (!pool_->cache_enabled() || !e.request.cache_prompt) return {};
  const int64_t n = static_cast<int64_t>(e.request.prompt_ids.size());
  return pool_->LookupPrefix(e.request.prompt_ids, n - prune::MinComputedTokens(e.request.pruning));
}

sched::PrefixHit EngineImpl::CachedPrefix(const sched::Sequence& seq) const {
  const Entry* e = static_cast<const OutputProcessor&>(*outputs_).Find(seq.id);
  if (e == nullptr) return {};
  const kv::CachedPrefix hit = LookupPrefix(*e);
  sched::PrefixHit out;
  out.evictable_blocks = hit.num_blocks_evictable;
  if (prune::StoresWholePrompt(e->request.pruning)) out.shared_blocks = model_->config().num_layers * (hit.num_tokens / config_.block_size);
  return out;
}

void EngineImpl::AdmitToPool(const std::vector<sched::Sequence*>& seqs) {
  for (sched::Sequence* s : seqs) {
    Entry& e = *outputs_->Find(s->id);
    const kv::SeqId id = static_cast<kv::SeqId>(s->id);
    Status st = kv_->AddSequence(id);
    const kv::CachedPrefix hit = LookupPrefix(e);
    if (st.ok() && hit.num_tokens > 0) {
      st = pool_->PinPrefix(id, e.request.prompt_ids, hit.num_tokens, prune::StoresWholePrompt(e.request.pruning));
    }
    if (!st.ok()) {
      outputs_->FailAll({s}, st);
      continue;
    }
    s->cached_prefix_tokens = hit.num_tokens;
    if (e.request.cache_prompt && pool_->cache_enabled()) {
      prefix_query_tokens_ += s->num_prompt_tokens;
      prefix_hit_tokens_ += hit.num_tokens;
    }
  }
}

void EngineImpl::Step() {
  sched::StepPlan plan = scheduler_->Schedule(*accounting_);
  AdmitToPool(plan.prefill);
  for (sched::Sequence* s : plan.preempted) {
    // Recompute later: drop the KV now (the prefill in flight drops a preempted member's rows);
    // outputs stay and are replayed through decode (no re-emit).
    kv_->FreeSequence(static_cast<kv::SeqId>(s->id));
    s->num_fed_outputs = 0;
    s->next_position = 0;
    num_preemptions_++;
    if (metrics_) metrics_->OnPreemption();
    ASL_LOG_DEBUG("request {} preempted (recompute), {} outputs kept", s->id, s->output_ids.size());
  }
  if (!plan.preempted.empty()) ForgetEmptyPrefill();
  StepStats step;
  // Decode first, so that a running stream's next token never waits for more than one slice.
  if (!plan.decode.empty()) {
    const auto t0 = Clock::now();
    RunDecode(plan.decode);
    step.decode_seconds = Seconds(Clock::now() - t0);
    step.num_decode_seqs = static_cast<int64_t>(plan.decode.size());
  }
  // Admitted sequences that failed to enter the pool are finished already.
  plan.prefill.erase(std::remove_if(plan.prefill.begin(), plan.prefill.end(),
                                    [&](sched::Sequence* s) { return outputs_->Find(s->id) == nullptr; }),
                     plan.prefill.end());
  if (!plan.prefill.empty()) {
    StartPrefill(plan.prefill);
    PublishStats();  // the admissions show (running, prefilling) while the slice runs
  }
  if (prefill_) AdvancePrefill(plan.prefill_budget, step);
  PublishStats();
  if (metrics_) metrics_->OnStep(Stats(), step);
}

void EngineImpl::StartPrefill(const std::vector<sched::Sequence*>& seqs) {
  ASL_CHECK(!prefill_, "a prefill batch starts only when none is in flight");
  const model::ModelConfig& mc = model_->config();
  std::vector<runner::PrefillSeq> batch;
  for (sched::Sequence* s : seqs) {
    Entry& e = *outputs_->Find(s->id);
    if (!s->scheduled_once) {
      s->scheduled_once = true;
      s->first_scheduled_time = Clock::now();
      waiting_.Release(s->id);
    }
    e.policy = std::make_unique<prune::PruningPolicy>(e.request.pruning, static_cast<int>(mc.num_layers),
                                                      mc.num_kv_heads, s->num_prompt_tokens);
    e.prefill_seconds = 0;
    batch.push_back(runner::PrefillSeq{static_cast<kv::SeqId>(s->id), e.request.prompt_ids, e.policy.get(),
                                       e.request.cache_prompt && pool_->cache_enabled(),
                                       s->output_ids.empty() ? e.request.prompt_logprobs : -1});
  }
  StatusOr<runner::PrefillJob> job = runner_->StartPrefill(std::move(batch));
  if (!job.ok()) {
    ASL_LOG_ERROR("prefill of {} sequences failed: {}", seqs.size(), job.status().ToString());
    outputs_->FailAll(seqs, job.status());
    return;
  }
  prefill_ = std::move(job).value();
}

void EngineImpl::AdvancePrefill(double budget, StepStats& step) {
  const model::ModelConfig& mc = model_->config();
  std::vector<sched::Sequence*> members;
  for (kv::SeqId id : prefill_->members()) {
    if (InPrefill(id)) members.push_back(&outputs_->Find(static_cast<RequestId>(id))->seq);
  }
  const auto t0 = Clock::now();
  StatusOr<runner::PrefillSlice> slice = runner_->Advance(*prefill_, budget, [this](kv::SeqId id) { return InPrefill(id); });
  const double seconds = Seconds(Clock::now() - t0);
  if (!slice.ok()) {
    ASL_LOG_ERROR("prefill of {} sequences failed: {}", members.size(), slice.status().ToString());
    prefill_.reset();
    outputs_->FailAll(members, slice.status());
    return;
  }
  step.prefill_seconds = seconds;
  step.num_prefill_seqs = static_cast<int64_t>(members.size());
  step.num_prefill_chunks = slice->num_chunks;
  step.num_prefill_token_layers = slice->token_layers;
  step.num_prefills_done = static_cast<int64_t>(slice->done.size());
  for (sched::Sequence* s : members) outputs_->Find(s->id)->prefill_seconds += seconds;
  if (prefill_->done()) prefill_.reset();

  std::vector<sample::SamplerState*> states;
  std::vector<int64_t> rows;
  for (size_t i = 0; i < slice->done.size(); ++i) {
    runner::PrefilledSeq& d = slice->done[i];
    Entry& e = *outputs_->Find(static_cast<RequestId>(d.seq));
    if (e.seq.output_ids.empty()) e.prompt_logprobs = std::move(d.prompt_logprobs);
    sched::Sequence& s = e.seq;
    scheduler_->MarkPrefilled(&s);
    pool_->ReleasePins(d.seq);  // its tables keep the blocks they share
    s.next_position = d.next_position;
    if (s.num_preemptions == 0 || e.report_final.num_prompt_tokens == 0) {
      e.report_final = e.policy->report();
      e.report_final.prefill_seconds = e.prefill_seconds;
      e.report_final.num_prefill_slices = d.num_slices;
      e.report_final.num_kv_tokens_kept = runner_->KvTokens(d.seq);
      e.report_final.num_kv_tokens_full = mc.num_layers * s.num_prompt_tokens;
      e.report_final.kv_bytes = e.report_final.num_kv_tokens_kept * kv_bytes_per_token_;
      e.cached_tokens = s.cached_prefix_tokens;
    }
    if (s.output_ids.empty()) {  // a re-admitted sequence replays its outputs instead
      states.push_back(e.sampler.get());
      rows.push_back(static_cast<int64_t>(i));
    }
  }
  if (states.empty()) return;
  std::vector<sample::SampleResult> results = sample::Sample(slice->logits.index_select(0, at::tensor(rows, at::kLong)), states);
  for (size_t j = 0; j < rows.size(); ++j) {
    outputs_->Accept(*outputs_->Find(static_cast<RequestId>(slice->done[static_cast<size_t>(rows[j])].seq)), results[j]);
  }
}

void EngineImpl::RunDecode(const std::vector<sched::Sequence*>& seqs) {
  std::vector<runner::DecodeSeq> batch;
  std::vector<sched::Sequence*> live;
  for (sched::Sequence* s : seqs) {
    if (outputs_->Find(s->id) == nullptr || s->state != sched::SeqState::kRunning) continue;
    if (s->num_fed_outputs >= static_cast<int64_t>(s->output_ids.size())) continue;  // nothing to feed
    batch.push_back(runner::DecodeSeq{static_cast<kv::SeqId>(s->id), s->output_ids[s->num_fed_outputs], s->next_position});
    live.push_back(s);
  }
  if (batch.empty()) return;
  StatusOr<at::Tensor> logits = runner_->Decode(batch);
  if (!logits.ok()) {
    ASL_LOG_ERROR("decode of {} sequences failed: {}", live.size(), logits.status().ToString());
    outputs_->FailAll(live, logits.status());
    return;
  }
  std::vector<sample::SamplerState*> states;
  std::vector<int64_t> rows;
  for (size_t i = 0; i < live.size(); ++i) {
    sched::Sequence* s = live[i];
    s->num_fed_outputs++;
    s->next_position++;
    if (s->num_fed_outputs == static_cast<int64_t>(s->output_ids.size())) {
      states.push_back(outputs_->Find(s->id)->sampler.get());
      rows.push_back(static_cast<int64_t>(i));
    }
  }
  if (states.empty()) return;
  std::vector<sample::SampleResult> results = sample::Sample(logits->index_select(0, at::tensor(rows, at::kLong)), states);
  for (size_t j = 0; j < rows.size(); ++j) outputs_->Accept(*outputs_->Find(live[static_cast<size_t>(rows[j])]->id), results[j]);
}

void EngineImpl::PublishStats() {
  EngineStats st;
  st.num_running = static_cast<int64_t>(scheduler_->num_running());
  st.num_prefilling = static_cast<int64_t>(scheduler_->num_prefilling());
  st.num_waiting = static_cast<int64_t>(scheduler_->num_waiting());
  st.kv_blocks_total = pool_->num_blocks_total();
  st.kv_blocks_used = pool_->num_blocks_used();
  st.kv_bytes_used = pool_->bytes_used();
  st.num_preemptions = num_preemptions_;
  st.kv_blocks_cached = pool_->num_blocks_cached();
  st.prefix_cache_query_tokens = prefix_query_tokens_;
  st.prefix_cache_hit_tokens = prefix_hit_tokens_;
  st.prefix_cache_evictions = pool_->num_evictions();
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

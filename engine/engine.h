// Engine: the facade the server uses. One engine thread owns every piece of state (scheduler,
// block pool, model runner); Submit and Cancel only touch the inbox, the engine's only lock.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/request.h"

namespace asl {

namespace tok { class Tokenizer; }

struct EngineConfig {
  std::string model_path;          // a .gguf file or a Hugging Face safetensors directory
  std::string device = "cpu";      // "cpu" or "cuda" / "cuda:N"
  // "auto", "float32" or "bfloat16" (model::ResolveDtype: auto = bfloat16 on CPUs with native bf16
  // dot products). The library default stays float32 so that tests are exact against float32
  // references; asl-server (config/default.yaml) and asl-cli default to auto.
  std::string dtype = "float32";
  // KV pool storage: "float32", "bfloat16", "float16", or "auto" = the compute dtype when it is
  // bfloat16, else float16 (half the bytes of float32 per token; llama.cpp's default KV type).
  std::string kv_dtype = "auto";
  // Decode projections over GGUF blocks on the CPU (model::Activations, engine/model/linear.h):
  // "float32" (exact against float32 references: the library default) or "int8" (activations
  // quantised per block of 32 and integer dot products, as llama.cpp; asl-server's default).
  std::string decode_activations = "float32";
  // Overrides the model's chat template: "chatml", "llama3" or the path of a Jinja file; empty: the
  // model's own (GGUF tokenizer.chat_template, tokenizer_config.json or chat_template.jinja).
  std::string chat_template;
  int num_threads = 0;             // intra-op threads; 0 = the usable CPUs (ReadCpuBudget)
  // oneDNN primitives (and ideep's descriptors of them) kept: libtorch's bfloat16 GEMMs compile one
  // per shape, about 0.7 MiB each, and prefill row counts vary per step; 0 = the libraries' default
  // (1024 each: up to ~700 MiB of RSS). Read once per process, at the first GEMM: the first
  // engine's value holds, and ONEDNN_PRIMITIVE_CACHE_CAPACITY / LRU_CACHE_CAPACITY in the
  // environment win over it.
  int onednn_primitive_cache = 64;
  // KV pool: bytes if > 0, else this fraction of free memory (device memory on CUDA).
  int64_t kv_cache_bytes = 0;
  double kv_cache_memory_fraction = 0.25;
  int block_size = 16;             // tokens per KV block
  int max_num_seqs = 64;           // running sequences at once
  int max_waiting = 256;           // waiting queue limit: beyond it Submit fails RESOURCE_EXHAUSTED
  int max_prefill_tokens = 8192;   // prompt tokens admitted into one prefill batch
  // Estimated prefill work per engine step, in token-layers (runner::PrefillCostModel): each step
  // runs one decode token for every running sequence, then chunks of the prefill in flight while
  // their cost fits (at least one). 0 = every prefill runs whole in one step. The default, about
  // 100 ms of the default model's prefill on the 2-core development CPU (3-4 of its single-stream
  // decode steps at 1-2k tokens of context), is from bench/results/prefill_slices.md.
  double step_prefill_budget = 2048;
  // Rows of the prefill batch one chunk of a layer computes: the smallest slice, which bounds a
  // step's prefill time whatever the prompt's length. 0 = whole layers.
  int prefill_chunk_rows = 512;
  // Admission (engine/sched/scheduler.h): false reserves each request's lifetime blocks (prompt KV
  // after pruning + max_tokens), so nothing is preempted; true admits by the prompt's blocks only
  // and preempts (recompute) when decode runs out.
  bool optimistic_admission = false;
  // Automatic prefix caching (docs/architecture.md, "Prefix cache"): whole blocks of uncompressed
  // prompt K/V stay in free pool memory after their request and are reused by later prompts that
  // start with the same tokens. At most this share of the pool's blocks holds cached K/V.
  bool prefix_cache = true;
  double prefix_cache_share = 1.0;
  int max_model_len = 0;           // prompt + max_tokens limit; 0 = the model's context length
  // Structured output: memory for compiled grammars, kept by spec so that requests repeating a
  // schema skip the compile (least recently used go first).
  int64_t grammar_cache_bytes = int64_t{256} << 20;
  PruningParams default_pruning;   // server-wide pruning defaults (resolved per request)
};

struct ModelInfo {
  std::string name;
  std::string arch;
  std::string path;
  std::string device;
  std::string dtype;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t hidden_size = 0;
  int64_t vocab_size = 0;
  int64_t context_length = 0;      // max_model_len in force
  int64_t kv_blocks_total = 0;
  int64_t kv_block_size = 0;
  int64_t kv_bytes_total = 0;
  std::string kv_dtype;            // the pool's storage dtype (kv_dtype resolved)
  std::string decode_activations;  // "float32" or "int8": the decode projections' arithmetic
  std::vector<TokenId> eos_token_ids;
};

// A snapshot for metrics and health; cheap, thread-safe.
struct EngineStats {
  int64_t num_running = 0;         // prefilling or decoding
  int64_t num_prefilling = 0;      // of which admitted and not yet prefilled
  int64_t num_waiting = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_bytes_used = 0;
  int64_t num_preemptions = 0;     // since start
  int64_t kv_blocks_cached = 0;    // blocks holding prefix-cache K/V (in use or evictable)
  // Prefix cache, since start: prompt tokens looked up at admission, those found cached, and
  // cached blocks evicted to make room.
  int64_t prefix_cache_query_tokens = 0;
  int64_t prefix_cache_hit_tokens = 0;
  int64_t prefix_cache_evictions = 0;
  int64_t device_memory_allocated = 0;  // CUDA only; 0 on CPU
};

// What one engine step did: a decode token for every running sequence, then a prefill slice.
struct StepStats {
  double decode_seconds = 0;           // 0 when nothing decoded
  double prefill_seconds = 0;          // the slice's wall time; 0 when no prefill ran
  int64_t num_decode_seqs = 0;
  int64_t num_prefill_seqs = 0;        // sequences in the prefill batch the slice advanced
  int num_prefill_chunks = 0;          // chunks of layers the slice ran
  int64_t num_prefill_token_layers = 0;  // rows those layers computed
  int64_t num_prefills_done = 0;       // sequences whose prefill completed in this step
};

// Implemented by the server (prometheus-cpp). Called on the engine thread, once per event; must not
// block.
class EngineMetrics {
 public:
  virtual ~EngineMetrics() = default;
  virtual void OnRequestFinished(const GenerateRequest& request, const FinishEvent& event) = 0;
  virtual void OnStep(const EngineStats& stats, const StepStats& step) = 0;
  virtual void OnPreemption() = 0;
};

class Engine {
 public:
  // Loads the model and allocates the KV pool. Errors name the file or the config field.
  static StatusOr<std::unique_ptr<Engine>> Create(const EngineConfig& config,
                                                   std::shared_ptr<EngineMetrics> metrics = nullptr);
  virtual ~Engine() = default;

  // Thread-safe. Validates the request (parameters, prompt length against the pool and the
  // context) and queues it. On error nothing was queued and the sink is never called.
  // On success the sink receives tokens and exactly one OnFinish.
  virtual StatusOr<RequestId> Submit(GenerateRequest request, std::shared_ptr<RequestSink> sink) = 0;
  // Thread-safe. Cancels a queued or running request: its blocks are freed at the next step and its
  // sink gets OnFinish(kCancelled). Unknown or finished ids are ignored.
  virtual void Cancel(RequestId id) = 0;
  // Thread-safe. Stops accepting; with drain, lets running and queued work finish for at most
  // `grace`, then cancels the rest (OnFinish(kAbort)). Returns when the engine thread has stopped.
  virtual void Shutdown(bool drain, std::chrono::milliseconds grace) = 0;
  // Thread-safe. Drops every cached prefix block no running request uses, before the next step.
  virtual void ResetPrefixCache() = 0;

  virtual const tok::Tokenizer& tokenizer() const = 0;
  virtual const ModelInfo& model_info() const = 0;
  virtual const EngineConfig& config() const = 0;
  virtual EngineStats Stats() const = 0;
};

}  // namespace asl

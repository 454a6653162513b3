#include "engine/model/model_loader.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/common/cpu_isa.h"
#include "engine/model/linear.h"
#include "engine/model/safetensors.h"

namespace asl::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Shape = std::vector<int64_t>;

std::string ShapeStr(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// ---- GGUF metadata --------------------------------------------------------------------------

class GgufMeta {
 public:
  explicit GgufMeta(const GgufFile& g) : g_(g) {}

  Status Int(const std::string& key, int64_t* out, bool required) const {
    if (!g_.HasKey(key)) return required ? DataLoss(g_.path() + ": missing metadata '" + key + "'") : Status::Ok();
    const auto v = g_.GetInt(key);
    if (!v) return DataLoss(g_.path() + ": metadata '" + key + "' is not an integer");
    *out = *v;
    return Status::Ok();
  }
  Status Float(const std::string& key, double* out, bool required) const {
    if (!g_.HasKey(key)) return required ? DataLoss(g_.path() + ": missing metadata '" + key + "'") : Status::Ok();
    auto v = g_.GetFloat(key);
    if (!v) {
      if (auto i = g_.GetInt(key)) v = static_cast<double>(*i);
    }
    if (!v) return DataLoss(g_.path() + ": metadata '" + key + "' is not a number");
    *out = *v;
    return Status::Ok();
  }
  Status String(const std::string& key, std::string* out, bool required) const {
    if (!g_.HasKey(key)) return required ? DataLoss(g_.path() + ": missing metadata '" + key + "'") : Status::Ok();
    const auto v = g_.GetString(key);
    if (!v) return DataLoss(g_.path() + ": metadata '" + key + "' is not a string");
    *out = *v;
    return Status::Ok();
  }

 private:
  const GgufFile& g_;
};

// llama.cpp stores Llama 3 RoPE scaling as per-frequency divisors (rope_freqs.weight, written by
// convert_hf_to_gguf's LlamaModel.generate_extra_tensors). The parameters are recovered and the
// table recomputed; a table that does not match is refused rather than approximated.
Status Llama3ScalingFromRopeFreqs(const GgufFile& g, const GgufTensorInfo& info, ModelConfig* c) {
  ASL_ASSIGN_OR_RETURN(at::Tensor ff, g.LoadTensor(info));
  const int64_t half = c->head_dim / 2;
  if (ff.dim() != 1 || ff.size(0) != half) {
    return DataLoss(g.path() + ": tensor 'rope_freqs.weight' has shape " + ShapeStr(info.shape) + ", expected [" +
                    std::to_string(half) + "]");
  }
  RopeScaling rs;
  rs.type = RopeScaling::Type::kLlama3;
  rs.factor = ff.max().item<double>();
  int64_t orig = 8192;
  ASL_RETURN_IF_ERROR(GgufMeta(g).Int(std::string(ArchName(c->arch)) + ".rope.scaling.original_context_length", &orig, false));
  rs.original_max_position_embeddings = orig;
  const double low_wavelen = orig / rs.low_freq_factor;
  const double high_wavelen = orig / rs.high_freq_factor;
  const float* f = ff.data_ptr<float>();
  for (int64_t i = 0; i < half; ++i) {
    const double freq = std::pow(c->rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(c->head_dim));
    const double wavelen = 2 * M_PI / freq;
    double expect = 1.0;
    if (wavelen > low_wavelen) {
      expect = rs.factor;
    } else if (wavelen >= high_wavelen) {
      const double smooth = (orig / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      expect = 1.0 / ((1 - smooth) / rs.factor + smooth);
    }
    if (std::abs(f[i] - expect) > 1e-3 * expect) {
      return Unimplemented(g.path() + ": rope_freqs.weight does not match Llama 3 scaling (factor " +
                           std::to_string(rs.factor) + ", original context " + std::to_string(orig) + ") at index " +
                           std::to_string(i));
    }
  }
  c->rope_scaling = rs;
  return Status::Ok();
}

// ---- HF config.json -------------------------------------------------------------------------

class JsonFields {
 public:
  JsonFields(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  Status Int(const char* key, int64_t* out, bool required) const {
    const auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return required ? DataLoss(source_ + ": missing '" + key + "'") : Status::Ok();
    if (!it->is_number_integer()) return DataLoss(source_ + ": '" + key + "' is not an integer");
    *out = it->get<int64_t>();
    return Status::Ok();
  }
  Status Float(const char* key, double* out, bool required) const {
    const auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return required ? DataLoss(source_ + ": missing '" + key + "'") : Status::Ok();
    if (!it->is_number()) return DataLoss(source_ + ": '" + key + "' is not a number");
    *out = it->get<double>();
    return Status::Ok();
  }
  Status Bool(const char* key, bool* out) const {
    const auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return Status::Ok();
    if (!it->is_boolean()) return DataLoss(source_ + ": '" + key + "' is not a boolean");
    *out = it->get<bool>();
    return Status::Ok();
  }
  Status String(const char* key, std::string* out) const {
    const auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return Status::Ok();
    if (!it->is_string()) return DataLoss(source_ + ": '" + key + "' is not a string");
    *out = it->get<std::string>();
    return Status::Ok();
  }

 private:
  const json& j_;
  std::string source_;
};

// rope_scaling (transformers 4) or rope_parameters (transformers 5, which also carries rope_theta).
Status RopeFromJson(const json& rope, const std::string& source, ModelConfig* c) {
  if (!rope.is_object()) return DataLoss(source + ": rope_scaling is not an object");
  JsonFields r(rope, source + " (rope_scaling)");
  std::string type = "default";
  ASL_RETURN_IF_ERROR(r.String("type", &type));
  ASL_RETURN_IF_ERROR(r.String("rope_type", &type));
  ASL_RETURN_IF_ERROR(r.Float("rope_theta", &c->rope_theta, false));
  RopeScaling& rs = c->rope_scaling;
  if (type == "default") {
    rs.type = RopeScaling::Type::kNone;
  } else if (type == "linear") {
    rs.type = RopeScaling::Type::kLinear;
    ASL_RETURN_IF_ERROR(r.Float("factor", &rs.factor, true));
  } else if (type == "llama3") {
    rs.type = RopeScaling::Type::kLlama3;
    ASL_RETURN_IF_ERROR(r.Float("factor", &rs.factor, true));
    ASL_RETURN_IF_ERROR(r.Float("low_freq_factor", &rs.low_freq_factor, false));
    ASL_RETURN_IF_ERROR(r.Float("high_freq_factor", &rs.high_freq_factor, false));
    ASL_RETURN_IF_ERROR(r.Int("original_max_position_embeddings", &rs.original_max_position_embeddings, false));
  } else {
    return Unimplemented(source + ": rope scaling type '" + type + "' is not supported (default, linear, llama3)");
  }
  return Status::Ok();
}

// ---- Weights --------------------------------------------------------------------------------

// Where tensors come from: a GGUF file or a safetensors directory, named as in that source.
struct TensorSource {
  std::string file;                                                  // for messages
  std::function<std::optional<Shape>(const std::string&)> shape_of;  // nullopt when absent
  std::function<std::string(const std::string&)> file_of;
  std::function<StatusOr<at::Tensor>(const std::string&)> load;      // CPU, floating point
  // The tensor's encoded bytes and ggml type (GGUF only; null elsewhere): the packed copies.
  std::function<PackedWeight(const std::string&)> packed;
};

enum class Part { kAttnNorm, kWq, kWk, kWv, kBq, kBk, kBv, kWo, kFfnNorm, kGate, kUp, kDown };

std::string GgufName(int layer, Part p) {
  static const char* kNames[] = {"attn_norm.weight", "attn_q.weight",   "attn_k.weight", "attn_v.weight",
                                 "attn_q.bias",      "attn_k.bias",     "attn_v.bias",   "attn_output.weight",
                                 "ffn_norm.weight",  "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
  return "blk." + std::to_string(layer) + "." + kNames[static_cast<int>(p)];
}

std::string HfName(int layer, Part p) {
  static const char* kNames[] = {
      "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
      "self_attn.q_proj.bias",  "self_attn.k_proj.bias",   "self_attn.v_proj.bias",   "self_attn.o_proj.weight",
      "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"};
  return "model.layers." + std::to_string(layer) + "." + kNames[static_cast<int>(p)];
}

// Inverse of convert_hf_to_gguf's LlamaModel.permute (rows [n_head, 2, d/2] -> [n_head, d/2, 2]);
// the same as transformers' _reverse_permute_weights. Works for weights and biases.
at::Tensor UndoLlamaCppPermute(const at::Tensor& w, int64_t n_head) {
  const int64_t rows = w.size(0);
  std::vector<int64_t> split = {n_head, rows / n_head / 2, 2};
  for (int64_t i = 1; i < w.dim(); ++i) split.push_back(w.size(i));
  return w.reshape(split).transpose(1, 2).reshape(w.sizes()).contiguous();
}

class WeightLoader {
 public:
  WeightLoader(const TensorSource& src, const at::Device& device, at::ScalarType dtype)
      : src_(src), device_(device), dtype_(dtype) {}

  StatusOr<at::Tensor> Get(const std::string& name, const Shape& expected,
                           const std::function<at::Tensor(const at::Tensor&)>& fix = nullptr) const {
    const auto shape = src_.shape_of(name);
    if (!shape) return DataLoss(src_.file + ": missing tensor '" + name + "' (expected shape " + ShapeStr(expected) + ")");
    if (*shape != expected) {
      return DataLoss(src_.file_of(name) + ": tensor '" + name + "' has shape " + ShapeStr(*shape) + ", expected " +
                      ShapeStr(expected));
    }
    ASL_ASSIGN_OR_RETURN(at::Tensor t, src_.load(name));
    if (fix) t = fix(t.to(at::kFloat));
    return t.to(device_, dtype_).contiguous();
  }

  // The packed copy of a linear weight already loaded by Get (same name, same row fix), where the
  // run is on the CPU (any dtype: bfloat16 runs decode from the blocks too, linear.h) and the file
  // stores it in a packable block type; undefined otherwise.
  PackedWeight GetPacked(const std::string& name,
                         const std::function<at::Tensor(const at::Tensor&)>& fix = nullptr) const {
    if (!src_.packed || !device_.is_cpu()) return {};
    PackedWeight p = src_.packed(name);
    if (!p.defined()) return {};
    if (fix) p.bytes = fix(p.bytes);  // a permutation of whole rows
    return p;
  }

 private:
  const TensorSource& src_;
  at::Device device_;
  at::ScalarType dtype_;
};

// `gguf_permuted`: q/k rows are in llama.cpp's interleaved order (GGUF llama only).
StatusOr<ModelWeights> LoadWeights(const ModelConfig& c, const TensorSource& src, bool gguf,
                                   const at::Device& device, at::ScalarType dtype) {
  const WeightLoader w(src, device, dtype);
  auto name = gguf ? GgufName : HfName;
  const bool permuted = gguf && c.arch == Arch::kLlama;
  const int64_t hd = c.head_dim, H = c.num_heads, Hkv = c.num_kv_heads, D = c.hidden_size, F = c.intermediate_size;
  using Fix = std::function<at::Tensor(const at::Tensor&)>;
  const Fix fix_q = permuted ? Fix([H](const at::Tensor& t) { return UndoLlamaCppPermute(t, H); }) : Fix();
  const Fix fix_k = permuted ? Fix([Hkv](const at::Tensor& t) { return UndoLlamaCppPermute(t, Hkv); }) : Fix();

  ModelWeights mw;
  ASL_ASSIGN_OR_RETURN(mw.tok_embeddings, w.Get(gguf ? "token_embd.weight" : "model.embed_tokens.weight", {c.vocab_size, D}));
  mw.layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = mw.layers[i];
    ASL_ASSIGN_OR_RETURN(l.attn_norm, w.Get(name(i, Part::kAttnNorm), {D}));
    ASL_ASSIGN_OR_RETURN(l.wq, w.Get(name(i, Part::kWq), {H * hd, D}, fix_q));
    ASL_ASSIGN_OR_RETURN(l.wk, w.Get(name(i, Part::kWk), {Hkv * hd, D}, fix_k));
    ASL_ASSIGN_OR_RETURN(l.wv, w.Get(name(i, Part::kWv), {Hkv * hd, D}));
    if (c.attention_bias) {
      ASL_ASSIGN_OR_RETURN(l.bq, w.Get(name(i, Part::kBq), {H * hd}, fix_q));
      ASL_ASSIGN_OR_RETURN(l.bk, w.Get(name(i, Part::kBk), {Hkv * hd}, fix_k));
      ASL_ASSIGN_OR_RETURN(l.bv, w.Get(name(i, Part::kBv), {Hkv * hd}));
    }
    ASL_ASSIGN_OR_RETURN(l.wo, w.Get(name(i, Part::kWo), {D, H * hd}));
    ASL_ASSIGN_OR_RETURN(l.ffn_norm, w.Get(name(i, Part::kFfnNorm), {D}));
    ASL_ASSIGN_OR_RETURN(l.w_gate, w.Get(name(i, Part::kGate), {F, D}));
    ASL_ASSIGN_OR_RETURN(l.w_up, w.Get(name(i, Part::kUp), {F, D}));
    ASL_ASSIGN_OR_RETURN(l.w_down, w.Get(name(i, Part::kDown), {D, F}));
    l.packed_wq = w.GetPacked(name(i, Part::kWq), fix_q);
    l.packed_wk = w.GetPacked(name(i, Part::kWk), fix_k);
    l.packed_wv = w.GetPacked(name(i, Part::kWv));
    l.packed_wo = w.GetPacked(name(i, Part::kWo));
    l.packed_gate = w.GetPacked(name(i, Part::kGate));
    l.packed_up = w.GetPacked(name(i, Part::kUp));
    l.packed_down = w.GetPacked(name(i, Part::kDown));
  }
  ASL_ASSIGN_OR_RETURN(mw.norm, w.Get(gguf ? "output_norm.weight" : "model.norm.weight", {D}));
  if (c.tie_word_embeddings) {
    mw.lm_head = mw.tok_embeddings;
    mw.packed_lm_head = w.GetPacked(gguf ? "token_embd.weight" : "model.embed_tokens.weight");
  } else {
    ASL_ASSIGN_OR_RETURN(mw.lm_head, w.Get(gguf ? "output.weight" : "lm_head.weight", {c.vocab_size, D}));
    mw.packed_lm_head = w.GetPacked(gguf ? "output.weight" : "lm_head.weight");
  }
  return mw;
}

StatusOr<LoadedModel> LoadGguf(const std::string& path, const at::Device& device, at::ScalarType dtype) {
  ASL_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> g, GgufFile::Open(path));
  LoadedModel m;
  m.source = path;
  ASL_ASSIGN_OR_RETURN(m.config, ConfigFromGguf(*g));
  ASL_RETURN_IF_ERROR(m.config.Validate(path));
  // A GGUF without tokenizer metadata may sit next to a tokenizer.json (engine falls back to it).
  if (g->HasKey("tokenizer.ggml.model") || g->HasKey("tokenizer.ggml.tokens")) {
    ASL_ASSIGN_OR_RETURN(m.gguf_tokenizer, TokenizerSpecFromGguf(*g));
  } else {
    m.tokenizer_dir = fs::path(path).parent_path().string();
  }
  const GgufFile* gp = g.get();
  TensorSource src;
  src.file = path;
  src.shape_of = [gp](const std::string& n) -> std::optional<Shape> {
    const GgufTensorInfo* t = gp->FindTensor(n);
    return t ? std::optional(t->shape) : std::nullopt;
  };
  src.file_of = [path](const std::string&) { return path; };
  src.load = [gp](const std::string& n) { return gp->LoadTensor(*gp->FindTensor(n)); };
  src.packed = [gp](const std::string& n) -> PackedWeight {
    const GgufTensorInfo* t = gp->FindTensor(n);
    if (t == nullptr || t->shape.size() != 2 || !IsPackable(t->type) || t->shape[1] % 32 != 0) return {};
    const int64_t rows = t->shape[0], row_bytes = PackedRowBytes(t->type, t->shape[1]);
    if (static_cast<uint64_t>(rows * row_bytes) != t->nbytes) return {};  // LoadTensor has validated the size
    PackedWeight p;
    p.type = t->type;
    p.cols = t->shape[1];
    p.bytes = at::empty({rows, row_bytes}, at::kByte);
    std::memcpy(p.bytes.data_ptr<uint8_t>(), gp->TensorData(*t), t->nbytes);
    return p;
  };
  ASL_ASSIGN_OR_RETURN(m.weights, LoadWeights(m.config, src, /*gguf=*/true, device, dtype));
  return m;
}

StatusOr<LoadedModel> LoadHfDir(const std::string& dir, const at::Device& device, at::ScalarType dtype) {
  LoadedModel m;
  m.source = dir;
  m.tokenizer_dir = dir;
  ASL_ASSIGN_OR_RETURN(m.config, ConfigFromHfConfigJson(dir));
  ASL_RETURN_IF_ERROR(m.config.Validate((fs::path(dir) / "config.json").string()));
  ASL_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsModel> st, SafetensorsModel::Open(dir));
  const SafetensorsModel* sp = st.get();
  TensorSource src;
  src.file = dir;
  src.shape_of = [sp](const std::string& n) -> std::optional<Shape> {
    const SafetensorsTensorInfo* t = sp->FindTensor(n);
    return t ? std::optional(t->shape) : std::nullopt;
  };
  src.file_of = [sp](const std::string& n) {
    const SafetensorsFile* f = nullptr;
    sp->FindTensor(n, &f);
    return f ? f->path() : sp->dir();
  };
  src.load = [sp](const std::string& n) { return sp->LoadTensor(n); };
  ASL_ASSIGN_OR_RETURN(m.weights, LoadWeights(m.config, src, /*gguf=*/false, device, dtype));
  return m;
}

}  // namespace

StatusOr<ModelConfig> ConfigFromGguf(const GgufFile& g) {
  const GgufMeta meta(g);
  std::string arch;
  ASL_RETURN_IF_ERROR(meta.String("general.architecture", &arch, true));
  ModelConfig c;
  if (arch == "llama") {
    c.arch = Arch::kLlama;
  } else if (arch == "qwen2") {
    c.arch = Arch::kQwen2;
    c.attention_bias = true;
  } else {
    return Unimplemented(g.path() + ": unsupported architecture '" + arch + "' (supported: llama, qwen2)");
  }
  const std::string p = arch + ".";
  c.name = fs::path(g.path()).stem().string();
  ASL_RETURN_IF_ERROR(meta.String("general.name", &c.name, false));
  ASL_RETURN_IF_ERROR(meta.Int(p + "block_count", &c.num_layers, true));
  ASL_RETURN_IF_ERROR(meta.Int(p + "embedding_length", &c.hidden_size, true));
  ASL_RETURN_IF_ERROR(meta.Int(p + "attention.head_count", &c.num_heads, true));
  c.num_kv_heads = c.num_heads;
  ASL_RETURN_IF_ERROR(meta.Int(p + "attention.head_count_kv", &c.num_kv_heads, false));
  ASL_RETURN_IF_ERROR(meta.Int(p + "feed_forward_length", &c.intermediate_size, true));
  ASL_RETURN_IF_ERROR(meta.Int(p + "context_length", &c.max_position_embeddings, true));
  ASL_RETURN_IF_ERROR(meta.Float(p + "attention.layer_norm_rms_epsilon", &c.rms_norm_eps, true));
  ASL_RETURN_IF_ERROR(meta.Float(p + "rope.freq_base", &c.rope_theta, false));
  if (c.num_heads <= 0) return DataLoss(g.path() + ": metadata '" + p + "attention.head_count' must be positive");
  c.head_dim = c.hidden_size / c.num_heads;
  ASL_RETURN_IF_ERROR(meta.Int(p + "attention.key_length", &c.head_dim, false));
  int64_t rope_dims = c.head_dim;
  ASL_RETURN_IF_ERROR(meta.Int(p + "rope.dimension_count", &rope_dims, false));
  if (rope_dims != c.head_dim) {
    return Unimplemented(g.path() + ": partial rotary embeddings (rope.dimension_count " + std::to_string(rope_dims) +
                         " != head_dim " + std::to_string(c.head_dim) + ") are not supported");
  }

  if (g.HasKey(p + "vocab_size")) {
    ASL_RETURN_IF_ERROR(meta.Int(p + "vocab_size", &c.vocab_size, true));
  } else if (const GgufTensorInfo* emb = g.FindTensor("token_embd.weight"); emb && emb->shape.size() == 2) {
    c.vocab_size = emb->shape[0];
  } else if (auto tokens = g.GetStringArray("tokenizer.ggml.tokens")) {
    c.vocab_size = static_cast<int64_t>(tokens->size());
  }
  c.tie_word_embeddings = g.FindTensor("output.weight") == nullptr;

  std::string scaling = "none";
  ASL_RETURN_IF_ERROR(meta.String(p + "rope.scaling.type", &scaling, false));
  if (scaling == "linear") {
    c.rope_scaling.type = RopeScaling::Type::kLinear;
    ASL_RETURN_IF_ERROR(meta.Float(p + "rope.scaling.factor", &c.rope_scaling.factor, true));
  } else if (scaling != "none") {
    return Unimplemented(g.path() + ": rope scaling type '" + scaling + "' is not supported (none, linear, llama3)");
  } else if (g.HasKey(p + "rope.scale_linear")) {  // older converters
    c.rope_scaling.type = RopeScaling::Type::kLinear;
    ASL_RETURN_IF_ERROR(meta.Float(p + "rope.scale_linear", &c.rope_scaling.factor, true));
  }
  if (const GgufTensorInfo* rf = g.FindTensor("rope_freqs.weight")) {
    if (c.head_dim <= 0 || c.head_dim % 2 != 0) return DataLoss(g.path() + ": invalid head_dim for rope_freqs.weight");
    ASL_RETURN_IF_ERROR(Llama3ScalingFromRopeFreqs(g, *rf, &c));
  }
  return c;
}

StatusOr<ModelConfig> ConfigFromHfConfigJson(const std::string& path) {
  std::error_code ec;
  const fs::path file = fs::is_directory(path, ec) ? fs::path(path) / "config.json" : fs::path(path);
  const std::string src = file.string();
  std::ifstream in(file);
  if (!in) return NotFound(src + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  const json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return DataLoss(src + ": not a JSON object");
  const JsonFields f(j, src);

  ModelConfig c;
  std::string model_type;
  ASL_RETURN_IF_ERROR(f.String("model_type", &model_type));
  if (model_type == "llama") {
    c.arch = Arch::kLlama;
  } else if (model_type == "qwen2") {
    c.arch = Arch::kQwen2;
    c.attention_bias = true;  // Qwen2Attention always has q/k/v bias
  } else {
    return Unimplemented(src + ": unsupported model_type '" + model_type + "' (supported: llama, qwen2)");
  }
  c.name = file.parent_path().filename().string();
  c.rms_norm_eps = 1e-6;  // the transformers default for both
  c.max_position_embeddings = c.arch == Arch::kLlama ? 2048 : 32768;
  ASL_RETURN_IF_ERROR(f.Int("num_hidden_layers", &c.num_layers, true));
  ASL_RETURN_IF_ERROR(f.Int("hidden_size", &c.hidden_size, true));
  ASL_RETURN_IF_ERROR(f.Int("num_attention_heads", &c.num_heads, true));
  c.num_kv_heads = c.num_heads;
  ASL_RETURN_IF_ERROR(f.Int("num_key_value_heads", &c.num_kv_heads, false));
  ASL_RETURN_IF_ERROR(f.Int("intermediate_size", &c.intermediate_size, true));
  ASL_RETURN_IF_ERROR(f.Int("vocab_size", &c.vocab_size, true));
  ASL_RETURN_IF_ERROR(f.Int("max_position_embeddings", &c.max_position_embeddings, false));
  ASL_RETURN_IF_ERROR(f.Float("rms_norm_eps", &c.rms_norm_eps, false));
  ASL_RETURN_IF_ERROR(f.Float("rope_theta", &c.rope_theta, false));
  ASL_RETURN_IF_ERROR(f.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  if (c.num_heads <= 0) return DataLoss(src + ": 'num_attention_heads' must be positive");
  c.head_dim = c.hidden_size / c.num_heads;
  ASL_RETURN_IF_ERROR(f.Int("head_dim", &c.head_dim, false));
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    const auto it = j.find(key);
    if (it != j.end() && !it->is_null()) ASL_RETURN_IF_ERROR(RopeFromJson(*it, src, &c));
  }
  bool flag = false;
  if (c.arch == Arch::kLlama) {
    ASL_RETURN_IF_ERROR(f.Bool("attention_bias", &flag));
    if (flag) return Unimplemented(src + ": attention_bias (o_proj bias) is not supported for llama");
    ASL_RETURN_IF_ERROR(f.Bool("mlp_bias", &flag));
    if (flag) return Unimplemented(src + ": mlp_bias is not supported");
  } else {
    ASL_RETURN_IF_ERROR(f.Bool("use_sliding_window", &flag));
    if (flag) return Unimplemented(src + ": use_sliding_window is not supported");
  }
  return c;
}

StatusOr<tok::TokenizerSpec> TokenizerSpecFromGguf(const GgufFile& g) {
  const GgufMeta meta(g);
  tok::TokenizerSpec spec;
  ASL_RETURN_IF_ERROR(meta.String("tokenizer.ggml.model", &spec.model, true));
  ASL_RETURN_IF_ERROR(meta.String("tokenizer.ggml.pre", &spec.pre, false));
  auto tokens = g.GetStringArray("tokenizer.ggml.tokens");
  if (!tokens) return DataLoss(g.path() + ": missing or invalid metadata 'tokenizer.ggml.tokens' (string array)");
  spec.tokens = std::move(*tokens);
  const int64_t n = static_cast<int64_t>(spec.tokens.size());
  if (g.HasKey("tokenizer.ggml.token_type")) {
    const auto types = g.GetIntArray("tokenizer.ggml.token_type");
    if (!types || static_cast<int64_t>(types->size()) != n) {
      return DataLoss(g.path() + ": 'tokenizer.ggml.token_type' must be an integer array with one entry per token");
    }
    spec.token_types.reserve(types->size());
    for (int64_t t : *types) {
      if (t < 0 || t > static_cast<int64_t>(tok::TokenType::kByte)) {
        return DataLoss(g.path() + ": 'tokenizer.ggml.token_type' has invalid type " + std::to_string(t));
      }
      spec.token_types.push_back(static_cast<tok::TokenType>(t));
    }
  }
  if (g.HasKey("tokenizer.ggml.merges")) {
    auto merges = g.GetStringArray("tokenizer.ggml.merges");
    if (!merges) return DataLoss(g.path() + ": 'tokenizer.ggml.merges' is not a string array");
    spec.merges = std::move(*merges);
  }
  struct IdKey {
    const char* key;
    std::optional<int32_t>* out;
    bool strict;  // pad/unk ids out of range occur in real conversions; they are dropped
  };
  for (const IdKey& k : {IdKey{"tokenizer.ggml.bos_token_id", &spec.bos_id, true},
                         IdKey{"tokenizer.ggml.eos_token_id", &spec.eos_id, true},
                         IdKey{"tokenizer.ggml.eot_token_id", &spec.eot_id, true},
                         IdKey{"tokenizer.ggml.padding_token_id", &spec.pad_id, false},
                         IdKey{"tokenizer.ggml.unknown_token_id", &spec.unk_id, false}}) {
    if (!g.HasKey(k.key)) continue;
    int64_t id = -1;
    ASL_RETURN_IF_ERROR(meta.Int(k.key, &id, true));
    if (id < 0 || id >= n) {
      if (k.strict) {
        return DataLoss(g.path() + ": '" + k.key + "' = " + std::to_string(id) + " is outside the vocabulary of " +
                        std::to_string(n) + " tokens");
      }
      continue;  // not logged: spdlog cannot be included next to libtorch's bundled fmt
    }
    *k.out = static_cast<int32_t>(id);
  }
  if (g.HasKey("tokenizer.ggml.add_bos_token")) {
    const auto b = g.GetBool("tokenizer.ggml.add_bos_token");
    if (!b) return DataLoss(g.path() + ": 'tokenizer.ggml.add_bos_token' is not a bool");
    spec.add_bos = *b;
  }
  ASL_RETURN_IF_ERROR(meta.String("tokenizer.chat_template", &spec.chat_template, false));
  return spec;
}

StatusOr<at::ScalarType> ResolveDtype(const std::string& name, const at::Device& device) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "auto") return device.is_cpu() && CpuHasNativeBf16() ? at::kBFloat16 : at::kFloat;
  return InvalidArgument("dtype: must be auto, float32 or bfloat16, got '" + name + "'");
}

StatusOr<LoadedModel> LoadModel(const std::string& path, const at::Device& device, at::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) {
    return InvalidArgument(std::string("model dtype must be float32, bfloat16 or float16, not ") + c10::toString(dtype));
  }
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return NotFound(path + ": no such file or directory");
  // libtorch throws for device problems (no CUDA, out of memory); those become a Status here.
  try {
    if (fs::is_directory(st)) return LoadHfDir(path, device, dtype);
    return LoadGguf(path, device, dtype);
  } catch (const std::exception& e) {
    return Internal(path + ": loading failed: " + e.what());
  }
}

}  // namespace asl::model

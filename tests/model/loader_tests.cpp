// ModelConfig, TokenizerSpec and weights from GGUF and safetensors, against the values the
// generator computed independently; bad models; the default model (label `model`).
#include <gtest/gtest.h>

#include <random>

#include "engine/model/linear.h"
#include "engine/model/llama_model.h"
#include "engine/model/model_loader.h"
#include "engine/model/quant.h"
#include "engine/model/safetensors.h"
#include "tests/model/model_test_util.h"

namespace asl::model {
namespace {

using namespace asl::model::testing;

// Every tensor of a loaded model under its Hugging Face name.
std::vector<std::pair<std::string, at::Tensor>> Named(const LoadedModel& m) {
  std::vector<std::pair<std::string, at::Tensor>> out = {{"model.embed_tokens.weight", m.weights.tok_embeddings},
                                                         {"model.norm.weight", m.weights.norm}};
  if (!m.config.tie_word_embeddings) out.emplace_back("lm_head.weight", m.weights.lm_head);
  for (size_t i = 0; i < m.weights.layers.size(); ++i) {
    const LayerWeights& l = m.weights.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.emplace_back(p + "input_layernorm.weight", l.attn_norm);
    out.emplace_back(p + "post_attention_layernorm.weight", l.ffn_norm);
    out.emplace_back(p + "self_attn.q_proj.weight", l.wq);
    out.emplace_back(p + "self_attn.k_proj.weight", l.wk);
    out.emplace_back(p + "self_attn.v_proj.weight", l.wv);
    out.emplace_back(p + "self_attn.o_proj.weight", l.wo);
    out.emplace_back(p + "mlp.gate_proj.weight", l.w_gate);
    out.emplace_back(p + "mlp.up_proj.weight", l.w_up);
    out.emplace_back(p + "mlp.down_proj.weight", l.w_down);
    if (m.config.attention_bias) {
      out.emplace_back(p + "self_attn.q_proj.bias", l.bq);
      out.emplace_back(p + "self_attn.k_proj.bias", l.bk);
      out.emplace_back(p + "self_attn.v_proj.bias", l.bv);
    }
  }
  return out;
}

void ExpectTinyShape(const ModelConfig& c) {
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 512);
  EXPECT_EQ(c.vocab_size, 320);
  EXPECT_EQ(c.max_position_embeddings, 1024);
  EXPECT_EQ(c.group_size(), 2);
}

// Loads `rel` from the tiny folder and compares every tensor with expected/<tag>/.
void ExpectMatchesReference(const std::string& rel, const std::string& tag, double tol) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto m = LoadModel(dir + "/" + rel, at::kCPU, at::kFloat);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const auto named = Named(*m);
  EXPECT_EQ(named.size(), m->config.attention_bias ? 3u + 2 * 12 : 2u + 2 * 9);
  for (const auto& [name, t] : named) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(t.defined());
    EXPECT_EQ(t.scalar_type(), at::kFloat);
    EXPECT_TRUE(t.is_contiguous());
    EXPECT_LE(MaxRelDiff(t, Expected(tag, name, t.sizes())), tol);
  }
}

TEST(Config, LlamaFromGguf) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto g = GgufFile::Open(dir + "/llama.gguf");
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  auto c = ConfigFromGguf(**g);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->arch, Arch::kLlama);
  EXPECT_STREQ(ArchName(c->arch), "llama");
  EXPECT_EQ(c->name, "tiny-llama");
  ExpectTinyShape(*c);
  EXPECT_NEAR(c->rms_norm_eps, 1e-5, 1e-12);
  EXPECT_EQ(c->rope_theta, 50000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_TRUE(c->tie_word_embeddings);  // no output.weight
  EXPECT_FALSE(c->attention_bias);
  EXPECT_TRUE(c->Validate("llama.gguf").ok());
}

TEST(Config, Qwen2FromGguf) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto g = GgufFile::Open(dir + "/qwen2.gguf");
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  auto c = ConfigFromGguf(**g);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->arch, Arch::kQwen2);
  EXPECT_STREQ(ArchName(c->arch), "qwen2");
  ExpectTinyShape(*c);
  EXPECT_NEAR(c->rms_norm_eps, 1e-6, 1e-13);
  EXPECT_EQ(c->rope_theta, 1e6);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_TRUE(c->attention_bias);
}

TEST(Config, LlamaFromHfConfigJson) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto c = ConfigFromHfConfigJson(dir + "/llama_hf/config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->arch, Arch::kLlama);
  EXPECT_EQ(c->name, "llama_hf");
  ExpectTinyShape(*c);
  EXPECT_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_EQ(c->rope_theta, 50000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 256);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  // The directory works as well as the file.
  auto c2 = ConfigFromHfConfigJson(dir + "/llama_hf");
  ASSERT_TRUE(c2.ok()) << c2.status().ToString();
  EXPECT_EQ(c2->num_layers, 2);
}

TEST(Config, Qwen2FromHfConfigJsonWithRopeParameters) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto c = ConfigFromHfConfigJson(dir + "/qwen2_hf");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->arch, Arch::kQwen2);
  ExpectTinyShape(*c);
  EXPECT_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->rope_theta, 1e6);  // from rope_parameters (transformers 5)
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_EQ(c->rope_scaling.factor, 2.0);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_TRUE(c->attention_bias);
}

TEST(Config, HfConfigErrorsNameTheProblem) {
  const std::string dir = ScratchDir("hf_config");
  const std::string path = dir + "/config.json";
  const std::string base =
      R"("num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 10)";
  struct Case {
    std::string json;
    StatusCode code;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {R"({"model_type": "mamba", )" + base + "}", StatusCode::kUnimplemented, "'mamba'"},
      {R"({"model_type": "llama", "hidden_size": 64})", StatusCode::kDataLoss, "'num_hidden_layers'"},
      {R"({"model_type": "llama", )" + base + R"(, "rope_scaling": {"rope_type": "yarn", "factor": 4}})",
       StatusCode::kUnimplemented, "'yarn'"},
      {R"({"model_type": "llama", )" + base + R"(, "rope_scaling": {"rope_type": "linear"}})", StatusCode::kDataLoss,
       "'factor'"},
      {R"({"model_type": "llama", "num_hidden_layers": "2"})", StatusCode::kDataLoss, "not an integer"},
      {R"({"model_type": "llama", )" + base + R"(, "attention_bias": true})", StatusCode::kUnimplemented, "attention_bias"},
      {R"({"model_type": "llama", )", StatusCode::kDataLoss, "not a JSON object"},
      {R"([1, 2])", StatusCode::kDataLoss, "not a JSON object"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.json);
    WriteFile(path, c.json);
    auto r = ConfigFromHfConfigJson(path);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), c.code) << r.status().ToString();
    EXPECT_TRUE(Contains(r.status().message(), c.needle)) << r.status().ToString();
    EXPECT_TRUE(Contains(r.status().message(), path)) << r.status().ToString();
  }
  EXPECT_EQ(ConfigFromHfConfigJson(dir + "/nope.json").status().code(), StatusCode::kNotFound);
}

TEST(Config, ValidateRejectsInconsistentConfigs) {
  ModelConfig c;
  c.num_layers = 2, c.hidden_size = 64, c.num_heads = 4, c.num_kv_heads = 2, c.head_dim = 16;
  c.intermediate_size = 128, c.vocab_size = 10, c.max_position_embeddings = 128;
  ASSERT_TRUE(c.Validate("x").ok());
  ModelConfig bad = c;
  bad.num_kv_heads = 3;
  EXPECT_TRUE(Contains(bad.Validate("x.gguf").message(), "num_kv_heads"));
  EXPECT_TRUE(Contains(bad.Validate("x.gguf").message(), "x.gguf"));
  bad = c;
  bad.num_layers = 0;
  EXPECT_FALSE(bad.Validate("x").ok());
  bad = c;
  bad.head_dim = 15;
  EXPECT_FALSE(bad.Validate("x").ok());
}

// Llama 3 scaling arrives in GGUF as rope_freqs.weight; the parameters are recovered from it.
TEST(Config, Llama3RopeFreqsFromGguf) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto m = LoadModel(dir + "/llama3_rope.gguf", at::kCPU, at::kFloat);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const RopeScaling& rs = m->config.rope_scaling;
  EXPECT_EQ(rs.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(rs.factor, 8.0);
  EXPECT_EQ(rs.low_freq_factor, 1.0);
  EXPECT_EQ(rs.high_freq_factor, 4.0);
  EXPECT_EQ(rs.original_max_position_embeddings, 8192);
  EXPECT_EQ(m->config.rope_theta, 500000.0);
  // No tokenizer metadata: the caller looks for tokenizer.json next to the file.
  EXPECT_FALSE(m->gguf_tokenizer.has_value());
  EXPECT_EQ(m->tokenizer_dir, dir);

  auto bad = LoadModel(dir + "/llama3_rope_bad.gguf", at::kCPU, at::kFloat);
  EXPECT_EQ(bad.status().code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(Contains(bad.status().message(), "rope_freqs.weight")) << bad.status().ToString();
}

TEST(Tokenizer, SpecFromGguf) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto g = GgufFile::Open(dir + "/llama.gguf");
  ASSERT_TRUE(g.ok());
  auto s = TokenizerSpecFromGguf(**g);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->model, "gpt2");
  EXPECT_EQ(s->pre, "smollm");
  ASSERT_EQ(s->tokens.size(), 320u);
  EXPECT_EQ(s->tokens[1], "<|im_start|>");
  EXPECT_EQ(s->tokens[319], "tok319");
  ASSERT_EQ(s->token_types.size(), 320u);
  EXPECT_EQ(s->token_types[0], tok::TokenType::kControl);
  EXPECT_EQ(s->token_types[5], tok::TokenType::kNormal);
  EXPECT_EQ(s->merges, (std::vector<std::string>{"t o", "to k"}));
  EXPECT_EQ(s->bos_id, 1);
  EXPECT_EQ(s->eos_id, 2);
  EXPECT_EQ(s->eot_id, 2);
  EXPECT_EQ(s->pad_id, 2);
  EXPECT_EQ(s->unk_id, 0);
  EXPECT_FALSE(s->add_bos);
  EXPECT_EQ(s->chat_template, "{% for m in messages %}{{ m['content'] }}{% endfor %}");
}

TEST(Load, LlamaGgufMatchesReference) { ExpectMatchesReference("llama.gguf", "llama", 1e-6); }
TEST(Load, Qwen2GgufMatchesReference) { ExpectMatchesReference("qwen2.gguf", "qwen2", 1e-6); }
TEST(Load, LlamaSafetensorsMatchesOriginals) { ExpectMatchesReference("llama_hf", "llama_hf", 0.0); }
TEST(Load, Qwen2ShardedSafetensorsMatchesOriginals) { ExpectMatchesReference("qwen2_hf", "qwen2_hf", 0.0); }

// Layer 0's q/k are F32 in the GGUF, so undoing llama.cpp's permutation must give back the HF
// original bit for bit; the raw GGUF tensor must differ (or the test would prove nothing).
TEST(Load, LlamaGgufQkUnpermutedToHfLayout) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto gguf = LoadModel(dir + "/llama.gguf", at::kCPU, at::kFloat);
  ASSERT_TRUE(gguf.ok()) << gguf.status().ToString();
  auto st = SafetensorsFile::Open(dir + "/llama_hf/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  auto hf_q = (*st)->LoadTensor("model.layers.0.self_attn.q_proj.weight");
  auto hf_k = (*st)->LoadTensor("model.layers.0.self_attn.k_proj.weight");
  ASSERT_TRUE(hf_q.ok() && hf_k.ok());
  EXPECT_TRUE(at::equal(gguf->weights.layers[0].wq, *hf_q));
  EXPECT_TRUE(at::equal(gguf->weights.layers[0].wk, *hf_k));

  auto g = GgufFile::Open(dir + "/llama.gguf");
  ASSERT_TRUE(g.ok());
  auto raw_q = (*g)->LoadTensor(*(*g)->FindTensor("blk.0.attn_q.weight"));
  ASSERT_TRUE(raw_q.ok());
  EXPECT_FALSE(at::equal(*raw_q, *hf_q));

  // The HF directory and the GGUF file describe the same llama: q/k agree across sources.
  auto hf = LoadModel(dir + "/llama_hf", at::kCPU, at::kFloat);
  ASSERT_TRUE(hf.ok()) << hf.status().ToString();
  EXPECT_TRUE(at::equal(gguf->weights.layers[0].wq, hf->weights.layers[0].wq));
  EXPECT_TRUE(at::equal(gguf->weights.layers[0].wk, hf->weights.layers[0].wk));
}

// The packed copy of a weight holds the float weight's exact values, rows in the same order:
// x = I gives back W^T through the packed kernel bit for bit.
void ExpectPackedDecodesTo(const PackedWeight& p, const at::Tensor& w, const std::string& what) {
  ASSERT_TRUE(p.defined()) << what;
  const at::Tensor eye = at::eye(w.size(1), at::kFloat);
  EXPECT_TRUE(at::equal(StreamingLinear(eye, p).t(), w)) << what;
}

// Packed copies exist exactly for Q8_0 / Q4_0 / Q4_1 tensors of a CPU float32 load (the tiny
// llama mixes every type; layer 1's q is Q8_0 and permuted), never for F32/F16/BF16/K-quants,
// bfloat16 runs or safetensors.
TEST(Load, PackedCopiesOfBlockQuantizedGgufWeights) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto m = LoadModel(dir + "/llama.gguf", at::kCPU, at::kFloat);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const auto& L = m->weights.layers;
  ExpectPackedDecodesTo(L[1].packed_wq, L[1].wq, "blk.1.attn_q (Q8_0, permuted)");
  ExpectPackedDecodesTo(L[0].packed_wo, L[0].wo, "blk.0.attn_output (Q4_0)");
  ExpectPackedDecodesTo(L[0].packed_gate, L[0].w_gate, "blk.0.ffn_gate (Q4_1)");
  ExpectPackedDecodesTo(L[1].packed_down, L[1].w_down, "blk.1.ffn_down (Q4_0)");
  EXPECT_FALSE(L[0].packed_wq.defined());    // F32
  EXPECT_FALSE(L[0].packed_wv.defined());    // F16
  EXPECT_FALSE(L[0].packed_up.defined());    // Q4_K
  EXPECT_FALSE(L[1].packed_wk.defined());    // BF16
  ExpectPackedDecodesTo(m->weights.packed_lm_head, m->weights.lm_head, "tied head = token_embd (Q8_0)");
  auto qwen = LoadModel(dir + "/qwen2.gguf", at::kCPU, at::kFloat);  // untied, output.weight Q6_K
  ASSERT_TRUE(qwen.ok()) << qwen.status().ToString();
  EXPECT_FALSE(qwen->weights.packed_lm_head.defined());
  ExpectPackedDecodesTo(qwen->weights.layers[1].packed_wq, qwen->weights.layers[1].wq, "qwen2 blk.1.attn_q (Q8_0)");

  // A bfloat16 run keeps the blocks too (its decode reads them, linear.h): the same bytes as the
  // float32 run's, which decode to the exact float32 weights, not to the rounded bfloat16 tensor.
  auto bf16 = LoadModel(dir + "/llama.gguf", at::kCPU, at::kBFloat16);
  ASSERT_TRUE(bf16.ok());
  ASSERT_TRUE(bf16->weights.layers[1].packed_down.defined());
  EXPECT_TRUE(at::equal(bf16->weights.layers[1].packed_down.bytes, L[1].packed_down.bytes));
  EXPECT_EQ(bf16->weights.layers[1].w_down.scalar_type(), at::kBFloat16);
  EXPECT_FALSE(bf16->weights.layers[1].packed_wk.defined());  // BF16 in the file: nothing to pack
  auto hf = LoadModel(dir + "/llama_hf", at::kCPU, at::kFloat);
  ASSERT_TRUE(hf.ok());
  EXPECT_FALSE(hf->weights.layers[1].packed_wq.defined());
}

TEST(Load, TiedAndUntiedEmbeddings) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  for (const char* rel : {"llama.gguf", "llama_hf"}) {
    auto m = LoadModel(dir + "/" + rel, at::kCPU, at::kFloat);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_TRUE(m->config.tie_word_embeddings) << rel;
    EXPECT_TRUE(m->weights.lm_head.is_same(m->weights.tok_embeddings)) << rel;
  }
  for (const char* rel : {"qwen2.gguf", "qwen2_hf"}) {
    auto m = LoadModel(dir + "/" + rel, at::kCPU, at::kFloat);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_FALSE(m->config.tie_word_embeddings) << rel;
    EXPECT_FALSE(m->weights.lm_head.is_same(m->weights.tok_embeddings)) << rel;
    EXPECT_EQ(m->weights.lm_head.sizes().vec(), (std::vector<int64_t>{320, 256})) << rel;
  }
}

TEST(Load, SourcesAndTokenizers) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto g = LoadModel(dir + "/qwen2.gguf", at::kCPU, at::kFloat);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->source, dir + "/qwen2.gguf");
  ASSERT_TRUE(g->gguf_tokenizer.has_value());
  EXPECT_EQ(g->gguf_tokenizer->pre, "qwen2");
  EXPECT_TRUE(g->tokenizer_dir.empty());
  auto h = LoadModel(dir + "/qwen2_hf", at::kCPU, at::kFloat);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_FALSE(h->gguf_tokenizer.has_value());
  EXPECT_EQ(h->tokenizer_dir, dir + "/qwen2_hf");
}

TEST(Load, Bfloat16) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto m = LoadModel(dir + "/qwen2.gguf", at::kCPU, at::kBFloat16);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  for (const auto& [name, t] : Named(*m)) {
    SCOPED_TRACE(name);
    EXPECT_EQ(t.scalar_type(), at::kBFloat16);
    EXPECT_TRUE(at::equal(t, Expected("qwen2", name, t.sizes()).to(at::kBFloat16)));
  }
  EXPECT_EQ(LoadModel(dir + "/qwen2.gguf", at::kCPU, at::kInt).status().code(), StatusCode::kInvalidArgument);
}

TEST(Load, BadModelsNameFileTensorAndShapes) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto missing = LoadModel(dir + "/nope.gguf", at::kCPU, at::kFloat);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(missing.status().message(), "nope.gguf"));

  auto arch = LoadModel(dir + "/unknown_arch.gguf", at::kCPU, at::kFloat);
  EXPECT_EQ(arch.status().code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(Contains(arch.status().message(), "'mamba'")) << arch.status().ToString();
  EXPECT_TRUE(Contains(arch.status().message(), "unknown_arch.gguf"));

  auto shape = LoadModel(dir + "/llama_badshape.gguf", at::kCPU, at::kFloat);
  EXPECT_EQ(shape.status().code(), StatusCode::kDataLoss);
  const std::string& sm = shape.status().message();
  EXPECT_TRUE(Contains(sm, "llama_badshape.gguf: tensor 'blk.1.ffn_up.weight' has shape [512, 288], expected [512, 256]"))
      << sm;

  auto gone = LoadModel(dir + "/llama_missing.gguf", at::kCPU, at::kFloat);
  EXPECT_EQ(gone.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(gone.status().message(), "llama_missing.gguf: missing tensor 'blk.1.ffn_down.weight'"))
      << gone.status().ToString();
}

TEST(Load, BadHfDirectories) {
  const std::string tiny = TinyDir();
  ASSERT_FALSE(tiny.empty());
  // Missing shard.
  const std::string sharded = ScratchDir("hf_shard") + "/m";
  fs::copy(tiny + "/qwen2_hf", sharded);
  fs::remove(sharded + "/model-00002-of-00002.safetensors");
  auto r = LoadModel(sharded, at::kCPU, at::kFloat);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(r.status().message(), "model-00002-of-00002.safetensors")) << r.status().ToString();
  EXPECT_TRUE(Contains(r.status().message(), "model.safetensors.index.json")) << r.status().ToString();

  // Wrong shape: config says intermediate_size 384, the file holds 512.
  const std::string wrong = ScratchDir("hf_shape") + "/m";
  fs::copy(tiny + "/llama_hf", wrong);
  std::string cfg = ReadFile(wrong + "/config.json");
  cfg.replace(cfg.find("\"intermediate_size\": 512"), 24, "\"intermediate_size\": 384");
  WriteFile(wrong + "/config.json", cfg);
  r = LoadModel(wrong, at::kCPU, at::kFloat);
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(r.status().message(), wrong + "/model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight'"
                                                     " has shape [512, 256], expected [384, 256]"))
      << r.status().ToString();

  // Untied config without lm_head.weight.
  cfg = ReadFile(tiny + "/llama_hf/config.json");
  cfg.replace(cfg.find("\"tie_word_embeddings\": true"), 27, "\"tie_word_embeddings\": false");
  WriteFile(wrong + "/config.json", cfg);
  r = LoadModel(wrong, at::kCPU, at::kFloat);
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(r.status().message(), "missing tensor 'lm_head.weight'")) << r.status().ToString();

  // No weights, no config.
  fs::remove(wrong + "/model.safetensors");
  r = LoadModel(wrong, at::kCPU, at::kFloat);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(r.status().message(), "no model.safetensors")) << r.status().ToString();
  fs::remove(wrong + "/config.json");
  r = LoadModel(wrong, at::kCPU, at::kFloat);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(r.status().message(), "config.json")) << r.status().ToString();
}

// A hand-made safetensors file: header JSON then data.
std::string Safetensors(const std::string& header_json, const std::string& data, std::optional<uint64_t> len = {}) {
  return U64(len.value_or(header_json.size())) + header_json + data;
}

TEST(Safetensors, BadFilesAreNamed) {
  const std::string dir = ScratchDir("st_bad");
  const std::string data(64, '\0');
  const std::string ok = R"({"a": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
                             "b": {"dtype": "I64", "shape": [4], "data_offsets": [32, 64]}})";
  struct Case {
    std::string name, bytes, needle;
  };
  const std::vector<Case> cases = {
      {"short", "abc", "too small"},
      {"huge_header", Safetensors(ok, data, uint64_t{1} << 40), "100 MB"},
      {"long_header", Safetensors(ok, data, ok.size() + 65), "extends past end of file"},
      {"not_json", Safetensors("{not json", data), "not a JSON object"},
      {"dtype", Safetensors(R"({"a": {"dtype": "F7", "shape": [2], "data_offsets": [0, 8]}})", data), "unknown dtype 'F7'"},
      {"past_end", Safetensors(R"({"a": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}})", data),
       "tensor 'a' data extends past end of file"},
      {"size", Safetensors(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", data), "need 12"},
      {"negative", Safetensors(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", data), "non-negative"},
      {"reversed", Safetensors(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})", data), "past end"},
      {"overlap", Safetensors(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                  "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})", data), "overlaps"},
      {"entry", Safetensors(R"({"a": 3})", data), "not an object"},
      {"offsets", Safetensors(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", data), "data_offsets"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir + "/" + c.name + ".safetensors";
    WriteFile(path, c.bytes);
    auto f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), StatusCode::kDataLoss);
    EXPECT_TRUE(Contains(f.status().message(), c.needle)) << f.status().ToString();
    EXPECT_EQ(f.status().message().rfind(path + ": ", 0), 0u) << f.status().ToString();
  }
  const std::string path = dir + "/ok.safetensors";
  WriteFile(path, Safetensors(ok, data));
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  auto a = (*f)->LoadTensor("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->sizes().vec(), (std::vector<int64_t>{2, 4}));
  EXPECT_EQ((*f)->LoadTensor("b").status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ((*f)->LoadTensor("zz").status().code(), StatusCode::kNotFound);

  // Truncation anywhere before the end of the data fails.
  const std::string full = Safetensors(ok, data);
  for (size_t cut = 0; cut < full.size(); cut += 3) {
    WriteFile(path, full.substr(0, cut));
    EXPECT_FALSE(SafetensorsFile::Open(path).ok()) << cut;
  }

  // An index pointing outside the directory.
  const std::string idx = ScratchDir("st_index");
  WriteFile(idx + "/model.safetensors.index.json", R"({"weight_map": {"a": "../ok.safetensors"}})");
  auto m = SafetensorsModel::Open(idx);
  EXPECT_EQ(m.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(m.status().message(), "invalid shard file name")) << m.status().ToString();
}

TEST(Safetensors, FuzzHeader) {
  const std::string dir = ScratchDir("st_fuzz");
  const std::string header = R"({"__metadata__": {"format": "pt"},
      "a": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
      "b": {"dtype": "BF16", "shape": [8], "data_offsets": [32, 48]},
      "c": {"dtype": "F16", "shape": [2, 2, 2], "data_offsets": [48, 64]}})";
  const std::string seed = Safetensors(header, std::string(64, '\x3c'));
  const std::string path = dir + "/fuzz.safetensors";
  std::mt19937 rng(99);
  int parsed = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes = seed;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) bytes[rng() % (8 + header.size())] = static_cast<char>(rng() % 256);
    WriteFile(path, bytes);
    auto f = SafetensorsFile::Open(path);
    if (!f.ok()) {
      EXPECT_TRUE(Contains(f.status().message(), "fuzz.safetensors")) << f.status().ToString();
      continue;
    }
    ++parsed;
    for (const auto& t : (*f)->tensors()) (void)(*f)->LoadTensor(t.name);
  }
  EXPECT_GT(parsed, 0);
}

TEST(Safetensors, FuzzLoadModel) {
  const std::string tiny = TinyDir();
  ASSERT_FALSE(tiny.empty());
  const std::string dir = ScratchDir("st_fuzz_model") + "/m";
  fs::copy(tiny + "/llama_hf", dir);
  const std::string seed = ReadFile(tiny + "/llama_hf/model.safetensors");
  uint64_t header_size = 0;
  std::memcpy(&header_size, seed.data(), 8);
  std::mt19937 rng(5);
  for (int iter = 0; iter < 100; ++iter) {
    std::string bytes = seed;
    for (int f = 0; f < 2; ++f) bytes[rng() % (8 + header_size)] = static_cast<char>(rng() % 256);
    WriteFile(dir + "/model.safetensors", bytes);
    auto m = LoadModel(dir, at::kCPU, at::kFloat);
    if (!m.ok()) {
      EXPECT_TRUE(Contains(m.status().message(), dir)) << m.status().ToString();
    }
  }
}

// Label `model`: the real default model (tests/CMakeLists.txt ASL_DEFAULT_MODEL).
TEST(DefaultModel, LoadsWithExpectedConfig) {
  const std::string path = ASL_DEFAULT_MODEL;
  if (!fs::exists(path)) GTEST_SKIP() << path << " is missing";
  auto m = LoadModel(path, at::kCPU, at::kFloat);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const ModelConfig& c = m->config;
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(m->weights.lm_head.is_same(m->weights.tok_embeddings));
  EXPECT_EQ(m->weights.layers.size(), 30u);
  EXPECT_EQ(m->weights.layers[29].wk.sizes().vec(), (std::vector<int64_t>{192, 576}));
  EXPECT_TRUE(at::isfinite(m->weights.tok_embeddings).all().item<bool>());
  // Q4_1 projections and the Q8_0 embedding (the tied head) are kept packed for decode steps.
  for (int i : {0, 29}) {
    const LayerWeights& l = m->weights.layers[i];
    ExpectPackedDecodesTo(l.packed_wq, l.wq, "wq " + std::to_string(i));
    ExpectPackedDecodesTo(l.packed_wk, l.wk, "wk " + std::to_string(i));
    ExpectPackedDecodesTo(l.packed_down, l.w_down, "down " + std::to_string(i));
  }
  for (const LayerWeights& l : m->weights.layers) {
    EXPECT_TRUE(l.packed_wv.defined() && l.packed_wo.defined() && l.packed_gate.defined() && l.packed_up.defined());
  }
  ASSERT_TRUE(m->weights.packed_lm_head.defined());
  EXPECT_EQ(m->weights.packed_lm_head.type, static_cast<uint32_t>(GgmlType::kQ8_0));
  ASSERT_TRUE(m->gguf_tokenizer.has_value());
  EXPECT_EQ(m->gguf_tokenizer->tokens.size(), 49152u);
  EXPECT_EQ(m->gguf_tokenizer->bos_id, 1);
  EXPECT_EQ(m->gguf_tokenizer->eos_id, 2);
  EXPECT_EQ(m->gguf_tokenizer->pre, "smollm");
  EXPECT_FALSE(m->gguf_tokenizer->chat_template.empty());
}


// LlamaModel fuses Q/K/V and gate/up into one projection each where the parts can share a kernel
// (all packed in one block type, or none packed): the parts become row views of the fused tensors
// (no second copy), and the fused streaming projection is bit-identical to the separate ones.
void ExpectFusedLayer(const LayerWeights& l, const std::string& what) {
  ASSERT_TRUE(l.wqkv.defined()) << what;
  EXPECT_EQ(l.wq.data_ptr(), l.wqkv.data_ptr()) << what;
  EXPECT_EQ(l.wqkv.size(0), l.wq.size(0) + l.wk.size(0) + l.wv.size(0)) << what;
  EXPECT_TRUE(at::equal(l.wqkv.narrow(0, l.wq.size(0), l.wk.size(0)), l.wk)) << what;
  ASSERT_TRUE(l.w_gate_up.defined()) << what;
  EXPECT_EQ(l.w_gate.data_ptr(), l.w_gate_up.data_ptr()) << what;
  if (!l.packed_qkv.defined()) return;
  EXPECT_EQ(l.packed_wq.bytes.data_ptr(), l.packed_qkv.bytes.data_ptr()) << what;
  for (int64_t M : {1, 3}) {
    const at::Tensor x = at::randn({M, l.wq.size(1)});
    const at::Tensor separate = at::cat({StreamingLinear(x, l.packed_wq), StreamingLinear(x, l.packed_wk),
                                         StreamingLinear(x, l.packed_wv)}, 1);
    EXPECT_TRUE(at::equal(StreamingLinear(x, l.packed_qkv), separate)) << what << " M=" << M;
    const at::Tensor gu = at::cat({StreamingLinear(x, l.packed_gate), StreamingLinear(x, l.packed_up)}, 1);
    EXPECT_TRUE(at::equal(StreamingLinear(x, l.packed_gate_up), gu)) << what << " M=" << M;
  }
}

TEST(Load, LlamaModelFusesProjectionsThatShareAKernel) {
  const std::string dir = TinyDir();
  ASSERT_FALSE(dir.empty());
  auto m = LoadModel(dir + "/llama.gguf", at::kCPU, at::kFloat);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  LlamaModel model(m->config, std::move(m->weights));
  // The tiny llama mixes types (make_tiny_models.py): layer 0's q, k are F32 and v F16 (none packed:
  // the float tensors fuse), its gate Q4_1 (packed) and up Q4_K (not): a mixed pair stays separate.
  // Layer 1: q Q8_0 (packed), k BF16, v Q4_K: separate; gate F16 and up BF16: fused.
  const LayerWeights& l0 = model.weights().layers[0];
  ASSERT_TRUE(l0.wqkv.defined());
  EXPECT_FALSE(l0.packed_qkv.defined());
  EXPECT_EQ(l0.wv.data_ptr<float>(), l0.wqkv.data_ptr<float>() + (l0.wq.size(0) + l0.wk.size(0)) * l0.wq.size(1));
  EXPECT_FALSE(l0.w_gate_up.defined());
  EXPECT_TRUE(l0.packed_gate.defined());
  const LayerWeights& l1 = model.weights().layers[1];
  EXPECT_FALSE(l1.wqkv.defined());
  EXPECT_TRUE(l1.packed_wq.defined());
  ASSERT_TRUE(l1.w_gate_up.defined());
  EXPECT_EQ(l1.w_gate.data_ptr(), l1.w_gate_up.data_ptr());
}

TEST(DefaultModel, FusedProjectionsAreViewsAndBitIdentical) {
  const std::string path = ASL_DEFAULT_MODEL;
  if (!fs::exists(path)) GTEST_SKIP() << path << " is missing";
  auto m = LoadModel(path, at::kCPU, at::kFloat);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  LlamaModel model(m->config, std::move(m->weights));
  for (int i : {0, 29}) ExpectFusedLayer(model.weights().layers[i], "layer " + std::to_string(i));
  for (const LayerWeights& l : model.weights().layers) EXPECT_TRUE(l.packed_qkv.defined() && l.packed_gate_up.defined());
}

}  // namespace
}  // namespace asl::model

#include "server/gateway/openai_request.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <variant>

#include "engine/common/pruning_knobs.h"
#include "proto/pruning_fields.h"

namespace asl::gateway {
namespace {

// ordered_json: objects keep the client's key order, which templates show (tools |tojson).
using json = nlohmann::ordered_json;

// Reads body[key] with a type check. Absent and null mean "unset" (return true, leave `out`).
// Every field read from a client goes through this (or an explicit is_*() check before get<>()):
// nlohmann's value() and get<>() throw on a type mismatch, which would be an HTTP 500.
class Fields {
 public:
  Fields(const json& obj, std::string prefix, ApiError* error) : obj_(obj), prefix_(std::move(prefix)), error_(error) {}

  const json* Get(const char* key) const {
    auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }
  std::string Name(const char* key) const { return prefix_ + key; }
  ApiError* error() const { return error_; }

  bool Fail(const char* key, const std::string& what) const {
    *error_ = InvalidRequest(Name(key), Name(key) + ": " + what);
    return false;
  }

  bool Number(const char* key, std::optional<double>* out) const {
    const json* v = Get(key);
    if (!v) return true;
    if (!v->is_number()) return Fail(key, "must be a number, got " + std::string(v->type_name()));
    *out = v->get<double>();
    return true;
  }

  bool Integer(const char* key, std::optional<int64_t>* out) const {
    const json* v = Get(key);
    if (!v) return true;
    if (v->is_number_integer()) {
      *out = v->get<int64_t>();
      return true;
    }
    if (v->is_number_float()) {  // 64.0 is an integer; 1.5 and 1e30 are not
      const double d = v->get<double>();
      if (std::floor(d) == d && std::fabs(d) < 9.2e18) {
        *out = static_cast<int64_t>(d);
        return true;
      }
    }
    return Fail(key, "must be an integer, got " + v->dump());
  }

  bool Int32(const char* key, std::optional<int32_t>* out) const {
    std::optional<int64_t> v;
    if (!Integer(key, &v)) return false;
    if (v) {
      if (*v < std::numeric_limits<int32_t>::min() || *v > std::numeric_limits<int32_t>::max()) {
        return Fail(key, "out of range, got " + std::to_string(*v));
      }
      *out = static_cast<int32_t>(*v);
    }
    return true;
  }

  bool Bool(const char* key, std::optional<bool>* out) const {
    const json* v = Get(key);
    if (!v) return true;
    if (!v->is_boolean()) return Fail(key, "must be a boolean, got " + v->dump());
    *out = v->get<bool>();
    return true;
  }

  bool String(const char* key, std::optional<std::string>* out) const {
    const json* v = Get(key);
    if (!v) return true;
    if (!v->is_string()) return Fail(key, "must be a string, got " + std::string(v->type_name()));
    *out = v->get<std::string>();
    return true;
  }

 private:
  const json& obj_;
  std::string prefix_;
  ApiError* error_;
};

bool ParseMessages(const json& body, v1::ChatMessages* chat, ApiError* error) {
  auto it = body.find("messages");
  if (it == body.end() || it->is_null()) {
    *error = InvalidRequest("messages", "messages: required (an array of {role, content})");
    return false;
  }
  if (!it->is_array() || it->empty()) {
    *error = InvalidRequest("messages", "messages: must be a non-empty array");
    return false;
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) {
      *error = InvalidRequest(where, where + ": must be an object");
      return false;
    }
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      *error = InvalidRequest(where + ".role", where + ".role: required string");
      return false;
    }
    std::string content;
    auto c = m.find("content");
    if (c != m.end() && c->is_string()) {
      content = c->get<std::string>();
    } else if (c != m.end() && c->is_array()) {  // [{"type": "text", "text": "..."}], joined by "\n" like vLLM
      for (size_t k = 0; k < c->size(); ++k) {
        const json& part = (*c)[k];
        const std::string pw = where + ".content[" + std::to_string(k) + "]";
        if (!part.is_object()) {
          *error = InvalidRequest(pw, pw + ": must be an object {\"type\": \"text\", \"text\": ...}");
          return false;
        }
        const Fields pf(part, pw + ".", error);
        std::optional<std::string> type, text;
        if (!pf.String("type", &type) || !pf.String("text", &text)) return false;
        if (type != "text") return pf.Fail("type", "only \"text\" parts are supported");
        if (!text) return pf.Fail("text", "required");
        if (k > 0) content += '\n';
        content += *text;
      }
    } else if (c != m.end() && !c->is_null()) {
      *error = InvalidRequest(where + ".content", where + ".content: must be a string or an array of text parts");
      return false;
    }
    v1::ChatMessage* out = chat->add_messages();
    // OpenAI's `developer` role replaces `system` for newer models; templates know only system.
    const std::string r = role->get<std::string>();
    out->set_role(r == "developer" ? "system" : r);
    const Fields mf(m, where + ".", error);
    std::optional<std::string> name, tool_call_id;
    if (!mf.String("name", &name) || !mf.String("tool_call_id", &tool_call_id)) return false;
    if (name) out->set_name(*name);
    if (tool_call_id) out->set_tool_call_id(*tool_call_id);
    if (const json* calls = mf.Get("tool_calls"); calls && !calls->is_null()) {
      if (!calls->is_array()) return mf.Fail("tool_calls", "must be an array");
      for (size_t k = 0; k < calls->size(); ++k) {
        const json& call = (*calls)[k];
        const std::string cw = where + ".tool_calls[" + std::to_string(k) + "]";
        if (!call.is_object()) {
          *error = InvalidRequest(cw, cw + ": must be an object {id, type, function: {name, arguments}}");
          return false;
        }
        const Fields cf(call, cw + ".", error);
        std::optional<std::string> id, type;
        if (!cf.String("id", &id) || !cf.String("type", &type)) return false;
        if (type.value_or("function") != "function") return cf.Fail("type", "only \"function\" is supported");
        const json* fn = cf.Get("function");
        if (!fn || !fn->is_object()) return cf.Fail("function", "required: {name, arguments}");
        const Fields ff(*fn, cw + ".function.", error);
        std::optional<std::string> fname;
        if (!ff.String("name", &fname)) return false;
        if (!fname || fname->empty()) return ff.Fail("name", "required");
        v1::ToolCall* tc = out->add_tool_calls();
        if (id) tc->set_id(*id);
        tc->set_name(*fname);
        // OpenAI sends the arguments as JSON text; an object is accepted too.
        if (const json* args = ff.Get("arguments"); args && !args->is_null()) {
          tc->set_arguments(args->is_string() ? args->get<std::string>() : args->dump());
        } else {
          tc->set_arguments("{}");
        }
      }
    }
    // A null content stays null only where templates expect it: an assistant turn that calls tools.
    if (!content.empty() || out->tool_calls().empty() || (c != m.end() && !c->is_null())) {
      out->set_content(std::move(content));
    }
  }
  if (const json* tools = body.contains("tools") ? &body.at("tools") : nullptr; tools && !tools->is_null()) {
    if (!tools->is_array()) {
      *error = InvalidRequest("tools", "tools: must be an array of {type: \"function\", function: {name, ...}}");
      return false;
    }
    for (size_t k = 0; k < tools->size(); ++k) {
      const json& t = (*tools)[k];
      const std::string tw = "tools[" + std::to_string(k) + "]";
      const json* fn = t.is_object() && t.contains("function") ? &t.at("function") : nullptr;
      // (value() would throw on a "type" that is not a string.)
      const bool function_type = !t.contains("type") || t.at("type").is_null() || t.at("type") == "function";
      if (!fn || !fn->is_object() || !fn->contains("name") || !fn->at("name").is_string() || !function_type) {
        *error = InvalidRequest(tw, tw + ": must be {type: \"function\", function: {name, description, parameters}}");
        return false;
      }
    }
    if (!tools->empty()) chat->set_tools_json(tools->dump());
  }
  if (const json* kw = body.contains("chat_template_kwargs") ? &body.at("chat_template_kwargs") : nullptr;
      kw && !kw->is_null()) {
    if (!kw->is_object()) {
      *error = InvalidRequest("chat_template_kwargs", "chat_template_kwargs: must be an object");
      return false;
    }
    chat->set_chat_template_kwargs_json(kw->dump());
  }
  return true;
}

bool ParseTokenIds(const json& arr, const std::string& field, v1::TokenIds* out, ApiError* error) {
  for (size_t i = 0; i < arr.size(); ++i) {
    const json& t = arr[i];
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      const std::string where = field + "[" + std::to_string(i) + "]";
      *error = InvalidRequest(where, where + ": token ids must be non-negative integers, got " + t.dump());
      return false;
    }
    out->add_ids(static_cast<int32_t>(t.get<int64_t>()));
  }
  return true;
}

// prompt: "text" | [ids...] | ["text", ...] | [[ids...], ...]: one input per prompt, in order (a
// batch gives one choice per prompt).
bool ParsePrompts(const json& body, std::vector<v1::GenerateRequest>* prompts, ApiError* error) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) {
    *error = InvalidRequest("prompt", "prompt: required (a string or an array of token ids)");
    return false;
  }
  const json& p = *it;
  if (p.is_string()) {
    prompts->emplace_back().set_prompt(p.get<std::string>());
    return true;
  }
  if (p.is_array() && !p.empty()) {
    if (p[0].is_number()) return ParseTokenIds(p, "prompt", prompts->emplace_back().mutable_token_ids(), error);
    if (p.size() > kMaxBatchPrompts) {
      *error = InvalidRequest("prompt", "prompt: at most " + std::to_string(kMaxBatchPrompts) + " prompts in a batch");
      return false;
    }
    for (size_t i = 0; i < p.size(); ++i) {
      const std::string where = "prompt[" + std::to_string(i) + "]";
      if (p[i].is_string()) {
        prompts->emplace_back().set_prompt(p[i].get<std::string>());
      } else if (p[i].is_array() && !p[i].empty()) {
        if (!ParseTokenIds(p[i], where, prompts->emplace_back().mutable_token_ids(), error)) return false;
      } else {
        *error = InvalidRequest(where, where + ": must be a non-empty string or a non-empty array of token ids");
        return false;
      }
    }
    return true;
  }
  *error = InvalidRequest("prompt", "prompt: must be a non-empty string or a non-empty array of token ids");
  return false;
}

bool ParseStop(const Fields& f, v1::SamplingParams* s, ApiError* error) {
  const json* v = f.Get("stop");
  if (!v) return true;
  if (v->is_string()) {
    s->add_stop(v->get<std::string>());
    return true;
  }
  if (v->is_array()) {
    for (const json& x : *v) {
      if (!x.is_string()) return f.Fail("stop", "must be a string or an array of strings");
      s->add_stop(x.get<std::string>());
    }
    return true;
  }
  return f.Fail("stop", "must be a string or an array of strings");
}

bool ParsePruning(const json& body, v1::GenerateRequest* r, ApiError* error) {
  auto it = body.find("pruning");
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_object()) {
    *error = InvalidRequest("pruning", "pruning: must be an object");
    return false;
  }
  // The knobs of engine/common/pruning_knobs.h, each into the proto field of its name, plus the
  // request's detailed_pruning_report.
  for (auto kv = it->begin(); kv != it->end(); ++kv) {
    bool known = kv.key() == "detailed_report";
    for (const PruningKnob& k : kPruningKnobs) known = known || kv.key() == k.name;
    if (!known) {
      *error = InvalidRequest("pruning." + kv.key(), "pruning." + kv.key() + ": unknown field");
      return false;
    }
  }
  const Fields f(*it, "pruning.", error);
  v1::PruningParams* p = r->mutable_pruning();
  for (const PruningKnob& knob : kPruningKnobs) {
    const bool ok = std::visit(
        [&](auto member) {
          using T = KnobValueT<decltype(member)>;
          if constexpr (std::is_same_v<T, int>) {
            std::optional<int32_t> v;
            if (!f.Int32(knob.name, &v)) return false;
            if (v) v1::SetKnob(knob, *v, p);
          } else if constexpr (std::is_same_v<T, double>) {
            std::optional<double> v;
            if (!f.Number(knob.name, &v)) return false;
            if (v) v1::SetKnob(knob, *v, p);
          } else {  // policy, pooling: the name as given; the server checks it
            std::optional<std::string> v;
            if (!f.String(knob.name, &v)) return false;
            if (v) v1::SetKnob(knob, *v, p);
          }
          return true;
        },
        knob.member);
    if (!ok) return false;
  }
  std::optional<bool> b;
  if (!f.Bool("detailed_report", &b)) return false;
  if (b) r->set_detailed_pruning_report(*b);
  return true;
}

bool ParseSampling(Endpoint endpoint, const Fields& f, ParsedRequest* out, ApiError* error) {
  v1::SamplingParams* s = out->grpc.mutable_sampling();
  std::optional<double> d;
  std::optional<int32_t> i;
  std::optional<int64_t> l;
  std::optional<bool> b;

  if (!f.Number("temperature", &d)) return false;
  if (d) {
    // OpenAI's range; the server itself accepts any finite value >= 0.
    if (!(*d >= 0.0 && *d <= 2.0)) return f.Fail("temperature", "must be in [0, 2], got " + json(*d).dump());
  }
  s->set_temperature(d.value_or(1.0));  // OpenAI's default (the gRPC default is greedy)
  struct DoubleKnob {
    const char* name;
    void (v1::SamplingParams::*set)(double);
  };
  static const DoubleKnob kDoubles[] = {
      {"top_p", &v1::SamplingParams::set_top_p},
      {"min_p", &v1::SamplingParams::set_min_p},
      {"repetition_penalty", &v1::SamplingParams::set_repetition_penalty},
      {"presence_penalty", &v1::SamplingParams::set_presence_penalty},
      {"frequency_penalty", &v1::SamplingParams::set_frequency_penalty},
  };
  for (const DoubleKnob& k : kDoubles) {
    d.reset();
    if (!f.Number(k.name, &d)) return false;
    if (d) (s->*k.set)(*d);
  }
  if (!f.Int32("top_k", &i)) return false;
  if (i) s->set_top_k(*i);

  // max_completion_tokens is the chat API's newer name; it wins when both are given. Neither: 0, as
  // many as the context leaves (vLLM's default; the server caps it to what its KV pool holds).
  s->set_max_tokens(0);
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    i.reset();
    if (!f.Int32(key, &i)) return false;
    if (i) {
      if (*i < 1) return f.Fail(key, "must be >= 1, got " + std::to_string(*i));
      s->set_max_tokens(*i);
    }
  }
  if (!f.Integer("seed", &l)) return false;
  if (l) s->set_seed(static_cast<uint64_t>(*l));
  if (!f.Bool("ignore_eos", &b)) return false;
  if (b) s->set_ignore_eos(*b);
  if (!ParseStop(f, s, error)) return false;
  if (const json* ids = f.Get("stop_token_ids")) {
    if (!ids->is_array()) return f.Fail("stop_token_ids", "must be an array of token ids");
    v1::TokenIds tmp;
    if (!ParseTokenIds(*ids, "stop_token_ids", &tmp, error)) return false;
    for (int32_t t : tmp.ids()) s->add_stop_token_ids(t);
  }

  // logit_bias: {"<token id>": bias in [-100, 100]}; ids are checked against the vocabulary by
  // the server (400 "logit_bias[<id>]").
  if (const json* bias = f.Get("logit_bias")) {
    if (!bias->is_object()) return f.Fail("logit_bias", "must be an object mapping token ids to biases");
    for (auto kv = bias->begin(); kv != bias->end(); ++kv) {
      const std::string& key = kv.key();
      const std::string where = "logit_bias: \"" + key + "\"";
      size_t used = 0;
      long long id = -1;
      try {
        id = std::stoll(key, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != key.size() || id < 0 || id > std::numeric_limits<int32_t>::max()) {
        *error = InvalidRequest("logit_bias", where + ": keys must be token ids (non-negative integers)");
        return false;
      }
      if (!kv->is_number()) {
        *error = InvalidRequest("logit_bias", where + ": the bias must be a number, got " + kv->dump());
        return false;
      }
      const double v = kv->get<double>();
      if (!(v >= -100.0 && v <= 100.0)) {
        *error = InvalidRequest("logit_bias", where + ": the bias must be in [-100, 100], got " + kv->dump());
        return false;
      }
      (*s->mutable_logit_bias())[static_cast<int32_t>(id)] = static_cast<float>(v);
    }
  }

  // Logprobs. Chat: logprobs (bool) + top_logprobs (0..20). Legacy completions: logprobs (0..5)
  // is the number of alternatives. The proto asks for n alternatives with the sampled logprob
  // (n >= 1), so "sampled only" asks for one alternative and returns none.
  if (endpoint == Endpoint::kChatCompletions) {
    if (!f.Bool("logprobs", &b)) return false;
    out->logprobs = b.value_or(false);
    i.reset();
    if (!f.Int32("top_logprobs", &i)) return false;
    if (i) {
      if (*i < 0 || *i > 20) return f.Fail("top_logprobs", "must be in [0, 20], got " + std::to_string(*i));
      if (!out->logprobs && *i > 0) return f.Fail("top_logprobs", "requires logprobs: true");
      out->top_logprobs = *i;
    }
  } else {
    i.reset();
    if (!f.Int32("logprobs", &i)) return false;
    if (i) {
      if (*i < 0 || *i > 20) return f.Fail("logprobs", "must be in [0, 20], got " + std::to_string(*i));
      out->logprobs = true;
      out->top_logprobs = *i;
    }
  }
  if (out->logprobs) s->set_logprobs(std::max(1, out->top_logprobs));
  return true;
}

// n, best_of, echo (completions), suffix.
bool ParseChoices(Endpoint endpoint, const Fields& f, ParsedRequest* out) {
  std::optional<int64_t> n;
  if (!f.Integer("n", &n)) return false;
  if (n && (*n < 1 || *n > kMaxChoices)) {
    return f.Fail("n", "must be in [1, " + std::to_string(kMaxChoices) + "], got " + std::to_string(*n));
  }
  out->n = static_cast<int>(n.value_or(1));
  out->best_of = out->n;
  if (endpoint == Endpoint::kCompletions) {
    std::optional<int64_t> best_of;
    if (!f.Integer("best_of", &best_of)) return false;
    if (best_of) {
      if (*best_of < out->n || *best_of > kMaxChoices) {
        return f.Fail("best_of", "must be in [n, " + std::to_string(kMaxChoices) + "] (n = " + std::to_string(out->n) +
                                     "), got " + std::to_string(*best_of));
      }
      out->best_of = static_cast<int>(*best_of);
    }
    std::optional<bool> echo;
    if (!f.Bool("echo", &echo)) return false;
    out->echo = echo.value_or(false);
    if (const json* suffix = f.Get("suffix"); suffix && !(suffix->is_string() && suffix->get<std::string>().empty())) {
      return f.Fail("suffix", "suffix is not supported");
    }
  }
  if (out->best_of > out->n && out->stream) return f.Fail("best_of", "best_of > n cannot be streamed (as OpenAI)");
  return true;
}

// Structured output (docs/structured_output.md): what constrains the reply, from whichever field
// names it (at most one):
//   response_format     OpenAI: {"type": "text" | "json_object" | "json_schema", "json_schema":
//                       {"name", "schema", "strict", "description"}} or vLLM's {"type":
//                       "structural_tag", ...};
//   structured_outputs  vLLM: {"json" | "regex" | "choice" | "grammar" | "json_object" |
//                       "structural_tag": ...}; also its older top-level guided_json,
//                       guided_regex, guided_choice, guided_grammar;
//   json_schema, grammar  llama.cpp's server: a schema object, a GBNF grammar;
//   tool_choice         "required" or {"type": "function", "function": {"name"}} (vLLM's schemas:
//                       an array of >= 1 {"name", "parameters"} calls, or the named function's
//                       arguments), with forced_tool telling the reply parser.
class ConstraintBuilder {
 public:
  ConstraintBuilder(ParsedRequest* out, ApiError* error) : out_(out), error_(error) {}

  // Sets the constraint from `param`; false (400) when another field set one already.
  bool Set(const std::string& param, v1::OutputConstraint c) {
    if (!param_.empty()) {
      *error_ = InvalidRequest(param, param + ": cannot be combined with " + param_ + " (one output constraint per request)");
      return false;
    }
    param_ = param;
    *out_->grpc.mutable_sampling()->mutable_structured_output() = std::move(c);
    out_->constraint_param = param;
    return true;
  }
  bool Schema(const std::string& param, const json& schema) {
    if (!schema.is_object() && !schema.is_boolean()) {
      *error_ = InvalidRequest(param, param + ": must be a JSON Schema (an object), got " + std::string(schema.type_name()));
      return false;
    }
    v1::OutputConstraint c;
    c.set_json_schema(schema.dump());
    return Set(param, std::move(c));
  }
  bool Text(const std::string& param, const json& v, void (v1::OutputConstraint::*set)(const std::string&)) {
    if (!v.is_string()) {
      *error_ = InvalidRequest(param, param + ": must be a string, got " + std::string(v.type_name()));
      return false;
    }
    v1::OutputConstraint c;
    (c.*set)(v.get<std::string>());
    return Set(param, std::move(c));
  }
  // One of the given strings, exactly (an EBNF alternation of the strings as literals).
  bool Choice(const std::string& param, const json& v) {
    if (!v.is_array() || v.empty()) {
      *error_ = InvalidRequest(param, param + ": must be a non-empty array of strings");
      return false;
    }
    std::string ebnf = "root ::= ";
    for (size_t k = 0; k < v.size(); ++k) {
      if (!v[k].is_string()) {
        *error_ = InvalidRequest(param, param + ": item " + std::to_string(k) + " must be a string");
        return false;
      }
      if (k > 0) ebnf += " | ";
      ebnf += json(v[k].get<std::string>()).dump();  // a JSON string literal is an EBNF one
    }
    v1::OutputConstraint c;
    c.set_grammar(ebnf);
    return Set(param, std::move(c));
  }
  bool JsonObject(const std::string& param) {
    v1::OutputConstraint c;
    c.set_json_object(true);
    return Set(param, std::move(c));
  }
  bool any() const { return !param_.empty(); }
  const std::string& param() const { return param_; }

 private:
  ParsedRequest* out_;
  ApiError* error_;
  std::string param_;
};

bool ParseResponseFormat(const Fields& f, ConstraintBuilder* cb) {
  const json* rf = f.Get("response_format");
  if (!rf) return true;
  if (!rf->is_object()) return f.Fail("response_format", "must be an object");
  std::optional<std::string> type;
  const Fields rff(*rf, "response_format.", f.error());
  if (!rff.String("type", &type)) return false;
  const std::string t = type.value_or("text");
  if (t == "text") return true;
  if (t == "json_object") return cb->JsonObject("response_format");
  if (t == "json_schema") {
    const json* js = rff.Get("json_schema");
    if (!js || !js->is_object()) return rff.Fail("json_schema", "required: {name, schema, strict}");
    const Fields jf(*js, "response_format.json_schema.", f.error());
    std::optional<std::string> name, description;
    std::optional<bool> strict;
    if (!jf.String("name", &name) || !jf.String("description", &description) || !jf.Bool("strict", &strict)) return false;
    if (!name || name->empty()) return jf.Fail("name", "required");
    const json* schema = jf.Get("schema");
    if (!schema) return cb->JsonObject("response_format");  // no schema: any JSON object (OpenAI)
    return cb->Schema("response_format", *schema);
  }
  if (t == "structural_tag") {  // vLLM: the object itself is the structural tag
    v1::OutputConstraint c;
    c.set_structural_tag(rf->dump());
    return cb->Set("response_format", std::move(c));
  }
  return rff.Fail("type", "must be \"text\", \"json_object\", \"json_schema\" or \"structural_tag\", got \"" + t + "\"");
}

bool ParseStructuredOutputs(const Fields& f, ConstraintBuilder* cb) {
  if (const json* so = f.Get("structured_outputs")) {
    if (!so->is_object()) return f.Fail("structured_outputs", "must be an object");
    for (auto it = so->begin(); it != so->end(); ++it) {
      const std::string& key = it.key();
      const json& v = *it;
      if (v.is_null()) continue;
      const std::string param = "structured_outputs." + key;
      bool ok;
      if (key == "json") {
        ok = v.is_string() ? cb->Text(param, v, &v1::OutputConstraint::set_json_schema) : cb->Schema(param, v);
      } else if (key == "regex") {
        ok = cb->Text(param, v, &v1::OutputConstraint::set_regex);
      } else if (key == "choice") {
        ok = cb->Choice(param, v);
      } else if (key == "grammar") {
        ok = cb->Text(param, v, &v1::OutputConstraint::set_grammar);
      } else if (key == "structural_tag") {
        ok = cb->Text(param, v, &v1::OutputConstraint::set_structural_tag);
      } else if (key == "json_object") {
        if (!v.is_boolean()) return f.Fail("structured_outputs", key + ": must be a boolean");
        ok = !v.get<bool>() || cb->JsonObject(param);
      } else {
        return f.Fail("structured_outputs", key + ": not supported (json, regex, choice, grammar, json_object, "
                                                  "structural_tag are)");
      }
      if (!ok) return false;
    }
  }
  // vLLM's older names, and llama.cpp server's.
  struct Legacy {
    const char* key;
    enum { kSchema, kRegex, kChoice, kGrammar } kind;
  };
  static const Legacy kLegacy[] = {{"guided_json", Legacy::kSchema}, {"guided_regex", Legacy::kRegex},
                                   {"guided_choice", Legacy::kChoice}, {"guided_grammar", Legacy::kGrammar},
                                   {"json_schema", Legacy::kSchema},  {"grammar", Legacy::kGrammar}};
  for (const Legacy& l : kLegacy) {
    const json* v = f.Get(l.key);
    if (!v) continue;
    bool ok = false;
    switch (l.kind) {
      case Legacy::kSchema:
        ok = v->is_string() ? cb->Text(l.key, *v, &v1::OutputConstraint::set_json_schema) : cb->Schema(l.key, *v);
        break;
      case Legacy::kRegex: ok = cb->Text(l.key, *v, &v1::OutputConstraint::set_regex); break;
      case Legacy::kChoice: ok = cb->Choice(l.key, *v); break;
      case Legacy::kGrammar: ok = cb->Text(l.key, *v, &v1::OutputConstraint::set_grammar); break;
    }
    if (!ok) return false;
  }
  return true;
}

// tool_choice: "none" and "auto" leave the reply free (parsed for calls in the template's format);
// "required" and a named function constrain it (ConstraintBuilder's comment).
bool ParseToolChoice(const Fields& f, ConstraintBuilder* cb, ParsedRequest* out) {
  std::optional<bool> parallel;
  if (!f.Bool("parallel_tool_calls", &parallel)) return false;
  const json* tc = f.Get("tool_choice");
  if (!tc || (tc->is_string() && (*tc == "auto" || *tc == "none"))) return true;
  const json* tools = f.Get("tools");
  const bool have_tools = tools && tools->is_array() && !tools->empty();
  auto parameters = [](const json& tool) {
    const json& fn = tool.at("function");
    auto p = fn.find("parameters");
    return p == fn.end() || p->is_null() ? json{{"type", "object"}} : *p;
  };
  if (tc->is_string() && *tc == "required") {
    if (!have_tools) return f.Fail("tool_choice", "\"required\" needs tools");
    json any_of = json::array();
    for (const json& t : *tools) {
      json props = json::object();
      props["name"] = {{"type", "string"}, {"enum", json::array({t.at("function").at("name")})}};
      props["parameters"] = parameters(t);
      any_of.push_back({{"properties", props}, {"required", json::array({"name", "parameters"})}});
    }
    json schema = {{"type", "array"}, {"minItems", 1}, {"items", {{"type", "object"}, {"anyOf", any_of}}}};
    if (parallel && !*parallel) schema["maxItems"] = 1;
    if (!cb->Schema("tool_choice", schema)) return false;
    out->forced_tool = ToolCallFormat::kRequired;
    return true;
  }
  if (tc->is_object()) {
    const Fields tf(*tc, "tool_choice.", f.error());
    std::optional<std::string> type;
    if (!tf.String("type", &type)) return false;
    if (type.value_or("function") != "function") return tf.Fail("type", "must be \"function\"");
    const json* fn = tf.Get("function");
    std::optional<std::string> name;
    if (fn && fn->is_object() && !Fields(*fn, "tool_choice.function.", f.error()).String("name", &name)) return false;
    if (!name || name->empty()) return tf.Fail("function", "required: {\"name\": \"<a tool's name>\"}");
    if (!have_tools) return f.Fail("tool_choice", "names function \"" + *name + "\" but the request has no tools");
    for (const json& t : *tools) {
      if (t.at("function").at("name") != *name) continue;
      if (!cb->Schema("tool_choice", parameters(t))) return false;
      out->forced_tool = ToolCallFormat::kNamed;
      out->forced_function = *name;
      return true;
    }
    return f.Fail("tool_choice", "names function \"" + *name + "\", which is not in tools");
  }
  return f.Fail("tool_choice", "must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": "
                               "{\"name\": ...}}");
}

bool ParseConstraint(const Fields& f, ParsedRequest* out, ApiError* error) {
  ConstraintBuilder cb(out, error);
  // Completions take no tools, so a forcing tool_choice fails there ("needs tools").
  return ParseResponseFormat(f, &cb) && ParseStructuredOutputs(f, &cb) && ParseToolChoice(f, &cb, out);
}

// The body as a JSON object, or false with a 400.
bool ParseBody(const std::string& body, json* j, ApiError* error) {
  *j = json::parse(body, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (j->is_discarded()) {
    *error = InvalidRequest("", "the request body is not valid JSON");
    return false;
  }
  if (!j->is_object()) {
    *error = InvalidRequest("", "the request body must be a JSON object");
    return false;
  }
  return true;
}

}  // namespace

std::vector<GenerationCall> CallsFor(const ParsedRequest& parsed) {
  std::vector<GenerationCall> calls;
  const size_t num_prompts = std::max<size_t>(1, parsed.prompts.size());
  for (size_t p = 0; p < num_prompts; ++p) {
    for (int k = 0; k < parsed.best_of; ++k) {
      GenerationCall c;
      c.prompt_index = static_cast<int>(p);
      c.sample_index = k;
      c.grpc = parsed.grpc;
      if (!parsed.prompts.empty()) {
        c.grpc.clear_input();
        c.grpc.MergeFrom(parsed.prompts[p]);
      }
      // Samples of one prompt draw independently: a seeded request's k-th sample uses seed + k.
      if (k > 0 && c.grpc.sampling().has_seed()) {
        c.grpc.mutable_sampling()->set_seed(c.grpc.sampling().seed() + static_cast<uint64_t>(k));
      }
      calls.push_back(std::move(c));
    }
  }
  return calls;
}

bool ParseTokenizeRequest(const std::string& body, ParsedTokenize* out, ApiError* error) {
  json j;
  if (!ParseBody(body, &j, error)) return false;
  const Fields f(j, "", error);
  std::optional<std::string> model;
  if (!f.String("model", &model)) return false;
  std::optional<bool> b;
  if (!f.Bool("return_token_strs", &b)) return false;
  out->return_token_strs = b.value_or(false);
  out->grpc.set_return_pieces(out->return_token_strs);
  const bool has_prompt = f.Get("prompt") != nullptr, has_messages = f.Get("messages") != nullptr;
  if (has_prompt == has_messages) return f.Fail("prompt", "exactly one of prompt or messages is required");
  b.reset();
  if (!f.Bool("add_special_tokens", &b)) return false;
  if (has_prompt) {
    std::optional<std::string> prompt;
    if (!f.String("prompt", &prompt)) return false;
    out->grpc.set_text(*prompt);
    if (b) out->grpc.set_add_bos(*b);  // the only special token a plain prompt gets is BOS
  } else {
    if (!ParseMessages(j, out->grpc.mutable_chat(), error)) return false;
    b.reset();
    if (!f.Bool("add_generation_prompt", &b)) return false;
    if (b) out->grpc.set_add_generation_prompt(*b);
  }
  return true;
}

bool ParseDetokenizeRequest(const std::string& body, v1::DetokenizeRequest* out, ApiError* error) {
  json j;
  if (!ParseBody(body, &j, error)) return false;
  const Fields f(j, "", error);
  std::optional<std::string> model;
  if (!f.String("model", &model)) return false;
  const json* tokens = f.Get("tokens");
  if (!tokens || !tokens->is_array()) return f.Fail("tokens", "required: an array of token ids");
  v1::TokenIds ids;
  if (!ParseTokenIds(*tokens, "tokens", &ids, error)) return false;
  out->mutable_token_ids()->Swap(ids.mutable_ids());
  return true;
}

bool ParseRequest(Endpoint endpoint, const std::string& body, ParsedRequest* out, ApiError* error) {
  json j;
  if (!ParseBody(body, &j, error)) return false;
  const Fields f(j, "", error);
  std::optional<std::string> model;
  if (!f.String("model", &model)) return false;
  if (!model || model->empty()) return f.Fail("model", "required");
  out->model = *model;
  std::optional<bool> b;
  if (!f.Bool("stream", &b)) return false;
  out->stream = b.value_or(false);
  if (const json* so = f.Get("stream_options")) {
    if (!so->is_object()) return f.Fail("stream_options", "must be an object");
    const Fields sf(*so, "stream_options.", error);
    b.reset();
    if (!sf.Bool("include_usage", &b)) return false;
    out->include_usage = b.value_or(false);
  }
  std::optional<std::string> user;
  if (!f.String("user", &user)) return false;  // accepted for compatibility; not used
  b.reset();
  if (!f.Bool("cache_prompt", &b)) return false;  // llama.cpp's name: false skips the prefix cache
  if (b) out->grpc.set_cache_prompt(*b);
  if (!ParseChoices(endpoint, f, out)) return false;

  if (endpoint == Endpoint::kChatCompletions) {
    if (!ParseMessages(j, out->grpc.mutable_chat(), error)) return false;
    b.reset();
    if (!f.Bool("add_generation_prompt", &b)) return false;
    if (b) out->grpc.set_add_generation_prompt(*b);
    const json* tc = f.Get("tool_choice");
    out->parse_tool_calls = !out->grpc.chat().tools_json().empty() && !(tc && *tc == "none");
  } else {
    if (const json* tools = f.Get("tools"); tools && !(tools->is_array() && tools->empty())) {
      return f.Fail("tools", "tools need messages: use /v1/chat/completions");
    }
    if (!ParsePrompts(j, &out->prompts, error)) return false;
    if (out->prompts.size() * static_cast<size_t>(out->best_of) > static_cast<size_t>(kMaxChoices)) {
      return f.Fail("prompt", std::to_string(out->prompts.size()) + " prompts x best_of/n " +
                                  std::to_string(out->best_of) + " is over " + std::to_string(kMaxChoices) +
                                  " generations in one request");
    }
    out->grpc.MergeFrom(out->prompts.front());  // the first prompt; the others go in CallsFor
    b.reset();
    if (!f.Bool("add_bos", &b)) return false;
    if (b) out->grpc.set_add_bos(*b);
  }
  if (!ParseSampling(endpoint, f, out, error) || !ParseConstraint(f, out, error)) return false;
  // echo with logprobs: the prompt's tokens come first in the logprobs (the server computes them).
  if (out->echo && out->logprobs) out->grpc.set_prompt_logprobs(out->top_logprobs);
  // best_of ranks candidates by their summed logprobs: the server must return them.
  if (out->best_of > out->n && !out->grpc.sampling().has_logprobs()) out->grpc.mutable_sampling()->set_logprobs(1);
  return ParsePruning(j, &out->grpc, error);
}

}  // namespace asl::gateway

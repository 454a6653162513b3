// The tables of engine/common/pruning_knobs.h, pinned: every policy parses from its name and back
// with its properties; every knob is the proto field of its name and type, and round-trips
// through the server's proto <-> engine conversion (server/request_convert.h). The config keys are
// pinned in config_tests.cpp, the gateway's JSON in gateway_tests.cpp.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <variant>

#include "proto/pruning_fields.h"
#include "server/request_convert.h"

namespace asl::server {
namespace {

using google::protobuf::FieldDescriptor;

TEST(PruningPolicies, ListAndPropertiesArePinned) {
  struct Expected {
    PolicyKind kind;
    const char* name;
    bool selects, two_pass, rank_test;
  };
  const Expected expected[] = {
      {PolicyKind::kFull, "full", false, false, false},       {PolicyKind::kSnapKv, "snapkv", false, false, false},
      {PolicyKind::kFastKv, "fastkv", true, false, false},    {PolicyKind::kGemFilter, "gemfilter", true, true, false},
      {PolicyKind::kAsl, "asl", true, false, true},           {PolicyKind::kAsl2Pass, "asl_2pass", true, true, true},
  };
  ASSERT_EQ(std::size(kPolicies), std::size(expected));
  for (size_t i = 0; i < std::size(expected); ++i) {
    const Expected& e = expected[i];
    SCOPED_TRACE(e.name);
    EXPECT_EQ(kPolicies[i].kind, e.kind);
    EXPECT_STREQ(PolicyName(e.kind), e.name);
    EXPECT_EQ(ParsePolicy(e.name), e.kind);
    EXPECT_EQ(Policy(e.kind).selects, e.selects);
    EXPECT_EQ(Policy(e.kind).two_pass, e.two_pass);
    EXPECT_EQ(Policy(e.kind).rank_test, e.rank_test);
  }
  EXPECT_EQ(PolicyNames(", "), "full, snapkv, fastkv, gemfilter, asl, asl_2pass");
  EXPECT_EQ(ParsePolicy("h2o"), std::nullopt);
  EXPECT_EQ(ParsePolicy("ASL"), std::nullopt);
  EXPECT_EQ(ParsePolicy(""), std::nullopt);

  EXPECT_EQ(ParsePooling("avg"), Pooling::kAvg);
  EXPECT_EQ(ParsePooling("max"), Pooling::kMax);
  EXPECT_STREQ(PoolingName(Pooling::kAvg), "avg");
  EXPECT_STREQ(PoolingName(Pooling::kMax), "max");
  EXPECT_EQ(ParsePooling("min"), std::nullopt);
}

// The proto documents the policies in a comment: it must name each of them.
TEST(PruningPolicies, ProtoCommentNamesEveryPolicy) {
  std::ifstream f(std::string(ASL_PROTO_DIR) + "/asl/v1/generation.proto");
  ASSERT_TRUE(f) << ASL_PROTO_DIR;
  std::string line, comment;
  while (std::getline(f, line)) {
    if (line.find("// Policy:") != std::string::npos) comment = line;
  }
  ASSERT_FALSE(comment.empty());
  for (const PolicyInfo& p : kPolicies) {
    EXPECT_NE(comment.find(std::string("\"") + p.name + "\""), std::string::npos) << comment << " lacks " << p.name;
  }
}

TEST(PruningKnobs, EachIsTheProtoFieldOfItsNameAndType) {
  const google::protobuf::Descriptor* d = v1::PruningParams::descriptor();
  ASSERT_EQ(static_cast<size_t>(d->field_count()), std::size(kPruningKnobs));
  std::set<std::string> names;
  for (size_t i = 0; i < std::size(kPruningKnobs); ++i) {
    const PruningKnob& knob = kPruningKnobs[i];
    SCOPED_TRACE(knob.name);
    EXPECT_TRUE(names.insert(knob.name).second) << "duplicate knob";
    const FieldDescriptor* fd = v1::PruningField(knob);
    ASSERT_NE(fd, nullptr);
    EXPECT_EQ(fd, d->field(static_cast<int>(i))) << "the table and the proto list the knobs in one order";
    EXPECT_TRUE(fd->has_presence()) << "unset must be distinguishable from 0";
    const FieldDescriptor::CppType want = std::visit(
        [](auto member) {
          using T = KnobValueT<decltype(member)>;
          if constexpr (std::is_same_v<T, int>) return FieldDescriptor::CPPTYPE_INT32;
          else if constexpr (std::is_same_v<T, double>) return FieldDescriptor::CPPTYPE_DOUBLE;
          else return FieldDescriptor::CPPTYPE_STRING;
        },
        knob.member);
    EXPECT_EQ(fd->cpp_type(), want);
  }
  const std::set<std::string> flags = [] {
    std::set<std::string> s;
    for (const PruningKnob& k : kPruningKnobs) s.insert(KnobFlag(k));
    return s;
  }();
  EXPECT_EQ(flags.size(), std::size(kPruningKnobs));
  EXPECT_EQ(flags.count("--select-k"), 1u);
  EXPECT_EQ(flags.count("--obs-layers"), 1u);
}

// A value of `knob` other than its default (and another knob's), valid on its own.
PruningParams WithOtherValue(const PruningKnob& knob, int variant) {
  PruningParams p;
  std::visit(
      [&](auto member) {
        using T = KnobValueT<decltype(member)>;
        if constexpr (std::is_same_v<T, int>) {
          p.*member = p.*member + 2 + 2 * variant;
        } else if constexpr (std::is_same_v<T, double>) {
          p.*member = 0.55 + variant;
        } else {
          const auto& table = EnumTable<T>();
          p.*member = table[(static_cast<size_t>(p.*member) + 1 + variant) % std::size(table)].kind;
        }
      },
      knob.member);
  return p;
}

bool SameKnob(const PruningParams& a, const PruningParams& b, const PruningKnob& knob) {
  return std::visit([&](auto member) { return a.*member == b.*member; }, knob.member);
}

TEST(PruningKnobs, EachRoundTripsThroughTheProto) {
  for (const PruningKnob& knob : kPruningKnobs) {
    SCOPED_TRACE(knob.name);
    for (int variant = 0; variant < 2; ++variant) {
      const PruningParams want = WithOtherValue(knob, variant);
      v1::PruningParams proto;
      FillPruningParams(want, &proto);
      for (const PruningKnob& k : kPruningKnobs) EXPECT_TRUE(v1::HasKnob(proto, k)) << k.name;
      StatusOr<PruningParams> back = ToPruningParams(proto, PruningParams{});
      ASSERT_TRUE(back.ok()) << back.status().ToString();
      for (const PruningKnob& k : kPruningKnobs) EXPECT_TRUE(SameKnob(*back, want, k)) << k.name;

      // Only this knob set: it alone changes, the others keep the defaults given.
      v1::PruningParams one;
      v1::PruningParams all;
      FillPruningParams(want, &all);
      const FieldDescriptor* fd = v1::PruningField(knob);
      one.GetReflection()->SwapFields(&one, &all, {fd});
      StatusOr<PruningParams> merged = ToPruningParams(one, PruningParams{});
      ASSERT_TRUE(merged.ok()) << merged.status().ToString();
      for (const PruningKnob& k : kPruningKnobs) {
        EXPECT_TRUE(SameKnob(*merged, &k == &knob ? want : PruningParams{}, k)) << k.name;
      }
    }
  }
}

// The typed accessors, so that the reflection above is known to hit the fields meant.
TEST(PruningKnobs, ProtoFieldsByHand) {
  PruningParams p;
  p.policy = PolicyKind::kAsl2Pass;
  p.window = 16;
  p.kernel = 5;
  p.pooling = Pooling::kMax;
  p.min_layer = 9;
  p.obs_layers = 4;
  p.tau = 0.125;
  p.select_k = 300;
  p.kv_budget = 0;
  p.max_layer = 20;
  p.select_layer = 11;
  v1::PruningParams proto;
  FillPruningParams(p, &proto);
  EXPECT_EQ(proto.policy(), "asl_2pass");
  EXPECT_EQ(proto.window(), 16);
  EXPECT_EQ(proto.kernel(), 5);
  EXPECT_EQ(proto.pooling(), "max");
  EXPECT_EQ(proto.min_layer(), 9);
  EXPECT_EQ(proto.obs_layers(), 4);
  EXPECT_DOUBLE_EQ(proto.tau(), 0.125);
  EXPECT_EQ(proto.select_k(), 300);
  EXPECT_TRUE(proto.has_kv_budget());
  EXPECT_EQ(proto.kv_budget(), 0);
  EXPECT_EQ(proto.max_layer(), 20);
  EXPECT_EQ(proto.select_layer(), 11);

  v1::PruningParams in;
  in.set_select_k(123);
  in.set_policy("fastkv");
  StatusOr<PruningParams> out = ToPruningParams(in, PruningParams{});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->select_k, 123);
  EXPECT_EQ(out->policy, PolicyKind::kFastKv);
  EXPECT_EQ(out->window, PruningParams{}.window);
}

TEST(PruningKnobs, ConversionErrorsNameTheField) {
  auto error = [](auto set) {
    v1::PruningParams p;
    set(&p);
    StatusOr<PruningParams> r = ToPruningParams(p, PruningParams{});
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    return r.status().message();
  };
  EXPECT_EQ(error([](v1::PruningParams* p) { p->set_policy("h2o"); }),
            "pruning.policy: unknown policy 'h2o' (full, snapkv, fastkv, gemfilter, asl, asl_2pass)");
  EXPECT_EQ(error([](v1::PruningParams* p) { p->set_pooling("min"); }),
            "pruning.pooling: must be avg or max, got 'min'");
  EXPECT_EQ(error([](v1::PruningParams* p) { p->set_min_layer(-2); }), "pruning.min_layer: must be >= 0 or -1, got -2");
  EXPECT_EQ(error([](v1::PruningParams* p) { p->set_max_layer(-3); }), "pruning.max_layer: must be >= 0 or -1, got -3");
  EXPECT_EQ(error([](v1::PruningParams* p) { p->set_select_layer(-7); }),
            "pruning.select_layer: must be >= 0 or -1, got -7");
  // The enum names are checked before the layers, whatever the order of the fields.
  EXPECT_EQ(error([](v1::PruningParams* p) {
              p->set_select_layer(-7);
              p->set_pooling("min");
            }),
            "pruning.pooling: must be avg or max, got 'min'");
  // Negative non-layer knobs are ResolvePruningParams' to reject.
  v1::PruningParams w;
  w.set_window(-5);
  EXPECT_TRUE(ToPruningParams(w, PruningParams{}).ok());
  std::set<std::string> layers;
  for (const PruningKnob& k : kPruningKnobs) {
    if (IsLayerKnob(k)) layers.insert(k.name);
  }
  EXPECT_EQ(layers, (std::set<std::string>{"min_layer", "max_layer", "select_layer"}));
}

// The served name (ModelInfo.served_name, /v1/models id, /metrics model_name): the file or directory
// name without extension, no spaces and no path.
TEST(ServedModelName, IsTheFileStemWithoutPathsOrSpaces) {
  EXPECT_EQ(ServedModelName("/abs/models/SmolLM2-135M-Instruct.Q4_1.gguf"), "SmolLM2-135M-Instruct.Q4_1");
  EXPECT_EQ(ServedModelName("models/SmolLM2-135M-Instruct.Q4_1.gguf"), "SmolLM2-135M-Instruct.Q4_1");
  EXPECT_EQ(ServedModelName("/data/hf/Qwen2.5 0.5B/"), "Qwen2.5-0.5B");  // a safetensors directory
  EXPECT_EQ(ServedModelName("model.safetensors"), "model");
  EXPECT_EQ(ServedModelName("/"), "model");
  EXPECT_EQ(ServedModelName(""), "model");
}

}  // namespace
}  // namespace asl::server

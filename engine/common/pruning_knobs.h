// The pruning policies and the per-request pruning knobs, each declared once (asl-method.md §1,
// §7). Every face iterates these tables instead of listing names: the proto conversion
// (server/request_convert.cpp), the gateway's JSON `pruning` object, the config keys `pruning.*`,
// the flags of asl-cli and asl-loadtest, the metrics' policy labels and ModelInfo.policies.
// A knob's name is its proto field (v1::PruningParams), its JSON key, its YAML key under
// `pruning:` and its flag (`--pruning.<name>` for asl-server, `--<name with - for _>` for the
// CLIs). Adding a knob: a member of PruningParams, a row of kPruningKnobs, a proto field of the
// same name and a line in config/default.yaml (tests/server/pruning_knobs_tests.cpp and
// config_tests check that they agree).
//
// Header-only and standard-library-only: the gateway and asl-loadtest, which link nothing of the
// engine, include it too.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

namespace asl {

enum class PolicyKind { kFull, kSnapKv, kFastKv, kGemFilter, kAsl, kAsl2Pass };
enum class Pooling { kAvg, kMax };

struct PolicyInfo {
  PolicyKind kind;
  const char* name;
  bool selects;    // cuts the prompt's tokens at a selection layer (else only the KV budget prunes)
  bool two_pass;   // pass 1 selects and stores no KV; pass 2 runs on the selected tokens, full KV
  bool rank_test;  // the selection layer comes from ASL's rank-variance test (§3)
};

// Every policy, in documentation order; entry i is PolicyKind(i), so a new PolicyKind needs its row
// (the switches over PolicyKind in engine/prune warn where else it is needed).
inline constexpr PolicyInfo kPolicies[] = {
    {PolicyKind::kFull, "full", false, false, false},
    {PolicyKind::kSnapKv, "snapkv", false, false, false},
    {PolicyKind::kFastKv, "fastkv", true, false, false},
    {PolicyKind::kGemFilter, "gemfilter", true, true, false},
    {PolicyKind::kAsl, "asl", true, false, true},
    {PolicyKind::kAsl2Pass, "asl_2pass", true, true, true},
};

struct PoolingInfo {
  Pooling kind;
  const char* name;
};
inline constexpr PoolingInfo kPoolings[] = {{Pooling::kAvg, "avg"}, {Pooling::kMax, "max"}};

namespace knobs_internal {
template <typename Table>
constexpr bool IndexedByKind(const Table& table) {
  for (size_t i = 0; i < std::size(table); ++i) {
    if (static_cast<size_t>(table[i].kind) != i) return false;
  }
  return true;
}
template <typename Table>
std::string JoinNames(const Table& table, std::string_view sep) {
  std::string out;
  for (const auto& e : table) out.append(out.empty() ? "" : sep).append(e.name);
  return out;
}
}  // namespace knobs_internal

// The names of a table's entries (kPolicies, kPoolings), in order.
template <typename Table>
std::vector<std::string> TableNames(const Table& table) {
  std::vector<std::string> out;
  for (const auto& e : table) out.emplace_back(e.name);
  return out;
}

static_assert(knobs_internal::IndexedByKind(kPolicies), "kPolicies lists the PolicyKinds in enum order");
static_assert(knobs_internal::IndexedByKind(kPoolings), "kPoolings lists the Poolings in enum order");

constexpr const PolicyInfo& Policy(PolicyKind p) { return kPolicies[static_cast<size_t>(p)]; }
constexpr const char* PolicyName(PolicyKind p) { return Policy(p).name; }
constexpr std::optional<PolicyKind> ParsePolicy(std::string_view name) {
  for (const PolicyInfo& p : kPolicies) {
    if (name == p.name) return p.kind;
  }
  return std::nullopt;
}
// "full, snapkv, ..." with `sep` between the names.
inline std::string PolicyNames(std::string_view sep) { return knobs_internal::JoinNames(kPolicies, sep); }

constexpr const char* PoolingName(Pooling p) { return kPoolings[static_cast<size_t>(p)].name; }
constexpr std::optional<Pooling> ParsePooling(std::string_view name) {
  for (const PoolingInfo& p : kPoolings) {
    if (name == p.name) return p.kind;
  }
  return std::nullopt;
}
inline std::string PoolingNames(std::string_view sep) { return knobs_internal::JoinNames(kPoolings, sep); }

// Per-request pruning knobs. A value of -1 for a layer knob means "scale from the model depth"
// (asl-method.md §1, §7); kv_budget 0 means "no budget, keep all". These initialisers are the
// built-in defaults of every face (config, CLI flags).
struct PruningParams {
  PolicyKind policy = PolicyKind::kFull;
  int window = 32;            // W
  int kernel = 7;             // S, odd
  Pooling pooling = Pooling::kAvg;
  int min_layer = -1;         // L_min; -1: round(L * 10/32)
  int obs_layers = 8;         // L_obs
  double tau = 0.3;           // τ
  int select_k = 2048;        // tokens propagated after selection, window included
  int kv_budget = 2048;       // C per layer and KV head, window included; 0 = keep all
  int max_layer = -1;         // force selection here if τ was never reached; -1 = never
  int select_layer = -1;      // fastkv / gemfilter fixed layer; -1: the policy's default
};

// The member a knob sets; its type is the knob's type. Names travel as strings (proto, JSON,
// YAML, flags): PolicyKind and Pooling as their table names, int as int32, double as double.
using KnobMember = std::variant<PolicyKind PruningParams::*, Pooling PruningParams::*, int PruningParams::*,
                                double PruningParams::*>;

// The value type behind a KnobMember alternative: KnobValueT<int PruningParams::*> is int.
template <typename M>
struct KnobValue;
template <typename T>
struct KnobValue<T PruningParams::*> {
  using type = T;
};
template <typename M>
using KnobValueT = typename KnobValue<M>::type;

struct PruningKnob {
  const char* name;
  KnobMember member;
  const char* help;  // one line: meaning and range, for --help
  // Numbers: the smallest value a knob accepts on its own (ints >= min, doubles > min); a layer
  // knob's min of -1 is its "from depth / never" marker. Constraints between knobs and against
  // the model depth are ResolvePruningParams' (and ValidateServerConfig's, before the depth is known).
  double min = 0;
};

// Every knob, in documentation order (PruningParams, the proto, config/default.yaml).
inline constexpr PruningKnob kPruningKnobs[] = {
    {"policy", &PruningParams::policy, "pruning policy"},
    {"window", &PruningParams::window, "W: observation window (last W prompt tokens)", 1},
    {"kernel", &PruningParams::kernel, "S: pooling width over tokens, odd", 1},
    {"pooling", &PruningParams::pooling, "pooling of the scores"},
    {"min_layer", &PruningParams::min_layer, "L_min: first layer of ASL's variance test; -1 = round(layers * 10/32)",
     -1},
    {"obs_layers", &PruningParams::obs_layers, "L_obs: layers the variance test looks back over", 1},
    {"tau", &PruningParams::tau, "tau: relative-variance threshold (> 0)", 0},
    {"select_k", &PruningParams::select_k, "tokens propagated past the selection layer, window included", 2},
    {"kv_budget", &PruningParams::kv_budget, "KV tokens kept per layer and KV head, window included; 0 = keep all",
     0},
    {"max_layer", &PruningParams::max_layer, "force ASL's selection here if tau is never reached; -1 = never", -1},
    {"select_layer", &PruningParams::select_layer,
     "fixed layer of fastkv/gemfilter; -1 = round(layers * 15/32) / round(layers * 13/32)", -1},
};

// A layer knob: -1 is its marker, other negative values are mistakes.
constexpr bool IsLayerKnob(const PruningKnob& k) {
  return std::holds_alternative<int PruningParams::*>(k.member) && k.min == -1;
}

// The knob's flag in asl-cli and asl-loadtest: "--select-k".
inline std::string KnobFlag(const PruningKnob& k) {
  std::string flag = std::string("--") + k.name;
  for (char& c : flag) c = c == '_' ? '-' : c;
  return flag;
}

// The table of an enum knob's values (entries {kind, name}): kPolicies or kPoolings.
template <typename E>
constexpr const auto& EnumTable() {
  static_assert(std::is_same_v<E, PolicyKind> || std::is_same_v<E, Pooling>);
  if constexpr (std::is_same_v<E, PolicyKind>) {
    return kPolicies;
  } else {
    return kPoolings;
  }
}

// The choices of an enum knob ("full|snapkv|..." with sep "|"), "" for numbers.
inline std::string KnobChoices(const PruningKnob& k, std::string_view sep) {
  if (std::holds_alternative<PolicyKind PruningParams::*>(k.member)) return PolicyNames(sep);
  if (std::holds_alternative<Pooling PruningParams::*>(k.member)) return PoolingNames(sep);
  return "";
}

}  // namespace asl

// The pruning knobs (engine/common/pruning_knobs.h) in v1::PruningParams: each knob is the proto
// field of its name, int32 for int knobs, double for double knobs and string (the table name) for
// the policy and the pooling. Faces that hold the proto (server, gateway, asl-loadtest) read and
// write knobs through reflection on that field instead of naming each accessor;
// tests/server/pruning_knobs_tests.cpp checks that every knob has its field, of its type, and
// every field is a knob.
#pragma once

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <cstdint>
#include <string>

#include "asl/v1/generation.pb.h"
#include "engine/common/pruning_knobs.h"

namespace asl::v1 {

inline const google::protobuf::FieldDescriptor* PruningField(const PruningKnob& knob) {
  return PruningParams::descriptor()->FindFieldByName(knob.name);
}

inline bool HasKnob(const PruningParams& p, const PruningKnob& knob) {
  return p.GetReflection()->HasField(p, PruningField(knob));
}

inline void SetKnob(const PruningKnob& knob, int32_t value, PruningParams* p) {
  p->GetReflection()->SetInt32(p, PruningField(knob), value);
}
inline void SetKnob(const PruningKnob& knob, double value, PruningParams* p) {
  p->GetReflection()->SetDouble(p, PruningField(knob), value);
}
inline void SetKnob(const PruningKnob& knob, std::string value, PruningParams* p) {
  p->GetReflection()->SetString(p, PruningField(knob), std::move(value));
}

inline int32_t KnobInt32(const PruningParams& p, const PruningKnob& knob) {
  return p.GetReflection()->GetInt32(p, PruningField(knob));
}
inline double KnobDouble(const PruningParams& p, const PruningKnob& knob) {
  return p.GetReflection()->GetDouble(p, PruningField(knob));
}
inline std::string KnobString(const PruningParams& p, const PruningKnob& knob) {
  return p.GetReflection()->GetString(p, PruningField(knob));
}

}  // namespace asl::v1

// Scoring of the accuracy benchmark: RULER's string_match_all and the NIAH grid's check.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace asl::eval {

// RULER's postprocess_pred: control characters (\x00-\x1f) become newlines, then the text is trimmed.
std::string PostprocessPrediction(std::string_view text);
// RULER's string_match_all for one sample: the share of references found, case-insensitively, in the
// (postprocessed) prediction. 0 for an empty reference list.
double StringMatchAll(std::string_view prediction, const std::vector<std::string>& references);
// The NIAH grid: correct (1) when the needle's number appears in the answer, else 0.
double NiahScore(std::string_view prediction, const std::string& number);

}  // namespace asl::eval

// RULER's synthetic tasks (Hsieh et al. 2024; texts and construction from NVIDIA/RULER's
// scripts/data/synthetic and constants.py) and the NIAH grid. Where this differs from RULER the
// comment says so; every random draw comes from the sample's own Rng.
#include "tools/eval/tasks.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>

namespace asl::eval {
namespace {

constexpr const char* kNoise =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

// ---- NIAH family ---------------------------------------------------------------------------------
enum class Haystack { kRepeat, kEssay, kNeedle };

struct NiahConfig {
  Haystack haystack;
  std::string type_k;  // "words" or "uuids"
  std::string type_v;  // "numbers", "words" or "uuids"
  int num_k = 1;
  int num_v = 1;
  int num_q = 1;
};

const std::map<std::string, NiahConfig>& NiahConfigs() {
  static const auto* m = new std::map<std::string, NiahConfig>{
      {"niah_single_1", {Haystack::kRepeat, "words", "numbers"}},
      {"niah_single_2", {Haystack::kEssay, "words", "numbers"}},
      {"niah_single_3", {Haystack::kEssay, "words", "uuids"}},
      {"niah_multikey_1", {Haystack::kEssay, "words", "numbers", 4}},
      {"niah_multikey_2", {Haystack::kNeedle, "words", "numbers"}},
      {"niah_multikey_3", {Haystack::kNeedle, "uuids", "uuids"}},
      {"niah_multivalue", {Haystack::kEssay, "words", "numbers", 1, 4}},
      {"niah_multiquery", {Haystack::kEssay, "words", "numbers", 4, 1, 4}},
  };
  return *m;
}

std::string RandomOfType(Rng& rng, const EvalData& data, const std::string& type) {
  if (type == "numbers") return RandomNumber(rng, 7);
  if (type == "uuids") return RandomUuid4(rng);
  return RandomWordKey(rng, data);
}

std::string Needle(const std::string& type_v, const std::string& key, const std::string& value) {
  return "One of the special magic " + type_v + " for " + key + " is: " + value + ".";
}

// RULER's depths for essay needles: np.round(np.linspace(0, 100, 40)).
int RulerDepth(int i) { return static_cast<int>(std::lround(i * 100.0 / 39.0)); }

SampleText GenerateNiah(const NiahConfig& c, const EvalData& data, Rng& rng, int64_t size) {
  const int num_k = std::max(c.num_k, c.num_q);
  std::vector<std::string> keys, needles;
  std::vector<std::vector<std::string>> values;
  for (int k = 0; k < num_k; ++k) {
    std::string key;
    do {
      key = RandomOfType(rng, data, c.type_k);
    } while (std::find(keys.begin(), keys.end(), key) != keys.end());
    keys.push_back(key);
    values.emplace_back();
    for (int v = 0; v < c.num_v; ++v) {
      values.back().push_back(RandomOfType(rng, data, c.type_v));
      needles.push_back(Needle(c.type_v, key, values.back().back()));
    }
  }
  rng.Shuffle(needles);
  // Queries are drawn before anything whose number of draws depends on the size, so a sample's
  // needles and questions stay the same while SampleBuilder tries sizes.
  std::vector<int64_t> q = rng.Sample(num_k, c.num_q);
  SampleText out;
  std::vector<std::string> queries;
  for (int64_t i : q) {
    queries.push_back(keys[i]);
    for (const auto& v : values[i]) out.answers.push_back(v);
  }

  std::string context;
  if (c.haystack == Haystack::kEssay) {
    const int64_t start = RandomSentenceStart(rng, data.essays);
    std::vector<int64_t> picks = rng.Sample(40, static_cast<int64_t>(needles.size()));
    std::vector<std::string> sents = EssaySentences(data.essays, start, size);
    std::vector<int64_t> pos;
    for (int64_t p : picks) pos.push_back(static_cast<int64_t>(sents.size()) * RulerDepth(static_cast<int>(p)) / 100);
    std::sort(pos.begin(), pos.end());
    std::vector<std::string> parts;
    int64_t last = 0;
    for (size_t i = 0; i < needles.size(); ++i) {
      for (int64_t s = last; s < pos[i]; ++s) parts.push_back(sents[s]);
      parts.push_back(needles[i]);
      last = pos[i];
    }
    for (int64_t s = last; s < static_cast<int64_t>(sents.size()); ++s) parts.push_back(sents[s]);
    context = Join(parts, " ");
  } else {
    std::vector<int64_t> idx = rng.Sample(size, static_cast<int64_t>(needles.size()));
    std::sort(idx.rbegin(), idx.rend());
    std::vector<std::string> lines;
    lines.reserve(size + needles.size());
    for (int64_t i = 0; i < size; ++i) {
      if (c.haystack == Haystack::kRepeat) {
        lines.push_back(kNoise);
        continue;
      }
      // Distractor needles: every filler line, with keys other than the real ones.
      std::string key;
      do {
        key = RandomOfType(rng, data, c.type_k);
      } while (std::find(keys.begin(), keys.end(), key) != keys.end());
      lines.push_back(Needle(c.type_v, key, RandomOfType(rng, data, c.type_v)));
    }
    for (size_t i = 0; i < needles.size(); ++i) lines.insert(lines.begin() + idx[i], needles[i]);
    context = Join(lines, "\n");
  }

  std::string query = queries[0];
  if (queries.size() > 1) {
    query.clear();
    for (size_t i = 0; i + 1 < queries.size(); ++i) query += queries[i] + ", ";
    query += "and " + queries.back();
  }
  if (c.num_q * c.num_v == 1) {
    // RULER's singular wording ("Some" -> "A", "are all"/"are" -> "is", type without the "s").
    const std::string t = c.type_v.substr(0, c.type_v.size() - 1);
    out.user = "A special magic " + t + " is hidden within the following text. Make sure to memorize it. I will quiz you about the " +
               t + " afterwards.\n" + context + "\nWhat is the special magic " + t + " for " + query +
               " mentioned in the provided text?";
    out.answer_prefix = "The special magic " + t + " for " + query + " mentioned in the provided text is";
  } else {
    const std::string& t = c.type_v;
    out.user = "Some special magic " + t + " are hidden within the following text. Make sure to memorize it. I will quiz you about the " +
               t + " afterwards.\n" + context + "\nWhat are all the special magic " + t + " for " + query +
               " mentioned in the provided text?";
    out.answer_prefix = "The special magic " + t + " for " + query + " mentioned in the provided text are";
  }
  return out;
}

// ---- variable tracking ---------------------------------------------------------------------------
std::string VtTemplate(const std::string& context, const std::string& value) {
  return "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n" + context +
         "\nQuestion: Find all variables that are assigned the value " + value + " in the text above.";
}
// "assgined" is RULER's own spelling (constants.py), kept so prompts match RULER's.
std::string VtAnswerPrefix(int num_v, const std::string& value) {
  return "Answer: According to the chain(s) of variable assignment in the text above, " + std::to_string(num_v) +
         " variables are assgined the value " + value + ", they are:";
}

// One chain of 4 hops (5 variables) hidden among `num_noises` noise lines (variable_tracking.py).
std::pair<std::string, std::vector<std::string>> VtContext(Rng& rng, int64_t num_noises, int var_letters,
                                                           std::string* value) {
  constexpr int kNumVars = 5;
  std::vector<std::string> vars;
  while (static_cast<int>(vars.size()) < kNumVars) {
    std::string v = RandomUpper(rng, var_letters);
    if (std::find(vars.begin(), vars.end(), v) == vars.end()) vars.push_back(v);
  }
  *value = std::to_string(rng.Range(10000, 99999));
  std::vector<std::string> chain{"VAR " + vars[0] + " = " + *value};
  for (int j = 1; j < kNumVars; ++j) chain.push_back("VAR " + vars[j] + " = VAR " + vars[j - 1] + " ");
  std::vector<std::string> sents(static_cast<size_t>(num_noises), std::string(kNoise) + "\n");
  std::vector<int64_t> pos = rng.Sample(num_noises, kNumVars);
  std::sort(pos.begin(), pos.end());
  for (int j = 0; j < kNumVars; ++j) sents.insert(sents.begin() + pos[j] + j, chain[j]);
  std::string context = Join(sents, " ");
  for (size_t at = 0; (at = context.find(". \n", at)) != std::string::npos;) context.replace(at, 3, ".\n");
  return {context, vars};
}

SampleText GenerateVt(const EvalData&, Rng& rng, int64_t size) {
  // RULER prepends one solved example (3-letter variables, a ~500-token prompt: 20 noise lines).
  std::string icl_value, value;
  auto [icl_context, icl_vars] = VtContext(rng, 20, 3, &icl_value);
  const std::string icl = VtTemplate(icl_context, icl_value) + " " + VtAnswerPrefix(5, icl_value) + " " + Join(icl_vars, " ");
  auto [context, vars] = VtContext(rng, size, 5, &value);
  SampleText out;
  out.user = icl + "\n\n" + VtTemplate(context, value);
  out.answer_prefix = VtAnswerPrefix(5, value);
  out.answers = vars;
  return out;
}

// ---- common words --------------------------------------------------------------------------------
constexpr const char* kCweAnswerPrefix = "Answer: The top 10 words that appear most often in the list are:";

std::string CweTemplate(const std::string& context) {
  return "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n" +
         context + "\nQuestion: What are the 10 most common words in the above list?";
}

std::string Numbered(const std::vector<std::string>& words) {
  std::string s;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i) s.push_back(' ');
    s += std::to_string(i + 1) + ". " + words[i];
  }
  return s;
}

// common_words_extraction.py get_example: 10 common words x `common`, the others x `uncommon`.
std::pair<std::string, std::vector<std::string>> CweExample(Rng& rng, const EvalData& data, int64_t num_words,
                                                            int common, int uncommon) {
  std::vector<int64_t> pick = rng.Sample(static_cast<int64_t>(data.cwe_words.size()), num_words);
  std::vector<std::string> list, answer;
  for (int64_t i = 0; i < num_words; ++i) {
    const std::string& w = data.cwe_words[pick[i]];
    if (i < 10) answer.push_back(w);
    for (int r = 0; r < (i < 10 ? common : uncommon); ++r) list.push_back(w);
  }
  rng.Shuffle(list);
  return {Numbered(list), answer};
}

SampleText GenerateCwe(const EvalData& data, Rng& rng, int64_t size, int target_length) {
  // RULER: below 4096 tokens the repeats are 6/1 (example 20 words 3/1), else 30/3 (example 40
  // words 10/3); benchmarks.md's "x30, others x3" is the long-context setting.
  const bool short_ctx = target_length < 4096;
  auto [ex_ctx, ex_ans] = short_ctx ? CweExample(rng, data, 20, 3, 1) : CweExample(rng, data, 40, 10, 3);
  auto [ctx, ans] = short_ctx ? CweExample(rng, data, size, 6, 1) : CweExample(rng, data, size, 30, 3);
  SampleText out;
  out.user = CweTemplate(ex_ctx) + " " + kCweAnswerPrefix + " " + Numbered(ex_ans) + "\n" + CweTemplate(ctx);
  out.answer_prefix = kCweAnswerPrefix;
  out.answers = ans;
  return out;
}

// ---- frequent words ------------------------------------------------------------------------------
// freq_words_extraction.py: a vocabulary of length/50 random 6-letter words; word k (1-based) occurs
// floor(size * k^-2 / zeta(2)) times; the top word is "..." (noise) and the answers are words 2-4.
SampleText GenerateFwe(const EvalData&, Rng& rng, int64_t size, int target_length) {
  const int vocab_size = std::max(8, target_length / 50);
  std::set<std::string> uniq;
  while (static_cast<int>(uniq.size()) < vocab_size) uniq.insert(RandomLower(rng, 6));
  std::vector<std::string> vocab(uniq.begin(), uniq.end());
  rng.Shuffle(vocab);
  vocab[0] = "...";
  const double zeta2 = M_PI * M_PI / 6.0;
  std::vector<std::string> words;
  for (int k = 1; k <= vocab_size; ++k) {
    const auto n = static_cast<int64_t>(static_cast<double>(size) / (static_cast<double>(k) * k) / zeta2);
    for (int64_t i = 0; i < n; ++i) words.push_back(vocab[k - 1]);
  }
  rng.Shuffle(words);
  SampleText out;
  out.user = "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. " +
             Join(words, " ") +
             "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text?";
  out.answer_prefix = "Answer: According to the coded text above, the three most frequently appeared words are:";
  out.answers = {vocab[1], vocab[2], vocab[3]};
  return out;
}

constexpr const char* kCities[] = {
    "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Dublin", "Nairobi", "Hanoi", "Quito", "Zagreb",
    "Seoul", "Lisbon", "Montreal", "Mumbai", "Santiago", "Vienna", "Bogota", "Helsinki", "Manila", "Accra",
    "Kyoto", "Perth", "Denver", "Marseille", "Krakow", "Havana", "Istanbul", "Osaka", "Reykjavik", "Tunis",
    "Chicago", "Jakarta", "Prague", "Dakar", "Madrid", "Sydney", "Toronto", "Budapest", "Karachi", "Munich"};

}  // namespace

const std::vector<TaskSpec>& RulerTasks() {
  static const auto* tasks = new std::vector<TaskSpec>{
      {"niah_single_1", 128, 1, 1},   {"niah_single_2", 128, 1, 16},  {"niah_single_3", 128, 1, 16},
      {"niah_multikey_1", 128, 1, 16}, {"niah_multikey_2", 128, 1, 1}, {"niah_multikey_3", 128, 1, 1},
      {"niah_multivalue", 128, 4, 16}, {"niah_multiquery", 128, 4, 16}, {"vt", 30, 5, 5},
      {"cwe", 120, 10, 11},           {"fwe", 50, 3, 100},
  };
  return *tasks;
}

const TaskSpec* FindTask(const std::string& name) {
  static const TaskSpec kGrid{kNiahGrid, 32, 1, 16};
  if (name == kNiahGrid) return &kGrid;
  for (const auto& t : RulerTasks()) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::vector<double> NiahDepths(int n) {
  std::vector<double> d;
  for (int i = 0; i < n; ++i) d.push_back(n == 1 ? 50.0 : 100.0 * i / (n - 1));
  return d;
}

SampleText GenerateRuler(const std::string& task, const EvalData& data, uint64_t sample_seed, int64_t size,
                         int target_length) {
  Rng rng(sample_seed);
  auto it = NiahConfigs().find(task);
  if (it != NiahConfigs().end()) return GenerateNiah(it->second, data, rng, size);
  if (task == "vt") return GenerateVt(data, rng, size);
  if (task == "cwe") return GenerateCwe(data, rng, size, target_length);
  if (task == "fwe") return GenerateFwe(data, rng, size, target_length);
  ASL_CHECK(false, "GenerateRuler: unknown task " + task);
  return {};
}

SampleText GenerateNiahGrid(const EvalData& data, uint64_t sample_seed, int64_t size, double depth_percent) {
  Rng rng(sample_seed);
  const std::string city = kCities[rng.Below(std::size(kCities))];
  const std::string number = RandomNumber(rng, 7);
  const int64_t start = RandomSentenceStart(rng, data.essays);
  std::vector<std::string> sents = EssaySentences(data.essays, start, size);
  // The boundary (before sentence b, b in [0, n]) whose character offset is nearest the depth.
  int64_t total = 0;
  for (const auto& s : sents) total += static_cast<int64_t>(s.size()) + 1;
  const double target = depth_percent / 100.0 * static_cast<double>(total);
  size_t best = 0;
  double best_dist = 1e300;
  int64_t offset = 0;
  for (size_t b = 0; b <= sents.size(); ++b) {
    const double dist = std::abs(static_cast<double>(offset) - target);
    if (dist < best_dist) best = b, best_dist = dist;
    if (b < sents.size()) offset += static_cast<int64_t>(sents[b].size()) + 1;
  }
  sents.insert(sents.begin() + static_cast<int64_t>(best), "The special magic " + city + " number is: " + number + ".");
  SampleText out;
  out.user = Join(sents, " ") + "\n\nWhat is the special magic " + city + " number?";
  out.answer_prefix = "The special magic " + city + " number is";
  out.answers = {number};
  return out;
}

// ---- sizing --------------------------------------------------------------------------------------
StatusOr<SampleBuilder::Probe> SampleBuilder::Try(const TaskSpec& spec, int length, uint64_t sample_seed,
                                                  int64_t size, double depth) {
  Probe p;
  p.text = spec.name == kNiahGrid ? GenerateNiahGrid(data_, sample_seed, size, depth)
                                  : GenerateRuler(spec.name, data_, sample_seed, size, length);
  ++num_encodes_;
  ASL_ASSIGN_OR_RETURN(p.ids, encoder_(p.text.user, p.text.answer_prefix));
  p.fits = static_cast<int64_t>(p.ids.size()) + spec.max_tokens <= length;
  return p;
}

StatusOr<int64_t> SampleBuilder::Search(const TaskSpec& spec, int length, uint64_t sample_seed, double depth) {
  int64_t lo = spec.min_size;
  ASL_ASSIGN_OR_RETURN(Probe p, Try(spec, length, sample_seed, lo, depth));
  if (!p.fits) {
    return InvalidArgument("eval: task " + spec.name + " does not fit in " + std::to_string(length) +
                           " tokens even with the smallest haystack (" + std::to_string(p.ids.size()) +
                           " prompt tokens + " + std::to_string(spec.max_tokens) + " to generate)");
  }
  int64_t hi = lo;
  while (true) {  // gallop: lo fits, find a hi that does not
    hi = std::min(spec.max_size, hi * 2);
    ASL_ASSIGN_OR_RETURN(p, Try(spec, length, sample_seed, hi, depth));
    if (!p.fits) break;
    lo = hi;
    if (hi == spec.max_size) return hi;
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    ASL_ASSIGN_OR_RETURN(p, Try(spec, length, sample_seed, mid, depth));
    (p.fits ? lo : hi) = mid;
  }
  return lo;
}

StatusOr<Sample> SampleBuilder::Build(const std::string& task, int length, int index, double depth_percent) {
  const TaskSpec* spec = FindTask(task);
  if (!spec) return InvalidArgument("eval: unknown task '" + task + "'");
  TaskSpec bounded = *spec;  // a haystack never exceeds its source
  if (task == "cwe") bounded.max_size = static_cast<int64_t>(data_.cwe_words.size());
  if (task == kNiahGrid || (NiahConfigs().count(task) && NiahConfigs().at(task).haystack == Haystack::kEssay)) {
    bounded.max_size = data_.essays.size();
  }
  spec = &bounded;
  const uint64_t sample_seed = SampleSeed(seed_, task, length, index);
  auto key = std::make_pair(task, length);
  if (!size_estimate_.count(key)) {
    ASL_ASSIGN_OR_RETURN(size_estimate_[key], Search(*spec, length, sample_seed, depth_percent));
  }
  // Walk from the estimate in steps of 1/64 of it: up while the next step fits, down until it fits.
  const int64_t est = size_estimate_[key];
  const int64_t step = std::max<int64_t>(1, est / 64);
  int64_t size = est;
  ASL_ASSIGN_OR_RETURN(Probe p, Try(*spec, length, sample_seed, size, depth_percent));
  if (p.fits) {
    while (size + step <= spec->max_size) {
      ASL_ASSIGN_OR_RETURN(Probe up, Try(*spec, length, sample_seed, size + step, depth_percent));
      if (!up.fits) break;
      size += step;
      p = std::move(up);
    }
  } else {
    while (!p.fits) {
      if (size == spec->min_size) {
        return InvalidArgument("eval: sample " + std::to_string(index) + " of " + task + " does not fit in " +
                               std::to_string(length) + " tokens");
      }
      size = std::max(spec->min_size, size - step);
      ASL_ASSIGN_OR_RETURN(p, Try(*spec, length, sample_seed, size, depth_percent));
    }
  }
  Sample s;
  s.task = task;
  s.length = length;
  s.index = index;
  s.depth_percent = depth_percent;
  s.max_tokens = spec->max_tokens;
  s.size = size;
  s.text = std::move(p.text);
  s.prompt_ids = std::move(p.ids);
  return s;
}

}  // namespace asl::eval

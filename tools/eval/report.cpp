#include "tools/eval/report.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <zlib.h>

#include "tools/eval/tasks.h"

using json = nlohmann::json;

namespace asl::eval {
namespace {

struct Mean {
  double sum = 0.0;
  int64_t n = 0;
  void Add(double v) { sum += v, ++n; }
  double value() const { return n ? sum / static_cast<double>(n) : 0.0; }
};

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}
std::string Pct(const Mean& m) { return m.n ? Fixed(100.0 * m.value(), 1) : "–"; }

std::string Row(const std::vector<std::string>& cells) {
  std::string s = "|";
  for (const auto& c : cells) s += " " + c + " |";
  return s + "\n";
}
std::string Rule(size_t n) {
  std::string s = "|";
  for (size_t i = 0; i < n; ++i) s += "---|";
  return s + "\n";
}

// Results of `policy` at `budget` (full: budget 0 stands for every budget).
bool Matches(const RunResult& r, int length, const std::string& policy, int budget) {
  return r.length == length && r.policy == policy && (policy == "full" ? r.budget == 0 : r.budget == budget);
}

std::string TaskTables(const ReportMeta& meta, const std::vector<RunResult>& results, int length, int budget) {
  std::ostringstream md;
  std::vector<std::string> header{"task"};
  for (const auto& p : meta.policies) header.push_back(p);
  md << Row(header) << Rule(header.size());
  std::map<std::string, Mean> average;  // policy -> mean of the task means
  bool has_grid = false;
  for (const auto& task : meta.tasks) {
    if (task == kNiahGrid) {
      has_grid = true;
      continue;
    }
    std::vector<std::string> row{task};
    for (const auto& p : meta.policies) {
      Mean m;
      for (const auto& r : results) {
        if (r.task == task && Matches(r, length, p, budget)) m.Add(r.score);
      }
      row.push_back(Pct(m));
      if (m.n) average[p].Add(m.value());
    }
    md << Row(row);
  }
  std::vector<std::string> avg{"**average**"};
  for (const auto& p : meta.policies) avg.push_back("**" + Pct(average[p]) + "**");
  md << Row(avg);
  if (has_grid) {
    std::vector<std::string> row{"niah grid"};
    for (const auto& p : meta.policies) {
      Mean m;
      for (const auto& r : results) {
        if (r.task == kNiahGrid && Matches(r, length, p, budget)) m.Add(r.score);
      }
      row.push_back(Pct(m));
    }
    md << Row(row);
  }
  md << "\n";

  // Where the policies of ASL's rank test (asl, asl_2pass) selected, per task.
  std::vector<std::string> asl_like;
  for (const auto& p : meta.policies) {
    const std::optional<PolicyKind> kind = ParsePolicy(p);
    if (kind && Policy(*kind).rank_test) asl_like.push_back(p);
  }
  if (!asl_like.empty()) {
    md << "Selection layer (layer×count; none: τ never reached, n/a: prompt ≤ select_k):\n\n";
    std::vector<std::string> h{"task"};
    for (const auto& p : asl_like) h.push_back(p);
    md << Row(h) << Rule(h.size());
    for (const auto& task : meta.tasks) {
      std::vector<std::string> row{task};
      for (const auto& p : asl_like) {
        std::map<std::string, int> hist;
        for (const auto& r : results) {
          if (r.task == task && Matches(r, length, p, budget) && r.error.empty()) hist[SelectionLabel(r.pruning)]++;
        }
        std::vector<std::pair<std::string, int>> sorted(hist.begin(), hist.end());
        std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
          const bool an = !a.first.empty() && std::isdigit(static_cast<unsigned char>(a.first[0]));
          const bool bn = !b.first.empty() && std::isdigit(static_cast<unsigned char>(b.first[0]));
          if (an != bn) return an;
          return an ? std::stoi(a.first) < std::stoi(b.first) : a.first < b.first;
        });
        std::string cell;
        for (const auto& [label, n] : sorted) cell += (cell.empty() ? "" : ", ") + label + "×" + std::to_string(n);
        row.push_back(cell.empty() ? "–" : cell);
      }
      md << Row(row);
    }
    md << "\n";
  }

  // Cost per policy, over every task of this length.
  md << Row({"policy", "requests", "errors", "prompt tokens", "KV tokens kept", "kept / full", "prefill compute / full",
             "prefill step s", "e2e s"})
     << Rule(9);
  for (const auto& p : meta.policies) {
    Mean prompt, kept, ratio, compute, prefill, e2e;
    int64_t n = 0, errors = 0;
    for (const auto& r : results) {
      if (!Matches(r, length, p, budget)) continue;
      ++n;
      if (!r.error.empty()) {
        ++errors;
        continue;
      }
      prompt.Add(static_cast<double>(r.prompt_tokens));
      kept.Add(static_cast<double>(r.pruning.num_kv_tokens_kept));
      if (r.pruning.num_kv_tokens_full > 0) {
        ratio.Add(static_cast<double>(r.pruning.num_kv_tokens_kept) / static_cast<double>(r.pruning.num_kv_tokens_full));
        if (r.pruning.prefill_token_layers > 0) {
          compute.Add(static_cast<double>(r.pruning.prefill_token_layers) /
                      static_cast<double>(r.pruning.num_kv_tokens_full));
        }
      }
      prefill.Add(r.pruning.prefill_seconds);
      e2e.Add(r.e2e_seconds);
    }
    md << Row({p, std::to_string(n), std::to_string(errors), Fixed(prompt.value(), 0), Fixed(kept.value(), 0),
               ratio.n ? Fixed(100.0 * ratio.value(), 1) + " %" : "–",
               compute.n ? Fixed(100.0 * compute.value(), 1) + " %" : "–", Fixed(prefill.value(), 3),
               Fixed(e2e.value(), 2)});
  }
  md << "\n";
  return md.str();
}

std::string NiahGrids(const ReportMeta& meta, const std::vector<RunResult>& results) {
  std::ostringstream md;
  md << "## Needle in a haystack (% correct; rows: context length, columns: needle depth %)\n\n";
  for (const auto& p : meta.policies) {
    const std::vector<int> budgets = p == "full" ? std::vector<int>{0} : meta.budgets;
    for (int b : budgets) {
      md << "### " << p << (p == "full" ? "" : " @ budget " + std::to_string(b)) << "\n\n";
      std::vector<std::string> h{"length"};
      for (double d : meta.niah_depths) h.push_back(Fixed(d, 0));
      h.push_back("mean");
      md << Row(h) << Rule(h.size());
      for (int length : meta.lengths) {
        std::vector<std::string> row{std::to_string(length)};
        Mean all;
        for (double d : meta.niah_depths) {
          Mean m;
          for (const auto& r : results) {
            if (r.task == kNiahGrid && Matches(r, length, p, b) && std::abs(r.depth_percent - d) < 1e-9) m.Add(r.score);
          }
          row.push_back(Pct(m));
          if (m.n) all.Add(m.value());
        }
        row.push_back(Pct(all));
        md << Row(row);
      }
      md << "\n";
    }
  }
  return md.str();
}

std::string ReadFirstLine(const char* cmd) {
  FILE* f = popen(cmd, "r");
  if (!f) return "";
  std::array<char, 256> buf{};
  std::string out;
  if (fgets(buf.data(), buf.size(), f)) out = buf.data();
  pclose(f);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

}  // namespace

std::string SelectionLabel(const PruningReport& r) {
  switch (r.outcome) {
    case SelectionOutcome::kSelected: return std::to_string(r.selection_layer);
    case SelectionOutcome::kForced: return "forced@" + std::to_string(r.selection_layer);
    case SelectionOutcome::kNone: return "none";
    case SelectionOutcome::kNotApplicable: return "n/a";
  }
  return "?";
}

json ResultJson(const RunResult& r) {
  json j{{"task", r.task},
         {"length", r.length},
         {"index", r.index},
         {"haystack_size", r.haystack_size},
         {"policy", r.policy},
         {"budget", r.budget},
         {"answers", r.answers},
         {"output", r.output},
         {"score", r.score},
         {"finish_reason", r.finish_reason},
         {"prompt_tokens", r.prompt_tokens},
         {"completion_tokens", r.completion_tokens},
         {"ttft_seconds", r.ttft_seconds},
         {"e2e_seconds", r.e2e_seconds},
         {"pruning",
          {{"outcome", SelectionOutcomeName(r.pruning.outcome)},
           {"selection_layer", r.pruning.selection_layer},
           {"propagated_tokens", r.pruning.num_propagated_tokens},
           {"kv_tokens_kept", r.pruning.num_kv_tokens_kept},
           {"kv_tokens_full", r.pruning.num_kv_tokens_full},
           {"kv_bytes", r.pruning.kv_bytes},
           {"prefill_seconds", r.pruning.prefill_seconds},
           {"prefill_token_layers", r.pruning.prefill_token_layers},
           {"variance_ratios", r.pruning.variance_ratios}}}};
  if (r.depth_percent >= 0) j["depth_percent"] = r.depth_percent;
  if (!r.error.empty()) j["error"] = r.error;
  return j;
}

StatusOr<RunResult> ResultFromJson(const json& j) {
  try {
    RunResult r;
    r.task = j.at("task").get<std::string>();
    r.length = j.at("length").get<int>();
    r.index = j.at("index").get<int>();
    r.depth_percent = j.value("depth_percent", -1.0);
    r.haystack_size = j.at("haystack_size").get<int64_t>();
    r.policy = j.at("policy").get<std::string>();
    r.budget = j.at("budget").get<int>();
    r.answers = j.at("answers").get<std::vector<std::string>>();
    r.output = j.at("output").get<std::string>();
    r.score = j.at("score").get<double>();
    r.finish_reason = j.at("finish_reason").get<std::string>();
    r.error = j.value("error", std::string());
    r.prompt_tokens = j.at("prompt_tokens").get<int64_t>();
    r.completion_tokens = j.at("completion_tokens").get<int64_t>();
    r.ttft_seconds = j.at("ttft_seconds").get<double>();
    r.e2e_seconds = j.at("e2e_seconds").get<double>();
    const json& p = j.at("pruning");
    const auto policy = ParsePolicy(r.policy);
    if (!policy) return InvalidArgument("policy: unknown policy '" + r.policy + "'");
    r.pruning.policy = *policy;
    const std::string outcome = p.at("outcome").get<std::string>();
    bool known = false;
    for (SelectionOutcome o : {SelectionOutcome::kNone, SelectionOutcome::kSelected, SelectionOutcome::kForced,
                               SelectionOutcome::kNotApplicable}) {
      if (outcome == SelectionOutcomeName(o)) r.pruning.outcome = o, known = true;
    }
    if (!known) return InvalidArgument("pruning.outcome: unknown outcome '" + outcome + "'");
    r.pruning.selection_layer = p.at("selection_layer").get<int>();
    r.pruning.num_prompt_tokens = r.prompt_tokens;
    r.pruning.num_propagated_tokens = p.at("propagated_tokens").get<int64_t>();
    r.pruning.num_kv_tokens_kept = p.at("kv_tokens_kept").get<int64_t>();
    r.pruning.num_kv_tokens_full = p.at("kv_tokens_full").get<int64_t>();
    r.pruning.kv_bytes = p.at("kv_bytes").get<int64_t>();
    r.pruning.prefill_seconds = p.at("prefill_seconds").get<double>();
    r.pruning.prefill_token_layers = p.value("prefill_token_layers", int64_t{0});  // 0: not recorded (older runs)
    r.pruning.variance_ratios = p.at("variance_ratios").get<std::vector<double>>();
    return r;
  } catch (const json::exception& e) {
    return InvalidArgument(std::string("result: ") + e.what());
  }
}

std::string ResultKey(const std::string& task, int length, int index, double depth_percent, const std::string& policy,
                      int budget) {
  char depth[32];
  std::snprintf(depth, sizeof(depth), "%.6f", depth_percent);
  return task + "|" + std::to_string(length) + "|" + std::to_string(index) + "|" + depth + "|" + policy + "|" +
         std::to_string(budget);
}

json ReportJson(const ReportMeta& m, const std::vector<RunResult>& results) {
  json rs = json::array();
  for (const auto& r : results) rs.push_back(ResultJson(r));
  return json{{"meta",
               {{"date", m.date}, {"commit", m.commit}, {"machine", m.machine}, {"command", m.command},
                {"model", m.model}, {"engine", m.engine}, {"lengths", m.lengths}, {"budgets", m.budgets},
                {"policies", m.policies}, {"tasks", m.tasks}, {"niah_depths", m.niah_depths},
                {"samples", m.samples}, {"niah_samples", m.niah_samples}, {"seed", m.seed},
                {"wall_seconds", m.wall_seconds}, {"requests_planned", m.requests_planned},
                {"requests_done", m.requests_done}, {"partial", m.partial}, {"notes", m.notes}}},
              {"results", rs}};
}

Status WriteJsonFile(const std::string& path, const json& j) {
  const std::string text = j.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
  const bool gz = path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
  if (!gz) {
    std::ofstream f(path, std::ios::binary);
    f << text;
    return f ? Status::Ok() : NotFound("cannot write " + path);
  }
  gzFile f = gzopen(path.c_str(), "wb9");
  if (f == nullptr) return NotFound("cannot write " + path);
  size_t off = 0;
  bool ok = true;
  while (ok && off < text.size()) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(text.size() - off, 1u << 20));
    ok = gzwrite(f, text.data() + off, chunk) == static_cast<int>(chunk);
    off += chunk;
  }
  ok = gzclose(f) == Z_OK && ok;
  return ok ? Status::Ok() : DataLoss("cannot write " + path);
}

StatusOr<json> ReadJsonFile(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return NotFound("cannot read " + path);
  std::string text;
  std::array<char, 1 << 16> buf;
  int n = 0;
  while ((n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()))) > 0) text.append(buf.data(), n);
  int err = Z_OK;
  const char* msg = n < 0 ? gzerror(f, &err) : nullptr;
  const std::string why = msg ? msg : "";
  gzclose(f);
  if (n < 0) return DataLoss(path + ": " + why);
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument(path + ": not valid JSON");
  return j;
}

std::string ReportMarkdown(const ReportMeta& m, const std::vector<RunResult>& results) {
  std::ostringstream md;
  md << "# Accuracy: RULER-style tasks and needle-in-a-haystack\n\n";
  md << "- date: " << m.date << "\n- commit: " << m.commit << "\n- machine: " << m.machine << "\n- model: " << m.model
     << "\n- engine: " << m.engine << "\n- command: `" << m.command << "`\n";
  md << "- samples: " << m.samples << " per task and length (NIAH grid: " << m.niah_samples
     << " per length and depth), seed " << m.seed << "; greedy decoding; kv_budget = select_k = budget for every "
     << "pruning policy; `full` runs once per sample and is repeated under every budget\n";
  md << "- requests: " << m.requests_done << " of " << m.requests_planned << " in " << Fixed(m.wall_seconds, 0) << " s"
     << (m.partial ? " — **partial: stopped by --limit-seconds**" : "") << "\n";
  for (const auto& n : m.notes) md << "- note: " << n << "\n";
  md << "\nScores are RULER's string_match_all in % (NIAH grid: % of answers containing the number); the average "
        "is over the RULER tasks. In the cost tables, \"prefill compute / full\" is the request's own prefill "
        "work (Σ over layers of the tokens each layer ran on, both passes of a two-pass policy) over full's; "
        "\"prefill step s\" is the wall time of the packed prefill step the request ran in, shared with its "
        "batch-mates (its own prompt under the other policies among them, computed once until they diverge), "
        "so it is not one request's cost: bench/results/latency.md times each policy alone.\n\n";
  for (int length : m.lengths) {
    for (int b : m.budgets) {
      md << "## Context " << length << " tokens, budget " << b << "\n\n" << TaskTables(m, results, length, b);
    }
  }
  if (std::find(m.tasks.begin(), m.tasks.end(), kNiahGrid) != m.tasks.end()) md << NiahGrids(m, results);
  return md.str();
}

std::string MachineDescription() {
  std::string cpu = "unknown CPU";
  std::ifstream ci("/proc/cpuinfo");
  for (std::string line; std::getline(ci, line);) {
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  std::string mem = "unknown memory";
  std::ifstream mi("/proc/meminfo");
  for (std::string line; std::getline(mi, line);) {
    if (line.rfind("MemTotal:", 0) == 0) {
      const double kb = std::stod(line.substr(9));
      mem = Fixed(kb / 1048576.0, 1) + " GiB";
      break;
    }
  }
  return cpu + ", " + std::to_string(std::thread::hardware_concurrency()) + " cores, " + mem;
}

std::string GitCommit() {
  std::string c = ReadFirstLine("git rev-parse --short HEAD 2>/dev/null");
  if (c.empty()) return "unknown";
  if (!ReadFirstLine("git status --porcelain --untracked-files=no 2>/dev/null").empty()) c += " (with local changes)";
  return c;
}

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string CommandLine() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string all(std::istreambuf_iterator<char>(f), {});
  std::string out, arg;
  auto flush = [&] {
    const bool quote = arg.empty() || arg.find_first_of(" \t\"'$`\\*?;&|<>()") != std::string::npos;
    if (!out.empty()) out += ' ';
    if (!quote) {
      out += arg;
    } else {
      out += '\'';
      for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
      out += '\'';
    }
    arg.clear();
  };
  for (char c : all) {
    if (c == '\0') flush();
    else arg.push_back(c);
  }
  if (!arg.empty()) flush();
  return out;
}

}  // namespace asl::eval

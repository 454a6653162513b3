// The accuracy benchmark's sample generators, sizing and scoring, on small in-memory data and a fake
// tokenizer (one token per whitespace-separated word), so no model is needed.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include <unistd.h>

#include "tools/eval/haystack.h"
#include "tools/eval/report.h"
#include "tools/eval/scoring.h"
#include "tools/eval/tasks.h"

namespace asl::eval {
namespace {

const EvalData& TestData() {
  static const EvalData* d = [] {
    std::vector<std::string> essays;
    for (int e = 0; e < 3; ++e) {
      std::string t;
      for (int s = 0; s < 600; ++s) {
        t += "Essay " + std::to_string(e) + " sentence " + std::to_string(s) + " says";
        for (int w = 0; w < s % 7; ++w) t += " word";
        t += (s % 5 == 4 ? "?\n" : ".  ");
      }
      essays.push_back(t);
    }
    std::vector<std::string> nouns, adjs, verbs;
    for (int i = 0; i < 1500; ++i) nouns.push_back("noun" + std::to_string(i));
    for (int i = 0; i < 300; ++i) adjs.push_back("adj" + std::to_string(i));
    for (int i = 0; i < 300; ++i) verbs.push_back("verb" + std::to_string(i));
    return new EvalData(MakeEvalData(essays, nouns, adjs, verbs));
  }();
  return *d;
}

std::vector<std::string> Words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// A chat template of 6 "tokens" around the user message, then the answer prefix.
StatusOr<std::vector<TokenId>> FakeEncode(const std::string& user, const std::string& prefix) {
  std::vector<TokenId> ids(6, 1);
  for (const auto& w : Words(user + " " + prefix)) ids.push_back(static_cast<TokenId>(std::hash<std::string>{}(w) & 0xffff));
  return ids;
}

int Count(const std::string& hay, const std::string& needle) {
  int n = 0;
  for (size_t at = 0; (at = hay.find(needle, at)) != std::string::npos; at += needle.size()) ++n;
  return n;
}

TEST(Rng, SameSeedSameDrawsAndUnbiasedRange) {
  Rng a(7), b(7);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.Below(1000), b.Below(1000));
  std::vector<int64_t> s = Rng(3).Sample(10, 10);
  std::sort(s.begin(), s.end());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(s[i], i);
  EXPECT_NE(SampleSeed(42, "vt", 1024, 0), SampleSeed(42, "vt", 1024, 1));
  EXPECT_NE(SampleSeed(42, "vt", 1024, 0), SampleSeed(42, "cwe", 1024, 0));
  EXPECT_NE(SampleSeed(42, "vt", 1024, 0), SampleSeed(43, "vt", 1024, 0));
}

TEST(Haystack, RandomValuesHaveRulerShapes) {
  Rng rng(1);
  for (int i = 0; i < 50; ++i) {
    EXPECT_TRUE(std::regex_match(RandomNumber(rng, 7), std::regex("[1-9][0-9]{6}")));
    EXPECT_TRUE(std::regex_match(RandomUuid4(rng),
                                 std::regex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")));
    EXPECT_TRUE(std::regex_match(RandomWordKey(rng, TestData()), std::regex("adj[0-9]+-noun[0-9]+")));
  }
}

TEST(Haystack, SentenceEnds) {
  EXPECT_TRUE(EndsSentence("end."));
  EXPECT_TRUE(EndsSentence("why?\""));
  EXPECT_TRUE(EndsSentence("so!)"));
  EXPECT_TRUE(EndsSentence("said.\xE2\x80\x9D"));
  EXPECT_FALSE(EndsSentence("mid,"));
  EXPECT_FALSE(EndsSentence("."));
  const EssayCorpus& c = TestData().essays;
  std::vector<std::string> sents = EssaySentences(c, 0, 40);
  EXPECT_EQ(sents[0], "Essay 0 sentence 0 says.");
  EXPECT_EQ(sents[1], "Essay 0 sentence 1 says word.");
}

TEST(Tasks, SameSeedSameSamplesAcrossBuilders) {
  for (const auto& t : RulerTasks()) {
    SampleBuilder a(TestData(), 42, FakeEncode), b(TestData(), 42, FakeEncode), c(TestData(), 43, FakeEncode);
    auto sa = a.Build(t.name, 1024, 3);
    auto sb = b.Build(t.name, 1024, 3);
    auto sc = c.Build(t.name, 1024, 3);
    ASSERT_TRUE(sa.ok()) << t.name << ": " << sa.status().ToString();
    ASSERT_TRUE(sb.ok() && sc.ok());
    EXPECT_EQ(sa->text.user, sb->text.user) << t.name;
    EXPECT_EQ(sa->text.answers, sb->text.answers) << t.name;
    EXPECT_EQ(sa->prompt_ids, sb->prompt_ids) << t.name;
    EXPECT_NE(sa->text.user, sc->text.user) << t.name;
    // A sample does not depend on which samples were built before it.
    auto first = b.Build(t.name, 1024, 0);
    ASSERT_TRUE(first.ok());
    SampleBuilder fresh(TestData(), 42, FakeEncode);
    auto again = fresh.Build(t.name, 1024, 0);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(first->text.user, again->text.user) << t.name;
  }
}

TEST(Tasks, SizedToTheTargetLength) {
  SampleBuilder b(TestData(), 42, FakeEncode);
  for (const auto& t : RulerTasks()) {
    for (int length : {1024, 2048, 4096}) {
      auto s = b.Build(t.name, length, 1);
      ASSERT_TRUE(s.ok()) << t.name << " " << length << ": " << s.status().ToString();
      const int64_t total = static_cast<int64_t>(s->prompt_ids.size()) + s->max_tokens;
      EXPECT_LE(total, length) << t.name;
      EXPECT_GE(total, length * 0.9) << t.name << " " << length;
      EXPECT_EQ(s->max_tokens, t.max_tokens);
    }
  }
  // Too short for any haystack: an error naming the task, not a crash.
  auto tiny = b.Build("vt", 200, 0);
  ASSERT_FALSE(tiny.ok());
  EXPECT_NE(tiny.status().message().find("vt"), std::string::npos);
  EXPECT_FALSE(b.Build("no_such_task", 1024, 0).ok());
}

TEST(Tasks, NumberOfAnswersAndTheyAreInThePrompt) {
  const std::map<std::string, int> expected = {
      {"niah_single_1", 1}, {"niah_single_2", 1}, {"niah_single_3", 1}, {"niah_multikey_1", 1},
      {"niah_multikey_2", 1}, {"niah_multikey_3", 1}, {"niah_multivalue", 4}, {"niah_multiquery", 4},
      {"vt", 5}, {"cwe", 10}, {"fwe", 3}};
  ASSERT_EQ(RulerTasks().size(), expected.size());
  for (const auto& t : RulerTasks()) {
    EXPECT_EQ(t.num_answers, expected.at(t.name));
    for (int i = 0; i < 5; ++i) {
      SampleText s = GenerateRuler(t.name, TestData(), SampleSeed(1, t.name, 4096, i), 200, 4096);
      ASSERT_EQ(static_cast<int>(s.answers.size()), t.num_answers) << t.name;
      for (const auto& a : s.answers) EXPECT_NE(s.user.find(a), std::string::npos) << t.name << " " << a;
      std::set<std::string> uniq(s.answers.begin(), s.answers.end());
      EXPECT_EQ(uniq.size(), s.answers.size()) << t.name;
    }
  }
}

TEST(Tasks, RulerNiahTextsVerbatim) {
  std::smatch m;
  SampleText s = GenerateRuler("niah_single_1", TestData(), 5, 20, 1024);
  const std::string head =
      "A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you about the number afterwards.\n";
  ASSERT_EQ(s.user.rfind(head, 0), 0u);
  ASSERT_TRUE(std::regex_search(s.user, m, std::regex("\nWhat is the special magic number for (adj[0-9]+-noun[0-9]+) mentioned in the provided text\\?$")));
  const std::string key = m[1];
  EXPECT_EQ(s.answer_prefix, "The special magic number for " + key + " mentioned in the provided text is");
  EXPECT_NE(s.user.find("\nOne of the special magic numbers for " + key + " is: " + s.answers[0] + ".\n"), std::string::npos);
  EXPECT_EQ(Count(s.user, "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"), 20);

  s = GenerateRuler("niah_single_3", TestData(), 5, 300, 1024);
  EXPECT_EQ(s.user.rfind("A special magic uuid is hidden within the following text. Make sure to memorize it. I will quiz you about the uuid afterwards.\n", 0), 0u);
  EXPECT_NE(s.user.find("One of the special magic uuids for "), std::string::npos);
  EXPECT_NE(s.answer_prefix.find("The special magic uuid for "), std::string::npos);

  s = GenerateRuler("niah_multivalue", TestData(), 5, 300, 1024);
  ASSERT_EQ(s.user.rfind("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you about the numbers afterwards.\n", 0), 0u);
  ASSERT_TRUE(std::regex_search(s.user, m, std::regex("\nWhat are all the special magic numbers for (\\S+) mentioned in the provided text\\?$")));
  EXPECT_EQ(s.answer_prefix, "The special magic numbers for " + std::string(m[1]) + " mentioned in the provided text are");
  for (const auto& a : s.answers) EXPECT_NE(s.user.find("One of the special magic numbers for " + std::string(m[1]) + " is: " + a + "."), std::string::npos);

  s = GenerateRuler("niah_multiquery", TestData(), 5, 300, 1024);
  EXPECT_TRUE(std::regex_search(s.answer_prefix, std::regex("^The special magic numbers for \\S+, \\S+, \\S+, and \\S+ mentioned in the provided text are$")))
      << s.answer_prefix;

  s = GenerateRuler("niah_multikey_3", TestData(), 5, 30, 1024);
  const std::string uuid = "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}";
  std::vector<std::string> lines;
  std::istringstream in(s.user);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 1u + 31u + 1u);  // header, 30 distractors + the needle, question
  for (size_t i = 1; i + 1 < lines.size(); ++i) {
    EXPECT_TRUE(std::regex_match(lines[i], std::regex("One of the special magic uuids for " + uuid + " is: " + uuid + "\\.")))
        << lines[i];
  }
}

TEST(Tasks, EssayNeedlesSitAtSentenceBoundaries) {
  for (const char* task : {"niah_single_2", "niah_multikey_1", "niah_multivalue"}) {
    SampleText s = GenerateRuler(task, TestData(), 11, 800, 2048);
    size_t at = 0;
    int found = 0;
    while ((at = s.user.find("One of the special magic", at)) != std::string::npos) {
      ++found;
      const std::string before = s.user.substr(at - 2, 2);
      EXPECT_TRUE(before == ". " || before == "? " || before == "t\n") << task << " [" << before << "]";
      at += 10;
    }
    EXPECT_EQ(found, task == std::string("niah_single_2") ? 1 : 4);
  }
}

TEST(NiahGrid, NeedleAtRequestedDepthAtSentenceBoundary) {
  const std::vector<double> depths = NiahDepths(10);
  ASSERT_EQ(depths.size(), 10u);
  EXPECT_EQ(depths.front(), 0.0);
  EXPECT_EQ(depths.back(), 100.0);
  std::string number;
  for (double d : depths) {
    SampleText s = GenerateNiahGrid(TestData(), 99, 3000, d);
    ASSERT_EQ(s.answers.size(), 1u);
    if (number.empty()) number = s.answers[0];
    EXPECT_EQ(s.answers[0], number);  // a grid row differs only in the depth
    std::smatch m;
    ASSERT_TRUE(std::regex_search(s.user, m, std::regex("The special magic (\\w+) number is: ([0-9]{7})\\.")));
    EXPECT_EQ(m[2], number);
    EXPECT_EQ(s.answer_prefix, "The special magic " + std::string(m[1]) + " number is");
    const std::string question = "\n\nWhat is the special magic " + std::string(m[1]) + " number?";
    ASSERT_EQ(s.user.substr(s.user.size() - question.size()), question);
    const size_t context_len = s.user.size() - question.size();
    const size_t at = static_cast<size_t>(m.position(0));
    // Within one sentence (< 120 characters here) of the requested depth.
    EXPECT_NEAR(static_cast<double>(at), d / 100.0 * static_cast<double>(context_len), 120.0) << d;
    if (at > 0) {
      EXPECT_TRUE(s.user[at - 1] == ' ' && (s.user[at - 2] == '.' || s.user[at - 2] == '?')) << d;
    }
    const size_t end = at + m.length(0);
    if (d < 100.0) {
      EXPECT_EQ(s.user.substr(end, 7), " Essay ") << d;
    }
  }
}

TEST(Tasks, VariableTrackingChainIsCorrect) {
  for (int i = 0; i < 10; ++i) {
    SampleText s = GenerateRuler("vt", TestData(), SampleSeed(3, "vt", 1024, i), 30, 1024);
    // The question part follows the solved example.
    const size_t q = s.user.rfind("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n");
    ASSERT_NE(q, std::string::npos);
    ASSERT_GT(q, 0u);
    const std::string main = s.user.substr(q);
    std::smatch m;
    ASSERT_TRUE(std::regex_search(main, m, std::regex("\nQuestion: Find all variables that are assigned the value ([0-9]{5}) in the text above\\.$")));
    const std::string value = m[1];
    EXPECT_EQ(s.answer_prefix, "Answer: According to the chain(s) of variable assignment in the text above, 5 variables are assgined the value " + value + ", they are:");
    // Follow the chain from the value.
    std::map<std::string, std::string> assign;  // var -> right-hand side
    std::regex re("VAR ([A-Z]{5}) = (VAR ([A-Z]{5})|[0-9]{5})");
    for (auto it = std::sregex_iterator(main.begin(), main.end(), re); it != std::sregex_iterator(); ++it) {
      assign[(*it)[1]] = (*it)[3].matched ? std::string((*it)[3]) : std::string((*it)[2]);
    }
    ASSERT_EQ(assign.size(), 5u);
    std::vector<std::string> chain;
    std::string target = value;
    for (int hop = 0; hop < 5; ++hop) {
      for (const auto& [var, rhs] : assign) {
        if (rhs == target) {
          chain.push_back(var);
          target = var;
          break;
        }
      }
    }
    EXPECT_EQ(chain, s.answers);
    EXPECT_EQ(Count(main, "The grass is green."), 30);
    // The solved example uses 3-letter variables and gives its answer.
    const std::string icl = s.user.substr(0, q);
    EXPECT_TRUE(std::regex_search(icl, std::regex("they are: [A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3}\n\n$")));
  }
}

std::map<std::string, int> NumberedCounts(const std::string& list) {
  std::map<std::string, int> counts;
  std::regex re("(?:^| )([0-9]+)\\. (\\S+)");
  int expect = 1;
  for (auto it = std::sregex_iterator(list.begin(), list.end(), re); it != std::sregex_iterator(); ++it) {
    EXPECT_EQ(std::stoi((*it)[1]), expect++);
    counts[(*it)[2]]++;
  }
  return counts;
}

TEST(Tasks, CommonWordsFrequencies) {
  for (int length : {1024, 4096}) {
    SampleText s = GenerateRuler("cwe", TestData(), 77, 60, length);
    const std::string head = "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n";
    const std::string question = "\nQuestion: What are the 10 most common words in the above list?";
    EXPECT_EQ(s.answer_prefix, "Answer: The top 10 words that appear most often in the list are:");
    const size_t main_at = s.user.rfind(head);
    ASSERT_NE(main_at, std::string::npos);
    ASSERT_GT(main_at, 0u);  // a solved example comes first
    ASSERT_EQ(s.user.substr(s.user.size() - question.size()), question);
    const std::string list = s.user.substr(main_at + head.size(), s.user.size() - question.size() - main_at - head.size());
    std::map<std::string, int> counts = NumberedCounts(list);
    ASSERT_EQ(counts.size(), 60u);
    const int common = length < 4096 ? 6 : 30, uncommon = length < 4096 ? 1 : 3;
    for (const auto& [w, n] : counts) {
      const bool is_answer = std::find(s.answers.begin(), s.answers.end(), w) != s.answers.end();
      EXPECT_EQ(n, is_answer ? common : uncommon) << w;
    }
    // The example's own answer follows its question.
    const std::string example = s.user.substr(0, main_at);
    EXPECT_NE(example.find(question + " " + s.answer_prefix + " 1. "), std::string::npos);
    EXPECT_NE(example.find(" 10. "), std::string::npos);
  }
}

TEST(Tasks, FrequentWordsFollowZipf) {
  SampleText s = GenerateRuler("fwe", TestData(), 5, 2000, 4096);
  const std::string head = "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. ";
  const std::string question = "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text?";
  ASSERT_EQ(s.user.rfind(head, 0), 0u);
  ASSERT_EQ(s.user.substr(s.user.size() - question.size()), question);
  EXPECT_EQ(s.answer_prefix, "Answer: According to the coded text above, the three most frequently appeared words are:");
  std::map<std::string, int> counts;
  for (const auto& w : Words(s.user.substr(head.size(), s.user.size() - head.size() - question.size()))) counts[w]++;
  const double zeta2 = M_PI * M_PI / 6.0;
  EXPECT_EQ(counts["..."], static_cast<int>(2000 / zeta2));
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(counts[s.answers[k]], static_cast<int>(2000.0 / ((k + 2) * (k + 2)) / zeta2)) << k;
  }
  int others_max = 0;
  for (const auto& [w, n] : counts) {
    if (w != "..." && std::find(s.answers.begin(), s.answers.end(), w) == s.answers.end()) others_max = std::max(others_max, n);
  }
  EXPECT_LT(others_max, counts[s.answers[2]]);
  size_t present = 0;  // words whose Zipf count is at least 1 (of a vocabulary of 4096 / 50)
  for (int k = 1; k <= 4096 / 50; ++k) present += static_cast<int>(2000.0 / (k * k) / zeta2) >= 1;
  EXPECT_EQ(counts.size(), present);
}

TEST(Scoring, StringMatchAll) {
  EXPECT_DOUBLE_EQ(StringMatchAll("The numbers are 1234567 and 7654321.", {"1234567", "7654321"}), 1.0);
  EXPECT_DOUBLE_EQ(StringMatchAll("only 1234567", {"1234567", "7654321", "1111111", "2222222"}), 0.25);
  EXPECT_DOUBLE_EQ(StringMatchAll("ABCDE, fghij", {"abcde", "FGHIJ", "KLMNO"}), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(StringMatchAll("", {"x"}), 0.0);
  EXPECT_DOUBLE_EQ(StringMatchAll("anything", {}), 0.0);
  EXPECT_EQ(PostprocessPrediction("  a\x01\x02""b\n "), "a\n\nb");
  EXPECT_DOUBLE_EQ(NiahScore(" 1234567.", "1234567"), 1.0);
  EXPECT_DOUBLE_EQ(NiahScore(" 123456", "1234567"), 0.0);
}

TEST(Report, TablesPerLengthAndBudget) {
  ReportMeta meta;
  meta.lengths = {1024};
  meta.budgets = {256, 512};
  meta.policies = {"full", "asl"};
  meta.tasks = {"vt", "cwe", "niah"};
  meta.niah_depths = {0.0, 100.0};
  std::vector<RunResult> rs;
  auto add = [&](std::string task, std::string policy, int budget, double score, int layer, double depth = -1) {
    RunResult r;
    r.task = task, r.length = 1024, r.policy = policy, r.budget = budget, r.score = score, r.depth_percent = depth;
    r.prompt_tokens = 900;
    r.pruning.outcome = layer < 0 ? SelectionOutcome::kNone : SelectionOutcome::kSelected;
    r.pruning.selection_layer = layer;
    r.pruning.num_kv_tokens_kept = policy == "full" ? 27000 : 7680;
    r.pruning.num_kv_tokens_full = 27000;
    r.pruning.prefill_seconds = 0.5;
    r.pruning.prefill_token_layers = policy == "full" ? 27000 : 13500;
    rs.push_back(r);
  };
  add("vt", "full", 0, 1.0, -1);
  add("vt", "full", 0, 0.6, -1);
  add("cwe", "full", 0, 0.5, -1);
  add("vt", "asl", 256, 0.4, 12);
  add("vt", "asl", 256, 0.2, 12);
  add("cwe", "asl", 256, 0.1, -1);
  add("vt", "asl", 512, 1.0, 14);
  add("niah", "full", 0, 1.0, -1, 0.0);
  add("niah", "asl", 256, 0.0, 11, 100.0);
  const std::string md = ReportMarkdown(meta, rs);
  EXPECT_NE(md.find("## Context 1024 tokens, budget 256"), std::string::npos);
  EXPECT_NE(md.find("## Context 1024 tokens, budget 512"), std::string::npos);
  // full (budget-independent) appears under both budgets.
  EXPECT_NE(md.find("| vt | 80.0 | 30.0 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| vt | 80.0 | 100.0 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| cwe | 50.0 | – |"), std::string::npos) << md;
  EXPECT_NE(md.find("| **average** | **65.0** | **20.0** |"), std::string::npos) << md;
  EXPECT_NE(md.find("| vt | 12×2 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| cwe | none×1 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| asl | 4 | 0 | 900 | 7680 | 28.4 % | 50.0 % | 0.500 |"), std::string::npos) << md;
  EXPECT_NE(md.find("### asl @ budget 256"), std::string::npos);
  EXPECT_NE(md.find("| 1024 | – | 0.0 | 0.0 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| 1024 | 100.0 | – | 100.0 |"), std::string::npos) << md;
  nlohmann::json j = ReportJson(meta, rs);
  ASSERT_EQ(j["results"].size(), rs.size());
  EXPECT_EQ(j["results"][3]["pruning"]["selection_layer"], 12);
  EXPECT_EQ(j["results"][3]["pruning"]["prefill_token_layers"], 13500);
  EXPECT_EQ(j["results"][7]["depth_percent"], 0.0);
}

TEST(Report, JsonFileRoundTripsPlainAndGzip) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("asl_eval_json_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  nlohmann::json j = {{"meta", {{"seed", 7}, {"command", "asl-cli eval"}}}, {"results", nlohmann::json::array()}};
  for (int i = 0; i < 500; ++i) j["results"].push_back({{"task", "vt"}, {"index", i}, {"output", "the answer is x"}});
  const std::string plain = (dir / "r.json").string(), gz = (dir / "r.json.gz").string();
  ASSERT_TRUE(WriteJsonFile(plain, j).ok());
  ASSERT_TRUE(WriteJsonFile(gz, j).ok());
  // .gz is really gzip (magic 1f 8b) and smaller; both read back to the same document.
  std::ifstream g(gz, std::ios::binary);
  ASSERT_EQ(g.get(), 0x1f);
  ASSERT_EQ(g.get(), 0x8b);
  EXPECT_LT(fs::file_size(gz) * 5, fs::file_size(plain));
  for (const auto& p : {plain, gz}) {
    auto r = ReadJsonFile(p);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(*r, j) << p;
  }
  // A truncated archive, text that is not JSON, a missing file: each a clear error naming the file.
  fs::resize_file(gz, fs::file_size(gz) / 2);
  auto truncated = ReadJsonFile(gz);
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.status().message().find(gz), std::string::npos) << truncated.status().ToString();
  std::ofstream(plain) << "{\"results\": [";
  auto bad = ReadJsonFile(plain);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find(plain), std::string::npos);
  EXPECT_EQ(ReadJsonFile((dir / "none.json.gz").string()).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(WriteJsonFile((dir / "no" / "such" / "dir.json.gz").string(), j).ok());
  fs::remove_all(dir);
}

TEST(Data, SharedDataLoads) {
  const std::string dir = ASL_EVAL_DATA_DIR;
  if (!std::filesystem::exists(dir + "/pg-essays")) GTEST_SKIP() << "no " << dir;
  auto d = LoadEvalData(dir);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->nouns.size(), 6782u);
  EXPECT_EQ(d->adjectives.size(), 912u);
  EXPECT_EQ(d->verbs.size(), 1042u);
  EXPECT_GT(d->essays.size(), 50000);
  EXPECT_GT(d->cwe_words.size(), 8000u);
  EXPECT_FALSE(LoadEvalData("/nonexistent").ok());
}

}  // namespace
}  // namespace asl::eval

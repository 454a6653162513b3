// StopMatcher: stop strings across chunk boundaries, never emitted, held-back prefixes released
// once disambiguated, earliest match wins, Flush.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/sample/stop_matcher.h"

namespace asl::sample {
namespace {

// Feeds chunks; returns everything emitted (Push texts, then Flush when no match).
struct Outcome {
  std::string text;
  bool matched = false;
  std::string stop;
};

Outcome Feed(std::vector<std::string> stops, const std::vector<std::string>& chunks) {
  StopMatcher m(std::move(stops));
  Outcome r;
  for (const std::string& c : chunks) {
    StopMatcher::Result res = m.Push(c);
    r.text += res.text;
    if (res.matched) {
      r.matched = true;
      r.stop = res.stop_string;
      return r;
    }
  }
  r.text += m.Flush();
  return r;
}

TEST(StopMatcher, NoStopStringsPassesThrough) {
  StopMatcher m({});
  EXPECT_EQ(m.Push("hello").text, "hello");
  EXPECT_EQ(m.Flush(" world"), " world");
}

TEST(StopMatcher, StopSplitAcrossThreeChunks) {
  StopMatcher m({"<|end|>"});
  StopMatcher::Result a = m.Push("Hello <|");
  EXPECT_EQ(a.text, "Hello ");  // "<|" could start the stop string: held
  EXPECT_FALSE(a.matched);
  StopMatcher::Result b = m.Push("en");
  EXPECT_EQ(b.text, "");
  EXPECT_EQ(m.num_held_bytes(), 4u);
  StopMatcher::Result c = m.Push("d|> trailing");
  EXPECT_EQ(c.text, "");
  EXPECT_TRUE(c.matched);
  EXPECT_EQ(c.stop_string, "<|end|>");
  // Done: later calls emit nothing and keep reporting the match.
  StopMatcher::Result d = m.Push("more");
  EXPECT_EQ(d.text, "");
  EXPECT_TRUE(d.matched);
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcher, TextBeforeTheMatchInTheSameChunkIsEmitted) {
  Outcome r = Feed({"STOP"}, {"abc", "defSTOPghi"});
  EXPECT_EQ(r.text, "abcdef");
  EXPECT_TRUE(r.matched);
}

TEST(StopMatcher, PartialPrefixThatDoesNotMatchIsEmitted) {
  StopMatcher m({"</answer>"});
  EXPECT_EQ(m.Push("x </ans").text, "x ");
  EXPECT_EQ(m.Push("wer").text, "");  // "</answer" still a prefix
  StopMatcher::Result r = m.Push("ed>!");
  EXPECT_FALSE(r.matched);
  EXPECT_EQ(r.text, "</answered>!");
  EXPECT_EQ(m.num_held_bytes(), 0u);
}

TEST(StopMatcher, HeldPrefixRestartsInsideItself) {
  // "aab": "aaa" is no prefix of it, but its suffix "aa" still is: only the first "a" goes out.
  StopMatcher m({"aab"});
  EXPECT_EQ(m.Push("aa").text, "");
  StopMatcher::Result r = m.Push("a");
  EXPECT_EQ(r.text, "a");
  EXPECT_EQ(m.num_held_bytes(), 2u);
  r = m.Push("b");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.text, "");
}

TEST(StopMatcher, EarliestMatchWins) {
  // Both occur in one chunk: the one that ends first wins, whatever the list order.
  Outcome r = Feed({"world", "lo w"}, {"hello world"});
  EXPECT_EQ(r.text, "hel");
  EXPECT_EQ(r.stop, "lo w");
  r = Feed({"lo w", "world"}, {"hello world"});
  EXPECT_EQ(r.stop, "lo w");
  // Same end: the one that starts first (emits less).
  r = Feed({"c", "abc"}, {"xxabcd"});
  EXPECT_EQ(r.text, "xx");
  EXPECT_EQ(r.stop, "abc");
  // A longer stop string that is still pending does not delay a shorter one completing.
  r = Feed({"abcdef", "cd"}, {"ab", "cd", "ef"});
  EXPECT_EQ(r.text, "ab");
  EXPECT_EQ(r.stop, "cd");
}

TEST(StopMatcher, ChunkingDoesNotChangeTheOutcome) {
  const std::vector<std::string> stops{"\n\nUser:", "###", "User"};
  const std::string text = "Answer: 42.\n\nUs\n\nUser: next";
  const Outcome whole = Feed(stops, {text});
  // "User" ends one byte before "\n\nUser:" does, so it wins and the "\n\n" before it is emitted.
  EXPECT_EQ(whole.text, "Answer: 42.\n\nUs\n\n");
  EXPECT_EQ(whole.stop, "User");
  std::vector<std::string> bytes;
  for (char ch : text) bytes.emplace_back(1, ch);
  const Outcome byte_wise = Feed(stops, bytes);
  EXPECT_EQ(byte_wise.text, whole.text);
  EXPECT_EQ(byte_wise.stop, whole.stop);
}

TEST(StopMatcher, MatchAtTheVeryStart) {
  StopMatcher m({"###"});
  StopMatcher::Result r = m.Push("### heading");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.text, "");
}

TEST(StopMatcher, UnicodeStopStrings) {
  // "終わり" is 9 bytes; "。" is 3. Chunks split between characters only (valid UTF-8 input).
  StopMatcher m({"終わり", "。"});
  EXPECT_EQ(m.Push("これで終").text, "これで");
  EXPECT_EQ(m.Push("わ").text, "");
  StopMatcher::Result r = m.Push("りです");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.stop_string, "終わり");
  EXPECT_EQ(r.text, "");

  Outcome e = Feed({"🙂 bye"}, {"hi 🙂", " b", "ut no"});
  EXPECT_FALSE(e.matched);
  EXPECT_EQ(e.text, "hi 🙂 but no");
  e = Feed({"é"}, {"caf", "é!"});
  EXPECT_EQ(e.text, "caf");
}

TEST(StopMatcher, FlushReleasesHeldTextAndStillTruncatesAtAStop) {
  StopMatcher m({"<|im_end|>"});
  EXPECT_EQ(m.Push("done <|im").text, "done ");
  EXPECT_EQ(m.Flush(), "<|im");  // generation ended: the prefix was never completed
  EXPECT_FALSE(m.matched());

  StopMatcher n({"END"});
  EXPECT_EQ(n.Push("abc E").text, "abc ");
  EXPECT_EQ(n.Flush("ND tail"), "");  // the detokenizer's flush completed the stop string
  EXPECT_TRUE(n.matched());
  EXPECT_EQ(n.stop_string(), "END");
}

}  // namespace
}  // namespace asl::sample

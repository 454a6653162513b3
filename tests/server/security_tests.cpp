// asl_security: API key files and variables, the bearer check, TLS file loading and its errors
// (each naming the file), and the version line.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <fstream>
#include <string>
#include <vector>

#include "security/api_keys.h"
#include "security/grpc_security.h"
#include "version/version.h"

namespace asl::security {
namespace {

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path) << text;
  return path;
}

TEST(ApiKeys, FileOneKeyPerLineCommentsAndBlanksSkipped) {
  const std::string path = WriteTemp("keys.txt", "# operators\nalpha\n\n  beta  \r\nalpha\n#gamma\n");
  std::vector<std::string> keys;
  std::string error;
  ASSERT_TRUE(LoadApiKeys(path, "", &keys, &error)) << error;
  EXPECT_EQ(keys, (std::vector<std::string>{"alpha", "beta"}));
}

TEST(ApiKeys, VariableCommaOrSpaceSeparatedAndAddedToTheFile) {
  const std::string path = WriteTemp("keys2.txt", "one\n");
  ::setenv("ASL_TEST_KEYS", "two, three four", 1);
  std::vector<std::string> keys;
  std::string error;
  ASSERT_TRUE(LoadApiKeys(path, "ASL_TEST_KEYS", &keys, &error)) << error;
  EXPECT_EQ(keys, (std::vector<std::string>{"one", "two", "three", "four"}));
  ::setenv("ASL_TEST_KEYS", " , ", 1);
  EXPECT_FALSE(LoadApiKeys("", "ASL_TEST_KEYS", &keys, &error));
  EXPECT_NE(error.find("ASL_TEST_KEYS"), std::string::npos) << error;
  ::unsetenv("ASL_TEST_KEYS");
  ASSERT_TRUE(LoadApiKeys("", "ASL_TEST_KEYS", &keys, &error));
  EXPECT_TRUE(keys.empty());
}

TEST(ApiKeys, UnreadableOrEmptyFileNamesIt) {
  std::vector<std::string> keys;
  std::string error;
  EXPECT_FALSE(LoadApiKeys("/nonexistent/keys.txt", "", &keys, &error));
  EXPECT_NE(error.find("/nonexistent/keys.txt"), std::string::npos) << error;
  const std::string empty = WriteTemp("nokeys.txt", "# nothing\n\n");
  EXPECT_FALSE(LoadApiKeys(empty, "", &keys, &error));
  EXPECT_NE(error.find(empty), std::string::npos) << error;
}

TEST(ApiKeys, BearerCheck) {
  const ApiKeySet off;
  EXPECT_FALSE(off.enabled());
  EXPECT_TRUE(off.CheckAuthorization(""));
  const ApiKeySet keys({"sk-one", "sk-two"});
  EXPECT_TRUE(keys.CheckAuthorization("Bearer sk-one"));
  EXPECT_TRUE(keys.CheckAuthorization("bearer  sk-two "));
  EXPECT_FALSE(keys.CheckAuthorization(""));
  EXPECT_FALSE(keys.CheckAuthorization("sk-one"));
  EXPECT_FALSE(keys.CheckAuthorization("Basic sk-one"));
  EXPECT_FALSE(keys.CheckAuthorization("Bearer sk-on"));
  EXPECT_FALSE(keys.CheckAuthorization("Bearer sk-one1"));
  EXPECT_FALSE(keys.CheckAuthorization("Bearer "));
  EXPECT_FALSE(keys.CheckKey(""));
  EXPECT_EQ(BearerToken("Bearer abc"), "abc");
  EXPECT_EQ(BearerToken("Bearerabc"), "");
}

TEST(ServerTlsFiles, ErrorsNameTheFile) {
  ServerTls tls;
  std::string error;
  ASSERT_TRUE(LoadServerTls("", "", "", &tls, &error));
  EXPECT_FALSE(tls.enabled());
  EXPECT_FALSE(LoadServerTls("/c.pem", "", "", &tls, &error));
  EXPECT_FALSE(LoadServerTls("", "", "/ca.pem", &tls, &error));
  EXPECT_FALSE(LoadServerTls("/nonexistent/cert.pem", "/nonexistent/key.pem", "", &tls, &error));
  EXPECT_NE(error.find("/nonexistent/cert.pem"), std::string::npos) << error;
  const std::string not_pem = WriteTemp("notpem.pem", "hello\n");
  EXPECT_FALSE(LoadServerTls(not_pem, not_pem, "", &tls, &error));
  EXPECT_NE(error.find(not_pem), std::string::npos) << error;
  EXPECT_NE(error.find("PEM"), std::string::npos) << error;
  const std::string pem = WriteTemp("fake.pem", "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n");
  ASSERT_TRUE(LoadServerTls(pem, pem, "", &tls, &error)) << error;
  EXPECT_TRUE(tls.enabled());
}

TEST(ClientChannel, UnreadableCaNamesIt) {
  ClientSecurity s;
  s.tls = true;
  s.ca_file = "/nonexistent/ca.pem";
  std::string error;
  EXPECT_EQ(MakeClientChannel("127.0.0.1:1", s, grpc::ChannelArguments(), &error), nullptr);
  EXPECT_NE(error.find("/nonexistent/ca.pem"), std::string::npos) << error;
  s = ClientSecurity();
  s.api_key = "k";
  EXPECT_NE(MakeClientChannel("127.0.0.1:1", s, grpc::ChannelArguments(), &error), nullptr);
}

TEST(Version, LineHasNameVersionAndCommit) {
  const std::string line = VersionLine("asl-x");
  EXPECT_EQ(line.rfind("asl-x ", 0), 0u) << line;
  EXPECT_NE(line.find(Version()), std::string::npos);
  EXPECT_NE(line.find(std::string("(git ") + GitCommit() + ")"), std::string::npos) << line;
  EXPECT_STRNE(GitCommit(), "");
}

}  // namespace
}  // namespace asl::security

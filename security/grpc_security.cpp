#include "security/grpc_security.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/client_interceptor.h>

#include <utility>
#include <vector>

namespace asl::security {
namespace {

bool ReadPem(const std::string& what, const std::string& path, std::string* out, std::string* error) {
  if (!ReadTextFile(path, out, error)) {
    *error = what + ": " + *error;
    return false;
  }
  if (out->find("-----BEGIN ") == std::string::npos) {
    *error = what + ": " + path + ": not a PEM file (no -----BEGIN line)";
    return false;
  }
  return true;
}

// Adds the authorization metadata to every call of the channel.
class AuthInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit AuthInterceptor(const std::string* value) : value_(value) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", *value_});
    }
    methods->Proceed();
  }

 private:
  const std::string* value_;
};

class AuthInterceptorFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit AuthInterceptorFactory(const std::string& key) : value_("Bearer " + key) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new AuthInterceptor(&value_);
  }

 private:
  const std::string value_;  // the factory lives as long as the channel
};

}  // namespace

bool LoadServerTls(const std::string& cert_file, const std::string& key_file, const std::string& client_ca_file,
                   ServerTls* out, std::string* error) {
  *out = ServerTls();
  if (cert_file.empty() != key_file.empty()) {
    *error = "TLS needs both a certificate and its key (got only the " +
             std::string(cert_file.empty() ? "key" : "certificate") + ")";
    return false;
  }
  if (cert_file.empty()) {
    if (!client_ca_file.empty()) {
      *error = "a client CA (mutual TLS) needs TLS: give the certificate and key too";
      return false;
    }
    return true;
  }
  if (!ReadPem("TLS certificate", cert_file, &out->cert_pem, error)) return false;
  if (!ReadPem("TLS key", key_file, &out->key_pem, error)) return false;
  if (!client_ca_file.empty() && !ReadPem("TLS client CA", client_ca_file, &out->client_ca_pem, error)) return false;
  return true;
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const ServerTls& tls) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(tls.client_ca_pem.empty()
                                                ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                                : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = tls.client_ca_pem;
  options.pem_key_cert_pairs.push_back({tls.key_pem, tls.cert_pem});
  return grpc::SslServerCredentials(options);
}

grpc::Status CheckCallAuth(const ApiKeySet& keys, const grpc::ServerContextBase& context) {
  if (!keys.enabled()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing API key: send the metadata 'authorization: Bearer <key>'");
  }
  if (!keys.CheckAuthorization(std::string_view(it->second.data(), it->second.size()))) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid API key");
  }
  return grpc::Status::OK;
}

std::shared_ptr<grpc::Channel> MakeClientChannel(const std::string& target, const ClientSecurity& security,
                                                 grpc::ChannelArguments args, std::string* error) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (security.tls) {
    grpc::SslCredentialsOptions options;
    if (!security.ca_file.empty() && !ReadPem("TLS CA", security.ca_file, &options.pem_root_certs, error)) {
      return nullptr;
    }
    if (security.cert_file.empty() != security.key_file.empty()) {
      *error = "a TLS client certificate needs both the certificate and its key";
      return nullptr;
    }
    if (!security.cert_file.empty() &&
        (!ReadPem("TLS client certificate", security.cert_file, &options.pem_cert_chain, error) ||
         !ReadPem("TLS client key", security.key_file, &options.pem_private_key, error))) {
      return nullptr;
    }
    if (!security.server_name.empty()) args.SetSslTargetNameOverride(security.server_name);
    credentials = grpc::SslCredentials(options);
  } else if (!security.ca_file.empty() || !security.cert_file.empty()) {
    *error = "TLS files given without TLS";
    return nullptr;
  }
  if (security.api_key.empty()) return grpc::CreateCustomChannel(target, credentials, args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<AuthInterceptorFactory>(security.api_key));
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, credentials, args, std::move(interceptors));
}

}  // namespace asl::security

// TLS and API keys on gRPC, for asl-server (server credentials, the key check of every
// asl.v1.Generation call) and its clients (asl-gateway's backend channel, asl-loadtest): a channel
// with TLS from PEM files and a client interceptor that sends `authorization: Bearer KEY` on every
// call (an interceptor rather than call credentials, since gRPC sends call credentials only over
// TLS and a loopback deployment may run without it).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "security/api_keys.h"

namespace asl::security {

struct ServerTls {
  std::string cert_pem;       // certificate chain; empty: no TLS
  std::string key_pem;        // its private key
  std::string client_ca_pem;  // non-empty: clients must present a certificate signed by it (mTLS)
  bool enabled() const { return !cert_pem.empty(); }
};

// Reads the PEM files (cert and key both or neither; the client CA needs them). False with *error
// naming the flag's file when one cannot be read or is not PEM.
[[nodiscard]] bool LoadServerTls(const std::string& cert_file, const std::string& key_file,
                                 const std::string& client_ca_file, ServerTls* out, std::string* error);
// Insecure credentials when !tls.enabled().
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const ServerTls& tls);

// OK when `keys` is off or the call's metadata carries `authorization: Bearer <a key>`;
// otherwise UNAUTHENTICATED saying what was wrong (never the key).
grpc::Status CheckCallAuth(const ApiKeySet& keys, const grpc::ServerContextBase& context);

struct ClientSecurity {
  std::string api_key;        // sent as `authorization: Bearer KEY` on every call; empty: none
  bool tls = false;           // TLS to the server
  std::string ca_file;        // TLS roots (PEM); empty: the system's roots
  std::string cert_file;      // client certificate for mutual TLS (with key_file); empty: none
  std::string key_file;
  std::string server_name;    // the name the server certificate must carry; empty: the target's host
};

// A channel to `target` with `security` applied on top of `args`. nullptr with *error naming the
// file when a PEM file cannot be read.
std::shared_ptr<grpc::Channel> MakeClientChannel(const std::string& target, const ClientSecurity& security,
                                                 grpc::ChannelArguments args, std::string* error);

}  // namespace asl::security

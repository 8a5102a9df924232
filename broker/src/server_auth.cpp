#include "server_auth.hpp"

#include <algorithm>
#include <stdexcept>
#include <string_view>

#include "broker/curve_keys.hpp"
#include "metrics/log_fields.hpp"
#include "outbox/error.hpp"
#include "wire/zmq_io.hpp"

namespace broker::detail {

CurveAuth::CurveAuth(zmq::context_t& context, zmq::socket_t& router,
                     const CurveServerConfig& config, spdlog::logger& logger)
    : logger_(logger) {
  if (!zmq_has("curve"))
    throw outbox::Error(outbox::ErrorKind::io, "this libzmq was built without CURVE");
  auto secret = curve_key_to_binary(config.secret_key, "the CURVE secret key");
  for (const auto& key : config.allowed_client_keys) {
    allowed_clients_.push_back(curve_key_to_binary(key, "an allowed client key"));
  }
  zap_ = zmq::socket_t(context, zmq::socket_type::rep);
  zap_.set(zmq::sockopt::linger, 0);
  zap_.bind("inproc://zeromq.zap.01");
  router.set(zmq::sockopt::curve_server, 1);
  router.set(zmq::sockopt::curve_secretkey, zmq::buffer(secret.data(), secret.size()));
  router.set(zmq::sockopt::zap_domain, "outbox");
  logger_.info("CURVE on, {} allowed client keys{}", allowed_clients_.size(),
               allowed_clients_.empty() ? " (any client key accepted)" : "");
}

std::uint64_t CurveAuth::serve() {
  std::uint64_t refused = 0;
  while (true) {
    auto request = wire::receive_frames(zap_, zmq::recv_flags::dontwait, 10);
    if (!request) return refused;
    // ZAP 1.0 (rfc.zeromq.org/spec/27): version, request id, domain, address,
    // identity, mechanism, then the mechanism's credentials (CURVE: the key).
    auto frames = request->views();
    std::string request_id = frames.size() > 1 ? std::string(frames[1]) : std::string();
    bool allowed = false;
    std::string client_key;
    if (frames.size() >= 7 && frames[0] == "1.0" && frames[5] == "CURVE") {
      client_key = std::string(frames[6]);
      allowed = allowed_clients_.empty() ||
                std::find(allowed_clients_.begin(), allowed_clients_.end(), client_key) !=
                    allowed_clients_.end();
    }
    if (!allowed) {
      ++refused;
      const auto key = curve_key_to_z85(client_key);
      metrics::log(logger_, spdlog::level::warn, {{"event", "curve_refused"}, {"client_key", key}},
                   "refused CURVE client {}", key);
    }
    std::string_view reply_frames[] = {
        "1.0", request_id, allowed ? "200" : "400", allowed ? "OK" : "client key not allowed",
        "",    ""};
    for (std::size_t i = 0; i < std::size(reply_frames); ++i) {
      auto flags =
          i + 1 < std::size(reply_frames) ? zmq::send_flags::sndmore : zmq::send_flags::none;
      zap_.send(zmq::buffer(reply_frames[i].data(), reply_frames[i].size()), flags);
    }
  }
}

}  // namespace broker::detail

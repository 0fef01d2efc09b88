// The raw UCX floor of the network suites: one ucp context + worker per process, driven by
// the caller's thread busy-polling ucp_worker_progress (no progress thread, no sleeping),
// 8-byte active messages, one endpoint (client side: over sockaddr; server side: accepted).
#pragma once

#include <ucp/api/ucp.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "easysync/status.h"

namespace easysync::bench {

class RawUcxPeer {
 public:
  RawUcxPeer() = default;
  ~RawUcxPeer();  // force-closes the endpoint, destroys listener, worker and context
  RawUcxPeer(const RawUcxPeer&) = delete;
  RawUcxPeer& operator=(const RawUcxPeer&) = delete;

  // transports: UCX_TLS syntax; empty: UCX's default.
  Status Init(const std::string& transports);
  // Server: listens on 127.0.0.1, any free port (stored in *port).
  Status Listen(uint16_t* port);
  // Server: progresses until a client connected and its endpoint is accepted.
  bool AwaitConnection(std::chrono::seconds timeout);
  // Client: an endpoint to the server on 127.0.0.1:port.
  Status Connect(uint16_t port);

  // Sends v and progresses until UCX is done with the send buffer.
  bool Send(int64_t v);
  // Progresses until the next message arrives; false on timeout.
  bool AwaitMessage(std::chrono::seconds timeout, int64_t* v);
  // Flushes the endpoint (what was sent reaches the peer) and closes it.
  bool FlushAndClose();

 private:
  static ucs_status_t OnAm(void* arg, const void* header, size_t header_length, void* data,
                           size_t length, const ucp_am_recv_param_t* param);
  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static void OnConn(ucp_conn_request_h request, void* arg);
  bool Wait(ucs_status_ptr_t request);

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_listener_h listener_ = nullptr;
  ucp_conn_request_h conn_request_ = nullptr;
  ucp_ep_h ep_ = nullptr;
  uint64_t received_ = 0;  // messages handed to AwaitMessage so far + the one pending
  uint64_t consumed_ = 0;
  int64_t last_ = 0;
  int64_t send_buf_ = 0;
};

}  // namespace easysync::bench

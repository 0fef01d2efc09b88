// The raw UCX floor (see net_raw_ucx.h).
#include "net_raw_ucx.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

namespace easysync::bench {
namespace {

constexpr unsigned kAmId = 7;

Status UcxFailed(const char* what, ucs_status_t s) {
  return Status::IoError(std::string(what) + ": " + ucs_status_string(s));
}

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

}  // namespace

RawUcxPeer::~RawUcxPeer() {
  if (ep_ != nullptr) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    Wait(ucp_ep_close_nbx(ep_, &p));
  }
  if (listener_ != nullptr) ucp_listener_destroy(listener_);
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

Status RawUcxPeer::Init(const std::string& transports) {
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) return UcxFailed("ucp_config_read", s);
  if (!transports.empty()) s = ucp_config_modify(config, "TLS", transports.c_str());
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_AM;
  if (s == UCS_OK) s = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (s != UCS_OK) return UcxFailed("ucp_init", s);
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  s = ucp_worker_create(context_, &wp, &worker_);
  if (s != UCS_OK) return UcxFailed("ucp_worker_create", s);
  ucp_am_handler_param_t hp{};
  hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                  UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  hp.id = kAmId;
  hp.flags = UCP_AM_FLAG_WHOLE_MSG;
  hp.cb = &RawUcxPeer::OnAm;
  hp.arg = this;
  s = ucp_worker_set_am_recv_handler(worker_, &hp);
  return s == UCS_OK ? Status::Ok() : UcxFailed("ucp_worker_set_am_recv_handler", s);
}

Status RawUcxPeer::Listen(uint16_t* port) {
  const sockaddr_in addr = Loopback(0);
  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
  lp.sockaddr.addrlen = sizeof(addr);
  lp.conn_handler.cb = &RawUcxPeer::OnConn;
  lp.conn_handler.arg = this;
  ucs_status_t s = ucp_listener_create(worker_, &lp, &listener_);
  if (s != UCS_OK) return UcxFailed("ucp_listener_create", s);
  ucp_listener_attr_t la{};
  la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  s = ucp_listener_query(listener_, &la);
  if (s != UCS_OK) return UcxFailed("ucp_listener_query", s);
  *port = ntohs(reinterpret_cast<const sockaddr_in*>(&la.sockaddr)->sin_port);
  return Status::Ok();
}

void RawUcxPeer::OnConn(ucp_conn_request_h request, void* arg) {
  auto* self = static_cast<RawUcxPeer*>(arg);
  if (self->conn_request_ != nullptr || self->ep_ != nullptr) {
    ucp_listener_reject(self->listener_, request);
    return;
  }
  self->conn_request_ = request;
}

bool RawUcxPeer::AwaitConnection(std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (conn_request_ == nullptr) {
    ucp_worker_progress(worker_);
    if (std::chrono::steady_clock::now() > deadline) return false;
  }
  // The same endpoint settings as the hub's: peer error handling.
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                  UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.err_handler.cb = &RawUcxPeer::OnEpError;
  ep.conn_request = conn_request_;
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  return ucp_ep_create(worker_, &ep, &ep_) == UCS_OK;
}

Status RawUcxPeer::Connect(uint16_t port) {
  const sockaddr_in addr = Loopback(port);
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                  UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.err_handler.cb = &RawUcxPeer::OnEpError;
  ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  ep.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
  ep.sockaddr.addrlen = sizeof(addr);
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  const ucs_status_t s = ucp_ep_create(worker_, &ep, &ep_);
  return s == UCS_OK ? Status::Ok() : UcxFailed("ucp_ep_create", s);
}

// The peer leaving at the end (it exits once it has its last message) is expected; a failure
// during the ping-pong shows as a missing reply. Installing the handler keeps UCX from
// logging the error on stdout.
void RawUcxPeer::OnEpError(void*, ucp_ep_h, ucs_status_t) {}

ucs_status_t RawUcxPeer::OnAm(void* arg, const void*, size_t, void* data, size_t length,
                              const ucp_am_recv_param_t*) {
  auto* self = static_cast<RawUcxPeer*>(arg);
  if (length == sizeof(int64_t)) {
    std::memcpy(&self->last_, data, sizeof(int64_t));
    ++self->received_;
  }
  return UCS_OK;
}

bool RawUcxPeer::Wait(ucs_status_ptr_t request) {
  if (!UCS_PTR_IS_PTR(request)) return UCS_PTR_STATUS(request) == UCS_OK;
  ucs_status_t s;
  while ((s = ucp_request_check_status(request)) == UCS_INPROGRESS) ucp_worker_progress(worker_);
  ucp_request_free(request);
  return s == UCS_OK;
}

bool RawUcxPeer::Send(int64_t v) {
  send_buf_ = v;
  ucp_request_param_t p{};
  // As the EasySync protocol sends: the receiver learns the reply endpoint.
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_REPLY;
  return Wait(ucp_am_send_nbx(ep_, kAmId, nullptr, 0, &send_buf_, sizeof(send_buf_), &p));
}

bool RawUcxPeer::AwaitMessage(std::chrono::seconds timeout, int64_t* v) {
  uint32_t spins = 0;
  std::chrono::steady_clock::time_point deadline{};
  while (received_ == consumed_) {
    ucp_worker_progress(worker_);
    if (++spins == 0x10000) {  // the clock stays off the measured path
      spins = 0;
      const auto now = std::chrono::steady_clock::now();
      if (deadline == std::chrono::steady_clock::time_point{}) deadline = now + timeout;
      if (now > deadline) return false;
    }
  }
  ++consumed_;
  *v = last_;
  return true;
}

bool RawUcxPeer::FlushAndClose() {
  ucp_request_param_t p{};
  const bool ok = Wait(ucp_ep_flush_nbx(ep_, &p));
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = 0;
  Wait(ucp_ep_close_nbx(ep_, &p));
  ep_ = nullptr;
  return ok;
}

}  // namespace easysync::bench

// Admission over UDP (see admission.h).
#include "net/admission.h"

#include <poll.h>
#include <sodium.h>

#include <cerrno>
#include <cstring>

#include "net/tcp_filter.h"
#include "net/udp_socket.h"

namespace easysync::net::admission {
namespace {

constexpr int64_t kEpochSeconds = 30;

size_t BodyBytes(Type t) {
  switch (t) {
    case Type::kKnock:
    case Type::kChallenge:
      return 32;
    case Type::kProof:
      return 64;
    case Type::kAdmitted:
    case Type::kDenied:
      return 0;
  }
  return SIZE_MAX;
}

Status Bad(std::string_view why) {
  return Status::Corruption("admission datagram: " + std::string(why));
}

int64_t EpochOf(std::chrono::steady_clock::time_point now) {
  return std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count() /
         kEpochSeconds;
}

}  // namespace

bool IsAdmission(ByteSpan datagram) {
  uint32_t magic = 0;
  if (datagram.size() < sizeof(magic)) return false;
  for (size_t i = 0; i < sizeof(magic); ++i) magic |= uint32_t(uint8_t(datagram[i])) << (8 * i);
  return magic == kMagic;
}

std::vector<std::byte> Encode(const Message& m) {
  std::vector<std::byte> out(kHeaderBytes + BodyBytes(m.type), std::byte{0});
  for (size_t i = 0; i < 4; ++i) out[i] = std::byte(uint8_t(kMagic >> (8 * i)));
  out[4] = std::byte(kVersion);
  out[5] = std::byte(static_cast<uint8_t>(m.type));
  std::memcpy(out.data() + 8, m.nonce.data(), m.nonce.size());
  if (m.type == Type::kChallenge || m.type == Type::kProof) {
    std::memcpy(out.data() + kHeaderBytes, m.cookie.data(), m.cookie.size());
  }
  if (m.type == Type::kProof) {
    std::memcpy(out.data() + kHeaderBytes + 32, m.proof.data(), m.proof.size());
  }
  return out;
}

Result<Message> Decode(ByteSpan datagram) {
  if (datagram.size() < kHeaderBytes) return Bad("shorter than its header");
  if (!IsAdmission(datagram)) return Bad("bad magic number");
  if (uint8_t(datagram[4]) != kVersion) return Bad("unknown version");
  if (datagram[6] != std::byte{0} || datagram[7] != std::byte{0}) return Bad("reserved bits set");
  const auto type = static_cast<Type>(uint8_t(datagram[5]));
  const size_t body = BodyBytes(type);
  if (body == SIZE_MAX) return Bad("unknown type");
  if (datagram.size() != kHeaderBytes + body) return Bad("wrong length for its type");
  Message m;
  m.type = type;
  std::memcpy(m.nonce.data(), datagram.data() + 8, m.nonce.size());
  if (type == Type::kChallenge || type == Type::kProof) {
    std::memcpy(m.cookie.data(), datagram.data() + kHeaderBytes, m.cookie.size());
  }
  if (type == Type::kProof) {
    std::memcpy(m.proof.data(), datagram.data() + kHeaderBytes + 32, m.proof.size());
  }
  return m;
}

Mac Prove(std::string_view token, const Nonce& nonce, const Nonce& cookie) {
  return ComputeProof(token, kProofLabel, nonce, cookie);
}

Cookies::Cookies() {
  const Nonce n = RandomNonce();  // initializes libsodium
  std::memcpy(secret_.data(), n.data(), secret_.size());
}

Nonce Cookies::MakeIn(const sockaddr_storage& from, const Nonce& nonce, int64_t epoch) const {
  // The address without its port: a client's KNOCK and PROOF may leave from different
  // sockets, and admission is per address anyway.
  const IpAddress a = AddressOf(from).value_or(IpAddress{});
  uint8_t addr[17] = {};
  addr[0] = a.v6 ? 6 : 4;
  std::memcpy(addr + 1, a.bytes.data(), a.bytes.size());
  uint8_t e[8];
  for (size_t i = 0; i < 8; ++i) e[i] = uint8_t(uint64_t(epoch) >> (8 * i));
  crypto_generichash_state st;
  crypto_generichash_init(&st, secret_.data(), secret_.size(), kNonceBytes);
  crypto_generichash_update(&st, addr, sizeof(addr));
  crypto_generichash_update(&st, nonce.data(), nonce.size());
  crypto_generichash_update(&st, e, sizeof(e));
  Nonce cookie{};
  crypto_generichash_final(&st, cookie.data(), cookie.size());
  return cookie;
}

Nonce Cookies::Make(const sockaddr_storage& from, const Nonce& nonce,
                    std::chrono::steady_clock::time_point now) const {
  return MakeIn(from, nonce, EpochOf(now));
}

bool Cookies::Valid(const sockaddr_storage& from, const Nonce& nonce, const Nonce& cookie,
                    std::chrono::steady_clock::time_point now) const {
  const int64_t epoch = EpochOf(now);
  bool valid = false;
  for (int64_t e : {epoch, epoch - 1}) {
    const Nonce expected = MakeIn(from, nonce, e);
    valid |= sodium_memcmp(expected.data(), cookie.data(), cookie.size()) == 0;
  }
  return valid;
}

Status Knock(const std::string& host, uint16_t port, std::string_view token,
             std::chrono::milliseconds limit) {
  // Answers are taken from any address (the nonce tells this knock's): a hub answers from
  // the address it was asked at, but one of an earlier build bound to all its addresses
  // answers from the one the kernel picks.
  UdpAddress hub;
  EASYSYNC_ASSIGN_OR_RETURN(UdpSocket socket, UdpSocket::Open(host, port, &hub));
  Message out;
  out.type = Type::kKnock;
  out.nonce = RandomNonce();
  const auto deadline = std::chrono::steady_clock::now() + limit;
  auto wait = std::chrono::milliseconds(50);
  std::vector<std::byte> sent = Encode(out);
  std::byte buf[kMaxDatagram + 1];
  for (;;) {
    socket.Send(ByteSpan(sent.data(), sent.size()), &hub);
    const auto resend = std::min(deadline, std::chrono::steady_clock::now() + wait);
    wait *= 2;
    for (;;) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= resend) break;
      pollfd p{socket.fd(), POLLIN, 0};
      const auto ms = std::chrono::ceil<std::chrono::milliseconds>(resend - now).count();
      if (poll(&p, 1, static_cast<int>(ms)) <= 0) continue;
      if ((p.revents & POLLERR) != 0) {
        // An ICMP error (port, host or network unreachable): nothing will answer. The error
        // stays queued (IP_RECVERR), so waiting on would only find it again at once.
        int error = 0;
        socklen_t len = sizeof(error);
        getsockopt(socket.fd(), SOL_SOCKET, SO_ERROR, &error, &len);
        return Status::Unavailable("nothing answers on UDP port " + std::to_string(port) + " of " +
                                   host + ": " + std::strerror(error ? error : EIO));
      }
      UdpAddress from;
      const auto n = socket.Receive(std::span<std::byte>(buf, sizeof(buf)), &from);
      if (!n) continue;
      auto in = Decode(ByteSpan(buf, *n));
      if (!in.ok() || in->nonce != out.nonce) continue;  // not an answer to this knock
      if (in->type == Type::kAdmitted) return Status::Ok();
      if (in->type == Type::kDenied) {
        return Status::PermissionDenied("the hub at " + host + ":" + std::to_string(port) +
                                        " refused this client's proof: wrong token");
      }
      // The first CHALLENGE, or a new one (the hub restarted, or the epoch passed).
      if (in->type == Type::kChallenge && (out.type == Type::kKnock || in->cookie != out.cookie)) {
        out.type = Type::kProof;
        out.cookie = in->cookie;
        out.proof = Prove(token, out.nonce, in->cookie);
        sent = Encode(out);
        wait = std::chrono::milliseconds(50);
        break;  // send the proof now
      }
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status::Unavailable("no admission from the hub at " + host + ":" +
                                 std::to_string(port) + " over UDP within " +
                                 std::to_string(limit.count()) + " ms");
    }
  }
}

}  // namespace easysync::net::admission

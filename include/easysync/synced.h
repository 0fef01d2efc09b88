// The proxy layer: a synced object and its typed attributes.
//
//   auto client = easysync::shm_connect("my_cluster");
//   struct State : easysync::SyncedObject {
//     easysync::Synced<int64_t> score{this, "score", 0};
//     easysync::Synced<easysync::Tensor> weights{this, "weights"};
//     explicit State(easysync::Client& c) : SyncedObject(c, "State") {}
//   };
//
// A write publishes at once; a read returns the newest value this process can see without
// blocking (a cached copy, refreshed when the cluster has a newer version). Declaring an
// attribute with an initial value only initializes it when the cluster has no value yet.
//
// Thread-safety: a Synced<T> may be read and written from several threads.
// Errors: these methods throw easysync::Error (the Client methods return Status instead).
#pragma once

#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "easysync/client.h"
#include "easysync/value_traits.h"

namespace easysync {

struct AttrOptions {
  Transport transport = Transport::kDefault;
};

class SyncedObject {
 public:
  // `name` identifies the object in the cluster; `key` tells several instances apart.
  SyncedObject(Client& client, std::string name, std::string key = "",
               Transport transport = Transport::kDefault);
  virtual ~SyncedObject() = default;
  SyncedObject(const SyncedObject&) = delete;
  SyncedObject& operator=(const SyncedObject&) = delete;

  Client& client() const { return *client_; }
  // The object's identity: name, or name[key].
  const std::string& id() const { return id_; }
  Transport transport() const { return transport_; }

 private:
  Client* client_;
  std::string id_;
  Transport transport_;
};

template <class T>
class Synced {
  using Traits = ValueTraits<T>;

 public:
  // Declares the attribute without a value of its own: reads give T{} until someone writes.
  Synced(SyncedObject* owner, std::string_view name, AttrOptions options = {})
      : client_(&owner->client()), name_(name), options_(options) {
    Declare(*owner, nullptr);
  }
  // Declares the attribute; `initial` is published only if the cluster has no value yet.
  template <class U, class = std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                              !std::is_same_v<std::decay_t<U>, AttrOptions>>>
  Synced(SyncedObject* owner, std::string_view name, U&& initial, AttrOptions options = {})
      : client_(&owner->client()), name_(name), options_(options) {
    const T value(std::forward<U>(initial));
    Declare(*owner, &value);
  }

  Synced(const Synced&) = delete;
  Synced& operator=(const Synced&) = delete;

  // The newest value visible to this process. Never blocks on other processes.
  T get() const {
    std::lock_guard<std::mutex> lock(mu_);
    Refresh(/*live=*/true);
    return value_;
  }
  operator T() const { return get(); }  // NOLINT: reads like the plain member it replaces

  // Publishes v to the cluster; returns the new version.
  uint64_t set(const T& v) {
    uint64_t version;
    if constexpr (std::is_same_v<T, Tensor>) {
      version = ValueOrThrow(client_->WriteTensor(attr_, v.view()));  // no copy on the way
    } else {
      version = Traits::WithEncoding(v, [&](size_t size, auto&& encode) {
        return ValueOrThrow(client_->Write(attr_, size, encode));
      });
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (version > version_) {
      value_ = v;
      version_ = version;
    }
    return version;
  }
  Synced& operator=(const T& v) {
    set(v);
    return *this;
  }

  // Version of the value get() returns now (0: none yet).
  uint64_t version() const {
    std::lock_guard<std::mutex> lock(mu_);
    Refresh(/*live=*/true);
    return version_;
  }
  // Metadata of the newest value read (writer, clock, write time).
  UpdateInfo info() const {
    std::lock_guard<std::mutex> lock(mu_);
    Refresh(/*live=*/true);
    // set() knows the version it wrote but not its clock or time: read them, not the value.
    // A newer version that came meanwhile is read whole.
    if (info_.version != version_) {
      auto r = client_->ReadInfoIfNewer(attr_, version_ - 1);
      if (!r.ok()) throw Error(r.status());
      if (r.value() && r.value()->version == version_) {
        info_ = *r.value();
      } else {
        ReadNewerThan(version_ - 1, /*record=*/false, /*live=*/false);
      }
    }
    return info_;
  }

  // Waits until a version newer than the one get() last returned exists; false on timeout.
  bool wait_for_change(std::chrono::nanoseconds timeout) const {
    uint64_t seen;
    {
      std::lock_guard<std::mutex> lock(mu_);
      seen = version_;
    }
    auto newer = [&] { return client_->LatestVersion(attr_) > seen; };
    const bool changed = client_->WaitUntil(newer, Clock::now() + timeout);
    if (changed) {
      std::lock_guard<std::mutex> lock(mu_);
      Refresh(/*live=*/true);
    }
    return changed;
  }

  // Calls fn(new value) on the client's callback thread after each change, once per version
  // (versions may coalesce; each value comes at most once, newer than the one before).
  Subscription on_change(std::function<void(const T&)> fn) const {
    // A callback that ran late read a version newer than the one that woke it; the callback
    // thread's next round, woken by that version, must not deliver it again.
    auto delivered = std::make_shared<uint64_t>(0);
    return client_->OnChange(attr_, [this, fn = std::move(fn), delivered] {
      std::optional<T> value;
      {
        std::lock_guard<std::mutex> lock(mu_);
        Refresh(/*live=*/true);
        if (version_ <= *delivered) return;
        *delivered = version_;
        value.emplace(value_);
      }
      fn(*value);
    });
  }

  AttrId attr() const { return attr_; }
  const std::string& name() const { return name_; }
  AttrOptions options() const { return options_; }

 private:
  void Declare(const SyncedObject& owner, const T* initial) {
    // The attribute's own choice, else its object's.
    const Transport transport =
        options_.transport != Transport::kDefault ? options_.transport : owner.transport();
    if (initial != nullptr) {
      attr_ = Traits::WithEncoding(*initial, [&](size_t size, auto&& encode) {
        Client::Initial init{size, encode};
        return ValueOrThrow(client_->Declare(owner.id(), name_, Traits::kKind, &init, transport));
      });
    } else {
      attr_ = ValueOrThrow(client_->Declare(owner.id(), name_, Traits::kKind, nullptr, transport));
    }
    std::lock_guard<std::mutex> lock(mu_);
    Refresh(/*live=*/false);  // the cluster's current value: a snapshot, not a live update
  }
  // Reads the cluster's value into the cache when it is newer. REQUIRES: mu_ is held.
  void Refresh(bool live) const {
    if (client_->LatestVersion(attr_) <= version_) return;
    ReadNewerThan(version_, /*record=*/true, live);
  }
  void ReadNewerThan(uint64_t have, bool record, bool live) const {
    std::optional<UpdateInfo> read;
    if constexpr (std::is_same_v<T, Tensor>) {
      if (client_->CanReadShared()) {
        // Network mode: the tensor borrows the replica's bytes (copy on write), no copy.
        auto r = client_->ReadSharedIfNewer(attr_, have);
        if (!r.ok()) throw Error(r.status());
        if (r.value()) {
          const Status st =
              Traits::DecodeShared(std::move(r.value()->owner), r.value()->bytes, &value_);
          if (!st.ok()) throw Error(st);
          read = r.value()->info;
        }
        return Record(read, record, live);
      }
    }
    auto r = client_->ReadIfNewer(attr_, have,
                                  [&](ByteSpan bytes) { return Traits::Decode(bytes, &value_); });
    if (!r.ok()) throw Error(r.status());
    Record(r.value(), record, live);
  }
  void Record(const std::optional<UpdateInfo>& read, bool record, bool live) const {
    if (!read) return;
    info_ = *read;
    if (record) client_->RecordApplied(info_, live);
    version_ = info_.version;
  }

  Client* client_;
  std::string name_;
  AttrOptions options_;
  AttrId attr_;
  mutable std::mutex mu_;  // guards the cache: value_, info_, version_
  mutable T value_{};
  mutable UpdateInfo info_{};
  mutable uint64_t version_ = 0;
};

}  // namespace easysync

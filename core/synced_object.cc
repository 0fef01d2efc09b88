#include "easysync/synced.h"

namespace easysync {

SyncedObject::SyncedObject(Client& client, std::string name, std::string key, Transport transport)
    : client_(&client), id_(std::move(name)), transport_(transport) {
  if (id_.empty()) throw Error(Status::InvalidArgument("a synced object needs a name"));
  if (!key.empty()) id_ += "[" + key + "]";
}

}  // namespace easysync

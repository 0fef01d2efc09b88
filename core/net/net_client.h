// NetClient internals reachable by tests (the public API is easysync/net.h).
#pragma once

#include <memory>

#include "easysync/net.h"

namespace easysync::net {

// TryConnect speaking protocol `version` (tests check that a hub rejects other versions).
Result<std::shared_ptr<Client>> TryConnectWithVersion(const NetOptions& options, uint16_t version);

}  // namespace easysync::net

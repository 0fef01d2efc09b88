// EasySync: keep objects (scalars, strings, nested values, tensors) in sync across
// processes or machines. Include this header, call shm_connect() (or connect() to a hub),
// declare a SyncedObject.
#pragma once

#include "easysync/client.h"
#include "easysync/dtype.h"
#include "easysync/net.h"
#include "easysync/stats.h"
#include "easysync/status.h"
#include "easysync/synced.h"
#include "easysync/tensor.h"
#include "easysync/value.h"
#include "easysync/value_traits.h"

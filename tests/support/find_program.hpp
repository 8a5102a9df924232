// Finding a server program the tests, the fault suite or the benchmarks start
// (nats-server, redis-server), which Debian may install outside every PATH.
#pragma once

#include <string>

namespace test_support {

// The executable `name`: the path in the environment variable
// `override_variable` when that is given and set (empty when that path is not
// an executable), else the first `name` on PATH or in /usr/sbin, /usr/bin,
// /sbin, /usr/local/sbin and /usr/local/bin (where Debian installs servers
// that are not on every PATH). Empty when there is none.
std::string find_program(const std::string& name, const char* override_variable = nullptr);

}  // namespace test_support

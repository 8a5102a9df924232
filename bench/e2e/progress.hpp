// Progress lines on stderr ("[  12.3 s] outbox: drain ..."), so stdout stays
// for the table or the JSON object. Thread-safe.
#pragma once

#include <string>

namespace bench {

void progress(const std::string& line);
// false: progress lines are dropped (--quiet).
void set_progress_enabled(bool enabled);

}  // namespace bench

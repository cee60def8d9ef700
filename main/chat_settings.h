// What chat's /set changes: the sampling parameters and the reply length, by the names of kiln's flags
// (temp, top-k, top-p, min-p, repeat-penalty, seed, n), and /read's file to message.
#pragma once

#include <cstdint>
#include <string>

#include "engine/sampler.h"

namespace kiln {

struct ReplySettings {
  SamplerParams sampling;
  int64_t max_tokens = -1;  // -1: until the end of the turn
};

// "temp 0.8, top-k 40, ...": every setting /set takes, with its value.
[[nodiscard]] std::string describe(const ReplySettings& settings);

// settings with `name` set to `value`, checked. Throws kiln::Error naming what was wrong and the names.
[[nodiscard]] ReplySettings with_setting(const ReplySettings& settings, const std::string& name,
                                         const std::string& value);

// A text file's contents as one message, trailing whitespace trimmed. Throws kiln::Error when it cannot be
// read, is empty, or is larger than 1 MiB.
[[nodiscard]] std::string read_message_file(const std::string& path);

}  // namespace kiln

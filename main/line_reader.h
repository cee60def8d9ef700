// Lines of input for an interactive program: from a terminal with line editing and a history file
// (libedit), or from any other file descriptor as plain lines with no prompt and no echo.
#pragma once

#include <atomic>
#include <memory>
#include <string>

namespace kiln {

enum class ReadStatus { Line, Interrupted, End };

class LineReader {
 public:
  virtual ~LineReader() = default;
  // Reads one line, without its line ending, into line. A terminal reader shows prompt and reports
  // Ctrl-C as Interrupted and Ctrl-D on an empty line as End.
  virtual ReadStatus read_line(const std::string& prompt, std::string& line) = 0;
};

// interrupted is set by a SIGINT handler; the readers wait in poll, which a signal always wakes, and
// clear the flag when they act on it.

// Reads fd (not a terminal) to its end. Returns Interrupted when *interrupted is set while it waits.
[[nodiscard]] std::unique_ptr<LineReader> make_stream_reader(int fd, std::atomic<bool>* interrupted);

// Edits lines on the terminal on stdin; the prompt and the editing go to stdout when it is a terminal,
// else to stderr. Each non-blank line is added to the history, kept in history_path ("" : none). Ctrl-C,
// as a key or as *interrupted set while it waits, returns Interrupted. Throws kiln::Error when the
// terminal cannot be set up.
[[nodiscard]] std::unique_ptr<LineReader> make_terminal_reader(const std::string& history_path,
                                                               std::atomic<bool>* interrupted);

// $KILN_HISTORY, else ~/.cache/kiln/chat_history (its folder created), else "" (no HOME).
[[nodiscard]] std::string default_history_path();

}  // namespace kiln

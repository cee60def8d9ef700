#include "main/line_reader.h"

#include <fmt/format.h>
#include <histedit.h>
#include <langinfo.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cwchar>
#include <clocale>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "engine/error.h"

namespace kiln {
namespace {

// Waits for input on fd for at most 100 ms: poll's result. A waiting reader checks its Ctrl-C flag between
// waits: the signal's handler may run on another thread (the CPU backend's pool), or just before the
// wait began, and then never interrupts it.
int poll_input(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 100);
}

void strip_line_ending(std::string& line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
}

class StreamReader final : public LineReader {
 public:
  StreamReader(int fd, std::atomic<bool>* interrupted) : fd_(fd), interrupted_(interrupted) {}

  ReadStatus read_line(const std::string&, std::string& line) override {
    for (;;) {
      if (const size_t end = buffer_.find('\n', scanned_); end != std::string::npos) {
        line.assign(buffer_, 0, end);
        buffer_.erase(0, end + 1);
        scanned_ = 0;
        strip_line_ending(line);
        return ReadStatus::Line;
      }
      scanned_ = buffer_.size();
      if (at_end_) {
        if (buffer_.empty()) return ReadStatus::End;
        line = std::move(buffer_);
        buffer_.clear();
        scanned_ = 0;
        strip_line_ending(line);
        return ReadStatus::Line;
      }
      if (!fill()) return ReadStatus::Interrupted;
    }
  }

 private:
  // Reads what is available; false when *interrupted_ was set before or while it waited.
  bool fill() {
    for (;;) {
      if (interrupted_ && interrupted_->exchange(false)) return false;
      const int ready = poll_input(fd_);
      if (ready <= 0) {  // a signal or the recheck interval: look at the flag again
        KILN_CHECK(ready == 0 || errno == EINTR, "cannot read the input: {}", std::strerror(errno));
        continue;
      }
      char chunk[1 << 16];
      const ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n > 0) {
        buffer_.append(chunk, size_t(n));
      } else if (n == 0) {
        at_end_ = true;
      } else {
        KILN_CHECK(errno == EINTR || errno == EAGAIN, "cannot read the input: {}", std::strerror(errno));
        continue;
      }
      return true;
    }
  }

  int fd_;
  std::atomic<bool>* interrupted_;
  std::string buffer_;
  size_t scanned_ = 0;  // bytes of buffer_ known to hold no newline
  bool at_end_ = false;
};

// libedit decodes input with the C library's multibyte functions: without a UTF-8 locale it would
// mangle every non-ASCII character typed.
void use_utf8_input() {
  if (std::setlocale(LC_CTYPE, "") && std::strcmp(nl_langinfo(CODESET), "UTF-8") == 0) return;
  if (!std::setlocale(LC_CTYPE, "C.UTF-8")) std::setlocale(LC_CTYPE, "C");
}

class TerminalReader final : public LineReader {
 public:
  TerminalReader(std::string history_path, std::atomic<bool>* interrupted)
      : history_path_(std::move(history_path)), signalled_(interrupted) {
    use_utf8_input();
    history_ = history_init();
    KILN_CHECK(history_ != nullptr, "cannot set up the input history");
    editor_ = el_init("kiln", stdin, ::isatty(STDOUT_FILENO) ? stdout : stderr, stderr);
    if (editor_ == nullptr) {
      history_end(history_);
      fail("cannot set up line editing on this terminal");
    }
    HistEvent event;
    history(history_, &event, H_SETSIZE, 1000);
    history(history_, &event, H_SETUNIQUE, 1);
    if (!history_path_.empty()) history(history_, &event, H_LOAD, history_path_.c_str());  // may not exist yet

    el_set(editor_, EL_CLIENTDATA, static_cast<void*>(this));
    el_set(editor_, EL_EDITOR, "emacs");
    el_set(editor_, EL_PROMPT, &TerminalReader::prompt_text);
    el_set(editor_, EL_GETCFN, &TerminalReader::read_char);
    el_set(editor_, EL_HIST, history, history_);
    el_source(editor_, nullptr);  // the user's ~/.editrc
    // Ctrl-C at the prompt is a key, not a signal, so it can discard the line without unwinding libedit.
    el_set(editor_, EL_SETTY, "-d", "-isig", nullptr);
    // The wide call: the narrow one copies the two names and never frees them.
    el_wset(editor_, EL_ADDFN, L"kiln-interrupt", L"discard the line", &TerminalReader::on_ctrl_c);
    el_set(editor_, EL_BIND, "^C", "kiln-interrupt", nullptr);
  }

  ~TerminalReader() override {
    el_end(editor_);  // restores the terminal
    history_end(history_);
  }
  TerminalReader(const TerminalReader&) = delete;
  TerminalReader& operator=(const TerminalReader&) = delete;

  ReadStatus read_line(const std::string& prompt, std::string& line) override {
    prompt_ = prompt;
    interrupted_ = false;
    int count = 0;
    const char* text = el_gets(editor_, &count);
    if (interrupted_) return ReadStatus::Interrupted;
    if (text == nullptr || count <= 0) return ReadStatus::End;
    line.assign(text, size_t(count));
    strip_line_ending(line);
    remember(line);
    return ReadStatus::Line;
  }

 private:
  static char* prompt_text(EditLine* editor) {
    return self(editor)->prompt_.data();
  }

  // libedit's own reader retries a read that a signal interrupted; this one turns a Ctrl-C that came as
  // a signal (typed before the terminal was switched to editing, or sent by kill) into the Ctrl-C key.
  static int read_char(EditLine* editor, wchar_t* out) {
    TerminalReader* me = self(editor);
    char bytes[MB_LEN_MAX];
    size_t n_bytes = 0;
    for (;;) {
      if (me->signalled_ && me->signalled_->exchange(false)) {
        *out = 0x03;
        return 1;
      }
      const int ready = poll_input(STDIN_FILENO);
      if (ready == 0 || (ready < 0 && errno == EINTR)) continue;
      if (ready < 0) return -1;
      const ssize_t n = ::read(STDIN_FILENO, bytes + n_bytes, 1);
      if (n == 0) return 0;
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return -1;
      }
      ++n_bytes;
      std::mbstate_t state{};
      const size_t used = std::mbrtowc(out, bytes, n_bytes, &state);
      if (used == size_t(-2) && n_bytes < sizeof bytes) continue;  // more bytes of this character to come
      if (used == size_t(-1) || used == size_t(-2)) {
        n_bytes = 0;  // not a character: drop the bytes, as libedit does
        continue;
      }
      if (used == 0) *out = 0;
      return 1;
    }
  }

  // Ends the line as Enter would, marked as interrupted, with "^C" shown after the text.
  static unsigned char on_ctrl_c(EditLine* editor, int) {
    self(editor)->interrupted_ = true;
    const LineInfo* info = el_line(editor);
    el_cursor(editor, int(info->lastchar - info->cursor));
    el_insertstr(editor, "^C");
    el_push(editor, "\n");
    return CC_REFRESH;
  }

  static TerminalReader* self(EditLine* editor) {
    void* data = nullptr;
    el_get(editor, EL_CLIENTDATA, &data);
    return static_cast<TerminalReader*>(data);
  }

  void remember(const std::string& line) {
    if (line.find_first_not_of(" \t") == std::string::npos) return;
    HistEvent event;
    history(history_, &event, H_ENTER, line.c_str());
    if (history_path_.empty()) return;
    if (history(history_, &event, H_SAVE, history_path_.c_str()) < 0 && !warned_) {
      fmt::print(stderr, "note: cannot write the history file '{}' (set KILN_HISTORY)\n", history_path_);
      warned_ = true;
    }
  }

  EditLine* editor_ = nullptr;
  History* history_ = nullptr;
  std::string history_path_;
  std::string prompt_;
  std::atomic<bool>* signalled_;
  bool interrupted_ = false;
  bool warned_ = false;
};

}  // namespace

std::unique_ptr<LineReader> make_stream_reader(int fd, std::atomic<bool>* interrupted) {
  return std::make_unique<StreamReader>(fd, interrupted);
}

std::unique_ptr<LineReader> make_terminal_reader(const std::string& history_path, std::atomic<bool>* interrupted) {
  return std::make_unique<TerminalReader>(history_path, interrupted);
}

std::string default_history_path() {
  if (const char* path = std::getenv("KILN_HISTORY"); path && *path) return path;
  const char* home = std::getenv("HOME");
  if (!home || !*home) return {};
  const std::filesystem::path dir = std::filesystem::path(home) / ".cache" / "kiln";
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  return (dir / "chat_history").string();
}

}  // namespace kiln

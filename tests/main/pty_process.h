// Runs a program on a pseudo-terminal, as a person at a terminal would: what it writes is collected,
// keys are sent as bytes (\r for Enter, \x03 for Ctrl-C), and every wait has a deadline.
#pragma once

#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

extern char** environ;

namespace kiln::testing {

class PtyProcess {
 public:
  // env: "NAME=value" entries that replace or add to this process's environment.
  PtyProcess(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
    std::vector<std::string> environment = env;
    for (char** e = environ; *e; ++e) {
      const std::string entry = *e;
      bool replaced = false;
      for (const auto& mine : env) replaced |= entry.substr(0, entry.find('=') + 1) == mine.substr(0, mine.find('=') + 1);
      if (!replaced) environment.push_back(entry);
    }
    // Built before the fork: the child only calls execve.
    std::vector<char*> args, envp;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (const auto& e : environment) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    winsize size{24, 100, 0, 0};
    pid_ = ::forkpty(&fd_, nullptr, nullptr, &size);
    if (pid_ == 0) {
      ::execve(args[0], args.data(), envp.data());
      ::_exit(127);
    }
  }
  ~PtyProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  PtyProcess(const PtyProcess&) = delete;
  PtyProcess& operator=(const PtyProcess&) = delete;

  bool started() const { return pid_ > 0; }
  const std::string& output() const { return output_; }

  void send(std::string_view keys) {
    while (!keys.empty()) {
      const ssize_t n = ::write(fd_, keys.data(), keys.size());
      if (n <= 0) return;
      keys.remove_prefix(size_t(n));
    }
  }

  // Reads until done() holds; false when the deadline passes or the program closes the terminal first.
  bool wait_until(const std::function<bool()>& done, double timeout_s) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    while (!done()) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0 || !pump(int(std::min<long long>(left, 20)))) return done();
    }
    return true;
  }

  // Waits until the terminal is (editing) or is not (!editing) in a line editor's raw mode, where
  // Ctrl-C is a key rather than a signal. Keys sent before an editor switches the mode would be echoed
  // and read by the terminal itself.
  bool wait_for_editing(bool editing, double timeout_s) {
    return wait_until([&] {
      termios mode = {};
      return ::tcgetattr(fd_, &mode) == 0 && ((mode.c_lflag & ISIG) == 0) == editing;
    }, timeout_s);
  }

  // The position just after the first `text` at or after `from`, or npos at the deadline.
  size_t wait_for(std::string_view text, size_t from, double timeout_s) {
    wait_until([&] { return output_.find(text, from) != std::string::npos; }, timeout_s);
    const size_t at = output_.find(text, from);
    return at == std::string::npos ? at : at + text.size();
  }

  // The exit code (128 + signal when killed by one), or -1 when it has not ended by the deadline; it
  // is then killed.
  int wait_exit(double timeout_s) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    for (;;) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (Clock::now() >= deadline) return -1;  // the destructor kills it
      if (!pump(50)) ::usleep(20000);
    }
  }

 private:
  using Clock = std::chrono::steady_clock;

  // Appends what arrives within timeout_ms; false once the terminal is closed.
  bool pump(int timeout_ms) {
    pollfd p{fd_, POLLIN, 0};
    const int ready = ::poll(&p, 1, timeout_ms);
    if (ready <= 0) return ready == 0;
    char buffer[4096];
    const ssize_t n = ::read(fd_, buffer, sizeof buffer);
    if (n <= 0) return false;  // EIO: the program has closed its side
    output_.append(buffer, size_t(n));
    return true;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  std::string output_;
};

}  // namespace kiln::testing

// Ctrl-C for the commands that stop cleanly: a SIGINT handler installed for a scope and the previous one
// restored after it (also when an exception leaves the scope).
#pragma once

#include <signal.h>

namespace kiln {

class SigintScope {
 public:
  // flags: SA_RESTART keeps interrupted reads and writes going; SA_RESETHAND makes the handler run once,
  // so a second Ctrl-C ends the process at once (the default action) when the first is taking a while.
  SigintScope(void (*handler)(int), int flags) {
    struct sigaction action = {};
    action.sa_handler = handler;
    action.sa_flags = flags;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGINT, &action, &previous_);
  }
  ~SigintScope() { ::sigaction(SIGINT, &previous_, nullptr); }
  SigintScope(const SigintScope&) = delete;
  SigintScope& operator=(const SigintScope&) = delete;

 private:
  struct sigaction previous_ = {};
};

}  // namespace kiln

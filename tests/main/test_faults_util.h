// Shared by the fault tests: a tiny model converted to .kiln (and one with an infinity planted in a
// weight), and a kiln child process that a test can signal while it runs.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "convert/safetensors_reader.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/convert/tiny_hf_folder.h"
#include "tests/run_process.h"

namespace kiln::testing {

// tiny_llama_gqa_tied (2 layers, 256 byte tokens, no end-of-turn token: it writes until told to stop)
// as a Hugging Face folder and as dir/tiny.kiln; with an infinity in layer 1's MLP down projection as
// dir/nonfinite.kiln.
struct TinyModels {
  TempDir dir;
  std::filesystem::path folder;
  std::string kiln, nonfinite;

  TinyModels() {
    folder = copy_tiny_model(dir.path(), "llama_gqa_tied");
    write_byte_tokenizer(folder);
    kiln = dir.file("tiny.kiln");
    convert(folder, kiln);

    const std::filesystem::path broken = dir.path() / "broken";
    std::filesystem::create_directories(broken);
    for (const auto& entry : std::filesystem::directory_iterator(folder))
      std::filesystem::copy_file(entry.path(), broken / entry.path().filename());
    uint64_t offset = 0;
    {
      const SafetensorsFile weights = SafetensorsFile::open((broken / "model.safetensors").string());
      offset = weights.tensor("model.layers.1.mlp.down_proj.weight").offset;
    }
    const float inf = std::numeric_limits<float>::infinity();
    std::fstream file(broken / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(std::streamoff(offset));
    file.write(reinterpret_cast<const char*>(&inf), sizeof inf);
    file.close();
    nonfinite = dir.file("nonfinite.kiln");
    convert(broken, nonfinite);
  }

  static void convert(const std::filesystem::path& source, const std::string& out) {
    const ProcessResult r = run_kiln({"convert", source.string(), "-o", out, "--type", "f32", "-q"});
    if (r.exit_code != 0) throw std::runtime_error("converting the tiny model failed: " + r.err);
  }
};

// A kiln process whose stdin stays open and whose output is read as it comes, so a test can wait for
// a point in the run and signal it there.
class RunningKiln {
 public:
  explicit RunningKiln(std::vector<std::string> args) {
    args.insert(args.begin(), KILN_BINARY);
    int in[2], out[2], err[2];
    if (::pipe(in) || ::pipe(out) || ::pipe(err)) throw std::runtime_error("pipe failed");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0), ::dup2(out[1], 1), ::dup2(err[1], 2);
      for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) ::close(fd);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(in[0]), ::close(out[1]), ::close(err[1]);
    stdin_ = in[1], fds_[0] = out[0], fds_[1] = err[0];
  }
  ~RunningKiln() {
    if (pid_ > 0 && !waited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    for (int fd : {stdin_, fds_[0], fds_[1]})
      if (fd >= 0) ::close(fd);
  }
  RunningKiln(const RunningKiln&) = delete;
  RunningKiln& operator=(const RunningKiln&) = delete;

  void write(const std::string& text) { (void)!::write(stdin_, text.data(), text.size()); }
  void signal(int sig) { ::kill(pid_, sig); }

  // Reads until stdout (which_stderr: stderr) holds `text`; false when the process ends or the time passes.
  bool wait_for(const std::string& text, bool which_stderr = false, double seconds = 60) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    const std::string& sink = which_stderr ? result_.err : result_.out;
    while (sink.find(text) == std::string::npos) {
      if (std::chrono::steady_clock::now() > deadline || !read_some(100)) return sink.find(text) != std::string::npos;
    }
    return true;
  }

  // Reads until stdout holds at least n bytes; false when the process ends or the time passes.
  bool wait_for_bytes(size_t n, double seconds = 60) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (result_.out.size() < n)
      if (std::chrono::steady_clock::now() > deadline || !read_some(100)) return result_.out.size() >= n;
    return true;
  }

  // Closes stdin (unless keep_input: the process must end by itself), reads everything left and waits
  // for the exit, killing the process after `seconds`.
  ProcessResult finish(double seconds = 60, bool keep_input = false) {
    if (!keep_input) {
      ::close(stdin_);
      stdin_ = -1;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (read_some(100))
      if (std::chrono::steady_clock::now() > deadline) ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    waited_ = true;
    result_.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return result_;
  }

 private:
  // Waits up to timeout_ms for output; false once both streams are closed.
  bool read_some(int timeout_ms) {
    pollfd polls[2] = {{fds_[0], POLLIN, 0}, {fds_[1], POLLIN, 0}};
    if (fds_[0] < 0 && fds_[1] < 0) return false;
    if (::poll(polls, 2, timeout_ms) <= 0) return true;
    std::string* sinks[2] = {&result_.out, &result_.err};
    for (int i = 0; i < 2; ++i) {
      if (fds_[i] < 0 || !(polls[i].revents & (POLLIN | POLLHUP))) continue;
      char buffer[4096];
      const ssize_t n = ::read(fds_[i], buffer, sizeof buffer);
      if (n > 0) {
        sinks[i]->append(buffer, size_t(n));
      } else {
        ::close(fds_[i]);
        fds_[i] = -1;
      }
    }
    return true;
  }

  pid_t pid_ = -1;
  bool waited_ = false;
  int stdin_ = -1;
  int fds_[2] = {-1, -1};
  ProcessResult result_;
};

// Runs body in a forked copy of this process with stderr captured; the exit code is body's _exit or 0.
inline ProcessResult run_forked(const std::function<void()>& body) {
  int err[2];
  if (::pipe(err)) return {};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(err[1], 2);
    ::close(err[0]), ::close(err[1]);
    body();
    ::_exit(0);
  }
  ::close(err[1]);
  ProcessResult result;
  char buffer[4096];
  for (ssize_t n; (n = ::read(err[0], buffer, sizeof buffer)) > 0;) result.err.append(buffer, size_t(n));
  ::close(err[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

}  // namespace kiln::testing

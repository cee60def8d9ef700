#include "main/batch_journal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "engine/error.h"
#include "engine/json_input.h"

namespace kiln {
namespace {

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {}, sb {};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

std::string temp_path(const std::string& path) { return path + ".tmp"; }

void write_all(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    KILN_CHECK(n > 0, "cannot write '{}': {}", path, std::strerror(errno));
    data += n;
    size -= size_t(n);
  }
}

void sync_fd(int fd, const std::string& path) {
  KILN_CHECK(::fsync(fd) == 0, "cannot sync '{}': {}", path, std::strerror(errno));
}

}  // namespace

void check_not_same_file(const std::string& in_path, const std::string& out_path) {
  KILN_CHECK(!same_file(in_path, out_path),
             "the output '{}' is the input file: give -o another path, or the results would overwrite the requests",
             out_path);
  KILN_CHECK(!same_file(in_path, temp_path(out_path)),
             "the input '{}' is where the output's temp file goes: rename it or give -o another path", in_path);
}

std::vector<std::string> read_journal(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return {};
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in.good(), "cannot read the output '{}' to resume it", path);
  const std::string text{std::istreambuf_iterator<char>(in), {}};
  std::vector<std::string> lines;
  for (size_t begin = 0, end; (end = text.find('\n', begin)) != std::string::npos; begin = end + 1) {
    std::string line = text.substr(begin, end - begin);
    bool is_object = false;
    try {
      is_object = parse_json_input(line, "a line").is_object();
    } catch (const Error&) {
    }
    KILN_CHECK(is_object,
               "the output '{}' exists and its line {} is not a batch record: give -o another path, or --force to "
               "overwrite it",
               path, lines.size() + 1);
    lines.push_back(std::move(line));
  }
  return lines;  // what follows the last newline is a record a killed run did not finish
}

void replace_with_lines(const std::string& path, const std::vector<std::string>& lines) {
  const std::string temp = temp_path(path);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  KILN_CHECK(fd >= 0, "cannot create '{}': {}", temp, std::strerror(errno));
  try {
    std::string text;
    for (const std::string& line : lines) {
      text += line;
      text += '\n';
      if (text.size() >= (size_t(1) << 20)) {
        write_all(fd, text.data(), text.size(), temp);
        text.clear();
      }
    }
    write_all(fd, text.data(), text.size(), temp);
    sync_fd(fd, temp);
  } catch (...) {
    ::close(fd);
    ::unlink(temp.c_str());
    throw;
  }
  ::close(fd);
  KILN_CHECK(::rename(temp.c_str(), path.c_str()) == 0, "cannot rename '{}' to '{}': {}", temp, path,
             std::strerror(errno));
  // The rename is durable once the folder is synced.
  std::filesystem::path folder = std::filesystem::path(path).parent_path();
  if (folder.empty()) folder = ".";
  if (const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dir >= 0) {
    (void)::fsync(dir);
    ::close(dir);
  }
}

BatchJournal::BatchJournal(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  KILN_CHECK(fd_ >= 0, "cannot open the output '{}': {}", path, std::strerror(errno));
}

BatchJournal::~BatchJournal() {
  if (fd_ >= 0) ::close(fd_);
}

void BatchJournal::append(std::string_view line) {
  buffer_.assign(line);
  buffer_ += '\n';
  write_all(fd_, buffer_.data(), buffer_.size(), path_);
}

void BatchJournal::sync() { sync_fd(fd_, path_); }

}  // namespace kiln

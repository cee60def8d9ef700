#include "engine/mapped_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>

#include "engine/error.h"

namespace kiln {
namespace {

// Reading a page past the end of a file that shrank after it was mapped raises SIGBUS. The handler
// looks the address up among the live maps and, when it is in one, says which file changed and exits
// with status 1 instead of dumping core. Everything it touches is fixed-size and lock-free.
struct MapSlot {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uint64_t> size{0};
  char path[480] = {};
};
constexpr int kMapSlots = 256;
MapSlot g_maps[kMapSlots];
struct sigaction g_previous_sigbus = {};

void write_all(const char* text, size_t n) {
  while (n > 0) {
    const ssize_t done = ::write(STDERR_FILENO, text, n);
    if (done <= 0) return;
    text += done, n -= size_t(done);
  }
}

extern "C" void on_sigbus(int, siginfo_t* info, void*) {
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  for (const MapSlot& slot : g_maps) {
    const uintptr_t begin = slot.begin.load(std::memory_order_acquire);  // 0: free, 1: being filled
    if (begin <= 1 || address < begin || address - begin >= slot.size.load(std::memory_order_relaxed)) continue;
    static constexpr char kHead[] = "kiln: error: '";
    static constexpr char kTail[] =
        "' shrank while kiln was reading it (was it overwritten or truncated in place?): rerun once it is "
        "complete; write models under a new name or with `kiln convert`, which replaces a file whole\n";
    write_all(kHead, sizeof kHead - 1);
    write_all(slot.path, ::strnlen(slot.path, sizeof slot.path));
    write_all(kTail, sizeof kTail - 1);
    ::_exit(1);
  }
  // Not a mapped file: the previous handler (a sanitizer's, or the default action on the retried access).
  ::sigaction(SIGBUS, &g_previous_sigbus, nullptr);
}

void install_sigbus_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action = {};
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGBUS, &action, &g_previous_sigbus);
  });
}

void register_map(const uint8_t* data, uint64_t size, const std::string& path) {
  install_sigbus_handler();
  for (MapSlot& slot : g_maps) {
    uintptr_t expected = 0;
    // Claim the slot with a placeholder, fill it, then publish the real address.
    if (!slot.begin.compare_exchange_strong(expected, 1, std::memory_order_acquire)) continue;
    std::strncpy(slot.path, path.c_str(), sizeof slot.path - 1);
    slot.size.store(size, std::memory_order_relaxed);
    slot.begin.store(reinterpret_cast<uintptr_t>(data), std::memory_order_release);
    return;
  }
  // Every slot taken: this map goes without the message (a SIGBUS in it dumps core as usual).
}

void unregister_map(const uint8_t* data) {
  for (MapSlot& slot : g_maps) {
    uintptr_t expected = reinterpret_cast<uintptr_t>(data);
    if (slot.begin.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) return;
  }
}

void unmap(const uint8_t* data, uint64_t size) {
  if (data == nullptr) return;
  unregister_map(data);
  ::munmap(const_cast<uint8_t*>(data), size);
}

}  // namespace

MappedFile MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KILN_CHECK(fd >= 0, "cannot open '{}': {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("'{}' is not a regular file: give the path of a model file", path);
  }
  MappedFile file;
  file.path_ = path;
  file.size_ = uint64_t(st.st_size);
  if (file.size_ > 0) {
    void* map = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int map_errno = errno;
    ::close(fd);
    KILN_CHECK(map != MAP_FAILED, "cannot map '{}' ({} bytes): {}", path, file.size_, std::strerror(map_errno));
    file.data_ = static_cast<const uint8_t*>(map);
    register_map(file.data_, file.size_, path);
  } else {
    ::close(fd);
  }
  return file;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    unmap(data_, size_);
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() { unmap(data_, size_); }

}  // namespace kiln

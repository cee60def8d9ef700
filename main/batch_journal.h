// OUT of kiln batch as a journal that survives kill -9: each record is appended whole with one write()
// as its request finishes; a rerun reads back the complete lines (a torn last line is dropped) and
// goes on; the finished file is rewritten in input order through a temp file and a rename.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kiln {

// Throws kiln::Error when out names the same file as in (also through a link: device and inode).
void check_not_same_file(const std::string& in_path, const std::string& out_path);

// The complete ('\n'-terminated) lines of path, without their newlines; none when it does not exist.
// Throws kiln::Error when a complete line is not a JSON object: the file is not a batch output.
[[nodiscard]] std::vector<std::string> read_journal(const std::string& path);

// Replaces path with these lines atomically: a temp file beside it, fsync, rename, fsync of the folder.
void replace_with_lines(const std::string& path, const std::vector<std::string>& lines);

class BatchJournal {
 public:
  // Opens path for appending (creating it).
  explicit BatchJournal(const std::string& path);
  ~BatchJournal();
  BatchJournal(const BatchJournal&) = delete;
  BatchJournal& operator=(const BatchJournal&) = delete;

  // Appends line and a newline with one write() call, so a killed run never leaves half a record.
  void append(std::string_view line);
  void sync();

 private:
  std::string path_;
  int fd_ = -1;
  std::string buffer_;
};

}  // namespace kiln

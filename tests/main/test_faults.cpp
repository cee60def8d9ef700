// Faults around files: a full disk and a read-only folder during `kiln convert`, and a model file that
// changes while kiln has it mapped. (A conversion killed with -9 or interrupted with Ctrl-C: test_cli.)
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "engine/error.h"
#include "engine/kiln_file.h"
#include "tests/main/test_faults_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using testing::ProcessResult;
using testing::run_kiln;
using testing::run_process;

size_t count_entries(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir)) ++n;
  return n;
}

void expect_one_line_error(const ProcessResult& r, const std::string& part) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find(part), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

// The file size limit makes every write past 64 KB fail with EFBIG, as a full disk fails with ENOSPC
// (SIGXFSZ, which would otherwise kill the writer, is ignored and stays so across exec).
TEST(Faults, ConvertOnAFullDiskLeavesNothingBehind) {
  const testing::TinyModels models;
  const fs::path out_dir = models.dir.path() / "out";
  fs::create_directories(out_dir);
  const std::string out = (out_dir / "full.kiln").string();
  const ProcessResult r = run_process({"/bin/sh", "-c", "ulimit -f 128 && trap '' XFSZ && exec \"$0\" \"$@\"",
                                       KILN_BINARY, "convert", models.folder.string(), "-o", out, "--type", "f32"});
  expect_one_line_error(r, "File too large (is the disk full?)");
  EXPECT_EQ(count_entries(out_dir), 0u) << "the output or its temporary file was left behind";
}

TEST(Faults, ConvertIntoAReadOnlyFolderSaysSo) {
  const testing::TinyModels models;
  const fs::path out_dir = models.dir.path() / "read-only";
  fs::create_directories(out_dir);
  fs::permissions(out_dir, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                               fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
  std::vector<std::string> argv = {KILN_BINARY, "convert", models.folder.string(), "-o",
                                   (out_dir / "m.kiln").string()};
  if (::geteuid() == 0) {
    // Root writes into any folder: run the conversion as nobody, who can read the model but not write here.
    for (const fs::path& p : {models.dir.path(), models.folder}) {
      fs::permissions(p, fs::perms::others_read | fs::perms::others_exec, fs::perm_options::add);
      for (const auto& entry : fs::directory_iterator(p))
        if (entry.is_regular_file()) fs::permissions(entry.path(), fs::perms::others_read, fs::perm_options::add);
    }
    argv.insert(argv.begin(), {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"});
  }
  const ProcessResult r = run_process(argv);
  if (r.exit_code == 126 || r.exit_code == 127) GTEST_SKIP() << "cannot run kiln as another user here: " << r.err;
  expect_one_line_error(r, "Permission denied): choose a folder you can write to");
  EXPECT_EQ(count_entries(out_dir), 0u);
}

// `kiln convert --force` replaces a model by a rename: a process that has the old file mapped keeps
// reading the old weights, whole and matching their checksums, and a new open sees the new file.
TEST(Faults, ModelReplacedWhileMappedKeepsTheOldWeights) {
  const testing::TinyModels models;
  const KilnFile before = KilnFile::open(models.kiln);
  const auto r = run_kiln({"convert", models.folder.string(), "-o", models.kiln, "--type", "f16", "--force", "-q"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(before.get("blk.0.attn_qkv.weight", {128, 64}).dtype, DType::F32);
  EXPECT_TRUE(before.verify().empty());
  EXPECT_EQ(KilnFile::open(models.kiln).get("blk.0.attn_qkv.weight", {128, 64}).dtype, DType::F16);
}

// A model file truncated in place while mapped: reading the lost pages raises SIGBUS, which kiln turns
// into a one-line error naming the file, and status 1.
TEST(Faults, ModelTruncatedWhileMappedIsNamed) {
  const testing::TinyModels models;
  const ProcessResult r = testing::run_forked([&] {
    const KilnFile file = KilnFile::open(models.kiln);
    if (::truncate(models.kiln.c_str(), 4096) != 0) ::_exit(3);
    (void)file.verify();  // reads every tensor
    ::_exit(4);
  });
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("'" + models.kiln + "' shrank while kiln was reading it"), std::string::npos) << r.err;
  // Opened again, the file is refused before anything is read.
  try {
    (void)KilnFile::open(models.kiln);
    ADD_FAILURE() << "the truncated file opened";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln

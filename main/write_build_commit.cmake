# Writes OUT, a source file defining kiln::build_commit(), with the short hash of SOURCE_DIR's checked-out
# commit ("unknown" outside a git checkout). Run at every build (main/CMakeLists.txt), so the hash follows
# the commits made after configuring; OUT is rewritten only when the hash changes, so nothing recompiles
# otherwise.
execute_process(COMMAND git rev-parse --short HEAD WORKING_DIRECTORY "${SOURCE_DIR}"
                OUTPUT_VARIABLE hash OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE status)
if(NOT status EQUAL 0 OR NOT hash)
  set(hash unknown)
endif()
set(content "// Written by main/write_build_commit.cmake at build time.\n#include \"main/build_commit.h\"\n\nconst char* kiln::build_commit() { return \"${hash}\"; }\n")
set(old "")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL content)
  file(WRITE "${OUT}" "${content}")
endif()

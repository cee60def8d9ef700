// A converted tiny fixture (tests/engine/make_tiny_models.py) against the test's own mapping of it
// (tests/engine/tiny_model.cpp): the Hugging Face conversion tests' shared check.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "engine/kiln_file.h"
#include "engine/model_config.h"
#include "tests/engine/tiny_model.h"

namespace kiln::test {

// The converted config and tensors equal the test's own mapping of fixture `name`, bit for bit.
inline void expect_same_mapping(const KilnFile& file, const std::string& name) {
  const TinyModel tiny = load_tiny_model(name);
  nlohmann::json got = model_config_to_json(file.config()), want = model_config_to_json(tiny.config);
  if (name == "bloom") {  // ALiBi: config.json names no length, so the converter takes BLOOM's 2048
    EXPECT_EQ(got["n_ctx_train"], 2048);
    got["n_ctx_train"] = want["n_ctx_train"];
  }
  EXPECT_EQ(got, want);
  for (const auto& [tensor, expected] : tiny.tensors) {
    const TensorView* t = file.find(tensor);
    ASSERT_NE(t, nullptr) << tensor;
    ASSERT_EQ(t->numel(), int64_t(expected.values.size())) << tensor;
    EXPECT_EQ(std::memcmp(t->data, expected.values.data(), t->bytes), 0) << tensor;
  }
}

}  // namespace kiln::test

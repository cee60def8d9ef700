// TokenizerData <-> the "tokenizer" object of the .kiln metadata (docs/FORMAT.md). The SentencePiece
// model proto, being binary, travels as the u8 tensor kSpmModelTensor instead.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string_view>

#include "tokenizer/tokenizer_data.h"

namespace kiln {

inline constexpr std::string_view kSpmModelTensor = "tokenizer.spm_model";

nlohmann::json tokenizer_to_json(const TokenizerData& data);  // without spm_model
TokenizerData tokenizer_from_json(const nlohmann::json& json, int64_t n_vocab);  // checks ids against n_vocab

}  // namespace kiln

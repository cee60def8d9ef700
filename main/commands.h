// The subcommand table: each subcommand lives in its own main/cmd_<name>.cpp.
#pragma once

#include <span>
#include <string_view>

namespace kiln {

// argv[0] is "kiln <name>"; returns the process exit code. Errors are thrown as kiln::Error.
using CommandFn = int (*)(int argc, char** argv);

struct Command {
  std::string_view name;
  std::string_view summary;
  CommandFn run;
};

int cmd_convert(int argc, char** argv);
int cmd_info(int argc, char** argv);
int cmd_verify(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_chat(int argc, char** argv);
int cmd_perplexity(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_tokenize(int argc, char** argv);
int cmd_detokenize(int argc, char** argv);
int cmd_embed(int argc, char** argv);
int cmd_batch(int argc, char** argv);

inline constexpr Command kCommands[] = {
    {"generate", "continue one prompt, streamed to stdout", cmd_generate},
    {"chat", "interactive chat with the model's chat template", cmd_chat},
    {"batch", "run a file of prompts or OpenAI batch requests with continuous batching", cmd_batch},
    {"perplexity", "perplexity of a text file, llama.cpp-style", cmd_perplexity},
    {"bench", "measure prompt and generation speed, llama-bench style", cmd_bench},
    {"tokenize", "print the token ids and pieces of a text", cmd_tokenize},
    {"detokenize", "print the text of token ids", cmd_detokenize},
    {"embed", "sentence embeddings of a text file's lines with an encoder (BERT)", cmd_embed},
    {"convert", "convert a GGUF file or Hugging Face folder to a .kiln file", cmd_convert},
    {"info", "print a .kiln file's architecture, hyper-parameters, tokenizer and tensors", cmd_info},
    {"verify", "check every tensor of a .kiln file against its checksum", cmd_verify},
};

}  // namespace kiln

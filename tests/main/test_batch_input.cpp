// kiln batch's pieces without a model: input detection and parsing, the records' shapes, the requests
// built from lines, and the journal's resume and rewrite.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "main/batch_input.h"
#include "main/batch_journal.h"
#include "main/batch_output.h"
#include "main/batch_profile.h"
#include "main/batch_progress.h"
#include "main/batch_requests.h"
#include "tests/convert/kiln_file_fixture.h"
#include "tests/engine/batch_test_util.h"

namespace kiln {
namespace {

using nlohmann::json;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

TEST(BatchInput, DetectsTheKindFromTheFirstNonBlankLine) {
  EXPECT_EQ(detect_batch_kind("Tell me a story\n{\"id\": 1}\n"), BatchInputKind::PlainText);
  EXPECT_EQ(detect_batch_kind("\n  \n{\"id\": 1, \"prompt\": \"x\"}\n"), BatchInputKind::Shorthand);
  EXPECT_EQ(detect_batch_kind("\xEF\xBB\xBF{\"custom_id\": \"a\"}\r\n"), BatchInputKind::OpenAi);
  EXPECT_EQ(detect_batch_kind("{not json\n"), BatchInputKind::PlainText);
  EXPECT_EQ(detect_batch_kind("[1, 2]\n"), BatchInputKind::PlainText);
  EXPECT_EQ(detect_batch_kind(""), BatchInputKind::PlainText);
}

TEST(BatchInput, PlainTextLinesAreNumberedAndABlankLineIsAnError) {
  const BatchInput in = parse_batch_input("first\r\n\nthird");
  ASSERT_EQ(in.items.size(), 3u);
  EXPECT_EQ(in.items[0].prompt, "first");
  EXPECT_EQ(in.items[0].id, 1);
  EXPECT_TRUE(in.items[0].runnable());
  EXPECT_FALSE(in.items[1].runnable());
  EXPECT_EQ(in.items[2].id, 3);
  EXPECT_EQ(in.items[2].prompt, "third");
  EXPECT_EQ(parse_batch_input("a\nb\n").items.size(), 2u) << "no line after the final newline";
}

TEST(BatchInput, ShorthandFieldsAndErrors) {
  const BatchInput in = parse_batch_input(
      R"({"id": "a", "prompt": "Hi", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": "\n"})"
      "\n"
      R"({"id": 2, "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}], "stop": ["x", "y"], "max_tokens": null})"
      "\n"
      R"({"id": 3, "prompt": "x", "max_token": 5})"
      "\n"
      R"({"id": 4, "prompt": "x", "messages": []})"
      "\n"
      R"({"prompt": "no id"})"
      "\n"
      R"({"id": 5, "prompt": "x", "temperature": "hot"})"
      "\n"
      R"({"id": 6, "prompt": "x", "seed": -1})"
      "\n"
      "{\"id\": 7, \"prompt\": \"x\"\n"
      R"({"id": 8, "messages": [{"role": "tool", "content": "x"}]})"
      "\n"
      R"({"id": 9, "prompt": "x", "max_tokens": 1e300})"
      "\n");
  ASSERT_EQ(in.kind, BatchInputKind::Shorthand);
  ASSERT_EQ(in.items.size(), 10u);
  const BatchItem& a = in.items[0];
  ASSERT_TRUE(a.runnable()) << a.error;
  EXPECT_EQ(a.id, "a");
  EXPECT_FALSE(a.chat);
  EXPECT_EQ(a.prompt, "Hi");
  EXPECT_EQ(*a.max_tokens, 5);
  EXPECT_FLOAT_EQ(*a.temperature, 0.5f);
  EXPECT_FLOAT_EQ(*a.top_p, 0.9f);
  EXPECT_EQ(*a.seed, 7u);
  EXPECT_EQ(*a.stops, std::vector<std::string>{"\n"});
  const BatchItem& b = in.items[1];
  ASSERT_TRUE(b.runnable()) << b.error;
  EXPECT_TRUE(b.chat);
  ASSERT_EQ(b.messages.size(), 2u);
  EXPECT_EQ(b.messages[0].role, "system");
  EXPECT_EQ(b.messages[1].content, "Hello");
  EXPECT_EQ(*b.max_tokens, -1);
  EXPECT_EQ(*b.stops, (std::vector<std::string>{"x", "y"}));
  const std::pair<size_t, const char*> errors[] = {{2, "unknown field \"max_token\""},
                                                   {3, "either \"prompt\" or \"messages\""},
                                                   {4, "no \"id\""},
                                                   {5, "temperature"},
                                                   {6, "seed"},
                                                   {7, "not valid JSON"},
                                                   {8, "role 'tool'"},
                                                   {9, "max_tokens"}};
  for (const auto& [i, part] : errors) {
    EXPECT_FALSE(in.items[i].runnable()) << i;
    EXPECT_NE(in.items[i].error.find(part), std::string::npos) << i << ": " << in.items[i].error;
  }
  EXPECT_TRUE(in.items[4].id.is_null());
  EXPECT_EQ(in.items[2].id, 3) << "a line with an id keeps it in its error record";
}

TEST(BatchInput, OpenAiLines) {
  const BatchInput in = parse_batch_input(
      R"({"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 9, "n": 1}})"
      "\n"
      R"({"custom_id": "c2", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": ["Once"], "max_tokens": 4, "stop": null}})"
      "\n"
      R"({"custom_id": "c3", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}})"
      "\n"
      R"({"custom_id": "c4", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "n": 2}})"
      "\n"
      R"({"custom_id": "c5", "method": "GET", "url": "/v1/completions", "body": {"prompt": "x"}})"
      "\n"
      R"({"custom_id": 6, "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}})"
      "\n");
  ASSERT_EQ(in.kind, BatchInputKind::OpenAi);
  ASSERT_TRUE(in.items[0].runnable()) << in.items[0].error;
  EXPECT_TRUE(in.items[0].chat_endpoint);
  EXPECT_TRUE(in.items[0].chat);
  EXPECT_EQ(*in.items[0].max_tokens, 9);
  ASSERT_TRUE(in.items[1].runnable()) << in.items[1].error;
  EXPECT_FALSE(in.items[1].chat_endpoint);
  EXPECT_EQ(in.items[1].prompt, "Once");
  EXPECT_FALSE(in.items[1].stops.has_value());
  for (size_t i = 2; i < 6; ++i) EXPECT_FALSE(in.items[i].runnable()) << i;
  EXPECT_NE(in.items[2].error.find("/v1/embeddings"), std::string::npos);
  EXPECT_NE(in.items[3].error.find("\"n\""), std::string::npos) << in.items[3].error;
  EXPECT_NE(in.items[5].error.find("custom_id"), std::string::npos);
}

TEST(BatchInput, EveryLineOfADuplicatedIdIsAnError) {
  const BatchInput in = parse_batch_input(
      "{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": \"1\", \"prompt\": \"b\"}\n{\"id\": 1, \"prompt\": \"c\"}\n");
  EXPECT_FALSE(in.items[0].runnable());
  EXPECT_TRUE(in.items[1].runnable()) << "the string \"1\" is another id than the number 1";
  EXPECT_FALSE(in.items[2].runnable());
  EXPECT_NE(in.items[2].error.find("lines 1, 3"), std::string::npos) << in.items[2].error;
  EXPECT_EQ(in.items[2].error_code, "duplicate_id");
}

TEST(BatchOutput, ShorthandRecords) {
  const BatchInput in = parse_batch_input("{\"id\": \"q\", \"prompt\": \"a\"}\nnot json\n");
  BatchOutcome ok{"Paris.", 5, 3, FinishReason::StopString, "", ""};
  const RecordContext context{"model", 1700000000, "ab12"};
  json r = json::parse(format_record(in.kind, in.items[0], ok, context));
  EXPECT_EQ(r, json::parse(R"({"id": "q", "text": "Paris.", "prompt_tokens": 5, "completion_tokens": 3,
                              "finish_reason": "stop"})"));
  BatchOutcome failed;
  failed.error = "too long";
  r = json::parse(format_record(in.kind, in.items[0], failed, context));
  EXPECT_EQ(r["error"], "too long");
  EXPECT_EQ(r["finish_reason"], "error");
  r = json::parse(format_record(in.kind, in.items[1], {}, context));
  EXPECT_TRUE(r["id"].is_null());
  EXPECT_EQ(r["error"].get<std::string>().rfind("line 2: ", 0), 0u) << r;
  EXPECT_EQ(record_id(in.kind, json::parse(format_record(in.kind, in.items[0], ok, context))), "q");
}

TEST(BatchOutput, OpenAiRecords) {
  const BatchInput in = parse_batch_input(
      R"({"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "Hi"}]}})"
      "\n"
      R"({"custom_id": "c2", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}})"
      "\n"
      R"({"custom_id": "c3", "method": "POST", "url": "/v1/nothing", "body": {}})"
      "\n");
  const RecordContext context{"smol", 1700000000, "ab12"};
  json r = json::parse(format_record(in.kind, in.items[0], {"Hello!", 7, 3, FinishReason::EndOfTurn, "", ""}, context));
  EXPECT_EQ(r["id"], "batch_req_ab12_1");
  EXPECT_EQ(r["custom_id"], "c1");
  EXPECT_TRUE(r["error"].is_null());
  EXPECT_EQ(r["response"]["status_code"], 200);
  EXPECT_EQ(r["response"]["request_id"], "req_ab12_1");
  const json& body = r["response"]["body"];
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["created"], 1700000000);
  EXPECT_EQ(body["model"], "smol");
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(body["choices"][0]["message"]["content"], "Hello!");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["usage"], json::parse(R"({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})"));

  r = json::parse(format_record(in.kind, in.items[1], {"abc", 2, 4, FinishReason::ContextFull, "", ""}, context));
  EXPECT_EQ(r["response"]["body"]["object"], "text_completion");
  EXPECT_EQ(r["response"]["body"]["choices"][0]["text"], "abc");
  EXPECT_EQ(r["response"]["body"]["choices"][0]["finish_reason"], "length");

  r = json::parse(format_record(in.kind, in.items[2], {}, context));
  EXPECT_EQ(r["custom_id"], "c3");
  EXPECT_TRUE(r["response"].is_null());
  EXPECT_EQ(r["error"]["code"], "invalid_request");
  EXPECT_NE(r["error"]["message"].get<std::string>().find("/v1/nothing"), std::string::npos);
}

TEST(BatchRequests, LineFieldsOverTheFlagsAndSeedsPerLine) {
  const auto tokenizer = test::byte_tokenizer(-1);
  RequestDefaults d;
  d.sampling.temperature = 0.7f;
  d.sampling.seed = 100;
  d.max_tokens = 12;
  d.stops = {"."};
  const BatchInput in = parse_batch_input(
      "{\"id\": 1, \"prompt\": \"ab\"}\n{\"id\": 2, \"prompt\": \"ab\", \"seed\": 5, \"max_tokens\": 3, \"stop\": "
      "[], \"temperature\": 0}\n{\"id\": 3, \"prompt\": \"ab\", \"top_p\": 7}\n");
  BatchRequest r = make_request(in.items[0], 0, d, *tokenizer, nullptr);
  EXPECT_EQ(r.prompt, (std::vector<int32_t>{'a', 'b'}));
  EXPECT_EQ(r.sampling.seed, 100u);
  EXPECT_EQ(r.max_tokens, 12);
  EXPECT_EQ(r.stops, std::vector<std::string>{"."});
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.7f);
  r = make_request(in.items[1], 1, d, *tokenizer, nullptr);
  EXPECT_EQ(r.index, 1);
  EXPECT_EQ(r.sampling.seed, 5u);
  EXPECT_EQ(r.max_tokens, 3);
  EXPECT_TRUE(r.stops.empty());
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_THROW((void)make_request(in.items[2], 2, d, *tokenizer, nullptr), Error);
  // Without its own seed, line 3 draws from seed + 2, so equal prompts do not give equal samples.
  const BatchInput plain = parse_batch_input("ab\nab\nab\n");
  EXPECT_EQ(make_request(plain.items[2], 2, d, *tokenizer, nullptr).sampling.seed, 102u);
}

TEST(BatchRequests, MessagesAndChatWrappedPromptsGoThroughTheTemplate) {
  const auto tokenizer = test::byte_tokenizer(-1);
  const ChatTemplate tmpl = chat_template_by_name("chatml");
  RequestDefaults d;
  d.chat = true;
  d.system = "S";
  const BatchInput plain = parse_batch_input("hi\n");
  const BatchRequest r = make_request(plain.items[0], 0, d, *tokenizer, &tmpl);
  const std::string expected = render_chat(tmpl, {{"system", "S"}, {"user", "hi"}}, true);
  EXPECT_EQ(tokenizer->decode(r.prompt), expected);
  const BatchInput openai = parse_batch_input(
      R"({"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"prompt": "hi"}})"
      "\n");
  EXPECT_FALSE(uses_chat_template(openai.items[0], d)) << "an OpenAI completion is raw text";
  EXPECT_EQ(tokenizer->decode(make_request(openai.items[0], 0, d, *tokenizer, &tmpl).prompt), "hi");
}

TEST(BatchJournal, ResumeReadsCompleteLinesAndTheRewriteIsAtomic) {
  testing::TempDir dir;
  const std::string out = dir.file("out.jsonl");
  EXPECT_TRUE(read_journal(out).empty());
  {
    BatchJournal journal(out);
    journal.append(R"({"id": 1})");
    journal.append(R"({"id": 2})");
  }
  std::ofstream(out, std::ios::app) << R"({"id": 3, "te)";  // a record cut by a kill
  EXPECT_EQ(read_journal(out), (std::vector<std::string>{R"({"id": 1})", R"({"id": 2})"}));
  replace_with_lines(out, {R"({"id": 2})", R"({"id": 1})"});
  EXPECT_EQ(slurp(out), "{\"id\": 2}\n{\"id\": 1}\n");
  EXPECT_FALSE(std::filesystem::exists(out + ".tmp"));

  std::ofstream(out, std::ios::app) << "not a record\n";
  EXPECT_THROW((void)read_journal(out), Error);
}

TEST(BatchJournal, RefusesAnOutputThatIsTheInputByAnyName) {
  testing::TempDir dir;
  const std::string in = dir.file("in.txt");
  std::ofstream(in) << "hello\n";
  EXPECT_NO_THROW(check_not_same_file(in, dir.file("out.jsonl")));
  EXPECT_THROW(check_not_same_file(in, in), Error);
  std::filesystem::create_symlink(in, dir.file("link"));
  EXPECT_THROW(check_not_same_file(in, dir.file("link")), Error);
  std::filesystem::create_hard_link(in, dir.file("hard"));
  EXPECT_THROW(check_not_same_file(in, dir.file("hard")), Error);
  std::filesystem::create_directory(dir.path() / "sub");
  EXPECT_THROW(check_not_same_file(in, (dir.path() / "sub" / ".." / "in.txt").string()), Error);
}

TEST(BatchProgress, LinesSayWhatIsDoneAndHowFast) {
  BatchTally t;
  t.total = 100;
  t.resumed = 10;
  t.ok = 18;
  t.failed = 2;
  t.generated_tokens = 500;
  t.prompt_tokens = 70;
  t.steps = 42;
  t.forward_seconds = 8.25;
  EXPECT_EQ(progress_line(t, 10), "30/100 | 2.00 req/s | 50.0 t/s | ETA 35 s");
  EXPECT_EQ(summary_line(t, 10),
            "[batch: 18 ok, 2 failed, 10 resumed | generated 500 tokens, 50.0 t/s | prompt 70 tokens | wall 10.0 s, "
            "8.2 s of it in 42 forward steps]");
}

// The stages in the order they first ran, each summed over every call, with its share of their sum; then
// the forward steps', the sampling's and the rest of the wall time.
TEST(BatchProfile, SumsEachStageAndSplitsTheWallTime) {
  BatchStageTotals totals;
  ASSERT_TRUE(totals.timer()->enabled);
  totals.timer()->on_stage("qkv", 0, 1.0e6);
  totals.timer()->on_stage("attn", 0, 2.5e6);
  totals.timer()->on_stage("qkv", 1, 0.5e6);
  BatchTally t;
  t.forward_seconds = 4.5;
  t.sampling_seconds = 1.25;
  const std::string table = totals.table(t, 10);
  const size_t qkv = table.find("  qkv               1.50 s  37.5%\n");
  const size_t attn = table.find("  attn              2.50 s  62.5%\n");
  EXPECT_NE(qkv, std::string::npos) << table;
  EXPECT_NE(attn, std::string::npos) << table;
  EXPECT_LT(qkv, attn) << table;
  EXPECT_NE(table.find("  stages            4.00 s"), std::string::npos) << table;
  EXPECT_NE(table.find("  forward           4.50 s"), std::string::npos) << table;
  EXPECT_NE(table.find("  sampling          1.25 s"), std::string::npos) << table;
  EXPECT_NE(table.find("  the rest          4.25 s"), std::string::npos) << table;

  // Without timed stages (the CPU backend) it says so and still splits the wall time.
  const std::string bare = BatchStageTotals().table(t, 10);
  EXPECT_NE(bare.find("no stage was timed"), std::string::npos) << bare;
  EXPECT_NE(bare.find("  the rest          4.25 s"), std::string::npos) << bare;
}

}  // namespace
}  // namespace kiln

// A Node agent written as any agent is: the official SDKs with their defaults (no base URL,
// no proxy settings in code). It makes one plain and one streamed call per SDK and prints the
// raw bytes each call received (base64, one JSON object) for the test to compare.
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";

const results = {};
const openai = new OpenAI({ maxRetries: 0 });
const anthropic = new Anthropic({ maxRetries: 0 });

async function raw(promise) {
  const response = await promise.asResponse();
  return Buffer.from(await response.arrayBuffer()).toString("base64");
}

const messages = [{ role: "user", content: "Capital of France?" }];
results.openai = await raw(openai.chat.completions.create({ model: "gpt-4o", messages }));
results.openai_stream = await raw(
  openai.chat.completions.create({ model: "o4-mini", messages, stream: true, stream_options: { include_usage: true } }),
);
results.anthropic = await raw(anthropic.messages.create({ model: "claude-sonnet-4-20250514", max_tokens: 64, messages }));
results.anthropic_stream = await raw(
  anthropic.messages.create({ model: "claude-sonnet-4-20250514", max_tokens: 64, messages, stream: true }),
);
console.log(JSON.stringify(results));

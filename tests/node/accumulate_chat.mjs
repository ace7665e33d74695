// Reads one streamed answer with the official openai Node SDK and prints what the SDK's own
// accumulator makes of it, as JSON on stdout (tests/sidecar/test_node_sdk.py).
//
//   node accumulate_chat.mjs <baseURL> <chat|responses>
//
// chat:      client.chat.completions.stream(...), then stream.finalChatCompletion();
// responses: client.responses.stream(...), then stream.finalResponse().
// When the SDK raises (its own errors, or a TypeError from its accumulator on a chunk it does not
// expect), prints {"error": {"name": ..., "message": ...}} and still exits 0, so a test can
// compare the error a client sees too. Bad arguments, or openai not installed, exit non-zero.
//
// `openai` is resolved from the node_modules next to the running file (ES modules ignore
// NODE_PATH): the test copies this file into build/node-sdk, where .ci/run installs
// tests/node/package.json with npm ci, and runs it there.
import OpenAI from 'openai';

const [baseURL, format] = process.argv.slice(2);
if (!baseURL || !['chat', 'responses'].includes(format)) {
  console.error('usage: node accumulate_chat.mjs <baseURL> <chat|responses>');
  process.exit(2);
}

const client = new OpenAI({ baseURL, apiKey: 'x', maxRetries: 0, timeout: 30_000 });

let result;
try {
  if (format === 'chat') {
    const stream = client.chat.completions.stream({
      model: 'm',
      messages: [{ role: 'user', content: 'hi' }],
    });
    result = await stream.finalChatCompletion();
  } else {
    const stream = client.responses.stream({ model: 'm', input: 'hi' });
    result = await stream.finalResponse();
  }
} catch (err) {
  // The class name (APIConnectionError, OpenAIError, TypeError, ...): not every error sets .name.
  const name = err?.constructor?.name ?? String(err?.name);
  result = { error: { name, message: String(err?.message ?? err) } };
}
process.stdout.write(JSON.stringify(result) + '\n');

// Reads one streamed answer with the official openai Node SDK and prints what the SDK makes of
// it, as one JSON object on stdout (tests/sidecar/test_node_sdk.py).
//
//   node accumulate_chat.mjs <baseURL> <chat|responses>
//
// chat:      client.chat.completions.stream(...), then stream.finalChatCompletion();
//            prints {"final": <completion>, "delta_strings": {<choice index>: {<field>: text}}}.
// responses: client.responses.stream(...), then stream.finalResponse();
//            prints {"final": <response>}.
//
// delta_strings: the SDK's accumulator keeps only the LAST value of a delta field it does not
// know (reasoning, reasoning_content, channel, ...: Object.assign in ChatCompletionStream), so
// the final completion holds the last fragment of the reasoning, not the reasoning. A Node client
// that wants it concatenates the fields of the chunks the SDK emits; delta_strings is that
// concatenation, per choice, of every string field of a delta other than the ones the SDK
// accumulates itself.
//
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
    const deltaStrings = {};
    stream.on('chunk', (chunk) => {
      for (const { index, delta } of chunk.choices ?? []) {
        // The fields the SDK accumulates itself; all others it overwrites.
        const { content, refusal, role, tool_calls, function_call, audio, ...rest } = delta ?? {};
        for (const [field, value] of Object.entries(rest)) {
          if (typeof value !== 'string') continue;
          const fields = (deltaStrings[index] ??= {});
          fields[field] = (fields[field] ?? '') + value;
        }
      }
    });
    result = { final: await stream.finalChatCompletion(), delta_strings: deltaStrings };
  } else {
    const stream = client.responses.stream({ model: 'm', input: 'hi' });
    result = { final: await stream.finalResponse() };
  }
} catch (err) {
  // The class name (APIConnectionError, OpenAIError, TypeError, ...): not every error sets .name.
  const name = err?.constructor?.name ?? String(err?.name);
  result = { error: { name, message: String(err?.message ?? err) } };
}
process.stdout.write(JSON.stringify(result) + '\n');

// The official MCP TypeScript SDK v2 client (npm @modelcontextprotocol/client)
// against a rate-limited MCP server: reports what the SDK surfaces when a
// tool call is denied.
//
// Usage:
//   node client.mjs URL SCENARIO [--negotiation legacy|auto] [--max-calls N]
//
// SCENARIO is `direct` (call `search_docs`) or `call_tool` (call `call_tool`
// with `tool_name: search_docs`, which the filter counts against the same
// bucket). The client connects with the SDK's version negotiation
// (`--negotiation legacy`, the SDK's default, sends `initialize`; `auto`
// probes `server/discover` and falls back to `initialize`), lists the tools,
// then calls the tool until a call fails, at most --max-calls times (default
// 10). It never retries a call itself. After the failure it calls
// `get_weather` on the same session to see whether the session still works.
//
// It prints one JSON object on stdout, in the shape of the other clients'
// reports:
//
//   {"sdk": "@modelcontextprotocol/client", "sdk_version": "2.4.0",
//    "negotiation": "legacy", "protocol_version": "2025-11-25", "era": "legacy",
//    "session_id": true, "tools": [...], "allowed": 3,
//    "error": {"type": "SdkHttpError", "code": "CLIENT_HTTP_NOT_IMPLEMENTED",
//              "message": "...", "data": {"status": 429, ...}, "http_status": 429},
//    "after": {"tool": "get_weather", "ok": true, "error": null},
//    "session_survived": true,
//    "wire": {"tools_call": [{"id": 2, "tool": "search_docs", "status": 200,
//                             "content_type": "text/event-stream"}, ...],
//             "sdk_retried": false}}
//
// `error` is what the failed call rejected with, null when no call failed:
// the error's class, its `code` as the SDK set it (a number for a
// ProtocolError, the JSON-RPC code; a string for an SdkError, the SDK's
// error code) and its `data`; `http_status` is the HTTP status the error
// carries (an SdkHttpError's `status`), else null. `session_survived` is
// true when the call after the failure worked on the same session. Every
// call asks for progress notifications; `progress` counts those received.
// `wire` is what was actually sent, recorded by the fetch function handed to
// the transport: every `tools/call` POST with the HTTP status and content
// type of its answer. A retry made by the SDK itself shows as more POSTs
// than calls (`sdk_retried`). The exit status is 0 whenever this report
// could be produced.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { recordingFetch, runAndReport, text } from '../wire.mjs';

const SDK = '@modelcontextprotocol/client';
const AFTER_TOOL = 'get_weather';

function sdkVersion() {
  const require = createRequire(import.meta.url);
  const main = require.resolve(SDK);
  const root = main.slice(0, main.lastIndexOf('/dist/'));
  return JSON.parse(readFileSync(`${root}/package.json`, 'utf8')).version;
}

function scenarioCall(scenario) {
  if (scenario === 'direct') return ['search_docs', { query: 'envoy' }];
  if (scenario === 'call_tool') {
    return ['call_tool', { tool_name: 'search_docs', parameters: { query: 'envoy' } }];
  }
  throw new Error(`unknown scenario ${JSON.stringify(scenario)}: use direct or call_tool`);
}

function plain(value) {
  if (value === undefined) return null;
  try {
    return JSON.parse(JSON.stringify(value));
  } catch {
    return String(value);
  }
}

// What the SDK put in the error: its class, its code and data, and the HTTP
// status where the error carries one.
function describeError(err) {
  const code = err?.code;
  const status = err?.data?.status;
  return {
    type: err?.constructor?.name ?? typeof err,
    name: err?.name ?? null,
    code: Number.isInteger(code) || typeof code === 'string' ? code : null,
    message: err?.message ?? String(err),
    data: plain(err?.data),
    http_status: err?.name === 'SdkHttpError' && Number.isInteger(status) ? status : null,
  };
}

async function run(report, log, url, maxCalls) {
  const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: recordingFetch(log) });
  const client = new Client(
    { name: 'mcp-ratelimit-e2e', version: '1.0.0' },
    { versionNegotiation: { mode: report.negotiation } },
  );
  // Transport errors are also handed to onerror; the calls below report them.
  client.onerror = () => {};
  const onprogress = () => {
    report.progress += 1;
  };
  await client.connect(transport);
  try {
    report.protocol_version = client.getNegotiatedProtocolVersion() ?? null;
    report.era = client.getProtocolEra() ?? null;
    report.session_id = transport.sessionId !== undefined;
    report.tools = (await client.listTools()).tools.map(t => t.name);
    for (let i = 0; i < maxCalls; i++) {
      report.attempts += 1;
      let result;
      try {
        result = await client.callTool({ name: report.tool, arguments: report.arguments }, { onprogress });
      } catch (err) {
        report.error = describeError(err);
        break;
      }
      if (result.isError) {
        report.error = { type: 'CallToolResult.isError', name: null, code: null, message: text(result), data: null, http_status: null };
        break;
      }
      report.allowed += 1;
    }
    if (report.error) {
      const after = { tool: AFTER_TOOL, ok: false, error: null };
      report.attempts += 1;
      try {
        const result = await client.callTool({ name: AFTER_TOOL, arguments: { city: 'Oslo' } }, { onprogress });
        after.ok = !result.isError;
        after.text = text(result);
      } catch (err) {
        after.error = describeError(err);
      }
      report.after = after;
      report.session_survived = after.ok;
    }
  } finally {
    await client.close();
  }
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      negotiation: { type: 'string', default: 'legacy' },
      'max-calls': { type: 'string', default: '10' },
    },
  });
  if (positionals.length !== 2 || !['legacy', 'auto'].includes(values.negotiation)) {
    process.stderr.write('usage: node client.mjs URL direct|call_tool [--negotiation legacy|auto] [--max-calls N]\n');
    return 2;
  }
  const [url, scenario] = positionals;
  const [tool, args] = scenarioCall(scenario);
  const report = {
    sdk: SDK,
    sdk_version: sdkVersion(),
    node_version: process.versions.node,
    negotiation: values.negotiation,
    scenario,
    tool,
    arguments: args,
    protocol_version: null,
    era: null,
    session_id: null,
    tools: [],
    allowed: 0,
    attempts: 0,
    progress: 0,
    error: null,
    after: null,
    session_survived: null,
    wire: null,
    failure: null,
  };
  const maxCalls = Number.parseInt(values['max-calls'], 10);
  await runAndReport(report, [tool, AFTER_TOOL], log => run(report, log, url, maxCalls), describeError);
  return 0;
}

process.exitCode = await main();

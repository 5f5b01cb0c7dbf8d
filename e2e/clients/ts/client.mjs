// The official MCP TypeScript SDK client (npm @modelcontextprotocol/sdk)
// against a rate-limited MCP server: reports what the SDK surfaces when a
// tool call is denied.
//
// Usage:
//   node client.mjs URL SCENARIO [--max-calls N]
//
// SCENARIO is `direct` (call `search_docs`) or `call_tool` (call `call_tool`
// with `tool_name: search_docs`, which the filter counts against the same
// bucket). The client connects (initialize), lists the tools, then calls the
// tool until a call fails, at most --max-calls times (default 10). It never
// retries a call itself. After the failure it calls `get_weather` on the same
// session to see whether the session still works.
//
// It prints one JSON object on stdout:
//
//   {"sdk": "@modelcontextprotocol/sdk", "sdk_version": "1.32.2",
//    "protocol_version": "...", "tools": [...], "allowed": 3,
//    "error": {"type": "StreamableHTTPError", "code": 429, "message": "...",
//              "data": null, "http_status": 429},
//    "after": {"tool": "get_weather", "ok": true, "error": null},
//    "wire": {"tools_call": [{"id": 2, "tool": "search_docs", "status": 200,
//                             "content_type": "text/event-stream"}, ...],
//             "sdk_retried": false}}
//
// Every call asks for progress notifications; `progress` counts those
// received. `error` is null when no call failed. `http_status` is what the
// SDK's error exposes: a StreamableHTTPError's `code` is the HTTP status, an
// McpError carries none. `wire` is what was actually sent, recorded by the
// fetch function handed to the transport: every `tools/call` POST with the
// HTTP status and content type of its answer. A retry made by the SDK itself
// shows as more POSTs than calls (`sdk_retried`). The exit status is 0
// whenever this report could be produced.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { recordingFetch, runAndReport, text } from '../wire.mjs';

const AFTER_TOOL = 'get_weather';

function sdkVersion() {
  const require = createRequire(import.meta.url);
  const main = require.resolve('@modelcontextprotocol/sdk/client/index.js');
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

// What the SDK put in the error: its class, and the JSON-RPC fields and HTTP
// status where the error carries them.
function describeError(err) {
  const type = err?.constructor?.name ?? typeof err;
  const code = Number.isInteger(err?.code) ? err.code : null;
  return {
    type,
    code,
    message: err?.message ?? String(err),
    data: err?.data === undefined ? null : err.data,
    http_status: type === 'StreamableHTTPError' ? code : null,
  };
}

async function run(report, log, url, maxCalls) {
  const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: recordingFetch(log) });
  const client = new Client({ name: 'mcp-ratelimit-e2e', version: '1.0.0' });
  // Transport errors are also handed to onerror; the calls below report them.
  client.onerror = () => {};
  const onprogress = () => {
    report.progress += 1;
  };
  await client.connect(transport);
  try {
    report.protocol_version = transport.protocolVersion ?? null;
    report.session_id = transport.sessionId !== undefined;
    report.tools = (await client.listTools()).tools.map(t => t.name);
    for (let i = 0; i < maxCalls; i++) {
      report.attempts += 1;
      let result;
      try {
        result = await client.callTool({ name: report.tool, arguments: report.arguments }, undefined, { onprogress });
      } catch (err) {
        report.error = describeError(err);
        break;
      }
      if (result.isError) {
        report.error = { type: 'CallToolResult.isError', code: null, message: text(result), data: null, http_status: null };
        break;
      }
      report.allowed += 1;
    }
    if (report.error) {
      const after = { tool: AFTER_TOOL, ok: false, error: null };
      report.attempts += 1;
      try {
        const result = await client.callTool({ name: AFTER_TOOL, arguments: { city: 'Oslo' } }, undefined, { onprogress });
        after.ok = !result.isError;
        after.text = text(result);
      } catch (err) {
        after.error = describeError(err);
      }
      report.after = after;
    }
  } finally {
    await client.close();
  }
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { 'max-calls': { type: 'string', default: '10' } },
  });
  if (positionals.length !== 2) {
    process.stderr.write('usage: node client.mjs URL direct|call_tool [--max-calls N]\n');
    return 2;
  }
  const [url, scenario] = positionals;
  const [tool, args] = scenarioCall(scenario);
  const report = {
    sdk: '@modelcontextprotocol/sdk',
    sdk_version: sdkVersion(),
    node_version: process.versions.node,
    scenario,
    tool,
    arguments: args,
    protocol_version: null,
    session_id: null,
    tools: [],
    allowed: 0,
    attempts: 0,
    progress: 0,
    error: null,
    after: null,
    wire: null,
    failure: null,
  };
  const maxCalls = Number.parseInt(values['max-calls'], 10);
  await runAndReport(report, [tool, AFTER_TOOL], log => run(report, log, url, maxCalls), describeError);
  return 0;
}

process.exitCode = await main();

// What the TypeScript SDK clients of the tests share (ts/ for the v1 SDK,
// ts2/ for the v2 client): the text of a tool result, and a fetch that
// records every tools/call POST with the HTTP status and content type of its
// answer. No dependencies: Node.js's own fetch.

export function text(result) {
  return (result?.content ?? []).map(c => c.text ?? '').join(' ');
}

export function recordingFetch(log) {
  return async (url, init) => {
    let entry = null;
    if ((init?.method ?? 'GET') === 'POST' && typeof init.body === 'string') {
      try {
        const body = JSON.parse(init.body);
        if (body?.method === 'tools/call') {
          entry = { id: body.id ?? null, tool: body.params?.name ?? null, status: null, content_type: null };
          log.push(entry);
        }
      } catch {
        // not JSON: not ours to record
      }
    }
    const response = await fetch(url, init);
    if (entry) {
      entry.status = response.status;
      entry.content_type = response.headers.get('content-type');
    }
    return response;
  };
}

// Runs a client (`run(log)`, which fills `report`), notes a failure, adds
// the tools/call POSTs of `tools` as sent (more POSTs than attempts means
// the SDK sent some call again by itself) and prints the report.
export async function runAndReport(report, tools, run, describeError) {
  const log = [];
  try {
    await run(log);
  } catch (err) {
    report.failure = describeError(err);
    report.stack = err?.stack ?? null;
  }
  const calls = log.filter(c => tools.includes(c.tool));
  report.wire = { tools_call: calls, sdk_retried: calls.length > report.attempts };
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

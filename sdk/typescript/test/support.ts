// What the tests share: the SDK's exports and a few internals.

export * from "../src/index.js";
export { checkText } from "../src/event.js";
export { goDuration as goDurationForTest, goQuote as goQuoteForTest } from "../src/text.js";

import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** One request the test server received. */
export interface Received {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: string;
  at: number;
}

/** A local HTTP server answering with handler; close it when done. */
export async function server(handler: (req: Received, res: ServerResponse, n: number) => void | Promise<void>) {
  const received: Received[] = [];
  const s = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const r = { method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks).toString(), at: Date.now() };
      received.push(r);
      void handler(r, res, received.length);
    });
  });
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
  return {
    url,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        s.closeAllConnections();
        s.close(() => resolve());
      }),
  };
}

/** Answers status with a JSON body and headers. */
export function answer(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(typeof body === "string" ? body : JSON.stringify(body));
}

/** The ids in a POST /v1/events body. */
export function ids(body: string): string[] {
  const v = JSON.parse(body.startsWith("[") ? body : `[${body}]`) as Array<{ id: string }>;
  return v.map((e) => e.id);
}

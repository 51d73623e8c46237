// The gRPC-Web clients of the console: the same RPCs and tokens as every other client, on the
// server's gRPC port (its URL is written into the page by the server).

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Activities } from "./gen/segmentd/v1/activities_pb";
import { Admin } from "./gen/segmentd/v1/admin_pb";
import { Ingest } from "./gen/segmentd/v1/ingest_pb";
import { Membership } from "./gen/segmentd/v1/membership_pb";
import { Segments } from "./gen/segmentd/v1/segments_pb";

/** The token is kept for this tab only (sessionStorage), never written anywhere else. */
const TOKEN_KEY = "segmentd.token";

export function token(): string {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

export function setToken(value: string): void {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

const bearer: Interceptor = (next) => (req) => {
  const t = token();
  if (t) req.header.set("authorization", `Bearer ${t}`);
  return next(req);
};

function grpcUrl(): string {
  const meta = document.querySelector<HTMLMetaElement>('meta[name="segmentd-grpc"]');
  const url = meta?.content ?? "";
  // Served by anything but segmentd (a file opened directly): the default port on this host.
  return url && !url.startsWith("{{") ? url : `${location.protocol}//${location.hostname}:50051`;
}

const transport = createGrpcWebTransport({
  baseUrl: grpcUrl(),
  interceptors: [bearer],
});

export const segments: Client<typeof Segments> = createClient(Segments, transport);
export const admin: Client<typeof Admin> = createClient(Admin, transport);
export const membership: Client<typeof Membership> = createClient(Membership, transport);
export const ingest: Client<typeof Ingest> = createClient(Ingest, transport);
export const activities: Client<typeof Activities> = createClient(Activities, transport);

/** An error in plain words: the server's message, and what to do for the usual codes. */
export function explain(e: unknown): string {
  const err = ConnectError.from(e);
  switch (err.code) {
    case Code.Unauthenticated:
      return `Not signed in: ${err.rawMessage}. Type a token above and press Connect.`;
    case Code.PermissionDenied:
      return `This token's role may not do this: ${err.rawMessage}`;
    case Code.Unavailable:
      return `The server is unavailable: ${err.rawMessage}`;
    default:
      return err.rawMessage || Code[err.code];
  }
}

export { Code, ConnectError };

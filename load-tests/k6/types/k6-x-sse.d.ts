// The part of the xk6-sse extension's module ("k6/x/sse",
// github.com/phymbert/xk6-sse) that sse-fanout.js uses, written from its
// documentation so that the script type-checks without the extension.
//
// sse.open() connects, calls `setup` with the client so it can register
// handlers, then blocks the VU, running the handlers as events arrive, until
// the stream ends or the script calls client.close(). It returns the HTTP
// response (status 0 and `error` set when the connection failed).
declare module "k6/x/sse" {
  export interface Params {
    method?: string;
    body?: string;
    headers?: Record<string, string>;
    tags?: Record<string, string>;
  }

  /** One event; a comment line arrives as an event with an empty name. */
  export interface SseEvent {
    id: string;
    name: string;
    data: string;
    comment: string;
  }

  export interface SseError {
    error(): string;
  }

  export interface Client {
    on(event: "open", handler: () => void): void;
    on(event: "event", handler: (event: SseEvent) => void): void;
    on(event: "error", handler: (error: SseError) => void): void;
    close(): void;
  }

  export interface Response {
    url: string;
    status: number;
    headers: Record<string, string>;
    error: string;
  }

  interface Sse {
    open(url: string, params: Params | null, setup: (client: Client) => void): Response;
    open(url: string, setup: (client: Client) => void): Response;
  }

  const sse: Sse;
  export default sse;
}

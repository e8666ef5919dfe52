/**
 * Who may use `ferry ui`: a browser with a session. A session begins one of two ways:
 *
 * - the sign-in link `ferry ui` prints (as Jupyter's): a random code, good once and for SIGN_IN_TTL_MS, unrelated to
 *   the cluster token, so the link can sit in a terminal's scrollback without giving the cluster away;
 * - the cluster token, typed into the page and sent in a POST body (never in a URL, never logged).
 *
 * The session is a random id in an HttpOnly, SameSite=Strict cookie: a script on the page cannot read it, and no
 * other site's page can make the browser send it. Every request that changes something must also carry the session's
 * CSRF token in a header (which a cross-site form cannot set) and, when the browser sends one, an Origin that is this
 * server's. Requests whose Host is not this server's are refused too, so a DNS-rebinding page cannot reach it.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

export const SESSION_COOKIE = 'ferry_session';
export const CSRF_HEADER = 'x-ferry-csrf';
/** How long a sign-in link is good for. */
export const SIGN_IN_TTL_MS = 60_000;
/** How long a session lasts without being used. */
export const SESSION_IDLE_MS = 12 * 60 * 60 * 1000;

interface Session {
  csrf: string;
  lastUsedMs: number;
}

function secret(): string {
  return randomBytes(32).toString('base64url');
}

/** Compares two secrets in time that does not depend on where they differ. */
export function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function cookieValue(request: IncomingMessage, name: string): string | undefined {
  for (const part of (request.headers.cookie ?? '').split(';')) {
    const [key, ...rest] = part.trim().split('=');
    if (key === name) return rest.join('=');
  }
  return undefined;
}

export class Access {
  private readonly signIns = new Map<string, number>();
  private readonly sessions = new Map<string, Session>();
  private readonly tokens: string[];
  private readonly now: () => number;

  /** `tokens`: the cluster's tokens (one per host, usually all the same), any of which opens a session. */
  constructor(tokens: string[], now: () => number = Date.now) {
    this.tokens = tokens.filter((token) => token !== '');
    this.now = now;
  }

  /** A new one-time sign-in code, good for SIGN_IN_TTL_MS. */
  signInCode(): string {
    const code = secret();
    this.signIns.set(code, this.now() + SIGN_IN_TTL_MS);
    return code;
  }

  /** Spends a sign-in code: a new session id when it was good (once, in time), else undefined. */
  redeem(code: string): string | undefined {
    const until = this.signIns.get(code);
    this.signIns.delete(code);
    for (const [other, expires] of this.signIns) if (expires < this.now()) this.signIns.delete(other);
    if (until === undefined || until < this.now()) return undefined;
    return this.open();
  }

  /** A new session for someone who gave the cluster token, or undefined when it is not the cluster's. */
  logIn(token: string): string | undefined {
    return this.tokens.some((expected) => sameSecret(token, expected)) ? this.open() : undefined;
  }

  private open(): string {
    const id = secret();
    this.sessions.set(id, { csrf: secret(), lastUsedMs: this.now() });
    return id;
  }

  /** The session the request's cookie names, if it is live. */
  session(request: IncomingMessage): Session | undefined {
    const id = cookieValue(request, SESSION_COOKIE);
    const session = id === undefined ? undefined : this.sessions.get(id);
    if (!session || id === undefined) return undefined;
    if (this.now() - session.lastUsedMs > SESSION_IDLE_MS) {
      this.sessions.delete(id);
      return undefined;
    }
    session.lastUsedMs = this.now();
    return session;
  }

  logOut(request: IncomingMessage): void {
    const id = cookieValue(request, SESSION_COOKIE);
    if (id !== undefined) this.sessions.delete(id);
  }

  /** A request that changes something: a live session, its CSRF token in the header, and no foreign Origin. */
  mayChange(request: IncomingMessage, origins: string[]): boolean {
    const session = this.session(request);
    const csrf = request.headers[CSRF_HEADER];
    return session !== undefined && typeof csrf === 'string' && sameSecret(csrf, session.csrf) && sameOrigin(request, origins);
  }
}

/** The cookie that carries a session: not readable by scripts, never sent from another site's page. */
export function sessionCookie(id: string): string {
  return `${SESSION_COOKIE}=${id}; HttpOnly; SameSite=Strict; Path=/`;
}

export const clearedSessionCookie = `${SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0`;

/** The request's Origin, when the browser sent one, is this server's; a request without one (not from a page) passes. */
export function sameOrigin(request: IncomingMessage, origins: string[]): boolean {
  const given = request.headers.origin;
  return given === undefined || origins.includes(given);
}

/** The request was addressed to this server by the name it listens on (no DNS rebinding). */
export function rightHost(request: IncomingMessage, hosts: string[]): boolean {
  return request.headers.host !== undefined && hosts.includes(request.headers.host.toLowerCase());
}

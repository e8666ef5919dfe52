import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { Access, CSRF_HEADER, SESSION_COOKIE, SIGN_IN_TTL_MS, rightHost, sessionCookie } from '../../coordinator/ui/access.js';

function request(headers: Record<string, string>): IncomingMessage {
  return { headers } as unknown as IncomingMessage;
}

describe('ferry ui access', () => {
  it('takes a sign-in code once, and only within its minute', () => {
    let now = 1_000;
    const access = new Access(['cluster-token'], () => now);
    const code = access.signInCode();
    expect(access.redeem(code)).toBeDefined();
    expect(access.redeem(code)).toBeUndefined();
    const late = access.signInCode();
    now += SIGN_IN_TTL_MS + 1;
    expect(access.redeem(late)).toBeUndefined();
    expect(access.redeem('made-up')).toBeUndefined();
  });

  it('opens a session for the cluster token and for nothing else', () => {
    const access = new Access(['cluster-token']);
    expect(access.logIn('cluster-token')).toBeDefined();
    expect(access.logIn('cluster-toke')).toBeUndefined();
    expect(access.logIn('')).toBeUndefined();
    expect(new Access(['']).logIn('')).toBeUndefined();
  });

  it('lets a change through only with the session, its CSRF token and this server\'s origin', () => {
    const access = new Access(['t']);
    const id = access.logIn('t')!;
    const cookie = `${SESSION_COOKIE}=${id}`;
    const csrf = access.session(request({ cookie }))!.csrf;
    const origins = ['http://127.0.0.1:8080'];
    expect(access.mayChange(request({ cookie, [CSRF_HEADER]: csrf, origin: origins[0]! }), origins)).toBe(true);
    expect(access.mayChange(request({ cookie, [CSRF_HEADER]: csrf }), origins)).toBe(true);
    expect(access.mayChange(request({ cookie, origin: origins[0]! }), origins)).toBe(false);
    expect(access.mayChange(request({ cookie, [CSRF_HEADER]: `${csrf}x`, origin: origins[0]! }), origins)).toBe(false);
    expect(access.mayChange(request({ cookie, [CSRF_HEADER]: csrf, origin: 'http://evil.example' }), origins)).toBe(false);
    expect(access.mayChange(request({ [CSRF_HEADER]: csrf, origin: origins[0]! }), origins)).toBe(false);
    access.logOut(request({ cookie }));
    expect(access.session(request({ cookie }))).toBeUndefined();
  });

  it('sets a session cookie scripts cannot read and other sites cannot send, and answers only to its own name', () => {
    expect(sessionCookie('abc')).toMatch(/HttpOnly/);
    expect(sessionCookie('abc')).toMatch(/SameSite=Strict/);
    expect(rightHost(request({ host: '127.0.0.1:8080' }), ['127.0.0.1:8080'])).toBe(true);
    expect(rightHost(request({ host: 'evil.example:8080' }), ['127.0.0.1:8080'])).toBe(false);
    expect(rightHost(request({}), ['127.0.0.1:8080'])).toBe(false);
  });
});

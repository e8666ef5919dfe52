/** The ui server's API, as the page calls it: the session's CSRF token goes with every change. */

let csrf = '';

export class ApiError extends Error {
  readonly status: number;
  readonly hint: string | undefined;
  constructor(status: number, message: string, hint?: string) {
    super(message);
    this.status = status;
    this.hint = hint;
  }
}

async function answer<T>(response: Response): Promise<T> {
  const body = await response.json().catch(() => ({})) as { error?: { message?: string; hint?: string } };
  if (!response.ok) throw new ApiError(response.status, body.error?.message ?? response.statusText, body.error?.hint);
  return body as T;
}

export interface SessionInfo {
  csrf: string;
  hosts: { name: string; url: string }[];
}

/** The session, or undefined when this browser has none. */
export async function session(): Promise<SessionInfo | undefined> {
  const response = await fetch('/api/session', { credentials: 'same-origin' });
  if (response.status === 401) return undefined;
  const info = await answer<SessionInfo>(response);
  csrf = info.csrf;
  return info;
}

export async function logIn(token: string): Promise<void> {
  await answer(await fetch('/api/login', { method: 'POST', credentials: 'same-origin', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token }) }));
}

export async function post<T>(path: string, body: unknown): Promise<T> {
  return answer<T>(await fetch(path, {
    method: 'POST', credentials: 'same-origin', headers: { 'content-type': 'application/json', 'x-ferry-csrf': csrf }, body: JSON.stringify(body),
  }));
}

export async function get<T>(path: string): Promise<T> {
  return answer<T>(await fetch(path, { credentials: 'same-origin' }));
}

export function action<T>(name: string, body: unknown): Promise<T> {
  return post<T>(`/api/action/${name}`, body);
}

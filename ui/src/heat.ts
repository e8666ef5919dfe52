/**
 * The heat map: two pictures of guest memory, a cell per page or group of pages (the agent groups them,
 * agent/vm/heat-map.ts). Left, how recently the guest wrote each cell; right, how much of it the destination holds as
 * it is now, while a live migration sends it.
 */

export interface HeatFrame {
  name: string;
  host: string;
  pageCount: number;
  pagesPerCell: number;
  recency: string;
  current: string | null;
  writes: number;
  writesPerSec: number;
  migrating: boolean;
}

function bytesOf(base64: string): Uint8Array {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

/** Never written: dark; written long ago: grey-blue; recently: yellow to red, the hotter the more recent. */
function recencyColour(level: number): [number, number, number] {
  if (level === 0) return [11, 16, 32];
  if (level === 1) return [52, 66, 99];
  const t = (level - 2) / 253;
  return [Math.round(120 + 135 * t), Math.round(200 - 150 * t * t), Math.round(60 - 60 * t)];
}

function draw(canvas: HTMLCanvasElement, cells: number, colour: (cell: number) => [number, number, number]): void {
  const side = Math.max(1, Math.ceil(Math.sqrt(cells)));
  if (canvas.width !== side || canvas.height !== side) {
    canvas.width = side;
    canvas.height = side;
  }
  const context = canvas.getContext('2d');
  if (!context) return;
  const image = context.createImageData(side, side);
  for (let cell = 0; cell < side * side; cell++) {
    const [r, g, b] = cell < cells ? colour(cell) : [246, 247, 249];
    image.data[4 * cell] = r;
    image.data[4 * cell + 1] = g;
    image.data[4 * cell + 2] = b;
    image.data[4 * cell + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

/** A small digest of what a frame shows, so that a change can be seen without comparing pictures. */
function digest(text: string): string {
  let hash = 2166136261;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 16777619);
  return (hash >>> 0).toString(16);
}

export function drawHeat(frame: HeatFrame, writes: HTMLCanvasElement, current: HTMLCanvasElement, info: HTMLElement): void {
  const recency = bytesOf(frame.recency);
  const sent = frame.current ? bytesOf(frame.current) : undefined;
  draw(writes, recency.length, (cell) => recencyColour(recency[cell] ?? 0));
  draw(current, recency.length, (cell) => {
    if (!sent) return [11, 16, 32];
    const share = (sent[cell] ?? 0) / 255;
    return [Math.round(40 - 20 * share), Math.round(40 + 160 * share), Math.round(60 - 20 * share)];
  });
  const frames = Number(writes.dataset['frames'] ?? '0') + 1;
  writes.dataset['frames'] = String(frames);
  writes.dataset['digest'] = digest(frame.recency + (frame.current ?? ''));
  const atDestination = sent ? sent.reduce((total, share) => total + share, 0) / 255 / sent.length : undefined;
  info.textContent = `${frame.name} on ${frame.host}: ${frame.pageCount.toLocaleString()} pages, ${frame.pagesPerCell} a cell; `
    + `${Math.round(frame.writesPerSec).toLocaleString()} page writes/s`
    + (atDestination === undefined ? '' : `; ${(100 * atDestination).toFixed(1)} % at the destination as it is now`);
}

/** A `ferry bench` results folder: its summary's tables (from summary.md) and its charts. */
import { get } from './api.js';

interface BenchFolder { dir: string; command: string; summary: string; charts: string[] }

function element<K extends keyof HTMLElementTagNameMap>(tag: K, text?: string): HTMLElementTagNameMap[K] {
  const made = document.createElement(tag);
  if (text !== undefined) made.textContent = text;
  return made;
}

/** Markdown as summary.md writes it: headings, pipe tables and paragraphs; text only, never HTML. */
function renderMarkdown(markdown: string, into: HTMLElement): void {
  const lines = markdown.split('\n');
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index] ?? '';
    if (line.startsWith('|')) {
      const table = element('table');
      const rows: string[][] = [];
      while (index < lines.length && (lines[index] ?? '').startsWith('|')) {
        rows.push((lines[index] ?? '').slice(1, -1).split('|').map((cell) => cell.trim()));
        index++;
      }
      index--;
      rows.forEach((cells, row) => {
        if (row === 1 && cells.every((cell) => /^:?-+:?$/.test(cell))) return;
        const tr = element('tr');
        for (const cell of cells) tr.append(element(row === 0 ? 'th' : 'td', cell.replaceAll('`', '')));
        table.append(tr);
      });
      into.append(table);
    } else if (line.startsWith('#')) {
      into.append(element('h3', line.replace(/^#+\s*/, '')));
    } else if (line.trim() !== '' && !line.startsWith('![')) {
      into.append(element('p', line.replaceAll('`', '')));
    }
  }
}

export async function openBench(dir: string, view: HTMLElement): Promise<void> {
  view.replaceChildren(element('p', 'loading…'));
  const folder = await get<BenchFolder>(`/api/bench?dir=${encodeURIComponent(dir)}`);
  view.replaceChildren(element('h3', folder.dir));
  renderMarkdown(folder.summary, view);
  for (const chart of folder.charts) {
    const image = element('img');
    image.alt = chart;
    image.src = `/api/bench/chart?dir=${encodeURIComponent(folder.dir)}&name=${encodeURIComponent(chart)}`;
    view.append(image);
  }
}

export async function listBench(list: HTMLElement, view: HTMLElement): Promise<void> {
  const { root, folders } = await get<{ root: string; folders: string[] }>('/api/bench');
  list.replaceChildren();
  if (folders.length === 0) list.append(element('li', `no results folders under ${root}: run ferry bench, or give a folder above`));
  for (const folder of folders) {
    const item = element('li');
    const link = element('a', folder);
    link.href = '#';
    link.addEventListener('click', (event) => {
      event.preventDefault();
      void openBench(folder, view).catch((error: unknown) => view.replaceChildren(element('p', String(error))));
    });
    item.append(link);
    list.append(item);
  }
}

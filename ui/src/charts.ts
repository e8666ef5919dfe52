/** The migration's charts, drawn with Vega-Lite through vega-embed (vendor scripts the page loads). */

declare const vegaEmbed: (element: HTMLElement, spec: unknown, options: unknown) => Promise<{ finalize(): void }>;

const MIB = 1024 * 1024;

export interface ThroughputPoint { atS: number; mibPerSec: number; round: number }
export interface RoundPoint { round: number; sent: number; dirtiedMeanwhile: number }

const embedded = new Map<HTMLElement, { finalize(): void }>();

async function show(element: HTMLElement, spec: unknown): Promise<void> {
  const view = await vegaEmbed(element, spec, { actions: false, renderer: 'svg' });
  embedded.get(element)?.finalize();
  embedded.set(element, view);
}

/** Throughput over time, against the link's rate where the forecast measured it. */
export function drawThroughput(element: HTMLElement, points: ThroughputPoint[], linkBytesPerSec: number | undefined): Promise<void> {
  const layers: unknown[] = [{
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'atS', type: 'quantitative', title: 'seconds since the start' },
      y: { field: 'mibPerSec', type: 'quantitative', title: 'MiB/s' },
      color: { field: 'round', type: 'ordinal', title: 'round' },
    },
  }];
  if (linkBytesPerSec !== undefined) {
    layers.push({
      data: { values: [{ y: linkBytesPerSec / MIB, label: 'link (measured by the forecast)' }] },
      mark: { type: 'rule', strokeDash: [4, 3], color: '#b3261e' },
      encoding: { y: { field: 'y', type: 'quantitative' } },
    });
  }
  return show(element, {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json', title: 'throughput', width: 420, height: 200,
    data: { values: points }, layer: layers,
  });
}

/** Per round: pages sent, and pages the guest dirtied meanwhile (the next round's work). */
export function drawRounds(element: HTMLElement, rounds: RoundPoint[]): Promise<void> {
  const values = rounds.flatMap((round) => [
    { round: round.round, what: 'sent', pages: round.sent },
    { round: round.round, what: 'dirtied meanwhile', pages: round.dirtiedMeanwhile },
  ]);
  return show(element, {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json', title: 'pre-copy rounds', width: 320, height: 200,
    data: { values },
    mark: 'bar',
    encoding: {
      x: { field: 'round', type: 'ordinal' },
      xOffset: { field: 'what' },
      y: { field: 'pages', type: 'quantitative', title: 'pages' },
      color: { field: 'what', type: 'nominal', title: null },
    },
  });
}

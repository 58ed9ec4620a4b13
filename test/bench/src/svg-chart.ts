/**
 * Just enough SVG to plot the benchmark: line charts with linear or log axes, dashed series,
 * horizontal reference lines and a legend. No dependency; the output opens in any browser.
 */
export interface ChartSeries {
  name: string;
  color: string;
  dashed?: boolean;
  points: ReadonlyArray<readonly [number, number]>;
}

export interface ChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  xLog?: boolean;
  yLog?: boolean;
  series: readonly ChartSeries[];
  /** Horizontal reference lines, e.g. a goal. */
  references?: ReadonlyArray<{ y: number; label: string; color: string }>;
  /** Reference lines of the form y = x (offered vs delivered). */
  diagonal?: boolean;
}

export interface Box {
  x: number;
  y: number;
  width: number;
  height: number;
}

export function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function niceStep(range: number, targetTicks: number): number {
  const raw = range / targetTicks;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const residual = raw / magnitude;
  const nice = residual > 5 ? 10 : residual > 2 ? 5 : residual > 1 ? 2 : 1;
  return nice * magnitude;
}

interface Axis {
  min: number;
  max: number;
  log: boolean;
  ticks: number[];
}

function axisFor(values: number[], log: boolean): Axis {
  const usable = values.filter((value) => Number.isFinite(value) && (!log || value > 0));
  if (usable.length === 0) return { min: log ? 1 : 0, max: log ? 10 : 1, log, ticks: log ? [1, 10] : [0, 1] };
  let min = Math.min(...usable);
  let max = Math.max(...usable);
  if (log) {
    min = 10 ** Math.floor(Math.log10(min));
    max = 10 ** Math.ceil(Math.log10(max));
    if (min === max) max = min * 10;
    const ticks: number[] = [];
    const decades = Math.round(Math.log10(max / min));
    for (let power = Math.log10(min); power <= Math.log10(max) + 1e-9; power += 1) {
      for (const factor of decades <= 2 ? [1, 2, 5] : [1]) {
        const tick = factor * 10 ** power;
        if (tick >= min * 0.999 && tick <= max * 1.001) ticks.push(tick);
      }
    }
    return { min, max, log, ticks };
  }
  min = Math.min(0, min);
  if (max === min) max = min + 1;
  const step = niceStep(max - min, 5);
  max = Math.ceil(max / step) * step;
  const ticks: number[] = [];
  for (let tick = min; tick <= max + step / 2; tick += step) ticks.push(Number(tick.toPrecision(12)));
  return { min, max, log, ticks };
}

function scale(axis: Axis, value: number, from: number, to: number): number {
  const position = axis.log ? (Math.log10(value) - Math.log10(axis.min)) / (Math.log10(axis.max) - Math.log10(axis.min)) : (value - axis.min) / (axis.max - axis.min);
  return from + position * (to - from);
}

export function formatTick(value: number): string {
  if (value >= 1_000_000) return `${Number((value / 1_000_000).toPrecision(3))}M`;
  if (value >= 1_000) return `${Number((value / 1_000).toPrecision(3))}k`;
  return String(Number(value.toPrecision(3)));
}

/** One chart inside `box`, as an SVG group. */
export function renderChart(spec: ChartSpec, box: Box): string {
  const plot = { left: box.x + 62, right: box.x + box.width - 14, top: box.y + 34, bottom: box.y + box.height - 66 };
  const xs = spec.series.flatMap((series) => series.points.map(([x]) => x));
  const ys = [...spec.series.flatMap((series) => series.points.map(([, y]) => y)), ...(spec.references ?? []).map((line) => line.y)];
  if (spec.diagonal) ys.push(...xs);
  const xAxis = axisFor(xs, spec.xLog === true);
  const yAxis = axisFor(ys, spec.yLog === true);
  const px = (x: number) => scale(xAxis, x, plot.left, plot.right);
  const py = (y: number) => scale(yAxis, y, plot.bottom, plot.top);
  const parts: string[] = [];
  parts.push(`<g font-family="sans-serif" font-size="11">`);
  parts.push(`<text x="${box.x + box.width / 2}" y="${box.y + 18}" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(spec.title)}</text>`);
  parts.push(`<rect x="${plot.left}" y="${plot.top}" width="${plot.right - plot.left}" height="${plot.bottom - plot.top}" fill="none" stroke="#999"/>`);
  for (const tick of xAxis.ticks) {
    const x = px(tick);
    parts.push(`<line x1="${x}" y1="${plot.top}" x2="${x}" y2="${plot.bottom}" stroke="#eee"/>`);
    parts.push(`<text x="${x}" y="${plot.bottom + 14}" text-anchor="middle">${formatTick(tick)}</text>`);
  }
  for (const tick of yAxis.ticks) {
    const y = py(tick);
    parts.push(`<line x1="${plot.left}" y1="${y}" x2="${plot.right}" y2="${y}" stroke="#eee"/>`);
    parts.push(`<text x="${plot.left - 5}" y="${y + 4}" text-anchor="end">${formatTick(tick)}</text>`);
  }
  parts.push(`<text x="${(plot.left + plot.right) / 2}" y="${plot.bottom + 30}" text-anchor="middle">${escapeXml(spec.xLabel)}</text>`);
  parts.push(
    `<text transform="translate(${box.x + 14},${(plot.top + plot.bottom) / 2}) rotate(-90)" text-anchor="middle">${escapeXml(spec.yLabel)}</text>`,
  );
  if (spec.diagonal) {
    const low = Math.max(xAxis.min, yAxis.min, spec.xLog ? 1e-9 : -Infinity);
    const high = Math.min(xAxis.max, yAxis.max);
    if (high > low) {
      parts.push(`<line x1="${px(low)}" y1="${py(low)}" x2="${px(high)}" y2="${py(high)}" stroke="#bbb" stroke-dasharray="2 3"/>`);
    }
  }
  for (const line of spec.references ?? []) {
    const y = py(line.y);
    parts.push(`<line x1="${plot.left}" y1="${y}" x2="${plot.right}" y2="${y}" stroke="${line.color}" stroke-dasharray="6 3"/>`);
    parts.push(`<text x="${plot.right - 4}" y="${y - 4}" text-anchor="end" fill="${line.color}">${escapeXml(line.label)}</text>`);
  }
  for (const series of spec.series) {
    const points = series.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!xAxis.log || x > 0) && (!yAxis.log || y > 0));
    if (points.length === 0) continue;
    const path = points.map(([x, y], index) => `${index === 0 ? "M" : "L"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
    parts.push(`<path d="${path}" fill="none" stroke="${series.color}" stroke-width="2"${series.dashed ? ' stroke-dasharray="6 4"' : ""}/>`);
    if (points.length <= 40) {
      for (const [x, y] of points) parts.push(`<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${series.color}"/>`);
    }
  }
  // Legend under the plot, in as many rows as it takes.
  let legendX = plot.left;
  let legendY = plot.bottom + 48;
  for (const series of spec.series) {
    const width = 34 + series.name.length * 6.2;
    if (legendX + width > plot.right) {
      legendX = plot.left;
      legendY += 14;
    }
    parts.push(
      `<line x1="${legendX}" y1="${legendY - 4}" x2="${legendX + 22}" y2="${legendY - 4}" stroke="${series.color}" stroke-width="2"${series.dashed ? ' stroke-dasharray="6 4"' : ""}/>`,
    );
    parts.push(`<text x="${legendX + 26}" y="${legendY}">${escapeXml(series.name)}</text>`);
    legendX += width;
  }
  parts.push(`</g>`);
  return parts.join("\n");
}

/** A box of text lines (the summary panel). */
export function renderText(title: string, lines: readonly string[], box: Box): string {
  const parts = [`<g font-family="monospace" font-size="12">`];
  parts.push(`<text x="${box.x + 10}" y="${box.y + 18}" font-family="sans-serif" font-size="14" font-weight="bold">${escapeXml(title)}</text>`);
  lines.forEach((line, index) => parts.push(`<text x="${box.x + 10}" y="${box.y + 40 + index * 16}" xml:space="preserve">${escapeXml(line)}</text>`));
  parts.push(`</g>`);
  return parts.join("\n");
}

/** Lays panels out on a grid of `columns`, each `width` x `height`. */
export function renderPage(panels: ReadonlyArray<(box: Box) => string>, columns: number, width: number, height: number, title: string): string {
  const rows = Math.ceil(panels.length / columns);
  const total = { width: columns * width, height: rows * height + 30 };
  const body = panels.map((panel, index) => panel({ x: (index % columns) * width, y: 30 + Math.floor(index / columns) * height, width, height }));
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${total.width}" height="${total.height}" viewBox="0 0 ${total.width} ${total.height}">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="20" font-family="sans-serif" font-size="15" font-weight="bold">${escapeXml(title)}</text>`,
    ...body,
    `</svg>`,
    "",
  ].join("\n");
}

// How figures read on the page; "–" stands for a figure the API did not give.

const NONE = "–";

export function percent(fraction, digits = 1) {
  return fraction == null ? NONE : `${(fraction * 100).toFixed(digits)}%`;
}

export function count(n) {
  return n == null ? NONE : n.toLocaleString("en-US");
}

export function bytes(n) {
  if (n == null) return NONE;
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(1)} MiB`;
}

export function millis(ms) {
  if (ms == null) return NONE;
  return `${ms < 1 ? ms.toFixed(3) : ms.toFixed(2)} ms`;
}

// A teacher/student ratio in words either way round: versus(26.4, "faster", "slower")
// is "26.4× faster", versus(0.5, ...) is "2.0× slower" (a student may be the bigger one).
export function versus(ratio, above, below) {
  if (ratio == null || ratio === 0) return NONE;
  const [word, x] = ratio >= 1 ? [above, ratio] : [below, 1 / ratio];
  const number = x >= 100 ? Math.round(x).toLocaleString("en-US") : x.toFixed(1);
  return `${number}× ${word}`;
}

export function decimal(x, digits = 4) {
  if (x == null) return NONE;
  return typeof x === "number" ? String(Number(x.toFixed(digits))) : String(x);
}

export function duration(seconds) {
  if (seconds == null) return NONE;
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

// An accuracy difference (0.46) as percentage points ("+46 points").
export function points(gain) {
  const value = Number((gain * 100).toFixed(1));
  const sign = value > 0 ? "+" : value < 0 ? "−" : "±";
  return `${sign}${Math.abs(value)} point${Math.abs(value) === 1 ? "" : "s"}`;
}

export function shortId(id) {
  return id ? id.slice(0, 8) : NONE;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : NONE;
}

// "teacher · epoch 3/20" for a job's progress.
export function stageLine(progress) {
  if (!progress?.stage) return "";
  const parts = [progress.stage];
  if (progress.epochs) parts.push(`epoch ${progress.epoch ?? 0}/${progress.epochs}`);
  return parts.join(" · ");
}

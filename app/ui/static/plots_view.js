// A job's plots: the SVGs need the Authorization header, so they are fetched and shown
// through object URLs (revoked when replaced, so that none leaks). A redraw swaps the new
// figures in when they have all arrived, so that the panel does not jump meanwhile.

import { ApiError, getBlob } from "./api.js";
import { fill, h } from "./dom.js";

const PLOTS = [
  ["learning_curves", "Learning curves", () => true],
  ["pareto", "Size search: accuracy against size", (job) => hasSizeSearch(job)],
];

export function plotsView(container) {
  let urls = [];
  let generation = 0; // a slow answer for an earlier job must not land in this one's panel
  const show = (figures) => {
    urls.forEach((url) => URL.revokeObjectURL(url));
    urls = figures.map((figure) => figure.url).filter(Boolean);
    fill(container, figures.map((figure) => figure.el));
  };
  return {
    clear() {
      generation += 1;
      show([]);
    },
    async load(job) {
      generation += 1;
      const mine = generation;
      if (job.state === "QUEUED") {
        show([{ url: null, el: h("p", { class: "muted" }, "Plots come once the job trains.") }]);
        return;
      }
      const wanted = PLOTS.filter(([, , isWanted]) => isWanted(job));
      const figures = await Promise.all(wanted.map(([name, title]) => plotFigure(job, name, title)));
      if (mine === generation) show(figures);
      else figures.forEach((figure) => figure.url && URL.revokeObjectURL(figure.url));
    },
  };
}

async function plotFigure(job, name, title) {
  const path = `/api/v1/jobs/${encodeURIComponent(job.id)}/plots/${name}.svg`;
  try {
    const url = URL.createObjectURL(await getBlob(path));
    const alt = `${title} of job ${job.name ?? job.id}`;
    const img = h("img", { src: url, alt, dataset: { plot: name } });
    const full = h("a", { href: url, target: "_blank", rel: "noopener" }, "full size");
    const caption = h("figcaption", {}, `${title} (`, full, ")");
    return { url, el: h("figure", { class: "plot" }, img, caption) };
  } catch (error) {
    // 404: nothing to plot yet; the API's detail says why.
    const text = error instanceof ApiError ? error.message : String(error);
    const el = h("p", { class: "muted", dataset: { plot: name } }, `${title}: ${text}`);
    return { url: null, el };
  }
}

function hasSizeSearch(job) {
  return Boolean(job.report?.candidates || job.spec?.student?.candidates);
}

// The RFM family as the usual recency × frequency grid: each cell's size (customers with that
// R and F score), the family's members with their sizes, and what the last reclassification
// moved between them.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { explain, segments } from "../api";
import { count, h, notice } from "../dom";

export const title = "RFM";

export async function render(root: HTMLElement, signal: AbortSignal): Promise<void> {
  const families = await segments.listFamilies({}, { signal });
  const family = families.families.find((f) => f.builtin);
  if (!family) {
    root.appendChild(
      notice(
        "No RFM yet: it is scored on the server's schedule once orders exist, or now with the button below.",
        "note",
      ),
    );
    const run = h("button", { type: "button" }, "Reclassify now");
    const out = h("div", { role: "status" });
    run.addEventListener("click", async () => {
      run.disabled = true;
      try {
        const r = await segments.reclassify({}, { signal });
        out.textContent = `Scored ${count(r.scored)} customers.`;
        location.hash = "#rfm";
        window.dispatchEvent(new HashChangeEvent("hashchange"));
      } catch (e) {
        out.replaceChildren(notice(explain(e)));
      } finally {
        run.disabled = false;
      }
    });
    root.append(run, out);
    return;
  }
  const when = family.reclassifiedAt ? timestampDate(family.reclassifiedAt).toLocaleString() : "never";
  root.appendChild(h("p", { class: "muted" }, `Last reclassification: ${when}. Scores run 1 (worst) to 5 (best).`));

  // Each cell: a preview of `rfm_r = r and rfm_f = f`, all 25 at once.
  const cells = await Promise.all(
    [5, 4, 3, 2, 1].map((f) =>
      Promise.all(
        [1, 2, 3, 4, 5].map((r) =>
          segments
            .previewSegment({ ruleText: `rfm_r = ${r} and rfm_f = ${f}`, sampleSize: 0 }, { signal })
            .then((p) => p.count),
        ),
      ),
    ),
  );
  const max = cells.flat().reduce((a, b) => (b > a ? b : a), 0n);
  const grid = h("table", { class: "rfm heatmap" });
  grid.appendChild(h("caption", {}, "Customers by recency (columns) and frequency (rows) score"));
  grid.appendChild(
    h(
      "thead",
      {},
      h("tr", {}, h("td"), ...[1, 2, 3, 4, 5].map((r) => h("th", { scope: "col" }, `R ${r}`))),
    ),
  );
  const body = h("tbody");
  cells.forEach((row, i) => {
    const f = 5 - i;
    const tr = h("tr", {}, h("th", { scope: "row" }, `F ${f}`));
    row.forEach((n, j) => {
      const share = max > 0n ? Number(n) / Number(max) : 0;
      const td = h("td", { class: "num", "data-r": j + 1, "data-f": f, title: `R ${j + 1}, F ${f}: ${count(n)}` }, count(n));
      td.style.setProperty("--share", share.toFixed(3));
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
  grid.appendChild(body);

  const members = [...family.members, ...(family.catchAll ? [family.catchAll] : [])];
  const memberTable = h(
    "table",
    { class: "members" },
    h("caption", {}, "Members"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Segment"), h("th", { scope: "col" }, "Rule"), h("th", { scope: "col" }, "Size"))),
    h(
      "tbody",
      {},
      ...members.map((m) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, m.name || m.segmentId),
          h("td", { class: "code" }, m.ruleText || "(no score)"),
          h("td", { class: "num" }, count(m.size)),
        ),
      ),
    ),
  );
  const names = new Map(members.map((m) => [m.segmentId, m.name || m.segmentId]));
  const moves = family.lastMoves.length
    ? h(
        "table",
        { class: "moves" },
        h("caption", {}, "Last reclassification's moves"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "From"), h("th", { scope: "col" }, "To"), h("th", { scope: "col" }, "Customers"))),
        h(
          "tbody",
          {},
          ...family.lastMoves.map((m) =>
            h(
              "tr",
              {},
              h("td", {}, m.fromSegmentId ? names.get(m.fromSegmentId) ?? m.fromSegmentId : "(first placed)"),
              h("td", {}, names.get(m.toSegmentId) ?? m.toSegmentId),
              h("td", { class: "num" }, count(m.count)),
            ),
          ),
        ),
      )
    : notice("No moves recorded since the server started (they are kept in memory).", "note");
  root.append(h("div", { class: "columns" }, grid, memberTable), moves);
}

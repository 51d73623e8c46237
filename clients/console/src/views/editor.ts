// The rule editor: as the marketer types, the rule is previewed (debounced) with its exact count
// and a sample of members, and a parse error is underlined at its line and column. Saving creates
// the segment or updates it; the include and exclude lists are edited here too.

import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, explain, segments } from "../api";
import { count, debounce, field, h, notice } from "../dom";
import { SegmentSchema, type Segment } from "../gen/segmentd/v1/segments_pb";

export const title = "Rule editor";

/** The 1-based line and column a rule error names, if it names one. */
export function position(message: string): { line: number; column: number } | undefined {
  const m = /line (\d+), column (\d+)/.exec(message);
  return m ? { line: Number(m[1]), column: Number(m[2]) } : undefined;
}

/** The character range to underline at `line`:`column` of `text`: the word there, at least one. */
function span(text: string, line: number, column: number): [number, number] {
  let offset = 0;
  const lines = text.split("\n");
  for (let i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
  const start = Math.min(offset + column - 1, text.length);
  let end = start;
  while (end < text.length && !/\s/.test(text[end])) end++;
  // At the end of the rule (something missing): a mark two characters wide after it.
  return [start, start === text.length ? start + 2 : Math.max(end, start + 1)];
}

const lines = (s: string): string[] =>
  s
    .split(/[\s,]+/)
    .map((x) => x.trim())
    .filter(Boolean);

export async function render(root: HTMLElement, signal: AbortSignal, params: URLSearchParams): Promise<void> {
  const editing = params.get("id") ?? "";
  let existing: Segment | undefined;
  if (editing) {
    existing = await segments.getSegment({ segmentId: editing }, { signal });
  }
  const readOnly = Boolean(existing?.familyId);

  const id = h("input", { required: true, pattern: "[A-Za-z0-9_.\\-]{1,64}", spellcheck: "false" });
  const name = h("input");
  const description = h("input");
  const rule = h("textarea", { rows: 5, spellcheck: "false", class: "code", "aria-invalid": "false" });
  const backdrop = h("div", { class: "backdrop code", "aria-hidden": "true" });
  const asOf = h("input", { type: "datetime-local", step: 1 });
  const allow = h("input", { type: "checkbox" });
  const includeIds = h("textarea", { rows: 3, spellcheck: "false" });
  const excludeIds = h("textarea", { rows: 3, spellcheck: "false" });
  const includeAccounts = h("textarea", { rows: 2, spellcheck: "false" });
  const excludeAccounts = h("textarea", { rows: 2, spellcheck: "false" });
  const save = h("button", { type: "submit" }, existing ? "Save changes" : "Create segment");
  const saved = h("div", { role: "status", "aria-live": "polite" });
  const diagnostic = h("p", { id: "rule-error", class: "error", role: "alert", hidden: true });
  const previewCount = h("output", { id: "preview-count", for: "f-rule" });
  const sample = h("ul", { class: "sample", "aria-label": "Sample of members" });
  const previewNote = h("p", { class: "muted" });

  // Lists GetSegment cut short (over 10,000 ids) are shown but not sent back.
  let fullLists = true;
  if (existing) {
    id.value = existing.segmentId;
    id.readOnly = true;
    name.value = existing.name;
    description.value = existing.description;
    rule.value = existing.ruleText;
    allow.checked = existing.allowActivities;
    includeIds.value = existing.includeCustomerIds.join("\n");
    excludeIds.value = existing.excludeCustomerIds.join("\n");
    includeAccounts.value = existing.includeAccountIds.join("\n");
    excludeAccounts.value = existing.excludeAccountIds.join("\n");
    fullLists =
      BigInt(existing.includeCustomerIds.length) === existing.includeCustomerCount &&
      BigInt(existing.excludeCustomerIds.length) === existing.excludeCustomerCount;
  }
  for (const el of [id, name, description, rule, allow, includeIds, excludeIds, includeAccounts, excludeAccounts]) {
    if (readOnly) el.setAttribute("disabled", "");
  }
  if (!fullLists) {
    includeIds.readOnly = true;
    excludeIds.readOnly = true;
  }

  const ruleBox = h("div", { class: "rule-box" }, backdrop, rule);
  rule.id = "f-rule";
  const form = h(
    "form",
    { class: "editor", novalidate: true },
    h(
      "div",
      { class: "columns" },
      h(
        "div",
        {},
        field("Segment id", id, "1 to 64 letters, digits, '_', '-' or '.'"),
        field("Name", name),
        field("Description", description),
        h(
          "div",
          { class: "field" },
          h("label", { for: "f-rule" }, "Rule"),
          ruleBox,
          h("small", { id: "rule-hint" }, 'For example: registered and total_spent > 1000 and gender = "M"'),
          diagnostic,
        ),
        field("As of", asOf, "Now for relative-time rules (age, within); the server's clock when empty"),
        h("div", { class: "field inline" }, allow, h("label", { for: "f-allow" }, "Marketing activities may add and remove members")),
      ),
      h(
        "section",
        { class: "preview", "aria-labelledby": "preview-title" },
        h("h3", { id: "preview-title" }, "Preview"),
        h("p", {}, "Members: ", previewCount),
        previewNote,
        sample,
      ),
    ),
    h(
      "fieldset",
      {},
      h("legend", {}, "Lists (override the rule; one id per line)"),
      h(
        "div",
        { class: "lists" },
        field("Include customers", includeIds),
        field("Exclude customers", excludeIds),
        field("Include accounts", includeAccounts),
        field("Exclude accounts", excludeAccounts),
      ),
      fullLists ? null : notice("The customer lists hold over 10,000 ids: shown in part and left unchanged on save.", "note"),
    ),
    readOnly ? notice(`A member of family ${existing?.familyId}: change it through the family.`, "note") : h("div", { class: "actions" }, save),
    saved,
  );
  allow.id = "f-allow";
  rule.setAttribute("aria-describedby", "rule-hint rule-error");
  root.appendChild(form);

  function underline(at?: { line: number; column: number }): void {
    const text = rule.value;
    if (!at) {
      backdrop.replaceChildren(document.createTextNode(text + "\n"));
      return;
    }
    const [s, e] = span(text, at.line, at.column);
    const padded = text.padEnd(e, " ");
    backdrop.replaceChildren(
      document.createTextNode(padded.slice(0, s)),
      h("mark", { class: "squiggle" }, padded.slice(s, e)),
      document.createTextNode(padded.slice(e) + "\n"),
    );
  }

  let latest = 0;
  let inflight: AbortController | undefined;
  async function preview(): Promise<void> {
    const text = rule.value;
    const mine = ++latest;
    inflight?.abort();
    inflight = new AbortController();
    const abort = () => inflight?.abort();
    signal.addEventListener("abort", abort, { once: true });
    if (!text.trim()) {
      underline();
      diagnostic.hidden = true;
      rule.setAttribute("aria-invalid", "false");
      previewCount.textContent = "";
      sample.replaceChildren();
      previewNote.textContent = "No rule: a container, filled by its lists, activities and member loads.";
      return;
    }
    previewNote.textContent = "Counting…";
    try {
      const r = await segments.previewSegment(
        {
          ruleText: text,
          sampleSize: 20,
          asOf: asOf.value ? timestampFromDate(new Date(asOf.value)) : undefined,
        },
        { signal: inflight.signal },
      );
      if (mine !== latest) return;
      underline();
      diagnostic.hidden = true;
      rule.setAttribute("aria-invalid", "false");
      previewCount.textContent = count(r.count);
      previewCount.dataset.count = r.count.toString();
      previewNote.textContent = r.count ? `The first ${r.sampleCustomerIds.length} by id:` : "No customer matches.";
      sample.replaceChildren(
        ...r.sampleCustomerIds.map((c) => h("li", {}, h("a", { href: `#customer?id=${encodeURIComponent(c)}` }, c))),
      );
    } catch (e) {
      if (mine !== latest || inflight.signal.aborted) return;
      const message = ConnectError.from(e).rawMessage;
      const at = ConnectError.from(e).code === Code.InvalidArgument ? position(message) : undefined;
      underline(at);
      diagnostic.hidden = false;
      diagnostic.textContent = at ? `Line ${at.line}, column ${at.column}: ${message.replace(/^.*?column \d+: /, "")}` : explain(e);
      if (at) {
        diagnostic.dataset.line = String(at.line);
        diagnostic.dataset.column = String(at.column);
      }
      rule.setAttribute("aria-invalid", "true");
      previewCount.textContent = "";
      delete previewCount.dataset.count;
      sample.replaceChildren();
      previewNote.textContent = "";
    } finally {
      signal.removeEventListener("abort", abort);
    }
  }

  const later = debounce(() => void preview(), 250);
  rule.addEventListener("input", () => {
    underline();
    later();
  });
  rule.addEventListener("scroll", () => {
    backdrop.scrollTop = rule.scrollTop;
    backdrop.scrollLeft = rule.scrollLeft;
  });
  asOf.addEventListener("change", () => void preview());

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void submit();
  });

  async function submit(): Promise<void> {
    saved.replaceChildren();
    if (!id.value.trim()) {
      saved.appendChild(notice("Give the segment an id."));
      id.focus();
      return;
    }
    const segment = create(SegmentSchema, {
      segmentId: id.value.trim(),
      name: name.value,
      description: description.value,
      ruleText: rule.value,
      allowActivities: allow.checked,
      includeCustomerIds: lines(includeIds.value),
      excludeCustomerIds: lines(excludeIds.value),
      includeAccountIds: lines(includeAccounts.value),
      excludeAccountIds: lines(excludeAccounts.value),
    });
    save.disabled = true;
    try {
      let result: Segment;
      if (existing) {
        const paths = ["name", "description", "rule_text", "allow_activities", "include_account_ids", "exclude_account_ids"];
        if (fullLists) paths.push("include_customer_ids", "exclude_customer_ids");
        result = await segments.updateSegment({ segment, updateMask: create(FieldMaskSchema, { paths }) }, { signal });
      } else {
        result = await segments.createSegment({ segment }, { signal });
      }
      saved.appendChild(
        h(
          "p",
          { class: "ok" },
          `Saved ${result.segmentId}: ${count(result.size)} members. `,
          h("a", { href: "#segments" }, "Back to the segments"),
        ),
      );
      if (!existing) {
        // Further saves update the segment just created (the address says which, without
        // opening the view again).
        existing = result;
        id.readOnly = true;
        save.textContent = "Save changes";
        history.replaceState(null, "", `#editor?id=${encodeURIComponent(result.segmentId)}`);
      }
    } catch (e) {
      saved.appendChild(notice(explain(e)));
    } finally {
      save.disabled = false;
    }
  }

  underline();
  if (rule.value) void preview();
  else previewNote.textContent = "Type a rule to see how many customers it selects.";
  (existing ? rule : id).focus();
}

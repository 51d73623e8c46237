// One customer: their segments, each with the explanation of the membership
// (ExplainMembership), and their attributes for the roles that may read them.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, admin, explain, ingest, membership, segments } from "../api";
import { field, h, notice } from "../dom";
import { AttributeType } from "../gen/segmentd/v1/admin_pb";
import type { Value } from "../gen/segmentd/v1/customer_pb";
import { Decision } from "../gen/segmentd/v1/segments_pb";

export const title = "Customer";

const money = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

function show(v: Value, type: AttributeType | undefined): string {
  switch (v.kind.case) {
    case "boolValue":
      return v.kind.value ? "true" : "false";
    case "intValue":
      return type === AttributeType.MONEY ? money.format(Number(v.kind.value) / 100) : v.kind.value.toString();
    case "doubleValue":
      return String(v.kind.value);
    case "stringValue":
      return v.kind.value;
    case "dateValue": {
      const d = v.kind.value;
      return `${String(d.year).padStart(4, "0")}-${String(d.month).padStart(2, "0")}-${String(d.day).padStart(2, "0")}`;
    }
    case "timestampValue":
      return timestampDate(v.kind.value).toISOString();
    case "listValue":
      return v.kind.value.values.join(", ");
    default:
      return "";
  }
}

function decision(d: Decision): string {
  return (Decision[d] ?? String(d)).replace(/^DECISION_/, "").toLowerCase().replace(/_/g, " ");
}

export async function render(root: HTMLElement, signal: AbortSignal, params: URLSearchParams): Promise<void> {
  const input = h("input", { spellcheck: "false", required: true });
  input.value = params.get("id") ?? "";
  const form = h("form", { class: "toolbar", role: "search" }, field("Customer id", input), h("div", { class: "actions" }, h("button", { type: "submit" }, "Look up")));
  const out = h("div", { "aria-live": "polite" });
  root.append(form, out);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = input.value.trim();
    if (!id) return;
    history.replaceState(null, "", `#customer?id=${encodeURIComponent(id)}`);
    lookUp(id).catch((e) => out.replaceChildren(notice(explain(e))));
  });

  async function explainIn(id: string, segmentId: string, into: HTMLElement): Promise<void> {
    try {
      const x = await segments.explainMembership({ customerId: id, segmentId }, { signal });
      // Long explanations (a family member's rule repeats the members before it) start folded.
      const details = into.closest("details");
      if (details && x.predicates.length > 8) details.open = false;
      into.replaceChildren(
        h("p", {}, x.member ? "Member: " : "Not a member: ", decision(x.decidedBy), x.ruleMatched ? " (the rule matches)" : ""),
        ...(x.predicates.length
          ? [h(
              "table",
              { class: "explain" },
              h("thead", {}, h("tr", {}, ...["Predicate", "Value", "Holds"].map((t) => h("th", { scope: "col" }, t)))),
              h(
                "tbody",
                {},
                ...x.predicates.map((p) =>
                  h(
                    "tr",
                    { class: p.held ? "held" : "failed" },
                    h("td", { class: "code" }, p.predicate),
                    h("td", {}, p.valueSet ? p.value : h("span", { class: "muted" }, "missing")),
                    h("td", {}, p.held ? "yes" : "no"),
                  ),
                ),
              ),
            )]
          : []),
      );
    } catch (e) {
      into.replaceChildren(notice(explain(e)));
    }
  }

  async function lookUp(id: string): Promise<void> {
    out.replaceChildren(h("p", { class: "muted" }, "Looking up…"));
    const [member, record, schema, all] = await Promise.allSettled([
      membership.getCustomerSegments({ customerId: id }, { signal }),
      ingest.getCustomer({ key: { case: "customerId", value: id } }, { signal }),
      admin.getSchema({}, { signal }),
      segments.listSegments({}, { signal }),
    ]);
    out.replaceChildren();
    if (member.status === "rejected") throw member.reason;
    if (!member.value.knownCustomer) {
      out.appendChild(notice(`No customer ${id}.`, "note"));
      return;
    }
    out.appendChild(h("h3", {}, `Segments of ${id}`));
    const list = h("ul", { class: "memberships" });
    for (const segmentId of member.value.segmentIds) {
      const why = h("div", { class: "why" }, h("span", { class: "muted" }, "Explaining…"));
      list.appendChild(h("li", { "data-segment-id": segmentId }, h("details", { open: true }, h("summary", {}, segmentId), why)));
      void explainIn(id, segmentId, why);
    }
    out.appendChild(member.value.segmentIds.length ? list : notice("In no segment.", "note"));

    // Why not in another segment.
    if (all.status === "fulfilled") {
      const others = all.value.segments.filter((s) => !member.value.segmentIds.includes(s.segmentId));
      if (others.length) {
        const pick = h("select", {}, ...others.map((s) => h("option", { value: s.segmentId }, s.segmentId)));
        const why = h("div", { class: "why" });
        const ask = h("form", { class: "toolbar" }, field("Why not in", pick), h("div", { class: "actions" }, h("button", { type: "submit" }, "Explain")));
        ask.addEventListener("submit", (event) => {
          event.preventDefault();
          void explainIn(id, pick.value, why);
        });
        out.append(ask, why);
      }
    }

    out.appendChild(h("h3", {}, "Attributes"));
    if (record.status === "rejected") {
      const err = ConnectError.from(record.reason);
      out.appendChild(
        err.code === Code.PermissionDenied
          ? notice("Attributes are shown to loader and admin tokens.", "note")
          : notice(explain(record.reason)),
      );
      return;
    }
    const c = record.value.customer;
    const types = new Map(schema.status === "fulfilled" ? schema.value.attributes.map((a) => [a.name, a.type]) : []);
    const rows = Object.entries(c?.attributes ?? {}).sort(([a], [b]) => a.localeCompare(b));
    out.appendChild(
      h(
        "table",
        { class: "attributes" },
        h(
          "tbody",
          {},
          h("tr", {}, h("th", { scope: "row" }, "email"), h("td", {}, c?.email ?? "")),
          ...rows.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, show(v, types.get(k))))),
        ),
      ),
    );
  }

  if (input.value) form.requestSubmit();
  else input.focus();
}

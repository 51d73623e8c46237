// Small DOM helpers: elements built with their attributes and children, text always as text.

type Child = Node | string | number | bigint | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, ...children);
  return el;
}

export function append(el: Node, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}

/** An SVG element (sparklines, the heatmap's scale). */
export function svg(tag: string, attrs: Record<string, string | number> = {}, ...children: Node[]): SVGElement {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.appendChild(c);
  return el;
}

const integer = new Intl.NumberFormat("en-US");

/** A count with thousands separators. */
export function count(n: bigint | number): string {
  return integer.format(n);
}

/** A message line for the view: an error (role alert) or a note. */
export function notice(text: string, kind: "error" | "note" = "error"): HTMLElement {
  return h("p", { class: kind, role: kind === "error" ? "alert" : "status" }, text);
}

/** `f` run `ms` after the last call (typing, say). */
export function debounce<A extends unknown[]>(f: (...a: A) => void, ms: number): (...a: A) => void {
  let timer: number | undefined;
  return (...a: A) => {
    window.clearTimeout(timer);
    timer = window.setTimeout(() => f(...a), ms);
  };
}

/** A labelled form field: the label, then the control, in one block. */
export function field(label: string, control: HTMLElement, hint?: string): HTMLElement {
  if (!control.id) control.id = `f-${label.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  const parts: Child[] = [h("label", { for: control.id }, label), control];
  if (hint) {
    const hintId = `${control.id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("small", { id: hintId }, hint));
  }
  return h("div", { class: "field" }, ...parts);
}

// Tiny DOM helpers. User text only ever becomes a Text node (createTextNode /
// textContent); nothing here parses HTML, and no style attribute is ever written
// (the CSP forbids inline styles).

/**
 * h('button', {class: 'x', testid: 'send', type: 'button', onclick: fn, aria: {label: 'Send'}}, 'Send')
 * Children may be strings (become text nodes), nodes, arrays, or null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
    else if (k === 'testid') el.dataset.testid = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'aria') for (const [ak, av] of Object.entries(v)) el.setAttribute(`aria-${ak}`, String(av));
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = String(v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else if (k === 'style' || k === 'innerHTML' || k === 'outerHTML') throw new Error(`h(): refusing ${k}`);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Replace all children of el. */
export function setChildren(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Set text content only when it changed (keeps screen readers quiet). */
export function setText(el, text) {
  const s = String(text ?? '');
  if (el.textContent !== s) el.textContent = s;
  return el;
}

/** Show or hide with the hidden attribute (CSS handles [hidden]). */
export function show(el, visible) {
  el.hidden = !visible;
  return el;
}

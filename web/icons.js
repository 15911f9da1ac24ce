// Inline SVG icons built with createElementNS (fixed path data, no markup parsing).

const NS = 'http://www.w3.org/2000/svg';

function svg(cls, paths, { fill = 'none', stroke = 'currentColor' } = {}) {
  const s = document.createElementNS(NS, 'svg');
  s.setAttribute('viewBox', '0 0 24 24');
  s.setAttribute('aria-hidden', 'true');
  s.setAttribute('focusable', 'false');
  s.setAttribute('class', cls);
  for (const d of paths) {
    const p = document.createElementNS(NS, 'path');
    p.setAttribute('d', d);
    p.setAttribute('fill', fill);
    p.setAttribute('stroke', stroke);
    p.setAttribute('stroke-width', '2');
    p.setAttribute('stroke-linecap', 'round');
    p.setAttribute('stroke-linejoin', 'round');
    s.append(p);
  }
  return s;
}

export const chatIcon = (cls) => svg(cls, ['M21 12a8 8 0 0 1-11.6 7.1L4 20.5l1.4-4.9A8 8 0 1 1 21 12z', 'M8.5 12h.01M12 12h.01M15.5 12h.01']);
export const closeIcon = (cls) => svg(cls, ['M6 6l12 12M18 6L6 18']);
export const sendIcon = (cls) => svg(cls, ['M4 12l16-8-6 16-2.5-6.5z', 'M11.5 13.5L20 4']);
export const bellIcon = (cls) => svg(cls, ['M18 16v-5a6 6 0 1 0-12 0v5l-2 2h16z', 'M10 20a2 2 0 0 0 4 0']);
export const backIcon = (cls) => svg(cls, ['M15 5l-7 7 7 7']);

// Parley chat widget loader. Embed on any site with
//   <script src="https://HOST/widget.js" data-room="support" async></script>
// It finds the server from its own URL, then loads the widget module from the same
// place; the widget draws itself in a shadow root with HOST/widget.css, and talks
// to wss://HOST/ws. Optional attributes: data-lang="en|zh-CN", data-room-from-query
// (let ?room=NAME on the host page choose the room, as the demo page does).
(function () {
  'use strict';
  if (window.__parleyWidgetLoaded) return;
  window.__parleyWidgetLoaded = true;
  var script = document.currentScript;
  if (!script) {
    var all = document.querySelectorAll('script[src]');
    for (var i = all.length - 1; i >= 0; i--) {
      if (/\/widget\.js(\?|#|$)/.test(all[i].src)) { script = all[i]; break; }
    }
  }
  var src = script ? script.src : new URL('/widget.js', location.href).href;
  var room = (script && script.getAttribute('data-room')) || 'support';
  if (script && script.hasAttribute('data-room-from-query')) {
    var q = new URLSearchParams(location.search).get('room');
    if (q) room = q;
  }
  var opts = { room: room, lang: script ? script.getAttribute('data-lang') : null };
  import(new URL('widget-app.js', src).href)
    .then(function (m) { m.mount(opts); })
    .catch(function (err) { console.error('Parley widget failed to load', err); });
})();

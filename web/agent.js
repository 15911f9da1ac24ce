// Agent console entry point (GET /agent): sign in, keep the token for this tab's
// session (sessionStorage), run the console, sign out.

import { localize, t } from './i18n.js';
import { Store } from './storage.js';
import { LoginView } from './agent-login.js';
import { AgentApp } from './agent-app.js';

const sess = new Store('sessionStorage', 'parley.agent:');
let app = null;

localize(document);
document.title = `Parley — ${t('agent.title')}`;

const loginView = new LoginView({
  onLogin: (session) => {
    sess.set('session', session);
    start(session);
  },
});

function start(session) {
  loginView.hide();
  app = new AgentApp({
    session,
    onSignedOut: (message, { name = '' } = {}) => {
      app = null;
      loginView.show(message, { name });
    },
  });
  window.__parleyConsole = app; // handy in the devtools console
}

const saved = sess.get('session');
if (saved?.token) start(saved);
else loginView.show();

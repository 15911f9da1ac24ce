// The console's top bar: connection state, own availability toggle (online/away),
// desktop notifications switch, who is signed in, sign out. Availability and the
// connection are shown apart: the availability toggle is never a green "Online" while
// the console is not connected (customers cannot reach an agent then).

import { setText } from './dom.js';
import { t } from './i18n.js';
import { notificationPermission, notificationsSupported, requestNotifications, unlockAudio } from './notify.js';

export class TopBar {
  constructor(app) {
    this.app = app;
    this.conn = document.getElementById('conn');
    this.avail = document.getElementById('avail');
    this.notify = document.getElementById('notify');
    this.me = document.getElementById('me');
    this.avail.onclick = () => {
      unlockAudio();
      app.setAvailability(app.availability === 'online' ? 'away' : 'online');
    };
    this.notify.onclick = async () => {
      unlockAudio();
      await requestNotifications();
      this.render();
    };
    document.getElementById('logout').onclick = () => app.signOut();
    // Any click may unlock audio for later beeps.
    document.addEventListener('pointerdown', unlockAudio, { once: true });
  }

  render() {
    const app = this.app;
    const s = app.client.state;
    const connected = s === 'online';
    const online = app.availability === 'online';
    const chosen = online ? t('agent.online') : t('agent.away');
    this.avail.setAttribute('aria-pressed', String(online));
    this.avail.dataset.availability = app.availability;
    this.avail.dataset.connected = String(connected);
    // While disconnected nobody can reach this agent, whatever was chosen: say "Offline" and
    // keep the choice for when the connection is back (the toggle waits until then).
    this.avail.disabled = !connected;
    setText(this.avail, connected ? chosen : t('agent.offline'));
    this.avail.setAttribute('aria-label', connected ? `${t('agent.availability')}: ${chosen}` : t('agent.avail_disconnected', { availability: chosen }));
    setText(this.me, app.me?.name || '');
    if (s === 'online') this.everOnline = true;
    const text =
      s === 'online' ? '' : s === 'offline' || (s === 'connecting' && this.everOnline) ? t('chat.offline') : s === 'connecting' ? t('chat.connecting') : s === 'stopped' ? t('chat.stopped') : '';
    setText(this.conn, text);
    this.conn.dataset.state = s;
    this.conn.hidden = !text;
    const perm = notificationPermission();
    this.notify.hidden = !notificationsSupported();
    this.notify.disabled = perm !== 'default';
    setText(this.notify, perm === 'granted' ? t('agent.notify_on') : perm === 'denied' ? t('agent.notify_denied') : t('agent.notify_enable'));
  }
}
